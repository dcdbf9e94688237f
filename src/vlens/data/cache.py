"""The vlens cache folder (``$VLENS_CACHE``, default ``~/.cache/vlens``): fetched samples, written photos, small
generated shape sets. Its own module because every data source keeps files there and none should import another
to find it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("VLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vlens")
    return Path(base)
