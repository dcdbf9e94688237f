"""Named image sets for the correspondence work (``photos``, ``shapes``, ``opencv:...``, or a folder): one resolver
over the data sources, so that no source has to import another."""

from __future__ import annotations

from pathlib import Path

from vlens.data.cache import cache_dir
from vlens.data.photos import MATCHING_PHOTOS, PHOTO_NAMES, photo_paths


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
