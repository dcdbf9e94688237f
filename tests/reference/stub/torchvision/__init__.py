"""A stub of torchvision for vlens's reference test tier ONLY (tests/test_reference_checkpoints.py): PyPI's
torchvision does not load beside the CPU torch vlens pins, and timm / open_clip import a few of its names at module
level. The tier puts this folder first on PYTHONPATH of a subprocess that never imports vlens or transformers
(transformers probes for torchvision and would break on a stub)."""

from torchvision import datasets, ops, transforms  # noqa: F401

__version__ = "0.0.0+vlens.reference.stub"
