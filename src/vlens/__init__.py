"""vlens: see what vision models see.

The public API is small and imported lazily so that ``import vlens`` and ``vlens --help`` stay instant:

>>> import vlens
>>> img = vlens.load_image("photo.jpg")          # RGB PIL image, EXIF-rotated
>>> ds = vlens.load_dataset("shapes_dir")          # Karpathy / COCO / imagefolder
>>> m = vlens.load_model("builtin:dino-tiny", "backbone")

On a shared or busy machine, put vlens's CPU policy in force first, before importing torch (see ``vlens.cpu``):

>>> vlens.use_cpu_policy()                          # passive OpenMP waiting, threads = usable cores
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_image": ("vlens.images", "load_image"),
    "load_dataset": ("vlens.data", "load_dataset"),
    "load_model": ("vlens.models", "load"),
    "use_cpu_policy": ("vlens.cpu", "apply"),
    "VlensError": ("vlens.errors", "VlensError"),
    "ImageLoadError": ("vlens.errors", "ImageLoadError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlens' has no attribute {name!r}")
