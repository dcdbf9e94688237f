"""Probe a backbone's patch features on the shapes masks: how much class information do they carry?

Two probes, both trained on the train split's patch features and scored on the test split:
- **linear**: a logistic-regression classifier (scikit-learn) on standardised patch descriptors;
- **kNN**: each test patch takes the similarity-weighted vote of its ``k`` most cosine-similar train patches.

Patch labels are the majority class of the mask pixels a patch covers. Predictions are upsampled (nearest) to the
mask's pixels and scored with pixel-level mean IoU over the classes present in the test split, so backbones with
different patch sizes (raw pixels use 16 px) are compared on the same pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ProbeConfig:
    models: list[str] = field(default_factory=lambda: ["builtin:dino-tiny", "random:builtin:dino-tiny", "pixels"])
    """Backbones to compare (model spec, ``random:SPEC`` or ``pixels``)."""
    hub: list[str] = field(default_factory=lambda: ["facebook/dinov2-small", "facebook/dino-vits16"])
    """Hub models added only when already in the Hugging Face cache (never downloaded)."""
    data: str | None = None
    """A shapes dataset folder; None = a small one generated into the vlens cache."""
    size: int = 128
    """Image side (px) the backbones see."""
    train_images: int = 120
    test_images: int = 40
    k: int = 10
    max_train_patches: int = 10000
    """Patches used to fit the probes (a random subset when there are more)."""
    seed: int = 0


def patch_labels(mask: torch.Tensor, grid: tuple[int, int], n_classes: int) -> torch.Tensor:
    """Majority class of each patch: (H, W) int mask -> (h, w) labels (one-hot, area-averaged, argmax)."""
    onehot = F.one_hot(mask.long(), n_classes).permute(2, 0, 1).float()  # (C, H, W)
    frac = F.adaptive_avg_pool2d(onehot.unsqueeze(0), grid)[0]  # (C, h, w)
    return frac.argmax(0)  # (h, w)


def upsample_labels(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) patch labels -> (H, W) pixel labels by nearest neighbour."""
    return F.interpolate(pred[None, None].float(), size=size, mode="nearest")[0, 0].long()


def confusion(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = true class, columns = predicted."""
    idx = true.reshape(-1) * n_classes + pred.reshape(-1)
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def miou(conf: torch.Tensor) -> tuple[float, float]:
    """(mean IoU over classes present in the ground truth, pixel accuracy) from a confusion matrix."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    iou = tp[present] / union[present]
    return float(iou.mean()), float(tp.sum() / conf.sum())


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int, n_classes: int,
                chunk: int = 4096) -> torch.Tensor:
    """Similarity-weighted kNN vote with cosine similarity; chunked over test rows: (N_test,) labels."""
    a = F.normalize(train_x, dim=1)  # (N, d)
    out = []
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start:start + chunk], dim=1)  # (n, d)
        sim, idx = (q @ a.T).topk(min(k, len(a)), dim=1)  # (n, k)
        votes = torch.zeros(len(q), n_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[idx], sim.clamp_min(0) + 1e-6)  # (n, C)
        out.append(votes.argmax(1))
    return torch.cat(out)


def _dataset(cfg: ProbeConfig):
    from pathlib import Path

    from vlens.data import load_dataset
    from vlens.data.cache import cache_dir
    from vlens.data.shapes import ensure_shapes
    from vlens.errors import DatasetError

    if cfg.data:
        root = Path(cfg.data)
    else:
        root = ensure_shapes(cache_dir() / "shapes-probe", train=cfg.train_images, val=4, test=cfg.test_images,
                             seed=cfg.seed, style="target", size=cfg.size, progress=False)
    ds = load_dataset(root)
    train = [s for s in ds.split("train").samples if s.mask_path][: cfg.train_images]
    test = [s for s in ds.split("test").samples if s.mask_path][: cfg.test_images]
    if not train or not test:
        raise DatasetError(f"{root} has no train/test images with masks; make one with `vlens data make-shapes`")
    return train, test


def cached_hub_models(ids: list[str]) -> tuple[list[str], list[str]]:
    """(ids found in the local HF cache, one-line messages for the others). Never touches the network."""
    from huggingface_hub import snapshot_download

    found, notes = [], []
    for mid in ids:
        try:
            snapshot_download(mid, local_files_only=True)
            found.append(mid)
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            notes.append(f"skipped {mid}: not in the Hugging Face cache (download it on a machine with internet)")
    return found, notes


def _features(spec: str, images, size: int):
    """Per image (h, w, d) descriptors."""
    from vlens.match.features import extract_features

    return [f.descriptors for f in extract_features(images, spec, size=size)]


def probe_model(spec: str, train, test, cfg: ProbeConfig) -> dict:
    """Fit both probes for one backbone; returns mIoU / pixel accuracy of each and the descriptor size."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vlens.data.shapes import CLASSES, load_mask
    from vlens.images import load_image

    n_classes = len(CLASSES)
    t0 = time.time()

    def masks(samples):
        out = []
        for s in samples:
            m = Image.fromarray(load_mask(s.mask_path).astype(np.uint8)).resize((cfg.size, cfg.size), Image.NEAREST)
            out.append(torch.from_numpy(np.asarray(m).astype(np.int64)))
        return out

    tr_img = [load_image(s.image_path) for s in train]
    te_img = [load_image(s.image_path) for s in test]
    tr_f, te_f = _features(spec, tr_img, cfg.size), _features(spec, te_img, cfg.size)
    tr_m, te_m = masks(train), masks(test)
    x = torch.cat([f.reshape(-1, f.shape[-1]) for f in tr_f])  # (N, d)
    y = torch.cat([patch_labels(m, f.shape[:2], n_classes).reshape(-1) for m, f in zip(tr_m, tr_f)])  # (N,)
    rng = np.random.default_rng(cfg.seed)
    if len(x) > cfg.max_train_patches:
        keep = torch.from_numpy(np.sort(rng.choice(len(x), cfg.max_train_patches, replace=False)))
        x, y = x[keep], y[keep]
    scaler = StandardScaler().fit(x.numpy())
    if len(torch.unique(y)) < 2:  # one class in the training patches: the linear probe can only predict it
        from sklearn.dummy import DummyClassifier

        clf = DummyClassifier(strategy="most_frequent").fit(x.numpy(), y.numpy())
    else:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a probe, not a tuned classifier: a capped lbfgs is enough
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(max_iter=100, C=1.0).fit(scaler.transform(x.numpy()), y.numpy())
    conf_lin = torch.zeros(n_classes, n_classes, dtype=torch.long)
    conf_knn = torch.zeros_like(conf_lin)
    for f, m in zip(te_f, te_m):
        flat = f.reshape(-1, f.shape[-1])  # (h*w, d)
        lin = torch.from_numpy(clf.predict(scaler.transform(flat.numpy()))).reshape(f.shape[:2])
        knn = knn_predict(x, y, flat, cfg.k, n_classes).reshape(f.shape[:2])
        conf_lin += confusion(upsample_labels(lin, m.shape), m, n_classes)
        conf_knn += confusion(upsample_labels(knn, m.shape), m, n_classes)
    lin_miou, lin_acc = miou(conf_lin)
    knn_miou, knn_acc = miou(conf_knn)
    return {"model": spec, "linear_miou": lin_miou, "linear_pixel_acc": lin_acc, "knn_miou": knn_miou,
            "knn_pixel_acc": knn_acc, "dim": int(x.shape[1]), "grid": list(tr_f[0].shape[:2]),
            "seconds": round(time.time() - t0, 2)}


def run_probe(cfg: ProbeConfig, log=print) -> dict:
    """Probe every model in ``cfg.models`` plus the cached hub models; returns rows and skip notes."""
    train, test = _dataset(cfg)
    hub, notes = cached_hub_models(cfg.hub)
    for n in notes:
        log(n)
    rows = []
    for spec in [*cfg.models, *hub]:
        log(f"probing {spec} ...")
        rows.append(probe_model(spec, train, test, cfg))
    return {"rows": rows, "notes": notes, "train_images": len(train), "test_images": len(test), "size": cfg.size,
            "k": cfg.k}


def format_table(res: dict) -> str:
    from vlens.tables import markdown_table

    rows = [[r["model"], 100 * r["linear_miou"], 100 * r["knn_miou"], 100 * r["linear_pixel_acc"], r["dim"],
             f"{r['grid'][0]}x{r['grid'][1]}"] for r in res["rows"]]
    lines = [markdown_table(["backbone", "linear mIoU", "kNN mIoU", "linear pixel acc", "dim", "grid"], rows,
                            align="lrrrrl").rstrip("\n")]
    lines.append(f"\nshapes test split: {res['test_images']} images at {res['size']} px, probes fitted on "
                 f"{res['train_images']} train images; mIoU in %, pixel level.")
    return "\n".join(lines)
