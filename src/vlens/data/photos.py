"""The scikit-image sample photos as a named image set (``photos``): real pictures that need no network.

Grayscale photos are kept (they exercise the grayscale path); ``stereo_motorcycle`` contributes its left view.
``photo_paths()`` writes them once as PNGs into the vlens cache so path-based commands can use them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text", "motorcycle",
)
# Photos with real objects and structure; the texture-only and document ones are poor for matching.
MATCHING_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "immunohistochemistry",
                   "hubble_deep_field", "retina", "motorcycle", "colorwheel", "logo")


def cache_dir() -> Path:
    base = os.environ.get("VLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vlens")
    return Path(base)


def load_photo(name: str) -> Image.Image:
    """One scikit-image photo as an RGB PIL image."""
    from skimage import data

    from vlens.images import to_rgb

    if name == "motorcycle":
        arr = data.stereo_motorcycle()[0]
    elif name in PHOTO_NAMES:
        arr = getattr(data, name)()
    else:
        from vlens.errors import DatasetError

        raise DatasetError(f"unknown photo '{name}'; available: {', '.join(PHOTO_NAMES)}")
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(np.float64) - arr.min()) / max(np.ptp(arr), 1e-9)).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return to_rgb(Image.fromarray(arr, "RGBA"))
    return to_rgb(Image.fromarray(arr))


def photo_paths(names=MATCHING_PHOTOS, folder=None) -> list[Path]:
    """Write the named photos as PNG (once) and return their paths."""
    from vlens.runs import atomic_path

    folder = Path(folder) if folder else cache_dir() / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        p = folder / f"{name}.png"
        if not p.exists():
            with atomic_path(p) as tmp:
                load_photo(name).save(tmp, format="PNG")
        out.append(p)
    return out


def image_set(spec: str) -> list[Path]:
    """Resolve an image-set spec: ``photos`` (all scikit-image photos), ``photos:matching``, ``shapes`` or
    ``shapes:STYLE`` (a small generated shapes set), ``opencv:heldout`` / ``opencv:train`` (real photos from the
    fetched opencv-doc samples, see :mod:`vlens.data.opencv_samples`), or a folder of images.

    A folder that exists is always used as that folder, even when its name is also a built-in set's name
    (``./shapes``, ``shapes_v2``): only the exact names above, with no such folder present, mean a built-in set."""
    from vlens.images import list_images

    builtin = spec in ("photos", "photos:all", "photos:matching", "shapes") or spec.startswith(("shapes:", "opencv:"))
    if builtin and Path(spec).exists():
        builtin = False
    if builtin and spec.startswith("opencv:"):
        from vlens.data import opencv_samples as ocv

        sets = {"heldout": ocv.HELDOUT_PHOTOS, "train": ocv.TRAIN_PHOTOS}
        name = spec.split(":", 1)[1]
        if name not in sets:
            from vlens.errors import DatasetError

            raise DatasetError(f"unknown image set '{spec}'; use opencv:heldout or opencv:train")
        return ocv.photo_paths(sets[name])
    if builtin:
        if spec == "photos:matching":
            return photo_paths(MATCHING_PHOTOS)
        if spec.startswith("photos"):
            return photo_paths(PHOTO_NAMES)
        from vlens.data.shapes import ensure_shapes

        style = spec.split(":", 1)[1] if ":" in spec else "target"
        root = ensure_shapes(cache_dir() / f"shapes-{style}-small", train=200, val=20, test=20, style=style)
        return list_images(root / "images")
    paths = list_images(spec)
    if not paths:
        from vlens.errors import DatasetError

        raise DatasetError(f"no image files found under {spec}")
    return paths
