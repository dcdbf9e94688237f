"""An index folder and its settings: the manifest, the SQLite database (the source of truth), the write lock.

An index is a folder::

    manifest.json   model, dimension, metric, kind, indexed root, vlens version, ANN settings, measured recall@10,
                    the files the last scan passed over by kind (``passed_over``)
    meta.sqlite     table ``images``: id, path (relative to the root), size, mtime_ns, sha256, caption, vector,
                    and the photo metadata of :data:`METADATA_COLUMNS`; table ``skipped``: unreadable files;
                    table ``state``: a generation counter
    vectors.faiss   the search structure, *derived* from meta.sqlite; ``vectors.json`` names the generation it holds
    lock            held (``flock``) by the one process that writes

How it is written so that it survives a kill: :mod:`vlens.retrieval.index` (the build pipeline); the FAISS file:
:mod:`vlens.retrieval.index_faiss`; reading and searching: :mod:`vlens.retrieval.index_reader`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError, IndexError_
from vlens.retrieval.ann import VLENS_KINDS, is_factory

FORMAT_VERSION = 1
KINDS = VLENS_KINDS
MANIFEST, DB, FAISS_FILE, FAISS_STATE, LOCK = "manifest.json", "meta.sqlite", "vectors.faiss", "vectors.json", "lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    caption TEXT,
    vector BLOB NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sha ON images(sha256);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state VALUES ('generation', 0);
"""

METADATA_COLUMNS = {"taken_at": "REAL", "camera_make": "TEXT", "camera_model": "TEXT", "gps_lat": "REAL",
                    "gps_lon": "REAL", "width": "INTEGER", "height": "INTEGER", "folder": "TEXT", "format": "TEXT"}
"""Per-image photo metadata (NULL when unknown; meanings in :mod:`vlens.photo_meta`). The file's size in bytes and
its mtime are the columns ``size`` and ``mtime_ns``. Indexes written before these columns existed get them (NULL)
when a writer opens them; ``index update`` then fills them from the files' headers (nothing is re-embedded)."""


def image_columns(con: sqlite3.Connection) -> set[str]:
    """The columns of this database's ``images`` table (a read-only old index lacks :data:`METADATA_COLUMNS`)."""
    return {r[1] for r in con.execute("PRAGMA table_info(images)")}


def _add_metadata_columns(con: sqlite3.Connection) -> None:
    have = image_columns(con)
    with con:
        for name, kind in METADATA_COLUMNS.items():
            if name not in have:
                con.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")


@dataclass
class IndexConfig:
    """How an index is built; stored in the manifest so that ``update`` repeats it."""

    model: str = "builtin:clip-tiny"
    """Dual encoder (hub id, save_pretrained folder or builtin:NAME). Queries must use the same model."""
    kind: str = "flat"
    """flat: exact, best up to ~1M vectors. ivf: inverted lists, fast at millions. hnsw: graph, fastest queries,
    slowest to build, rebuilt on every update (HNSW cannot delete). ivfpq: inverted lists of product-quantised
    codes (``pq_bytes`` per vector instead of 4*dim), for 100M+ vectors. Or a FAISS factory string
    (``IVF4096,PQ64``, ``OPQ32,IVF1024,PQ32``, ``HNSW32,SQ8``)."""
    batch_size: int = 32
    """Images embedded (and committed) together; a kill loses at most one batch of work."""
    captioner: str | None = None
    """Optional captioning model; its caption is stored with each image and shown in results."""
    nlist: int = 0
    """IVF lists; 0 = about 4*sqrt(N)."""
    hnsw_m: int = 32
    """HNSW neighbours per node: more = better recall, more memory, slower build."""
    pq_bytes: int = 0
    """ivfpq: bytes per vector (PQ sub-quantizers of 8 bits); 0 = about dim/4. Fewer bytes = less RAM, lower
    recall."""
    target_recall: float = 0.95
    """nprobe (IVF) / efSearch (HNSW) is raised until recall@10 against exact search reaches this."""

    def check(self) -> None:
        if self.kind not in KINDS and not is_factory(self.kind):
            raise ConfigError(f"unknown index kind '{self.kind}'; choose one of {', '.join(KINDS)} "
                              "(flat = exact, the default) or a FAISS factory string such as IVF1024,PQ32")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if not 0 < self.target_recall <= 1:
            raise ConfigError("target recall must be in (0, 1]")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("the index needs a model (--model)")
        if self.captioner is not None and (not isinstance(self.captioner, str) or not self.captioner.strip()):
            raise ConfigError("--captioner needs a model spec, e.g. builtin:blip-tiny")
        if not 0 <= self.nlist <= 1 << 20:
            raise ConfigError(f"--nlist must be 0 (automatic) to {1 << 20} (got {self.nlist})")
        if not 2 <= self.hnsw_m <= 256:
            raise ConfigError(f"HNSW M must be 2 to 256 (got {self.hnsw_m})")
        if self.batch_size > 1 << 16:
            raise ConfigError(f"--batch-size must be at most {1 << 16} (got {self.batch_size})")


@dataclass
class UpdateReport:
    """What a build or update did."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    renamed: int = 0
    reused: int = 0
    unchanged: int = 0
    embedded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    passed_over: dict[str, int] = field(default_factory=dict)
    """Files the folder scan passed over, by kind: {'.mov': 37, '.heic (install vlens[photos])': 3, 'hidden': 2}."""
    described: int = 0
    """Images already indexed whose photo metadata was read from their headers (an index from before it existed)."""
    total: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    root: str = ""  # the indexed folder: skipped paths are relative to it

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{self.total} images indexed", f"{self.added} added", f"{self.changed} changed",
                 f"{self.removed} removed", f"{self.renamed} renamed", f"{self.unchanged} unchanged"]
        line = ", ".join(parts) + f" in {self.seconds:.1f} s"
        if self.embedded:
            line += f" ({self.embedded} embedded, {self.images_per_s:.1f} images/s)"
        if self.described:
            line += f"\nphoto metadata read for {self.described} image(s) indexed before vlens stored it"
        kinds = skip_kinds(self.passed_over, len(self.skipped))
        if kinds:
            line += f"\nskipped: {kinds}" + (":" if self.skipped else "")
        if self.skipped:
            from vlens.images import shown_path

            line += "".join(f"\n  {shown_path(p, self.root or None)}: {r}" for p, r in self.skipped[:10])
            if len(self.skipped) > 10:
                line += f"\n  ... and {len(self.skipped) - 10} more (vlens index info --json lists all)"
        return line


def skip_kinds(passed_over: dict[str, int], unreadable: int = 0) -> str:
    """'37 .mov, 3 .heic (install vlens[photos]), 2 unreadable': every kind of file left out, most first (the
    unreadable and refused ones, listed by name after it, last)."""
    items = sorted(passed_over.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join([f"{n} {kind}" for kind, n in items] + ([f"{unreadable} unreadable"] if unreadable else []))


# ----------------------------------------------------------------------------------------------- files, lock


INDEX_FILES = (MANIFEST, DB, DB + "-wal", DB + "-shm", DB + "-journal", FAISS_FILE, FAISS_STATE, LOCK)


def _is_index_file(name: str) -> bool:
    """A file an index folder may hold: its own files, or the temp file of an atomic write of one of them."""
    return name in INDEX_FILES or any(name.startswith(f".{f}.") for f in INDEX_FILES)


def remove_temps(folder: Path) -> list[Path]:
    """Remove temp files that killed writers left in an index folder. Call it only while holding the lock."""
    from vlens.runs import remove_stale_temps

    return [p for f in (MANIFEST, FAISS_FILE, FAISS_STATE) for p in remove_stale_temps(Path(folder) / f)]


def is_index(folder) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder) -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise IndexError_(f"no index at {folder}; create one with `vlens index build IMAGES_DIR --out {folder}`")
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise IndexError_(f"{folder} is not a vlens index (no {MANIFEST}); create one with "
                          f"`vlens index build IMAGES_DIR --out {folder}`") from None
    except json.JSONDecodeError as exc:
        raise IndexError_(f"{folder / MANIFEST} is damaged ({exc}); rebuild with `vlens index build --force`") from None


def write_manifest(folder, manifest: dict) -> None:
    from vlens.runs import write_json

    write_json(Path(folder) / MANIFEST, manifest)


def _known(stored: dict) -> dict:
    return {k: v for k, v in stored.items() if k in IndexConfig.__dataclass_fields__}


def _check_stored(config: IndexConfig, folder: Path) -> None:
    try:
        config.check()
    except ConfigError as exc:
        raise IndexError_(f"{folder / MANIFEST} holds an invalid setting ({exc}); rebuild the index with "
                          "`vlens index build IMAGES --out FOLDER --force`") from None


def connect(folder, readonly: bool = False) -> sqlite3.Connection:
    """Open meta.sqlite (WAL: readers never block the writer, a kill never tears a transaction)."""
    path = Path(folder) / DB
    if readonly:
        if not path.exists():
            raise IndexError_(f"{folder} has no {DB}; rebuild it with `vlens index build --force`")
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    else:
        # Created here, not by SQLite (which uses 0644 whatever the umask), so the database gets the same mode as
        # every other file of the index (0666 less the umask); SQLite gives its -wal/-shm files the database's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
        con = sqlite3.connect(path, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(SCHEMA)
        _add_metadata_columns(con)
    return con


def faiss_state(folder) -> dict | None:
    """What ``vectors.json`` says about the FAISS file (its database generation, kind, tuned settings), or None."""
    path = Path(folder) / FAISS_STATE
    if not (Path(folder) / FAISS_FILE).is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def generation(con: sqlite3.Connection) -> int:
    row = con.execute("SELECT value FROM state WHERE key='generation'").fetchone()
    return int(row[0]) if row else 0


def _bump(con: sqlite3.Connection) -> None:
    con.execute("UPDATE state SET value = value + 1 WHERE key='generation'")


def iter_vectors(con: sqlite3.Connection, dim: int, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (ids (n,), vectors (n, d)) from the database in id order, ``chunk`` rows at a time."""
    last = -1
    while True:
        rows = con.execute("SELECT id, vector FROM images WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)  # (n, d)
        last = int(ids[-1])
        yield ids, vecs


@contextlib.contextmanager
def index_lock(folder, command: str = "vlens index") -> Iterator[None]:
    """Hold the index's write lock, or fail at once naming the holder. The OS drops it if the holder dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every other file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise IndexError_(f"{folder} is being written by {holder}; wait for it to finish and retry "
                              "(searching it meanwhile is fine)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        from vlens.bulk import close_in_workers

        close_in_workers(fd)  # decode workers must not hold the lock past a kill of this process
        try:
            yield
        finally:
            close_in_workers(fd, register=False)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def safe_join(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (after resolving links), else None."""
    if not rel or rel.startswith("/") or ".." in Path(rel).parts:
        return None
    p = (root / rel).resolve()
    return p if p.is_relative_to(root.resolve()) and p.is_file() else None
