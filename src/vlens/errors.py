"""Errors a user can act on. Each message says what went wrong and what to do next.

The CLI prints ``VlensError`` as one line and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class VlensError(Exception):
    """Base class for every error vlens raises on purpose."""

    exit_code = 1


class ImageLoadError(VlensError):
    """An image file could not be read (missing, empty, truncated, not an image, too large)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")


class DatasetError(VlensError):
    """A dataset path or file is missing, has an unknown format, or lacks what was asked for."""


class ModelLoadError(VlensError):
    """A model spec could not be resolved to weights (not cached, offline, wrong kind)."""


class ConfigError(VlensError):
    """A setting is out of range or inconsistent with another one."""


class IndexError_(VlensError):
    """A search index is missing, locked by another process, or was built differently."""
