"""The built-in ``shapes`` dataset: procedural captioned scenes with per-pixel class masks.

Each scene has 1-3 objects (shape, colour, size, position; for several objects, a spatial relation), five
paraphrased captions like COCO, and a mask whose pixel values are class ids (0 = background, see
:data:`CLASSES`). Every image depends only on ``(seed, style, split, index)``, so the same seed gives the same
bytes, and generation parallelises across processes.

Two styles give two distributions for fine-tune-vs-scratch studies:
- ``target``: textured backgrounds cut from the scikit-image photos, flat-coloured objects;
- ``pretrain``: smooth gradient or noise backgrounds, outlined objects, a different size/position mix.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond")
CLASSES = ("background", *SHAPES)
COLOURS = {
    "red": (215, 38, 38), "green": (36, 168, 64), "blue": (38, 84, 222), "yellow": (242, 212, 36),
    "purple": (142, 58, 184), "orange": (246, 136, 28), "white": (248, 248, 248),
}
STYLES = ("target", "pretrain")
SYNONYMS = {
    "large": ("large", "big"), "small": ("small", "little"),
    "circle": ("circle", "circle"), "square": ("square", "box"), "triangle": ("triangle", "triangle"),
    "star": ("star", "star"), "diamond": ("diamond", "rhombus"),
}
MASK_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200, 255, 225, 25, 145, 30, 180] + [128] * (3 * 250)
_BACKGROUND_PHOTOS = ("brick", "grass", "gravel", "camera", "moon", "coffee", "chelsea", "astronaut", "rocket",
                      "immunohistochemistry", "page", "coins")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str  # small | large
    cx: float  # centre in [0, 1] image units
    cy: float
    r: float  # radius in [0, 1] image units
    angle: float


def _where(o: Obj) -> str:
    horiz = "left" if o.cx < 0.4 else "right" if o.cx > 0.6 else ""
    vert = "top" if o.cy < 0.4 else "bottom" if o.cy > 0.6 else ""
    if horiz and vert:
        return f"in the {vert} {horiz} corner"
    if horiz:
        return f"on the {horiz}"
    if vert:
        return f"at the {vert}"
    return "in the middle"


def _relation(a: Obj, b: Obj) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _np(o: Obj, rng, syn: int, with_size: bool = True) -> str:
    size = SYNONYMS[o.size][syn] + " " if with_size else ""
    return f"a {size}{o.colour} {SYNONYMS[o.shape][syn]}"


def captions_for(objs: list[Obj], rng: np.random.Generator) -> list[str]:
    """Five paraphrases describing the same scene (deterministic given ``rng``)."""
    a = objs[0]
    if len(objs) == 1:
        return [
            f"{_np(a, rng, 0)} {_where(a)}",
            f"{_np(a, rng, 1)} {_where(a)} of the image",
            f"there is {_np(a, rng, 0)} {_where(a)}",
            f"{_np(a, rng, 0, False)} {_where(a)}",
            f"a single {a.colour} {SYNONYMS[a.shape][1]} {_where(a)}",
        ]
    b = objs[1]
    rel = _relation(a, b)
    inverse = {"to the left of": "to the right of", "to the right of": "to the left of",
               "above": "below", "below": "above"}[rel]
    if len(objs) == 2:
        return [
            f"{_np(a, rng, 0, False)} {rel} {_np(b, rng, 0, False)}",
            f"{_np(b, rng, 0, False)} {inverse} {_np(a, rng, 0, False)}",
            f"{_np(a, rng, 0)} and {_np(b, rng, 0)}",
            f"two shapes : {_np(a, rng, 1, False)} {rel} {_np(b, rng, 1, False)}",
            f"there is {_np(a, rng, 1)} {rel} {_np(b, rng, 1)}",
        ]
    c = objs[2]
    return [
        f"{_np(a, rng, 0, False)} , {_np(b, rng, 0, False)} and {_np(c, rng, 0, False)}",
        f"three shapes : {_np(a, rng, 0, False)} , {_np(b, rng, 0, False)} and {_np(c, rng, 0, False)}",
        f"{_np(a, rng, 0, False)} {rel} {_np(b, rng, 0, False)} and {_np(c, rng, 0, False)}",
        f"{_np(a, rng, 1)} , {_np(b, rng, 1)} and {_np(c, rng, 1)}",
        f"there are three shapes : {_np(a, rng, 1, False)} , {_np(b, rng, 1, False)} and "
        f"{_np(c, rng, 1, False)}",
    ]


def _polygon(o: Obj, size: int) -> list[tuple[float, float]] | None:
    cx, cy, r = o.cx * size, o.cy * size, o.r * size
    if o.shape == "circle":
        return None
    if o.shape == "square":
        k, ang = 4, o.angle + math.pi / 4
        rad = [r] * k
    elif o.shape == "diamond":
        k, ang = 4, 0.0
        rad = [r * 1.15, r * 0.75] * 2
    elif o.shape == "triangle":
        k, ang = 3, o.angle - math.pi / 2
        rad = [r * 1.1] * k
    else:  # star
        k, ang = 10, o.angle - math.pi / 2
        rad = [r * 1.15, r * 0.5] * 5
    return [(cx + rad[i] * math.cos(ang + 2 * math.pi * i / k), cy + rad[i] * math.sin(ang + 2 * math.pi * i / k))
            for i in range(k)]


_PHOTO_CACHE: dict[str, np.ndarray] = {}


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 background."""
    if style == "target":
        from vlens.data.photos import load_photo

        name = _BACKGROUND_PHOTOS[rng.integers(len(_BACKGROUND_PHOTOS))]
        if name not in _PHOTO_CACHE:
            _PHOTO_CACHE[name] = np.asarray(load_photo(name))
        photo = _PHOTO_CACHE[name]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32)
        arr = 0.55 * arr + 0.45 * 110.0  # muted so objects stay visible
        return arr.astype(np.uint8)
    # pretrain: smooth two-colour gradient plus mild noise
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    g = (np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None])
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    arr = c0[None, None, :] * (1 - g[..., None]) + c1[None, None, :] * g[..., None]
    arr += rng.normal(0, 6, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_scene(seed: int, style: str, split: str, index: int, size: int = 128):
    """One scene -> (RGB image, mask with class ids (P mode), captions, objects)."""
    style_code, split_code = STYLES.index(style), ("train", "val", "test").index(split)
    rng = np.random.default_rng([seed, style_code, split_code, index])
    n_obj = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2] if style == "target" else [0.4, 0.4, 0.2]))
    objs: list[Obj] = []
    colours = list(COLOURS)
    tries = 0
    while len(objs) < n_obj and tries < 200:
        tries += 1
        large = rng.random() < (0.5 if style == "target" else 0.6)
        r = rng.uniform(0.17, 0.24) if large else rng.uniform(0.09, 0.13)
        if n_obj > 1:
            r *= 0.85
        cx, cy = rng.uniform(r + 0.03, 1 - r - 0.03, 2)
        if any(math.hypot(cx - o.cx, cy - o.cy) < (r + o.r) * 1.1 for o in objs):
            continue
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = colours.pop(int(rng.integers(len(colours))))
        objs.append(Obj(shape, colour, "large" if large else "small", float(cx), float(cy), float(r),
                        float(rng.uniform(-0.3, 0.3))))
    img = Image.fromarray(_background(style, size, rng), "RGB")
    mask = Image.new("P", (size, size), 0)
    mask.putpalette(MASK_PALETTE)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    outline = (20, 20, 20) if style == "pretrain" else None
    for o in objs:
        cls = CLASSES.index(o.shape)
        poly = _polygon(o, size)
        if poly is None:
            box = [(o.cx - o.r) * size, (o.cy - o.r) * size, (o.cx + o.r) * size, (o.cy + o.r) * size]
            draw.ellipse(box, fill=COLOURS[o.colour], outline=outline, width=2)
            mdraw.ellipse(box, fill=cls)
        else:
            draw.polygon(poly, fill=COLOURS[o.colour], outline=outline, width=2)
            mdraw.polygon(poly, fill=cls)
    return img, mask, captions_for(objs, rng), objs


def _write_one(args) -> dict:
    out, seed, style, split, index, size = args
    img, mask, caps, objs = make_scene(seed, style, split, index, size)
    name = f"{split}_{index:05d}.png"
    img.save(Path(out) / "images" / name, format="PNG", optimize=False)
    mask.save(Path(out) / "masks" / name, format="PNG", optimize=False)
    return {
        "filepath": "images", "filename": name, "split": split, "imgid": f"{style}-{split}-{index}",
        "mask": f"masks/{name}", "sentences": [{"raw": c, "tokens": c.split()} for c in caps],
        "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "cx": round(o.cx, 4),
                     "cy": round(o.cy, 4)} for o in objs],
    }


def make_shapes(out, train: int = 1000, val: int = 100, test: int = 100, seed: int = 0, style: str = "target",
                size: int = 128, workers: int | None = None, progress: bool | None = None, force: bool = False) -> Path:
    """Write ``OUT/dataset.json`` (Karpathy format + masks + objects), ``OUT/images/`` and ``OUT/masks/``.

    A folder that already holds files is refused unless ``force`` (then the dataset's own files are replaced;
    other files in the folder are left alone)."""
    from vlens.errors import ConfigError
    from vlens.runs import progress as bar
    from vlens.runs import write_json

    if style not in STYLES:
        raise ConfigError(f"unknown shapes style '{style}'; choose one of {', '.join(STYLES)}")
    if min(train, val, test) < 0 or size < 16:
        raise ConfigError("split sizes must be >= 0 and --size at least 16 pixels")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is an existing file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a dataset (dataset.json)" if (out / "dataset.json").exists() else "files"
        raise ConfigError(f"{out} already holds {what}; choose a new folder, or pass --force to replace the "
                          "dataset there")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, style, split, i, size)
            for split, n in (("train", train), ("val", val), ("test", test)) for i in range(n)]
    workers = workers or min(2, len(jobs)) or 1
    if workers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(bar(pool.map(_write_one, jobs, chunksize=32), total=len(jobs), desc="shapes",
                            disable=None if progress is None else not progress))
    else:
        rows = [_write_one(j) for j in bar(jobs, desc="shapes", disable=None if progress is None else not progress)]
    meta = {"dataset": "vlens-shapes", "style": style, "seed": seed, "size": size, "classes": list(CLASSES),
            "images": rows}
    write_json(out / "dataset.json", meta)
    _remove_orphans(out, {r["filename"] for r in rows})
    return out


_OWN_NAME = re.compile(r"(train|val|test)_\d{5,}\.png")


def _remove_orphans(out: Path, keep: set[str]) -> None:
    """After ``--force`` with fewer images: delete the images and masks a previous shapes dataset wrote here that
    the new ``dataset.json`` no longer lists (an index or a folder listing would pick them up). Only files named
    as this generator names them are touched."""
    for sub in ("images", "masks"):
        for p in (out / sub).iterdir():
            if p.is_file() and _OWN_NAME.fullmatch(p.name) and p.name not in keep:
                p.unlink()


def ensure_shapes(out, **kw) -> Path:
    """Generate a shapes dataset unless a complete one with the same settings is already at ``out``."""
    out = Path(out)
    marker = out / "dataset.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        want = sum(kw.get(k, d) for k, d in (("train", 1000), ("val", 100), ("test", 100)))
        if meta.get("style") == kw.get("style", "target") and len(meta.get("images", [])) == want \
                and meta.get("seed") == kw.get("seed", 0):
            return out
    return make_shapes(out, force=True, **kw)


def load_mask(path) -> np.ndarray:
    """A class-id mask (H, W) int64 from a P/L PNG."""
    with Image.open(path) as m:
        if m.mode not in ("P", "L", "I", "I;16"):
            m = m.convert("L")
        return np.asarray(m).astype(np.int64)


def scene_objects(data) -> dict[str, list[dict]]:
    """The objects of every scene of a shapes dataset (folder or its ``dataset.json``), by sample id.

    Each object is ``{"shape", "colour", "size", "cx", "cy"}`` (centre in [0, 1] image units), in the order the
    captions name them. A dataset that is not a shapes dataset gives an empty dict.
    """
    path = Path(data)
    path = path / "dataset.json" if path.is_dir() else path
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or meta.get("dataset") != "vlens-shapes":
        return {}
    return {str(im["imgid"]): list(im.get("objects", [])) for im in meta.get("images", [])}
