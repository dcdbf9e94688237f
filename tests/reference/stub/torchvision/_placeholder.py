"""Placeholders for the torchvision names timm and open_clip import at module level (transforms, datasets,
FrozenBatchNorm2d). Constructing one raises: the reference tier builds models and runs forwards, nothing else."""

from __future__ import annotations


def placeholder(module: str, name: str) -> type:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{module}.{name} is a placeholder of vlens's reference-test torchvision stub")

    return type(name, (), {"__init__": __init__, "__module__": module})


def module_getattr(module: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(module, name)

    return __getattr__
