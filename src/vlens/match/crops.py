"""The crop benchmark: match crops of an image back to the image and measure how far off each match lands.

Coordinates. Each source image S is resized so its longer side is ``source_side`` pixels (default 448): this is
the working resolution, and every crop error is in these pixels. A crop is defined by an affine map ``T`` from
crop pixel coordinates to S coordinates (box centre, box size, rotation, aspect change) and rendered with
``PIL.Image.transform`` (which uses the same corner-origin, centre-at-+0.5 convention as vlens.match), so the
true S location of every crop patch centre ``c`` is exactly ``T(c)``. The prediction is the centre of c's
nearest neighbour in S (raw features by default, as ``vlens match``; optionally jointly PCA-reduced, as the
lab report did). Crop error = ``|prediction - T(c)|`` in S pixels.

Scores rank the matches of one crop (higher = more confident): ``feature`` = -descriptor distance, ``cycle`` =
-cycle distance C -> S -> C in crop pixels (ties broken by feature distance). For each scenario and score we
report the mean / median error over all matches and over the top 10% / 50% of each crop's matches by score, and
the *error-vs-rank curve*: the mean error of the top-q fraction of matches for q in (0, 1]; its area (the curve's
mean over q) is low when the score puts the good matches first.

Crops depend only on the seed, the image and the scenario, never on the model, so all models (and the
``sift`` / ``pixels`` / ``random:`` baselines) are scored on the same crops.

Default images: ``opencv:heldout``, 12 real photos from the fetched OpenCV samples that no vlens backbone was
trained on. Images a backbone lists among its training images are refused unless ``allow_train_images`` (and
then named in the result): see :mod:`vlens.match.heldout`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from vlens.errors import ConfigError, DatasetError
from vlens.match.geometry import working_image


@dataclass(frozen=True)
class CropScenario:
    """How crops are drawn: box side as a fraction of the source's shorter side, extra distortions."""

    name: str
    side: tuple[float, float]  # crop box side / shorter source side, uniform in this range
    stretch: tuple[float, float] = (1.0, 1.0)  # output aspect change (x scale / y scale), log-uniform
    rotation: float = 0.0  # max |angle| in degrees
    photometric: float = 0.0  # 0 = none; 1 = brightness/contrast/saturation +-40%, blur, noise
    description: str = ""


SCENARIOS = (
    CropScenario("large", (0.6, 0.8), description="large crops, 60-80% of the shorter side"),
    CropScenario("small", (0.3, 0.45), description="small crops, 30-45% (upsampled ~2x)"),
    CropScenario("photometric", (0.45, 0.65), photometric=1.0,
                 description="medium crops with colour jitter, blur and noise"),
    CropScenario("geometric", (0.4, 0.6), stretch=(0.7, 1.4), rotation=15.0,
                 description="medium crops, aspect change 0.7-1.4x and rotation up to 15 degrees"),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
TOP_FRACTIONS = (0.1, 0.5)


@dataclass
class CropBenchmarkConfig:
    """Settings of one crop-benchmark run (the CLI flags map onto these fields)."""

    scenarios: tuple[str, ...] = SCENARIO_NAMES  # which of SCENARIOS to run
    crops_per_image: int = 2  # crops per image and scenario
    seed: int = 0  # same seed -> same crops for every model
    pca: int | None = None  # joint PCA components (None: full dimension, vlens match's default; the lab report: 10)
    normalize: bool = True  # L2-normalise descriptors after PCA
    layer: int = -1  # transformer block, 1-based; -1 = last
    facet: str = "token"  # token | key | query | value
    source_side: int = 448  # working resolution of the source: its longer side in pixels
    crop_side: int = 224  # longer side of each rendered crop (= model input)
    curve_points: int = 100  # resolution of the error-vs-rank curve
    refine: str = "none"  # sub-patch refinement of the matches in the source (vlens.match.refine)
    stride: int | None = None  # overlapping patches every ``stride`` input px (None: the patch size)


@dataclass
class Crop:
    """A rendered crop and its exact affine map to source pixels: ``xy_S = A @ [x, y, 1]``."""

    image: Image.Image
    source: int  # index of the source image
    affine: np.ndarray  # (2, 3)

    def to_source(self, xy: torch.Tensor) -> torch.Tensor:
        """(n, 2) crop pixel coordinates -> (n, 2) source pixel coordinates."""
        a = torch.as_tensor(self.affine, dtype=torch.float64)
        return (xy.double() @ a[:, :2].T + a[:, 2]).float()


@dataclass
class ScoreStats:
    mean: float
    median: float
    mean_top10: float
    median_top10: float
    mean_top50: float
    median_top50: float
    auc: float  # mean of the error-vs-rank curve over q in (0, 1]
    curve: list[float]  # mean error of the top-q fraction, q = (1..curve_points)/curve_points


@dataclass
class ScenarioResult:
    scenario: str
    crops: int
    matches: int
    scores: dict[str, ScoreStats]


@dataclass
class Example:
    """One crop with its matches, kept for pictures."""

    scenario: str
    crop: Image.Image
    source: Image.Image
    matches: object  # vlens.match.matching.Matches
    errors: torch.Tensor  # (n,)
    affine: np.ndarray  # (2, 3) crop pixels -> source pixels, as in Crop


@dataclass
class CropBenchmarkResult:
    model: str
    config: CropBenchmarkConfig
    scenarios: list[ScenarioResult]
    images: int
    seconds: float
    examples: list[Example] = field(default_factory=list, repr=False)
    train_overlap: list = field(default_factory=list)  # (benchmark image, training image) pairs, when allowed
    skipped: list = field(default_factory=list)  # (path, reason) of unreadable images left out

    def get(self, scenario: str, score: str) -> ScoreStats:
        for s in self.scenarios:
            if s.scenario == scenario:
                return s.scores[score]
        raise KeyError(scenario)

    def overall(self, score: str) -> ScoreStats:
        """Scenario-averaged stats (each scenario weighs the same)."""
        stats = [s.scores[score] for s in self.scenarios]
        vals = {f.name: float(np.mean([getattr(x, f.name) for x in stats])) for f in fields(ScoreStats)
                if f.name != "curve"}
        curve = np.mean([x.curve for x in stats], axis=0).tolist()
        return ScoreStats(**vals, curve=curve)

    def to_dict(self) -> dict:
        return {"model": self.model, "config": asdict(self.config), "images": self.images,
                "seconds": round(self.seconds, 2), "train_overlap": [list(p) for p in self.train_overlap],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "scenarios": [asdict(s) for s in self.scenarios],
                "overall": {k: asdict(self.overall(k)) for k in ("feature", "cycle")}}


# ---------------------------------------------------------------------------------------------- crops


def crop_affine(center: tuple[float, float], box: tuple[float, float], out: tuple[int, int],
                angle_deg: float = 0.0) -> np.ndarray:
    """Affine (2, 3) mapping output pixel coords of an ``out`` = (w, h) crop to source coords, for a box of
    size ``box`` = (bw, bh) centred at ``center`` and rotated by ``angle_deg``."""
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    lin = rot @ np.diag([box[0] / out[0], box[1] / out[1]])  # (2, 2)
    offset = np.asarray(center) - lin @ np.array([out[0] / 2, out[1] / 2])
    return np.concatenate([lin, offset[:, None]], axis=1)


def render_crop(src: Image.Image, affine: np.ndarray, out: tuple[int, int]) -> Image.Image:
    a = affine
    return src.transform(out, Image.AFFINE, data=(a[0, 0], a[0, 1], a[0, 2], a[1, 0], a[1, 1], a[1, 2]),
                         resample=Image.BICUBIC)


def photometric(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Colour jitter (brightness, contrast, saturation), Gaussian blur and noise; geometry is untouched."""
    if strength <= 0:
        return img
    j = 0.4 * strength
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - j, 1 + j))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - j, 1 + j))
    img = ImageEnhance.Color(img).enhance(rng.uniform(1 - j, 1 + j))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5 * strength)))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 8 * strength, (img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_crop(src: Image.Image, scenario: CropScenario, crop_side: int, rng: np.random.Generator,
              source_index: int = 0) -> Crop:
    """Draw one crop of ``src`` for ``scenario``; the rotated box always lies inside the image."""
    w, h = src.size
    side = rng.uniform(*scenario.side) * min(w, h)
    lo, hi = np.log(scenario.stretch[0]), np.log(scenario.stretch[1])
    stretch = float(np.exp(rng.uniform(lo, hi))) if hi > lo else 1.0
    angle = rng.uniform(-scenario.rotation, scenario.rotation) if scenario.rotation else 0.0
    for _ in range(100):
        t = math.radians(angle)
        # half-extent of the rotated square box along x and y; shrink until it fits
        ext = side / 2 * (abs(math.cos(t)) + abs(math.sin(t)))
        if 2 * ext <= min(w, h):
            break
        side *= 0.95
    cx, cy = rng.uniform(ext, w - ext), rng.uniform(ext, h - ext)
    # output keeps the box's (square) shape times the stretch; longer side = crop_side
    ow, oh = (crop_side, round(crop_side / stretch)) if stretch >= 1 else (round(crop_side * stretch), crop_side)
    affine = crop_affine((cx, cy), (side, side), (ow, oh), angle)
    img = render_crop(src, affine, (ow, oh))
    img = photometric(img, scenario.photometric, rng)
    return Crop(img, source_index, affine)


def make_crops(sources: list[Image.Image], scenario: CropScenario, cfg: CropBenchmarkConfig) -> list[Crop]:
    """All crops of one scenario: fixed seed per (scenario, image), independent of the model."""
    sidx = SCENARIO_NAMES.index(scenario.name) if scenario.name in SCENARIO_NAMES else 99
    crops = []
    for i, src in enumerate(sources):
        rng = np.random.default_rng([cfg.seed, sidx, i])
        crops += [make_crop(src, scenario, cfg.crop_side, rng, i) for _ in range(cfg.crops_per_image)]
    return crops


# ------------------------------------------------------------------------------------------- metrics


def crop_errors(crop: Crop, matches) -> torch.Tensor:
    """Distance in source pixels between each match's prediction and the true location: (n,)."""
    truth = crop.to_source(matches.src_xy)  # (n, 2)
    return (matches.dst_xy - truth).norm(dim=1)


def score_stats(errors_by_rank: list[torch.Tensor], points: int = 100) -> ScoreStats:
    """Stats from per-crop error vectors already sorted best-score first."""
    qs = np.arange(1, points + 1) / points
    counts = np.array([len(e) for e in errors_by_rank])
    csum = [torch.cumsum(e.double(), 0).numpy() for e in errors_by_rank]

    def top(q):
        k = np.maximum(1, np.ceil(q * counts).astype(int))  # per-crop number of matches kept
        kept = torch.cat([e[:kc] for e, kc in zip(errors_by_rank, k)])
        return float(kept.mean()), float(kept.median())

    curve = []
    for q in qs:
        k = np.maximum(1, np.ceil(q * counts).astype(int))
        curve.append(float(sum(c[kc - 1] for c, kc in zip(csum, k)) / k.sum()))
    m_all, med_all = top(1.0)
    m10, med10 = top(0.1)
    m50, med50 = top(0.5)
    return ScoreStats(m_all, med_all, m10, med10, m50, med50, float(np.mean(curve)), curve)


DEFAULT_IMAGES = "opencv:heldout"


def _resolve_images(images) -> tuple[list[Image.Image], list[str], list[tuple[str, str]]]:
    """The benchmark's images, loaded, their names (file names; ``image N`` for PIL images given) and the
    unreadable files skipped (path, reason)."""
    from vlens.data.image_sets import image_set
    from vlens.images import SkipLog, load_images_safely

    if images is None:
        images = DEFAULT_IMAGES
    if isinstance(images, str):
        images = image_set("photos:matching" if images == "photos" else images)
    pils, paths = [], []
    for im in images:
        (pils if isinstance(im, Image.Image) else paths).append(im)
    names = [f"image {i + 1}" for i in range(len(pils))]
    skips = SkipLog()
    for path, img in load_images_safely(paths, skips):
        pils.append(img)
        names.append(Path(path).name)
    if not pils:
        raise DatasetError("the crop benchmark got no readable images" + (f" ({skips.summary()})" if skips else ""))
    return pils, names, skips.skipped


def make_config(config: CropBenchmarkConfig | None = None, **overrides) -> CropBenchmarkConfig:
    cfg = replace(config or CropBenchmarkConfig(), **overrides)
    unknown = [s for s in cfg.scenarios if s not in SCENARIO_NAMES]
    if unknown:
        raise ConfigError(f"unknown crop scenario(s) {', '.join(unknown)}; one of {', '.join(SCENARIO_NAMES)}")
    if cfg.crops_per_image < 1:
        raise ConfigError("crops_per_image must be at least 1")
    return cfg


def run_crop_benchmark(model, images=None, config: CropBenchmarkConfig | None = None, *,
                       keep_examples: int = 1, custom_scenarios: tuple[CropScenario, ...] | None = None,
                       allow_train_images: bool = False, **overrides) -> CropBenchmarkResult:
    """Run the crop benchmark for one model and return per-scenario x per-score statistics.

    ``model``: a model spec or folder, ``pixels`` (raw-pixel patches, patch size 16) or ``random:SPEC``, or a
    loaded :class:`~vlens.match.features.Backbone`. ``images``: a list of paths / PIL images, an image-set name
    (``opencv:heldout``, ``photos`` = the scikit-image matching photos, ``shapes``) or a folder; default
    ``opencv:heldout``. Images the model was trained on raise a one-line error unless ``allow_train_images``.
    ``config`` / keyword overrides: :class:`CropBenchmarkConfig` fields (e.g. ``crops_per_image=1``).
    ``custom_scenarios`` replaces the built-in scenario list (for custom studies and tests); ``keep_examples``
    crops per scenario keep their images and matches for pictures.
    """
    from vlens.match.features import extract_features, load_backbone
    from vlens.match.matching import match_features

    cfg = make_config(config, **overrides)
    t0 = time.time()
    from vlens.match.heldout import check_heldout
    from vlens.models import default_spec

    spec = model.spec if hasattr(model, "spec") else (model or default_spec("backbone"))
    originals, names, skipped = _resolve_images(images)
    overlap = check_heldout(spec, originals, allow_train_images, "the crop benchmark", names)  # before loading
    bb = load_backbone(model) if isinstance(model, str) or model is None else model
    sources = [working_image(im, cfg.source_side) for im in originals]
    src_feats = extract_features(sources, bb, layer=cfg.layer, facet=cfg.facet, size=cfg.source_side,
                                 stride=cfg.stride)
    chosen = custom_scenarios or tuple(s for s in SCENARIOS if s.name in cfg.scenarios)
    results, examples = [], []
    for sc in chosen:
        crops = make_crops(sources, sc, cfg)
        crop_feats = extract_features([c.image for c in crops], bb, layer=cfg.layer, facet=cfg.facet,
                                      size=cfg.crop_side, stride=cfg.stride)
        ranked = {"feature": [], "cycle": []}
        total = 0
        for k, (crop, cf) in enumerate(zip(crops, crop_feats)):
            m = match_features(cf, src_feats[crop.source], pca=cfg.pca, normalize=cfg.normalize, refine=cfg.refine)
            err = crop_errors(crop, m)  # (n,)
            total += len(err)
            for by, per_crop in ranked.items():
                per_crop.append(err[m.order(by)])
            if k < keep_examples:
                examples.append(Example(sc.name, crop.image, sources[crop.source], m, err, crop.affine))
        stats = {by: score_stats(v, cfg.curve_points) for by, v in ranked.items()}
        results.append(ScenarioResult(sc.name, len(crops), total, stats))
    return CropBenchmarkResult(bb.spec, cfg, results, len(sources), time.time() - t0, examples, overlap, skipped)


def baseline_specs(model: str) -> list[str]:
    """The baselines run beside ``model``: dense SIFT and raw pixels (both at the model's patch size) and the same
    architecture with random weights. For a fusion ``A+B``: its parts first, then the same anchors (the fusion's
    finest patch size) and the fusion with random weights in its learnt parts."""
    from vlens.match.features import fused_parts, load_backbone

    bb = load_backbone(model)
    p = bb.patch_size
    fused = fused_parts(model)
    if fused is None:
        specs = [f"sift:{p}", f"pixels:{p}"]
        if bb.has_model and not bb.spec.startswith("random:"):  # a descriptor without weights has no random twin
            specs.append(f"random:{model}")
        return [s for s in specs if s not in (model, bb.spec)]
    raw = model.split("+")
    random = "+".join(r if not b.has_model else f"random:{r}" for r, (b, _) in zip(raw, bb.parts))
    out = []
    for spec in [name for name, _ in fused] + [f"sift:{p}", f"pixels:{p}"] + ([random] if random != model else []):
        if spec not in out and spec != model:
            out.append(spec)
    return out


# -------------------------------------------------------------------------------------------- outputs

TABLE_HEADERS = ["model", "score", "scenario", "mean", "median", "mean top10%", "median top10%", "mean top50%",
                 "median top50%", "AUC"]


def table_rows(results: list[CropBenchmarkResult], per_scenario: bool = True, digits: int | None = 2) -> list[list]:
    """Rows of the crop table: per model x score, the scenario average first, then each scenario. Values are
    rounded to ``digits`` (the CSV's 2); None keeps them exact for a table that formats them itself (rounding
    twice would print 82.448 as 82.5)."""
    from vlens.match.draw import short_model

    rows = []
    for res in results:
        for score in ("feature", "cycle"):
            items = [("all (average)", res.overall(score))]
            if per_scenario:
                items += [(s.scenario, s.scores[score]) for s in res.scenarios]
            for name, st in items:
                values = (st.mean, st.median, st.mean_top10, st.median_top10, st.mean_top50, st.median_top50, st.auc)
                rows.append([short_model(res.model), score, name] +
                            [v if digits is None else round(v, digits) for v in values])
    return rows


def write_crop_outputs(results: list[CropBenchmarkResult], out) -> dict:
    """Write ``results.json``, ``table.md`` / ``table.csv`` (Table-1 shape), ``curves.png`` and
    ``best_worst.png`` (for the first model) into ``out``; returns the paths."""
    import csv
    import io
    from pathlib import Path

    from vlens.match.draw import best_worst_figure, crop_curves_figure
    from vlens.runs import atomic_write_text, write_json
    from vlens.tables import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_json(out / "results.json", {"results": [r.to_dict() for r in results]})}
    rows = table_rows(results)
    buf = io.StringIO()
    csv.writer(buf).writerows([TABLE_HEADERS, *rows])
    paths["csv"] = atomic_write_text(out / "table.csv", buf.getvalue())
    cfg = results[0].config
    flagged = [f"**WARNING: {len(r.train_overlap)} of the {r.images} images are training images of {r.model}** "
               f"({', '.join(a for a, _ in r.train_overlap[:5])}); its numbers measure memory, not "
               "generalisation.\n\n" for r in results if r.train_overlap]
    md = ("".join(flagged) + f"Crop error in source pixels (longer side {cfg.source_side} px), {results[0].images} "
          f"images x {cfg.crops_per_image} crops per scenario, "
          f"{f'PCA {cfg.pca}' if cfg.pca else 'no PCA'}, seed {cfg.seed}.\n\n"
          + markdown_table(TABLE_HEADERS, table_rows(results, per_scenario=False, digits=None))
          + "\nPer scenario:\n\n" + markdown_table(TABLE_HEADERS, table_rows(results, digits=None)))
    paths["markdown"] = atomic_write_text(out / "table.md", md)
    paths["curves"] = crop_curves_figure(results, out / "curves.png")
    if results[0].examples:
        paths["best_worst"] = best_worst_figure(results[0], out / "best_worst.png")
    return paths
