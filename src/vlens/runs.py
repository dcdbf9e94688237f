"""What every command that computes results shares: run folders, atomic writes, seeding, progress bars.

A run folder holds ``config.json`` (the resolved settings), ``metrics.json``, tables, figures and checkpoints.
Every file is written atomically (temp file in the same folder, fsync, ``os.replace``) so a crash or a kill
never leaves a half-written file behind: readers see the old version or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Use it for writers that want a filename (``torch.save``, ``fig.savefig``, ``faiss.write_index``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, numpy and torch scalars/arrays -> plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def write_json(path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


class RunDir:
    """A folder for one run: ``config.json``, ``metrics.json`` and whatever else the run writes."""

    def __init__(self, path, config: Any = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        if config is not None:
            self.write_config(config)

    def file(self, name: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_config(self, config: Any) -> Path:
        from vlens import __version__

        payload = {"vlens_version": __version__, "argv": sys.argv, "config": to_jsonable(config)}
        return write_json(self.file("config.json"), payload)

    def write_metrics(self, metrics: dict) -> Path:
        metrics = dict(metrics)
        metrics.setdefault("wall_time_s", round(time.time() - self.started, 3))
        return write_json(self.file("metrics.json"), metrics)


def progress(iterable=None, *, total: int | None = None, desc: str = "", disable: bool | None = None, **kw):
    """A tqdm progress bar on stderr; hidden when not attached to a terminal unless VLENS_PROGRESS=1."""
    from tqdm.auto import tqdm

    if disable is None:
        forced = os.environ.get("VLENS_PROGRESS")
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kw)
