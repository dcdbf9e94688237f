"""Real image pairs with ground truth: loaders (HPatches layout, a JSON manifest, the OpenCV sample pairs), pure
metric functions (errors in, MMA curve and PCK out) and the ``vlens bench pairs`` runner.

Ground truth is a homography (planar scenes, viewpoint or illumination change) or a disparity map (rectified
stereo: the left pixel ``(x, y)`` shows the same point as the right pixel ``(x - d, y)``).

Coordinates. vlens puts pixel centres at +0.5 (see :mod:`vlens.match.features`); OpenCV, the Oxford / HPatches
homography files and Middlebury disparities put them at integer coordinates. A homography ``H`` written in that
convention becomes ``T(+0.5) H T(-0.5)`` in vlens coordinates; a disparity is a horizontal offset, the same in
both (:mod:`vlens.match.geometry` holds these conventions and the file readers). Working resolution: both images
are resized so that their longer side is ``size`` pixels (default 448) before features are extracted; in vlens
coordinates a resize is an exact scaling, so ``H_work = S_t H S_s^-1``.
**Every error is in target pixels at this working resolution.**

For every source patch centre: its match is the centre of its nearest target patch; its true location is the
ground truth applied to the centre; error = the distance between them. Centres whose truth is unknown (disparity
0) or falls outside the target are left out and counted. Metrics: the mean matching accuracy curve (fraction of
matches within t px, t = 1..10, as in HPatches papers) and PCK at a few thresholds, over all matches and over
the top 10% / 50% by each score (feature, cycle); for homography pairs also the homography estimated from the
dense matches with OpenCV's RANSAC and its mean corner error. The sparse SIFT pipeline (SIFT keypoints, ratio
test, RANSAC) runs on the same working images as the practitioner's reference.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlens.errors import DatasetError
from vlens.match.geometry import (
    MMA_THRESHOLDS,
    PCK_THRESHOLDS,
    apply_homography,
    check_homography,
    homography_from_opencv,
    read_homography,
    working_image,
)

TOP_FRACTIONS = (0.1, 0.5)
SCORES = ("feature", "cycle")
HPATCHES_IMAGES = 6


# ------------------------------------------------------------------------------------------ ground truth


@dataclass(frozen=True)
class Pair:
    """Source and target image with ground truth: a homography (vlens coordinates, original pixels) or the
    source's disparity map (original pixels, nan = unknown)."""

    name: str
    source: Path
    target: Path
    homography: np.ndarray | None = None  # (3, 3) source -> target, vlens coordinates
    disparity: np.ndarray | None = None  # (H, W) float, nan where unknown
    group: str = ""  # the set it belongs to (tables average over a set); "" = the pair alone

    @property
    def kind(self) -> str:
        return "homography" if self.homography is not None else "disparity"

    def truth(self, xy: np.ndarray) -> np.ndarray:
        """True target location (original pixels) of (n, 2) source points (original pixels); nan = unknown."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.homography is not None:
            return apply_homography(self.homography, xy)
        d = self.disparity
        col = np.clip(np.floor(xy[:, 0]).astype(int), 0, d.shape[1] - 1)  # the pixel that contains the point
        row = np.clip(np.floor(xy[:, 1]).astype(int), 0, d.shape[0] - 1)
        disp = d[row, col]
        return np.stack([xy[:, 0] - disp, xy[:, 1] + 0 * disp], axis=1)  # both nan where unknown


DISPARITY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "F")
_INTEGER_RANGE = {"L": 255, "I": 2**31 - 1, "I;16": 65535, "I;16B": 65535, "I;16L": 65535}
"""The values an integer disparity image can hold (from 0): an unknown mark outside them matches nothing."""


def read_disparity(path: Path, scale: float = 1.0, unknown: float | None = 0.0) -> np.ndarray:
    """A disparity image (PNG/PFM-free formats PIL reads) -> float disparities in pixels (value / scale), nan where
    the value equals ``unknown``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"disparity file {path}: no such file")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise DatasetError(f"disparity file {path}: the scale must be a positive finite number, got {scale!r}")
    if unknown is not None and (isinstance(unknown, bool) or not isinstance(unknown, int | float)
                                or not math.isfinite(unknown)):
        raise DatasetError(f"disparity file {path}: the unknown value must be a finite number or None, got "
                           f"{unknown!r}")
    try:
        with Image.open(path) as im:
            if im.mode not in DISPARITY_MODES:
                raise DatasetError(f"disparity file {path}: a disparity map has one channel (8/16-bit or float "
                                   f"grey), this is a {im.mode} image; save the disparities as a grey PNG")
            arr, mode = np.asarray(im).astype(np.float64), im.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"disparity file {path}: cannot read it ({exc})") from None
    if arr.ndim != 2:
        raise DatasetError(f"disparity file {path}: expected a single-channel image, got shape {arr.shape}")
    top = _INTEGER_RANGE.get(mode)
    if unknown is not None and top is not None and not (float(unknown).is_integer() and 0 <= unknown <= top):
        raise DatasetError(f"disparity file {path}: holds whole numbers 0 to {top} ({mode} image), so the unknown "
                           f"value {unknown!r} never occurs and unknown pixels would count as known; give the value "
                           "that marks them (0 in Middlebury maps, the default)")
    if not np.isfinite(arr).all():
        raise DatasetError(f"disparity file {path}: holds NaN or infinite values; mark unknown pixels with one "
                           "value (disparity_unknown) instead")
    out = arr / scale
    if unknown is not None:
        out[arr == unknown] = np.nan
    return out


def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise DatasetError(f"image {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise DatasetError(f"image {path}: cannot read it ({exc})") from None


def make_pair(name: str, source: Path, target: Path, *, homography=None, disparity=None,
              convention: str = "opencv", group: str = "") -> Pair:
    """Check the files and the ground truth and build a :class:`Pair`. ``convention`` of the homography:
    ``opencv`` (pixel centres at integers: OpenCV, Oxford, HPatches) or ``vlens`` (centres at +0.5)."""
    if (homography is None) == (disparity is None):
        raise DatasetError(f"pair '{name}': give exactly one of a homography or a disparity map")
    src_size = _image_size(Path(source))
    _image_size(Path(target))
    if homography is not None:
        if convention not in ("opencv", "vlens"):
            raise DatasetError(f"pair '{name}': convention must be 'opencv' or 'vlens', not '{convention}'")
        h = check_homography(homography, f"pair '{name}'")
        h = homography_from_opencv(h) if convention == "opencv" else h
        return Pair(name, Path(source), Path(target), homography=h, group=group)
    d = np.asarray(disparity, dtype=np.float64)
    if d.shape != (src_size[1], src_size[0]):
        raise DatasetError(f"pair '{name}': the disparity map is {d.shape[1]}x{d.shape[0]} but the source image "
                           f"is {src_size[0]}x{src_size[1]}; they must be the same size")
    return Pair(name, Path(source), Path(target), disparity=d, group=group)


# ------------------------------------------------------------------------------------------------ loaders


def _hpatches_sequence(seq: Path) -> list[Pair]:
    ext = next((e for e in (".ppm", ".png", ".jpg") if (seq / f"1{e}").is_file()), None)
    if ext is None:
        raise DatasetError(f"HPatches sequence {seq}: no reference image 1.ppm")
    missing = [f"{k}{ext}" for k in range(2, HPATCHES_IMAGES + 1) if not (seq / f"{k}{ext}").is_file()]
    missing += [f"H_1_{k}" for k in range(2, HPATCHES_IMAGES + 1) if not (seq / f"H_1_{k}").is_file()]
    if missing:
        raise DatasetError(f"HPatches sequence {seq}: missing {', '.join(missing)} (a sequence has 1{ext} ... "
                           f"{HPATCHES_IMAGES}{ext} and H_1_2 ... H_1_{HPATCHES_IMAGES})")
    return [make_pair(f"{seq.name}/1-{k}", seq / f"1{ext}", seq / f"{k}{ext}",
                      homography=read_homography(seq / f"H_1_{k}"),
                      group="hpatches-" + ("illumination" if seq.name.startswith("i_") else "viewpoint"))
            for k in range(2, HPATCHES_IMAGES + 1)]


def load_hpatches(root: str | Path, sequences: list[str] | None = None) -> list[Pair]:
    """The HPatches sequence layout: ``root`` is one sequence folder (``1.ppm`` ... ``6.ppm``, ``H_1_2`` ...
    ``H_1_6``; homographies map image 1 to image k in OpenCV pixel convention) or a folder of them
    (``i_*`` illumination, ``v_*`` viewpoint). ``sequences``: names to keep (default all)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"HPatches folder {root}: no such folder")
    if any((root / f"1{e}").is_file() for e in (".ppm", ".png", ".jpg")):
        return _hpatches_sequence(root)
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if sequences:
        unknown = sorted(set(sequences) - {p.name for p in seqs})
        if unknown:
            raise DatasetError(f"HPatches folder {root}: no sequence {', '.join(unknown)}")
        seqs = [p for p in seqs if p.name in sequences]
    if not seqs:
        raise DatasetError(f"HPatches folder {root}: no sequence folders (expected e.g. v_graffiti/1.ppm)")
    return [p for s in seqs for p in _hpatches_sequence(s)]


def load_manifest(path: str | Path) -> list[Pair]:
    """A JSON manifest of pairs; relative paths are relative to the manifest's folder::

        {"pairs": [
          {"name": "graffiti", "source": "graf1.png", "target": "graf3.png",
           "homography": "H1to3p.xml", "convention": "opencv"},
          {"name": "aloe", "source": "aloeL.jpg", "target": "aloeR.jpg",
           "disparity": "aloeGT.png", "disparity_scale": 1, "disparity_unknown": 0}]}

    ``homography``: a file (9 numbers, or OpenCV XML/YAML) or an inline 3x3 list; ``convention`` ``opencv``
    (default: pixel centres at integers) or ``vlens``. ``disparity``: an image of the source's size whose values
    divided by ``disparity_scale`` (default 1) are disparities in pixels; ``disparity_unknown`` (default 0) marks
    pixels without ground truth: a value the image can hold (a whole number 0-255 in an 8-bit map), never null.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path}: not valid JSON ({exc})") from None
    entries = doc.get("pairs") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"manifest {path}: expected {{\"pairs\": [...]}} with at least one pair")
    base = path.parent
    pairs, names = [], set()
    for i, e in enumerate(entries):
        try:
            pairs.append(_manifest_pair(path, base, i, e))
        except DatasetError as exc:  # a problem in a file the entry names: say which manifest entry named it
            if str(path) in str(exc):
                raise
            raise DatasetError(f"manifest {path}: pair {i + 1}: {exc}") from None
        if pairs[-1].name in names:
            raise DatasetError(f"manifest {path}: two pairs are named '{pairs[-1].name}'; give each its own name")
        names.add(pairs[-1].name)
    return pairs


MANIFEST_FIELDS = ("name", "source", "target", "homography", "convention", "disparity", "disparity_scale",
                   "disparity_unknown")


def _manifest_pair(path: Path, base: Path, i: int, e) -> Pair:
    """Entry ``i`` of a manifest, every field checked before any image is read (one line naming the field)."""
    from vlens import fields

    if not isinstance(e, dict):
        raise DatasetError(f"manifest {path}: pair {i + 1} is {fields._show(e)}, not an object with 'source' and "
                           "'target'")
    e = {k: v for k, v in e.items() if v is not None or k == "disparity_unknown"}  # null = not given (but see below)
    name = fields.text(e["name"], f"manifest {path}: pair {i + 1} field 'name'") if "name" in e else f"pair{i + 1}"
    where = f"manifest {path}: pair '{name}'"
    unknown = sorted(set(e) - set(MANIFEST_FIELDS))
    if unknown:
        raise DatasetError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (known: "
                           f"{', '.join(MANIFEST_FIELDS)})")
    for key in ("source", "target"):
        if key not in e:
            raise DatasetError(f"{where} needs '{key}'")
    src, tgt = (base / fields.relative_file(e[k], f"{where} field '{k}'") for k in ("source", "target"))
    for p in (src, tgt):
        if not p.is_file():
            raise DatasetError(f"{where} names {p}, which does not exist")
    convention = e.get("convention", "opencv")
    if convention not in ("opencv", "vlens"):
        raise DatasetError(f"{where} field 'convention': {fields._show(convention)} is not 'opencv' or 'vlens'")
    if ("homography" in e) == ("disparity" in e):
        raise DatasetError(f"{where}: give exactly one of 'homography' or 'disparity'")
    h = d = None
    if "homography" in e:
        h = e["homography"]
        hw = f"{where} field 'homography'"
        h = read_homography(base / fields.relative_file(h, hw)) if isinstance(h, str) else check_homography(
            fields.matrix(h, hw + " (a file name or 3 rows of 3 numbers)", rows=3, cols=3), hw)
    else:
        scale = fields.number(e.get("disparity_scale", 1.0), f"{where} field 'disparity_scale'", lo=0, lo_open=True)
        if e.get("disparity_unknown", 0) is None:
            raise DatasetError(f"{where} field 'disparity_unknown': null would count every pixel as known, the "
                               "unmeasured ones too; give the value that marks pixels without ground truth (leave "
                               "the field out for 0, the Middlebury mark)")
        unknown_value = fields.number(e.get("disparity_unknown", 0), f"{where} field 'disparity_unknown' (a number)")
        d = read_disparity(base / fields.relative_file(e["disparity"], f"{where} field 'disparity'"), scale,
                           unknown_value)
    return make_pair(name, src, tgt, homography=h, disparity=d, convention=convention)


def opencv_pairs() -> list[Pair]:
    """The two real pairs of the fetched OpenCV samples: graffiti (viewpoint, homography ``H1to3p.xml``) and
    aloe (Middlebury stereo, disparity ``aloeGT.png`` at scale 1 with 0 = unknown)."""
    from vlens.data.opencv_samples import sample_path

    return [
        make_pair("graffiti", sample_path("graf1.png"), sample_path("graf3.png"),
                  homography=read_homography(sample_path("H1to3p.xml")), group="graffiti"),
        make_pair("aloe", sample_path("aloeL.jpg"), sample_path("aloeR.jpg"),
                  disparity=read_disparity(sample_path("aloeGT.png"), 1.0, 0), group="aloe"),
    ]


HELDOUT_WARP_VERSION = 1  # bump when the warps below change: the cached targets are regenerated
HELDOUT_SEED = 0


def synthetic_homography(size: tuple[int, int], rng: np.random.Generator, max_rotation: float = 20.0,
                         scale: tuple[float, float] = (0.8, 1.25), jitter: float = 0.1) -> np.ndarray:
    """A random viewpoint-like homography for a (W, H) image, in OpenCV pixel convention, source -> target: the
    corners rotated about the centre (uniform within +-``max_rotation`` degrees), scaled (log-uniform in
    ``scale``) and each moved by up to ``jitter`` of the image size (uniform)."""
    import cv2

    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    s = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = c + (corners - c) @ rot.T + rng.uniform(-jitter, jitter, (4, 2)) * np.array([w, h])
    return cv2.getPerspectiveTransform(corners.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def heldout_pairs(seed: int = HELDOUT_SEED, names=None) -> list[Pair]:
    """``opencv:heldout``: each held-out photo (:data:`vlens.data.opencv_samples.HELDOUT_PHOTOS`, which no vlens
    backbone was trained on) against itself under a seeded :func:`synthetic_homography` (bilinear warp, black
    outside the photo). The warped targets are written once into the vlens cache (``opencv-heldout-pairs/``);
    the ground truth is the homography itself."""
    import os

    import cv2

    from vlens.data.cache import cache_dir
    from vlens.data.opencv_samples import HELDOUT_PHOTOS, sample_path
    from vlens.images import load_image

    folder = cache_dir() / "opencv-heldout-pairs" / f"v{HELDOUT_WARP_VERSION}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, name in enumerate(names or HELDOUT_PHOTOS):
        src = sample_path(name)
        img = load_image(src)
        h_cv = synthetic_homography(img.size, np.random.default_rng([seed, i]))
        target = folder / f"{Path(name).stem}.png"
        if not target.is_file():
            arr = cv2.warpPerspective(np.asarray(img), h_cv, img.size, flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            tmp = target.with_name(f".{target.stem}.{os.getpid()}.png")
            Image.fromarray(arr).save(tmp)
            os.replace(tmp, target)
        pairs.append(make_pair(f"heldout/{Path(name).stem}", src, target, homography=h_cv,
                               group="opencv:heldout"))
    return pairs


def load_pairs(spec: str | Path) -> list[Pair]:
    """``opencv`` (the fetched OpenCV sample pairs), ``opencv:heldout`` (the held-out photos under seeded
    synthetic homographies, :func:`heldout_pairs`), a manifest ``.json``, or an HPatches folder."""
    if str(spec) == "opencv":
        return opencv_pairs()
    if str(spec) == "opencv:heldout":
        return heldout_pairs()
    p = Path(spec)
    if p.suffix.lower() == ".json" or p.is_file():
        return load_manifest(p)
    return load_hpatches(p)


# ------------------------------------------------------------------------------------------------ metrics


def mma_curve(errors: np.ndarray, thresholds=MMA_THRESHOLDS) -> list[float]:
    """Fraction of matches whose error is at most t, for each t (an empty set scores 0)."""
    e = np.asarray(errors, dtype=np.float64)
    return [float((e <= t).mean()) if e.size else 0.0 for t in thresholds]


def pck(errors: np.ndarray, thresholds=PCK_THRESHOLDS) -> dict[str, float]:
    return {f"pck@{t}": v for t, v in zip(thresholds, mma_curve(errors, thresholds))}


def top_fraction(errors_ranked: np.ndarray, q: float) -> np.ndarray:
    """The first ``ceil(q * n)`` errors of a best-first ranking (at least one when n > 0)."""
    n = len(errors_ranked)
    return errors_ranked[:max(1, math.ceil(q * n))] if n else errors_ranked


def subset_stats(errors: np.ndarray) -> dict:
    e = np.asarray(errors, dtype=np.float64)
    return {"n": int(e.size), "median": float(np.median(e)) if e.size else float("nan"),
            "mean": float(e.mean()) if e.size else float("nan"), "mma": mma_curve(e), **pck(e)}


def corner_error(h_est: np.ndarray | None, h_true: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance between the source image's four corners mapped by the estimated and the true homography
    (inf when there is no estimate)."""
    if h_est is None:
        return float("inf")
    w, h = size
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    d = np.linalg.norm(apply_homography(h_est, corners) - apply_homography(h_true, corners), axis=1)
    return float(d.mean()) if np.isfinite(d).all() else float("inf")


# ------------------------------------------------------------------------------------------------- runner


@dataclass
class PairsConfig:
    size: int = 448  # working resolution: longer side of both images, pixels
    pca: int | None = None  # joint PCA components (None: full dimension)
    normalize: bool = True
    layer: int = -1
    facet: str = "token"
    ransac_px: float = 3.0  # RANSAC inlier threshold, working pixels
    ratio: float = 0.8  # Lowe's ratio for the sparse SIFT reference
    refine: tuple[str, ...] = ("none",)  # sub-patch refinements to evaluate, each a row (vlens.match.refine)
    sparse: bool = True  # also run the sparse SIFT + ratio (+ RANSAC) reference on every pair
    bin_levels: int = 0  # log-binned descriptors (vlens.match.binning): 0 = off, else the hierarchy levels
    strides: tuple = (None,)  # patch strides to evaluate, each a row (None: the patch size; vlens.match.strided)
    engine: str = "torch"  # what runs the ViT token facet (vlens.engines): torch | onnx | auto
    quantize: str = "none"  # int8: the token facet as an ONNX Runtime dynamic-int8 export (benchmarks/bench_int8.py)


@dataclass
class DescriptorResult:
    """One descriptor on one pair."""

    descriptor: str
    matches: int  # source patches with a known, inside-the-target truth
    skipped_unknown: int  # truth unknown (disparity 0)
    skipped_outside: int  # truth outside the target
    all: dict
    top: dict  # "feature@10%": subset_stats, ...
    corner_error: float | None = None  # homography pairs: RANSAC on the dense matches
    inliers: int | None = None
    seconds: float = 0.0
    errors: np.ndarray | None = field(default=None, repr=False)  # (n,) valid matches, best cycle score first
    match_xy: tuple | None = field(default=None, repr=False)  # (src (n, 2), dst (n, 2)) working px, same order
    refine: str = "none"  # sub-patch refinement of the matches (vlens.match.refine)
    stride: int | None = None  # patch stride of the features (None: the patch size)
    feature_seconds: float = 0.0  # of ``seconds``: the features of both images
    peak_bytes: int = 0  # peak memory of the features + matching above what was in use before (PeakMemory)
    grid: tuple | None = None  # the source's patch grid (rows, cols)

    @property
    def label(self) -> str:
        from vlens.match.draw import short_model

        return (short_model(self.descriptor) + ("" if self.stride is None else f" /{self.stride}")
                + ("" if self.refine == "none" else f" + {self.refine}"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("errors"), d.pop("match_xy")
        return d


@dataclass
class PairResult:
    pair: str
    kind: str
    size: tuple[tuple[int, int], tuple[int, int]]  # working (W, H) of source and target
    descriptors: list[DescriptorResult]
    sparse_sift: dict  # the sparse reference: keypoints, ratio matches, their accuracy, corner error
    group: str = ""  # the pair's set (Pair.group, or its own name)

    def to_dict(self) -> dict:
        return {"pair": self.pair, "group": self.group, "kind": self.kind, "size": self.size,
                "sparse_sift": self.sparse_sift, "descriptors": [d.to_dict() for d in self.descriptors]}


def working_pair(pair: Pair, size: int) -> tuple[Image.Image, Image.Image, np.ndarray, np.ndarray]:
    """Both images at the working resolution and their scales (sx, sy) from original to working pixels."""
    from vlens.images import load_image

    imgs, scales = [], []
    for p in (pair.source, pair.target):
        im = load_image(p)
        wi = working_image(im, size)
        imgs.append(wi)
        scales.append(np.array([wi.size[0] / im.size[0], wi.size[1] / im.size[1]]))
    return imgs[0], imgs[1], scales[0], scales[1]


def truth_working(pair: Pair, src_xy: np.ndarray, s_src: np.ndarray, s_tgt: np.ndarray, tgt_size) -> tuple:
    """True target location (working pixels) of working-pixel source points and a validity mask, plus the
    counts of unknown and outside points."""
    t = pair.truth(src_xy / s_src) * s_tgt  # (n, 2)
    known = np.isfinite(t).all(axis=1)
    w, h = tgt_size
    inside = known & (t[:, 0] >= 0) & (t[:, 0] < w) & (t[:, 1] >= 0) & (t[:, 1] < h)
    return t, inside, int((~known).sum()), int((known & ~inside).sum())


def homography_working(pair: Pair, s_src: np.ndarray, s_tgt: np.ndarray) -> np.ndarray:
    return np.diag([s_tgt[0], s_tgt[1], 1.0]) @ pair.homography @ np.diag([1 / s_src[0], 1 / s_src[1], 1.0])


def evaluate_matches(pair: Pair, matches, s_src, s_tgt, tgt_size, src_size, cfg: PairsConfig,
                     descriptor: str) -> DescriptorResult:
    """Errors, MMA and PCK of one set of dense matches (working pixels) against the pair's ground truth."""
    from vlens.match.sift import ransac_homography

    src = matches.src_xy.double().numpy()
    dst = matches.dst_xy.double().numpy()
    truth, valid, unknown, outside = truth_working(pair, src, s_src, s_tgt, tgt_size)
    if not valid.any():
        raise DatasetError(f"pair '{pair.name}': the ground truth maps every source patch outside the target "
                           f"({unknown} unknown, {outside} outside); check the homography's direction (source -> "
                           "target) and its pixel convention")
    err = np.linalg.norm(dst - truth, axis=1)  # (n,), meaningful where valid
    top = {}
    for by in SCORES:
        order = matches.order(by).numpy()
        ranked = err[order][valid[order]]
        for q in TOP_FRACTIONS:
            top[f"{by}@{round(q * 100)}%"] = subset_stats(top_fraction(ranked, q))
    res = DescriptorResult(descriptor, int(valid.sum()), unknown, outside, subset_stats(err[valid]), top)
    cyc = matches.order("cycle").numpy()
    res.errors = err[cyc][valid[cyc]]
    res.match_xy = (src[cyc][valid[cyc]], dst[cyc][valid[cyc]])  # same order as errors
    if pair.homography is not None:
        h_est, inl = ransac_homography(src, dst, cfg.ransac_px)
        res.corner_error = corner_error(h_est, homography_working(pair, s_src, s_tgt), src_size)
        res.inliers = int(inl.sum())
    return res


def sparse_sift_reference(pair: Pair, img_s, img_t, s_src, s_tgt, cfg: PairsConfig) -> dict:
    """SIFT keypoints + ratio test (+ RANSAC homography for homography pairs) on the working images."""
    from vlens.match.sift import ransac_homography, sparse_sift_matches

    t0 = time.time()
    xa, xb, ka, kb = sparse_sift_matches(img_s, img_t, cfg.ratio)
    out = {"keypoints": [ka, kb], "ratio_matches": len(xa)}
    if len(xa):
        truth, valid, unknown, outside = truth_working(pair, xa, s_src, s_tgt, img_t.size)
        err = np.linalg.norm(xb - truth, axis=1)[valid]
        out.update(evaluated=int(valid.sum()), skipped_unknown=unknown, skipped_outside=outside,
                   all=subset_stats(err))
    else:
        out.update(evaluated=0, skipped_unknown=0, skipped_outside=0, all=subset_stats(np.zeros(0)))
    if pair.homography is not None:
        h_est, inl = ransac_homography(xa, xb, cfg.ransac_px)
        out["corner_error"] = corner_error(h_est, homography_working(pair, s_src, s_tgt), img_s.size)
        out["inliers"] = int(inl.sum())
    out["seconds"] = round(time.time() - t0, 3)
    return out


def run_pairs_benchmark(specs: list[str], pairs: list[Pair], config: PairsConfig | None = None,
                        progress=None) -> list[PairResult]:
    """Match every source patch of every pair with each descriptor spec; see the module docstring."""
    from vlens.devices import PeakMemory
    from vlens.match.features import extract_features, load_backbone
    from vlens.match.matching import match_projected, refine_projected

    cfg = config or PairsConfig()
    if not pairs:
        raise DatasetError("no pairs to evaluate")
    results = []
    for pair in pairs:
        img_s, img_t, s_src, s_tgt = working_pair(pair, cfg.size)
        rows = []
        for spec, stride in ((sp, st) for sp in specs for st in cfg.strides):
            bb = load_backbone(spec)
            stride = None if stride == min_patch(bb) else stride
            t0 = time.time()
            with PeakMemory() as pm_feat:
                fs, ft = extract_features([img_s, img_t], bb, layer=cfg.layer, facet=cfg.facet, size=cfg.size,
                                          stride=stride, bin_levels=cfg.bin_levels, engine=cfg.engine,
                                          quantize=cfg.quantize)
            t_feat = time.time() - t0
            t1 = time.time()
            with PeakMemory() as pm_match:  # one nearest-neighbour search, shared by the refinements
                m0, a, b, back_of = match_projected(fs, ft, pca=cfg.pca, normalize=cfg.normalize)
            t_match = time.time() - t1
            for method in cfg.refine:
                t2 = time.time()
                with PeakMemory() as pm_refine:
                    m = refine_projected(m0, a, b, fs, ft, method, back_of=back_of)
                t_refine = time.time() - t2
                r = evaluate_matches(pair, m, s_src, s_tgt, img_t.size, img_s.size, cfg, bb.spec)
                r.refine, r.stride, r.grid = method, stride, tuple(fs.grid)
                r.seconds, r.feature_seconds = round(t_feat + t_match + t_refine, 3), round(t_feat, 3)
                r.peak_bytes = max(pm_feat.bytes, pm_match.bytes, pm_refine.bytes)
                rows.append(r)
                if progress:
                    progress(f"{pair.name}: {r.label} {r.seconds:.1f} s, peak {r.peak_bytes / 1e6:.0f} MB")
        sparse = (sparse_sift_reference(pair, img_s, img_t, s_src, s_tgt, cfg) if cfg.sparse else
                  {"evaluated": 0, "skipped": True, "all": subset_stats(np.zeros(0))})
        results.append(PairResult(pair.name, pair.kind, (img_s.size, img_t.size), rows, sparse,
                                  pair.group or pair.name))
    return results


def min_patch(bb) -> int:
    """The patch size a stride refers to: the backbone's, the finest part's for a fusion."""
    return min(p.patch_size for p, _ in bb.parts) if bb.parts else bb.patch_size


# ------------------------------------------------------------------------------------------------ outputs

TABLE_HEADERS = ["pair", "descriptor", "matches", "median px", "MMA@1-10", "PCK@1", "PCK@3", "PCK@5", "PCK@10",
                 "PCK@20",
                 "PCK@10 top10% feat", "PCK@10 top50% feat", "PCK@10 top10% cycle", "PCK@10 top50% cycle",
                 "RANSAC corner px"]


def _fmt_corner(v) -> str:
    return "-" if v is None else ("failed" if not math.isfinite(v) else f"{v:.1f}")


def table_rows(results: list[PairResult]) -> list[list]:
    """One row per pair x descriptor (PCK in %), then the sparse SIFT reference of the pair."""
    rows = []
    for pr in results:
        for d in pr.descriptors:
            a = d.all
            rows.append([pr.pair, d.label, d.matches, round(a["median"], 1),
                         round(100 * float(np.mean(a["mma"])), 1),
                         *[round(100 * a[f"pck@{t}"], 1) for t in PCK_THRESHOLDS],
                         *[round(100 * d.top[k]["pck@10"], 1)
                           for k in ("feature@10%", "feature@50%", "cycle@10%", "cycle@50%")],
                         _fmt_corner(d.corner_error)])
        sp = pr.sparse_sift
        a = sp["all"]
        rows.append([pr.pair, "sparse SIFT + ratio" + (" + RANSAC" if "corner_error" in sp else ""),
                     sp["evaluated"], round(a["median"], 1) if a["n"] else "-",
                     round(100 * float(np.mean(a["mma"])), 1), *[round(100 * a[f"pck@{t}"], 1) for t in PCK_THRESHOLDS],
                     "-", "-", "-", "-",
                     _fmt_corner(sp.get("corner_error"))])
    return rows


def _set_stats(stats: list[dict], corners: list) -> dict:
    """Mean over the pairs of a set (each pair weighs the same) of their stats; the median corner error."""
    out = {"mma": [float(v) for v in np.mean([s["mma"] for s in stats], axis=0)],
           "median": float(np.mean([s["median"] for s in stats])) if all(s["n"] for s in stats) else float("nan"),
           **{f"pck@{t}": float(np.mean([s[f"pck@{t}"] for s in stats])) for t in PCK_THRESHOLDS}}
    finite = [c for c in corners if c is not None]
    out["corner_error"] = float(np.median(finite)) if finite else None
    return out


def summarize(results: list[PairResult]) -> list[dict]:
    """Per set of pairs (:attr:`Pair.group`; a pair alone is its own set), per descriptor row: the mean over the
    set's pairs of MMA, PCK and the median error, the mean PCK@10 of the top 50% by cycle score, the median
    RANSAC corner error; the same for the sparse SIFT reference."""
    groups: dict[str, list[PairResult]] = {}
    for pr in results:
        groups.setdefault(pr.group or pr.pair, []).append(pr)
    out = []
    for g, prs in groups.items():
        rows = []
        for k, d0 in enumerate(prs[0].descriptors):
            ds = [pr.descriptors[k] for pr in prs]
            rows.append({"descriptor": d0.descriptor, "refine": d0.refine, "label": d0.label,
                         "stride": d0.stride, "seconds": float(np.mean([d.seconds for d in ds])),
                         "peak_mb": max(d.peak_bytes for d in ds) / 1e6,
                         "matches": sum(d.matches for d in ds),
                         "top50_cycle_pck@10": float(np.mean([d.top["cycle@50%"]["pck@10"] for d in ds])),
                         **_set_stats([d.all for d in ds], [d.corner_error for d in ds])})
        sparse = {"label": "sparse SIFT + ratio" + (" + RANSAC" if prs[0].kind == "homography" else ""),
                  "matches": sum(pr.sparse_sift["evaluated"] for pr in prs),
                  **_set_stats([pr.sparse_sift["all"] for pr in prs], [pr.sparse_sift.get("corner_error")
                                                                      for pr in prs])}
        out.append({"set": g, "kind": prs[0].kind, "pairs": len(prs), "descriptors": rows, "sparse_sift": sparse})
    return out


SUMMARY_HEADERS = ["set", "pairs", "descriptor", *[f"PCK@{t}" for t in PCK_THRESHOLDS], "MMA@1-10", "median px",
                   "PCK@10 top50% cycle", "RANSAC corner px", "s / pair", "peak MB"]


def summary_rows(summaries: list[dict]) -> list[list]:
    """One row per set x descriptor (and the sparse SIFT reference): means over the set's pairs, PCK in %."""
    rows = []
    for sm in summaries:
        for r in [*sm["descriptors"], sm["sparse_sift"]]:
            rows.append([sm["set"], sm["pairs"], r["label"], *[round(100 * r[f"pck@{t}"], 1) for t in PCK_THRESHOLDS],
                         round(100 * float(np.mean(r["mma"])), 1),
                         "-" if not math.isfinite(r["median"]) else round(r["median"], 1),
                         round(100 * r["top50_cycle_pck@10"], 1) if "top50_cycle_pck@10" in r else "-",
                         _fmt_corner(r["corner_error"]),
                         round(r["seconds"], 2) if "seconds" in r else "-",
                         round(r["peak_mb"]) if "peak_mb" in r else "-"])
    return rows


def write_pairs_outputs(results: list[PairResult], cfg: PairsConfig, out) -> dict:
    """``results.json``, ``table.md`` (per set, then per pair), ``table.csv`` (per pair), ``summary.csv`` (per
    set) and ``mma.png`` (mean MMA curves per set) into ``out``."""
    import csv
    import io

    from vlens.match.draw import mma_figure
    from vlens.runs import atomic_write_text, write_json
    from vlens.tables import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    paths = {"results": write_json(out / "results.json", {"config": asdict(cfg), "summary": summaries,
                                                          "pairs": [r.to_dict() for r in results]})}
    rows, srows = table_rows(results), summary_rows(summaries)
    for name, headers, body in (("csv", TABLE_HEADERS, rows), ("summary_csv", SUMMARY_HEADERS, srows)):
        buf = io.StringIO()
        csv.writer(buf).writerows([headers, *body])
        paths[name] = atomic_write_text(out / ("table.csv" if name == "csv" else "summary.csv"), buf.getvalue())
    paths["markdown"] = atomic_write_text(out / "table.md", describe(cfg) + "\n\nPer set (means over its pairs):\n\n"
                                          + markdown_table(SUMMARY_HEADERS, srows) + "\nPer pair:\n\n"
                                          + markdown_table(TABLE_HEADERS, rows))
    paths["mma"] = mma_figure(summaries, out / "mma.png")
    return paths


def describe(cfg: PairsConfig) -> str:
    binned = f"descriptors log-binned, {cfg.bin_levels} levels; " if cfg.bin_levels else ""
    return (f"Errors in target pixels at the working resolution (longer side {cfg.size} px); every source patch "
            f"matched to its nearest target patch (PCA {cfg.pca or 'off'}; {binned}'+ soft' / '+ quadratic' = refined "
            f"off the patch centre, see vlens.match.refine); MMA@1-10 = mean of the fraction within "
            f"t px for t = 1..10; PCK in %; top x% = the best-scored x% of the matches; RANSAC corner px = mean "
            f"corner error of the OpenCV RANSAC homography ({cfg.ransac_px:g} px) from the dense matches; '/S' = "
            f"patch stride S (overlapping patches); s / pair = features of both images + matching, mean over the "
            f"set's pairs; peak MB = the largest peak memory above the start of a row's features or matching "
            f"(resident set on the CPU, allocator peak on a GPU).")

