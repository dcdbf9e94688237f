"""What every command that computes results shares: run folders, atomic writes, seeding, progress bars.

A run folder holds ``config.json`` (the resolved settings), ``metrics.json``, tables, figures and checkpoints.
Every file is written atomically (temp file in the same folder, fsync, ``os.replace``) so a crash or a kill
never leaves a half-written file behind: readers see the old version or the new one. The temp files are created
private (0600) and get the mode an ordinary ``open()`` would give (0666 minus the umask) before they replace the
target, so datasets, models and indexes can be shared as the user's umask says. Temp files left by a killed run
(``.NAME.XXXX``) are removed by the next run that writes NAME (see :func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vlens.faults import fault_point


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, which races with other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)
    return mask


def apply_umask(path, folder: bool = False) -> None:
    """Give ``path`` the mode ``open()`` / ``mkdir()`` would have given it (0666 / 0777 minus the umask)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def apply_umask_tree(folder) -> Path:
    """``apply_umask`` on a folder and everything in it (libraries such as safetensors write 0600 files)."""
    folder = Path(folder)
    apply_umask(folder, folder=True)
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            apply_umask(os.path.join(dirpath, d), folder=True)
        for f in filenames:
            apply_umask(os.path.join(dirpath, f))
    return folder


def make_temp_dir(parent, name: str) -> Path:
    """A fresh temp folder ``.NAME.XXXX`` inside ``parent`` with the umask's mode (``mkdtemp`` makes 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    apply_umask(tmp, folder=True)
    return tmp


def remove_stale_temps(path, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temp files/folders a killed writer of ``path`` left next to it (``.NAME.*``).

    Only call it while holding whatever makes you the one writer of ``path`` (a run folder, an index lock)."""
    import shutil

    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for p in path.parent.glob(f".{glob_escape(path.name)}.*"):
        try:
            if now - p.lstat().st_mtime < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def output_problem(path) -> str | None:
    """Why vlens cannot write the file ``path`` (a one-line reason that says what to do), or None.

    ``-`` is refused (vlens prints its own messages on stdout, so a picture there would be mixed with them; name
    ``/dev/stdout`` to pipe a file on purpose). A folder, or a link loop, is refused. A symlink is fine (the file
    is written at its target), so is a device or a FIFO that can be opened for writing (written directly)."""
    text = str(path)
    if text == "-":
        return ("'-' is not a file name: vlens prints its own messages on stdout; give a file name (or "
                "/dev/stdout to send the file down a pipe)")
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a link loop; EACCES: a folder on the way that cannot be searched
        return f"{text}: {exc.strerror.lower() if exc.strerror else exc}; give another file name"
    if stat.S_ISDIR(st.st_mode):
        return f"{text} is a folder; give a file name to write"
    if not stat.S_ISREG(st.st_mode) and not os.access(p, os.W_OK):
        return f"{text} is a special file that cannot be written (permission denied); give a file name"
    return None


def is_special(path: Path) -> bool:
    """True for what is written directly, never replaced: an existing path (links followed) that is neither a
    regular file nor a folder (a device such as /dev/null, a FIFO, a socket), and anything reached through /dev or
    /proc (``/dev/stdout`` redirected to a file is ``/proc/self/fd/1``, a link to that file: replacing it would
    leave the shell's redirection pointing at the old, emptied file)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    hop = os.path.abspath(path)
    for _ in range(40):
        if hop.startswith(("/dev/", "/proc/")):
            return True
        if not os.path.islink(hop):
            return False
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
    return False


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Use it for writers that want a filename (``torch.save``, ``fig.savefig``, ``faiss.write_index``).

    Links are written *through*: the temp file goes beside the link's final target (a chain of links is followed;
    a dangling link creates its target) and is renamed there, so the link stays a link and its target gets the new
    bytes atomically. A device or FIFO (``/dev/stdout``, ``/dev/null``, a named pipe) is never replaced: the
    finished file is copied into it. ``-``, a folder or a link loop: :class:`vlens.errors.ConfigError`, one line
    (see :func:`output_problem`), before anything is written.
    """
    from vlens.errors import ConfigError

    path = Path(path)
    problem = output_problem(path)
    if problem:
        raise ConfigError(problem)
    if is_special(path):
        import shutil

        folder = tempfile.mkdtemp(prefix=".vlens-out.")
        tmp = Path(folder) / ("out" + (suffix or path.suffix))
        try:
            yield tmp
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        apply_umask(tmp)
        fault_point("atomic.replace")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` as UTF-8; a file name that is not UTF-8 inside it (a table naming a dataset folder) is written
    escaped (``\\xe9``), as vlens prints it, instead of failing after the work."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
    return atomic_write_bytes(path, data)


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


class LineProgress:
    """Progress of one long stage as occasional lines on stderr, for where a bar is hidden (a log, a pipe, a
    script that reads ``--json`` from stdout): nothing for work that ends within ``after`` seconds, then a line
    every ``every`` seconds with the share done and, from the rate so far, an estimate of the time left; a last
    line when it ends, if it said anything. The same ``update`` / ``close`` as a tqdm bar."""

    def __init__(self, total: int, desc: str, unit: str = "step", after: float = 3.0, every: float = 10.0,
                 stream=None):
        self.total, self.desc, self.unit = max(1, int(total)), desc, unit
        self.after, self.every, self.stream = after, every, stream
        self.n, self.t0, self.last = 0, time.monotonic(), None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        elapsed = now - self.t0
        if elapsed < self.after or (self.last is not None and now - self.last < self.every):
            return
        self.last = now
        share = min(1.0, self.n / self.total)
        left = f", about {_duration(elapsed * (1 - share) / share)} left" if 0 < share < 1 else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s")
        self._say(f"{self.desc}: {share:.0%} ({self.n:,} of {self.total:,} {units}) after "
                  f"{_duration(elapsed)}{left}")

    def close(self) -> None:
        if self.last is not None:
            self._say(f"{self.desc}: done in {_duration(time.monotonic() - self.t0)}")
            self.last = None

    def _say(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def stage_progress(total: int, desc: str, unit: str = "step"):
    """Progress of one long stage: a tqdm bar (with its rate and time left) on a terminal, else
    :class:`LineProgress` lines on stderr; nothing with VLENS_PROGRESS=0."""
    forced = os.environ.get("VLENS_PROGRESS")
    if forced == "0" or forced == "1" or sys.stderr.isatty():
        return progress(total=total, desc=desc, unit=unit, disable=forced == "0")
    return LineProgress(total, desc, unit)
