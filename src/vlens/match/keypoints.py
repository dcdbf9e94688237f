"""Semantic keypoint transfer on the SPair-71k layout, scored by PCK@0.1 of the target's bounding box.

Layout (as distributed by the SPair-71k authors; point ``--data`` at the folder that holds these)::

    SPair-71k/
      JPEGImages/<category>/<image>.jpg
      PairAnnotation/{trn,val,test}/<pair id>-<source image>-<target image>:<category>.json
      Layout/large/{trn,val,test}.txt        (optional: the pair names of each split, one per line)

A pair annotation holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` and ``trg_kps`` (lists of
``[x, y]``, the same keypoints in the same order) and ``trg_bndbox`` (``[x1, y1, x2, y2]``); other fields are
ignored. A keypoint at ``[-1, -1]`` on either side is invisible there and not scored (a pair with none
visible in both images is left out and listed). Keypoints are pixel indices (centres at integers, as in the
annotation tools); vlens adds 0.5 to put them in its own convention (centres at +0.5) — at a threshold of
0.1 x the box size the difference is immaterial.

Transfer: both images are resized to a longer side of ``size`` pixels; each source keypoint takes the descriptor
of the patch that contains it, its nearest target patch (over the whole target image, no box used) gives the
prediction, the centre of that patch in target pixels. A keypoint is correct when the prediction lies within
``alpha * max(box width, box height)`` of the true target keypoint (alpha = 0.1). PCK is reported per keypoint
(all keypoints pooled, as DINO-feature papers report on SPair-71k) and per pair (the mean of each pair's share),
overall and per category.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlens.errors import DatasetError

SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}
ALPHA = 0.1
INVISIBLE = -1.0
"""A keypoint at (-1, -1) is not visible in that image (the SPair / PF-PASCAL mark): its pair is not scored."""


class NoVisibleKeypoint(DatasetError):
    """A pair annotation whose keypoints are all marked invisible: left out of the benchmark and listed."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"SPair annotation {path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class KeypointPair:
    name: str
    category: str
    source: Path
    target: Path
    src_kps: np.ndarray  # (n, 2) vlens pixel coordinates in the source
    trg_kps: np.ndarray  # (n, 2) the same keypoints in the target
    trg_bbox: np.ndarray  # (4,) x1, y1, x2, y2 in the target

    @property
    def threshold_unit(self) -> float:
        """max(box width, box height): PCK thresholds are fractions of it."""
        return float(max(self.trg_bbox[2] - self.trg_bbox[0], self.trg_bbox[3] - self.trg_bbox[1]))


def _read_pair(path: Path, images: Path) -> KeypointPair:
    """One pair annotation, every field used checked (types, finite numbers, shapes, points inside the images)
    before any image is decoded; a one-line DatasetError names the file and the field otherwise."""
    from vlens import fields
    from vlens.images import image_size

    try:
        a = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(f"SPair annotation {path}: cannot read it ({str(exc) or type(exc).__name__})") from None
    if not isinstance(a, dict):
        raise DatasetError(f"SPair annotation {path}: expected a JSON object, got {type(a).__name__}")
    missing = [k for k in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox") if k not in a]
    if missing:
        raise DatasetError(f"SPair annotation {path}: missing {', '.join(missing)}")
    where = f"SPair annotation {path}: field"
    cat = fields.relative_file(a["category"], f"{where} 'category'")
    names = {k: fields.relative_file(a[k], f"{where} '{k}'") for k in ("src_imname", "trg_imname")}
    src = fields.matrix(a["src_kps"], f"{where} 'src_kps' (a list of [x, y])", cols=2, min_rows=1)
    trg = fields.matrix(a["trg_kps"], f"{where} 'trg_kps' (a list of [x, y])", cols=2, min_rows=1)
    if len(src) != len(trg):
        raise DatasetError(f"SPair annotation {path}: {len(src)} source but {len(trg)} target keypoints")
    seen = ~((src == INVISIBLE).all(axis=1) | (trg == INVISIBLE).all(axis=1))  # (n,) visible in both images
    if not seen.any():
        raise NoVisibleKeypoint(path, "no keypoint is visible in both images (all marked -1, -1)")
    src, trg = src[seen] + 0.5, trg[seen] + 0.5
    box = fields.vector(a["trg_bndbox"], f"{where} 'trg_bndbox' ([x1, y1, x2, y2])", size=4)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetError(f"SPair annotation {path}: trg_bndbox must be [x1, y1, x2, y2] with x2 > x1, y2 > y1")
    s_img, t_img = images / cat / names["src_imname"], images / cat / names["trg_imname"]
    for p in (s_img, t_img):
        if not p.is_file():
            raise DatasetError(f"SPair annotation {path.name} names {p}, which does not exist")
    s_size, t_size = image_size(s_img), image_size(t_img)
    fields.inside(src, s_size, f"{where} 'src_kps' (of {s_img.name})")
    fields.inside(trg, t_size, f"{where} 'trg_kps' (of {t_img.name})")
    fields.inside(box.reshape(2, 2), t_size, f"{where} 'trg_bndbox' (of {t_img.name})")
    return KeypointPair(path.stem, cat, s_img, t_img, src, trg, box)


def load_spair(root: str | Path, split: str = "test", categories: list[str] | None = None,
               limit: int = 0, skips=None) -> list[KeypointPair]:
    """Pairs of one split of an SPair-71k folder (``Layout/large/<split>.txt`` order when present, else sorted
    file names); ``categories`` keeps only those; ``limit`` > 0 keeps the first ``limit`` pairs per category.
    A pair whose image cannot be read is left out and recorded in ``skips`` (a :class:`vlens.images.SkipLog`);
    a malformed annotation stops the load with one line naming the file and the field."""
    from vlens.images import ImageLoadError, SkipLog

    skips = SkipLog() if skips is None else skips
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f"unknown SPair split '{split}'; one of trn (train), val, test")
    ann = root / "PairAnnotation" / SPLITS[split]
    if not ann.is_dir():
        raise DatasetError(f"{root} is not an SPair-71k folder: no PairAnnotation/{SPLITS[split]}/ (expected "
                           "JPEGImages/, PairAnnotation/{trn,val,test}/ as distributed)")
    layout = root / "Layout" / "large" / f"{SPLITS[split]}.txt"
    if layout.is_file():
        names = [ln.strip() for ln in layout.read_text().splitlines() if ln.strip()]
        files = [ann / f"{n}.json" for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise DatasetError(f"{layout} lists {len(absent)} pair(s) with no annotation in {ann}, e.g. {absent[0]}")
    else:
        files = sorted(ann.glob("*.json"))
    if categories:
        files = [f for f in files if f.stem.rsplit(":", 1)[-1] in categories]
    per_cat: dict[str, int] = {}
    pairs = []
    for f in files:
        cat = f.stem.rsplit(":", 1)[-1]
        if limit and per_cat.get(cat, 0) >= limit:
            continue
        try:
            pairs.append(_read_pair(f, root / "JPEGImages"))
        except (ImageLoadError, NoVisibleKeypoint) as err:
            skips.add(err)
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
    if not pairs:
        raise DatasetError(f"no SPair pairs in {ann}" + (f" for {', '.join(categories)}" if categories else "")
                           + (f" with readable images ({skips.summary(limit=3)})" if len(skips) else ""))
    return pairs


# ------------------------------------------------------------------------------------------------ metrics


def pck_correct(pred: np.ndarray, truth: np.ndarray, unit: float, alpha: float = ALPHA) -> np.ndarray:
    """(n,) bool: prediction within ``alpha * unit`` of the truth."""
    return np.linalg.norm(np.asarray(pred) - np.asarray(truth), axis=1) <= alpha * unit


def patch_index(xy: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Row-major index of the patch containing each (x, y) of an image of ``image_size`` (W, H) cut into
    ``grid`` (h, w) patches: (n,)."""
    gh, gw = grid
    w, h = image_size
    col = np.clip((np.asarray(xy)[:, 0] / w * gw).astype(int), 0, gw - 1)
    row = np.clip((np.asarray(xy)[:, 1] / h * gh).astype(int), 0, gh - 1)
    return row * gw + col


def transfer(fs, ft, src_kps: np.ndarray, pca: int | None = None, refine: str = "none") -> np.ndarray:
    """Predicted target locations (target pixels) of source keypoints: the centre of the nearest target patch
    of the patch that contains each keypoint (``refine``: moved off the centre, :mod:`vlens.match.refine`).
    ``fs`` / ``ft``: :class:`DenseFeatures`. (n, 2)"""
    from vlens.match.matching import nearest_neighbors
    from vlens.match.pca import joint_pca
    from vlens.match.refine import grid_origin, grid_step, refine_points

    a, b = joint_pca(fs.flat, ft.flat, k=pca, normalize=True)  # (hs*ws, d), (ht*wt, d)
    if fs.stride:  # overlapping patches: the patch whose centre is nearest
        idx = fs.index_at(src_kps)
    else:
        idx = torch.as_tensor(patch_index(src_kps, fs.grid, fs.image_size))
    nn, _ = nearest_neighbors(a[idx], b)  # (n,)
    if refine != "none":
        return refine_points(a[idx], b, nn, ft.grid, grid_step(ft), refine, origin=grid_origin(ft)).double().numpy()
    return ft.centers[nn].double().numpy()


@dataclass
class KeypointResult:
    descriptor: str
    pairs: int
    keypoints: int
    pck_point: float  # pooled over keypoints
    pck_pair: float  # mean over pairs
    per_category: dict  # category -> {"pairs", "keypoints", "pck_point"}
    seconds: float = 0.0
    per_pair: list = field(default_factory=list, repr=False)  # [(name, correct, total)]
    skipped: list = field(default_factory=list)  # (path, reason) of unreadable images; their pairs are left out

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("per_pair", "skipped")}
        return {**d, "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def run_keypoint_benchmark(spec: str, pairs: list[KeypointPair], size: int = 224, pca: int | None = None,
                           layer: int = -1, facet: str = "token", alpha: float = ALPHA,
                           refine: str = "none", stride: int | None = None) -> KeypointResult:
    """PCK@alpha (of the target box) of keypoint transfer with one descriptor spec over ``pairs``."""
    from vlens.images import ImageLoadError, SkipLog, load_image
    from vlens.match.features import extract_features, load_backbone

    t0 = time.time()
    bb = load_backbone(spec)
    per_pair, per_cat, skips = [], {}, SkipLog()
    for p in pairs:
        try:
            imgs = [load_image(p.source), load_image(p.target)]
        except ImageLoadError as err:  # readable header, broken data (a truncated download): the pair is left out
            skips.add(err)
            continue
        fs, ft = extract_features(imgs, bb, layer=layer, facet=facet, size=size, stride=stride)
        ok = pck_correct(transfer(fs, ft, p.src_kps, pca, refine), p.trg_kps, p.threshold_unit, alpha)
        per_pair.append((p.name, int(ok.sum()), len(ok)))
        c = per_cat.setdefault(p.category, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + int(ok.sum()), c[2] + len(ok)
    if not per_pair:
        raise DatasetError("none of the keypoint pairs has readable images: " + skips.summary(limit=3))
    correct, total = sum(x[1] for x in per_pair), sum(x[2] for x in per_pair)
    cats = {k: {"pairs": v[0], "keypoints": v[2], "pck_point": v[1] / v[2]} for k, v in sorted(per_cat.items())}
    return KeypointResult(bb.spec, len(per_pair), total, correct / total,
                          float(np.mean([x[1] / x[2] for x in per_pair])), cats, round(time.time() - t0, 2), per_pair,
                          skips.skipped)
