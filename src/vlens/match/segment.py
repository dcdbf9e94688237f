"""Semantic segmentation by label transfer, and unsupervised part discovery with k-means.

Label transfer: every patch of the target looks up its ``k`` most similar patches (cosine similarity of dense
features) among all patches of the annotated reference images and takes a vote weighted by
``exp(similarity / temperature)`` over their *label distributions* (the fraction of each class inside the
reference patch, from the mask). The (h, w, C) class probabilities are upsampled bilinearly to the target's
pixels and the arg-max is the segmentation.

Behaviour on awkward input (tested):
- a reference mask whose size differs from its image: :class:`~vlens.errors.DatasetError` naming both sizes;
- classes that appear in the target's ground truth but in no reference cannot be predicted: the result lists
  them in ``notes`` and their IoU counts as 0 in the mIoU;
- mask values >= ``n_classes``: DatasetError (say ``--classes N``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlens.errors import ConfigError, DatasetError


@dataclass
class SegmentConfig:
    """Label-transfer settings."""

    k: int = 10  # neighbours that vote; more = smoother, fewer = sharper but noisier
    temperature: float = 0.07  # softness of the vote weights exp(sim / T) (DINO's value)
    size: int = 224  # longer side of the model input
    layer: int = -1
    facet: str = "token"
    n_classes: int | None = None  # default: 1 + the largest label in the reference masks
    stride: int | None = None  # overlapping patches every ``stride`` input px (None: the patch size)


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) int64 class per target pixel
    probs: torch.Tensor  # (h, w, C) class probabilities per patch
    notes: list[str] = field(default_factory=list)


def _check_mask(mask: np.ndarray, image: Image.Image, name: str = "mask") -> np.ndarray:
    if mask.ndim != 2:
        raise DatasetError(f"{name} must be a single-channel class-id image (H, W); got shape {mask.shape}")
    if (mask.shape[1], mask.shape[0]) != image.size:
        raise DatasetError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{image.size[0]}x{image.size[1]}; a mask must have exactly its image's size")
    if mask.min() < 0:
        raise DatasetError(f"{name} has negative labels; class ids must be 0..C-1")
    return mask


def label_distribution(mask: np.ndarray | torch.Tensor, grid: tuple[int, int], n_classes: int) -> torch.Tensor:
    """Fraction of each class inside each patch: (H, W) class ids -> (h*w, C), rows sum to 1."""
    m = torch.as_tensor(np.asarray(mask)).long()
    onehot = F.one_hot(m, n_classes).permute(2, 0, 1).float()[None]  # (1, C, H, W)
    frac = F.adaptive_avg_pool2d(onehot, grid)[0]  # (C, h, w): area average over each patch's pixels
    return frac.permute(1, 2, 0).reshape(-1, n_classes)  # (h*w, C)


def patch_label_distribution(mask: np.ndarray | torch.Tensor, features, n_classes: int) -> torch.Tensor:
    """:func:`label_distribution` on the grid of ``features`` (a DenseFeatures): without overlap the same; with
    overlapping patches (a stride) the class fractions of each patch's own ``p x p`` input pixels, which overlap
    like the patches: the mask's one-hot resized (area) to the model input, averaged over ``p x p`` windows every
    ``step`` px: (h*w, C)."""
    if not features.stride:
        return label_distribution(mask, features.grid, n_classes)
    m = torch.as_tensor(np.asarray(mask)).long()
    onehot = F.one_hot(m, n_classes).permute(2, 0, 1).float()[None]  # (1, C, H, W)
    w_in, h_in = features.input_size
    at_input = F.adaptive_avg_pool2d(onehot, (h_in, w_in))  # (1, C, H_in, W_in)
    frac = F.avg_pool2d(at_input, features.patch_size, features.step)[0]  # (C, h, w)
    return frac.permute(1, 2, 0).reshape(-1, n_classes)  # (h*w, C)


def knn_vote(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int, temperature: float,
             chunk: int = 4096) -> torch.Tensor:
    """Similarity-weighted vote: query (n, d), keys (N, d), values (N, C) -> (n, C) probabilities.

    Cosine similarity; the k nearest keys vote with weight exp(sim / temperature). Chunked over queries, so
    memory is chunk x N."""
    if k < 1 or temperature <= 0:
        raise ConfigError("label transfer needs k >= 1 and temperature > 0")
    keys = F.normalize(keys, dim=1)  # (N, d); a no-op for References.keys
    out = []
    for s in range(0, len(query), chunk):
        q = F.normalize(query[s:s + chunk], dim=1)  # (n, d)
        sim, idx = (q @ keys.T).topk(min(k, len(keys)), dim=1)  # (n, k)
        w = torch.softmax(sim / temperature, dim=1)  # (n, k), = exp(sim/T) normalised
        out.append((w[..., None] * values[idx]).sum(1))  # (n, k, C) -> (n, C)
    return torch.cat(out)


def upsample_probs(probs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) patch probabilities -> (H, W) labels at ``size`` = (W, H), bilinear on the probabilities."""
    p = probs.permute(2, 0, 1)[None]  # (1, C, h, w)
    up = F.interpolate(p, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]  # (C, H, W)
    return up.argmax(0).numpy().astype(np.int64)


@dataclass
class References:
    """Annotated reference patches, prepared once: unit-norm features and per-patch label distributions."""

    keys: torch.Tensor  # (N, d) L2-normalised patch features of all references
    values: torch.Tensor  # (N, C) class fractions of each reference patch
    classes: set[int]  # labels that occur in the reference masks
    n_classes: int


def build_references(refs: list[tuple[Image.Image, np.ndarray]], model=None, config: SegmentConfig | None = None,
                     ref_features=None) -> References:
    """Prepare ``refs`` = [(image, (H, W) class-id mask), ...] for label transfer (checks every mask)."""
    from vlens.images import to_rgb
    from vlens.match.features import extract_features

    cfg = config or SegmentConfig()
    if not refs:
        raise ConfigError("label transfer needs at least one reference image with a mask")
    masks = [_check_mask(np.asarray(m), im, f"reference mask {i + 1}") for i, (im, m) in enumerate(refs)]
    top = max(int(m.max()) for m in masks)
    n_classes = cfg.n_classes or top + 1
    if top >= n_classes:
        raise DatasetError(f"a reference mask has label {top} but only {n_classes} classes were declared; "
                           "raise --classes")
    if ref_features is None:
        ref_features = extract_features([to_rgb(im) for im, _ in refs], model, layer=cfg.layer, facet=cfg.facet,
                                        size=cfg.size, stride=cfg.stride)
    keys = F.normalize(torch.cat([f.flat for f in ref_features]), dim=1)  # (N, d)
    values = torch.cat([patch_label_distribution(m, f, n_classes) for m, f in zip(masks, ref_features)])  # (N, C)
    classes = set(np.unique(np.concatenate([np.unique(m) for m in masks])).tolist())
    return References(keys, values, classes, n_classes)


def segment(target: Image.Image, refs, model=None, config: SegmentConfig | None = None,
            target_mask: np.ndarray | None = None, target_features=None) -> Segmentation:
    """Segment ``target`` by label transfer from ``refs``: [(image, (H, W) class-id mask), ...] or a prepared
    :class:`References` (reuse it for many targets).

    ``target_mask`` (optional ground truth) is only used to note classes no reference contains.
    ``target_features``: precomputed :class:`DenseFeatures` of the target.
    """
    from vlens.images import to_rgb
    from vlens.match.features import extract_features

    cfg = config or SegmentConfig()
    bank = refs if isinstance(refs, References) else build_references(refs, model, cfg)
    if target_features is None:
        (target_features,) = extract_features([to_rgb(target)], model, layer=cfg.layer, facet=cfg.facet,
                                              size=cfg.size, stride=cfg.stride)
    probs = knn_vote(target_features.flat, bank.keys, bank.values, cfg.k, cfg.temperature)  # (h*w, C)
    probs = probs.reshape(*target_features.grid, bank.n_classes)  # (h, w, C)
    notes = []
    if target_mask is not None:
        if (target_mask.shape[1], target_mask.shape[0]) != target.size:
            raise DatasetError(f"the target mask is {target_mask.shape[1]}x{target_mask.shape[0]} but the target "
                               f"image is {target.size[0]}x{target.size[1]}")
        missing = sorted(set(np.unique(target_mask).tolist()) - bank.classes)
        if missing:
            notes.append(f"classes {missing} are in the target but in no reference mask: they cannot be "
                         "predicted (IoU 0)")
    return Segmentation(upsample_probs(probs, target.size), probs, notes)


# -------------------------------------------------------------------------------------------- metrics


def confusion(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) pixel counts, rows = true class, columns = predicted."""
    idx = true.reshape(-1).astype(np.int64) * n_classes + pred.reshape(-1).astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(per-class IoU with NaN for classes absent from both truth and prediction, mIoU over the others,
    pixel accuracy)."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return iou, float(np.nanmean(iou)), float(tp.sum() / max(conf.sum(), 1))


# -------------------------------------------------------------------------------------- part discovery


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with k-means++ seeding on rows of x (n, d): (labels (n,), centres (k, d)). Deterministic."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= {n} (the number of patches), got k={k}")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=g)]  # (1, d)
    for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
        d2 = torch.cdist(x, centres).min(1).values ** 2  # (n,)
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=g)]])
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(1)  # (n,)
        if _ > 0 and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, x)  # (k, d)
        counts = torch.bincount(labels, minlength=k).clamp_min(1)[:, None]
        centres = torch.where(torch.bincount(labels, minlength=k)[:, None] > 0, sums / counts, centres)
    return labels, centres


def discover_parts(images: list[Image.Image], model=None, k: int = 5, size: int = 224, pca: int | None = 10,
                   layer: int = -1, facet: str = "token", seed: int = 0, stride: int | None = None):
    """k-means on the (jointly PCA-reduced, L2-normalised) features of one or more images (``stride``:
    overlapping patches, :mod:`vlens.match.strided`).

    Returns (list of (h, w) part labels, list of DenseFeatures): a part id means the same thing in every image,
    because the clustering is joint."""
    from vlens.match.features import extract_features
    from vlens.match.pca import joint_pca

    feats = extract_features(images, model, layer=layer, facet=facet, size=size, stride=stride)
    reduced = joint_pca(*[f.flat for f in feats], k=pca, normalize=True)
    labels, _ = kmeans(torch.cat(reduced), k, seed=seed)
    out, start = [], 0
    for f in feats:
        n = f.grid[0] * f.grid[1]
        out.append(labels[start:start + n].reshape(f.grid).numpy())
        start += n
    return out, feats


PART_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                         [0, 128, 128], [220, 190, 255], [170, 110, 40], [128, 0, 0], [128, 128, 0],
                         [0, 0, 128]], dtype=np.uint8)


# ------------------------------------------------------------------------------------------- benchmark


@dataclass
class SegmentBenchResult:
    model: str
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    refs: int
    targets: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    examples: list[tuple] = field(default_factory=list, repr=False)  # (image, true mask, predicted labels)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "miou", "pixel_accuracy", "per_class_iou", "refs",
                                              "targets", "seconds", "notes")}


def default_shapes_dir():
    from vlens.data.cache import cache_dir
    from vlens.data.shapes import ensure_shapes

    return ensure_shapes(cache_dir() / "shapes-target-small", train=200, val=20, test=20, style="target")


def _split_samples(data, refs: int, targets: int):
    from vlens.data import load_dataset

    ds = load_dataset(data if data is not None else default_shapes_dir())
    ref_s = [s for s in ds.split("train").samples if s.mask_path][:refs]
    tgt_s = [s for s in ds.split("test").samples if s.mask_path][:targets]
    if not ref_s or not tgt_s:
        raise DatasetError(f"{data}: the segmentation benchmark needs masks in the train and test splits "
                           "(make a dataset with `vlens data make-shapes`)")
    return ref_s, tgt_s


def run_segment_benchmark(model, data=None, *, refs: int = 20, targets: int = 40,
                          config: SegmentConfig | None = None, keep_examples: int = 4) -> SegmentBenchResult:
    """Label transfer from ``refs`` train images to ``targets`` test images of a shapes-style dataset (masks
    with class ids); mIoU over the classes present in truth or prediction, and pixel accuracy.

    ``model``: backbone spec, ``pixels``, ``random:SPEC``, or ``majority`` (every pixel gets the most common
    reference class: the floor any method must beat)."""
    import time

    from vlens.data.shapes import CLASSES, load_mask
    from vlens.images import load_image
    from vlens.match.features import extract_features, load_backbone

    cfg = config or SegmentConfig()
    t0 = time.time()
    ref_s, tgt_s = _split_samples(data, refs, targets)
    ref_imgs = [load_image(s.image_path) for s in ref_s]
    ref_masks = [load_mask(s.mask_path) for s in ref_s]
    n_classes = cfg.n_classes or max(len(CLASSES), int(max(m.max() for m in ref_masks)) + 1)
    cfg = SegmentConfig(**{**cfg.__dict__, "n_classes": n_classes})
    tgt_imgs = [load_image(s.image_path) for s in tgt_s]
    tgt_masks = [load_mask(s.mask_path) for s in tgt_s]
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    notes: set[str] = set()
    examples = []
    if model == "majority":
        counts = np.bincount(np.concatenate([m.reshape(-1) for m in ref_masks]), minlength=n_classes)
        preds = [np.full_like(m, int(counts.argmax())) for m in tgt_masks]
        spec = "majority"
    else:
        bb = load_backbone(model)
        spec = bb.spec
        ref_f = extract_features(ref_imgs, bb, layer=cfg.layer, facet=cfg.facet, size=cfg.size, stride=cfg.stride)
        tgt_f = extract_features(tgt_imgs, bb, layer=cfg.layer, facet=cfg.facet, size=cfg.size, stride=cfg.stride)
        bank = build_references(list(zip(ref_imgs, ref_masks)), bb, cfg, ref_features=ref_f)
        preds = []
        for img, mask, f in zip(tgt_imgs, tgt_masks, tgt_f):
            seg = segment(img, bank, bb, cfg, target_mask=mask, target_features=f)
            notes.update(seg.notes)
            preds.append(seg.labels)
    for img, mask, pred in zip(tgt_imgs, tgt_masks, preds):
        conf += confusion(pred, mask, n_classes)
        if len(examples) < keep_examples:
            examples.append((img, mask, pred))
    iou, miou, acc = iou_from_confusion(conf)
    names = [CLASSES[i] if i < len(CLASSES) else str(i) for i in range(n_classes)]
    per_class = {n: (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(names, iou)}
    return SegmentBenchResult(spec, miou, acc, per_class, len(ref_s), len(tgt_s), time.time() - t0,
                              sorted(notes), examples)


def segment_examples_figure(result: SegmentBenchResult, path):
    """Rows of (image, true mask, predicted mask) for the kept examples."""
    from vlens.data.shapes import MASK_PALETTE
    from vlens.plots import image_grid

    def colour(m):
        im = Image.fromarray(m.astype(np.uint8), "P")
        im.putpalette(MASK_PALETTE)
        return im.convert("RGB")

    cells, titles = [], []
    for img, true, pred in result.examples:
        cells += [img, colour(true), colour(pred)]
        titles += ["target", "true mask", f"label transfer ({result.model})"]
    return image_grid(cells, titles, path, cols=3, cell=2.0)
