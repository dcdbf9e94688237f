"""Held-out checks: was a benchmark image among the images a backbone was trained on?

A backbone trained by vlens lists its training images in ``training_images.json`` next to its weights (written by
``vlens ssl train`` and shipped with ``builtin:dino-tiny``): for each image its name, size and two fingerprints of
its decoded RGB pixels, a SHA-256 (the same pixels, whatever the file format) and a 16 x 16 grey thumbnail (the
same picture resized or re-encoded). A benchmark image overlaps a training image when the hashes are equal, or
the aspect ratios agree within 2% and the thumbnails differ by less than :data:`THUMB_TOLERANCE` grey levels on
average. Benchmarks refuse overlapping images unless told to allow them, and then flag their results.

Models without such a list (hub checkpoints, ``random:`` weights, ``pixels``, ``sift``) are not checked: the hub's
training sets are not known here, and the others learnt nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from vlens.errors import DatasetError

FILENAME = "training_images.json"
THUMB = 16
THUMB_TOLERANCE = 4.0  # mean absolute grey-level difference (0-255) of the thumbnails


def fingerprint(img: Image.Image) -> dict:
    """SHA-256 of the RGB pixels (with the size) and a 16 x 16 grey thumbnail of one image."""
    from vlens.images import to_rgb

    rgb = to_rgb(img)
    arr = np.asarray(rgb, dtype=np.uint8)
    h = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode() + arr.tobytes()).hexdigest()
    thumb = np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.BOX), dtype=np.uint8)
    return {"size": list(rgb.size), "sha256": h, "thumb": thumb.ravel().tolist()}


def _same(a: dict, b: dict) -> bool:
    if a["sha256"] == b["sha256"]:
        return True
    ra, rb = a["size"][0] / a["size"][1], b["size"][0] / b["size"][1]
    if abs(ra / rb - 1) > 0.02:
        return False
    diff = np.abs(np.asarray(a["thumb"], dtype=np.float64) - np.asarray(b["thumb"], dtype=np.float64))
    return float(diff.mean()) < THUMB_TOLERANCE


def write_training_images(folder, paths, source: str = "", inherited: list[dict] = ()) -> Path:
    """Write ``training_images.json`` into a model folder for the images at ``paths``, plus ``inherited`` rows
    (the list of the weights a run started from), without duplicates."""
    from vlens.images import load_image
    from vlens.runs import write_json

    rows = [{"name": Path(p).name, **fingerprint(load_image(p))} for p in paths]
    own = {r["sha256"] for r in rows}
    rows += [r for r in inherited if r["sha256"] not in own]
    return write_json(Path(folder) / FILENAME, {"source": source, "count": len(rows), "images": rows})


def model_folder(spec: str) -> Path | None:
    """The folder holding a model's files, for ``builtin:NAME`` and local folders; None otherwise."""
    if not spec or spec.lower().startswith(("random:", "pixels", "sift")):
        return None
    if spec.startswith("builtin:"):
        folder = Path(__file__).resolve().parents[1] / "models" / "builtin" / spec.split(":", 1)[1]
        return folder if folder.is_dir() else None
    p = Path(spec)
    return p if p.is_dir() else None


def training_images(spec: str) -> list[dict]:
    """The training images a model lists (empty when it lists none)."""
    from vlens.match.features import fused_parts
    from vlens.runs import read_json

    fused = fused_parts(spec)
    if fused is not None:  # a fusion was trained on what any of its parts was trained on
        return [row for name, _ in fused for row in training_images(name)]
    folder = model_folder(spec)
    if folder is None or not (folder / FILENAME).is_file():
        return []
    return read_json(folder / FILENAME).get("images", [])


def find_overlap(spec: str, images, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(benchmark image, training image) name pairs for every benchmark image the model was trained on.
    ``images``: paths or PIL images; ``names``: how to call them (default: file names, ``image N``)."""
    from vlens.images import load_image

    train = training_images(spec)
    if not train:
        return []
    hits = []
    for i, im in enumerate(images):
        name = names[i] if names else (Path(im).name if not isinstance(im, Image.Image) else f"image {i + 1}")
        fp = fingerprint(im if isinstance(im, Image.Image) else load_image(im))
        match = next((t for t in train if _same(fp, t)), None)
        if match is not None:
            hits.append((name, match["name"]))
    return hits


def check_heldout(spec: str, images, allow: bool = False, what: str = "this benchmark",
                  names: list[str] | None = None) -> list[tuple[str, str]]:
    """Refuse (one-line :class:`DatasetError`) benchmark images that ``spec`` was trained on; with ``allow``
    return them instead so the caller can flag its results."""
    hits = find_overlap(spec, images, names)
    if hits and not allow:
        shown = ", ".join(f"{a} (= {b})" for a, b in hits[:3]) + (" ..." if len(hits) > 3 else "")
        raise DatasetError(f"{len(hits)} image(s) of {what} are among {spec}'s training images: {shown}; "
                           "a benchmark on them measures memory, not generalisation. Use held-out images (the "
                           "default opencv:heldout set) or pass --allow-train-images to run anyway (results "
                           "are flagged)")
    return hits
