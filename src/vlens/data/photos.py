"""The scikit-image sample photos as a named image set (``photos``): real pictures that need no network.

Grayscale photos are kept (they exercise the grayscale path); ``stereo_motorcycle`` contributes its left view.
``photo_paths()`` writes them once as PNGs into the vlens cache so path-based commands can use them; the named
image sets that mix them with other sources are in :mod:`vlens.data.image_sets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vlens.data.cache import cache_dir

PHOTO_NAMES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text", "motorcycle",
)
# Photos with real objects and structure; the texture-only and document ones are poor for matching.
MATCHING_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "immunohistochemistry",
                   "hubble_deep_field", "retina", "motorcycle", "colorwheel", "logo")


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
