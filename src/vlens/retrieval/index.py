"""A persistent image index: vectors in FAISS, metadata (and a copy of every vector) in SQLite, a JSON manifest.

An index is a folder::

    manifest.json   model, dimension, metric, kind, indexed root, vlens version, ANN settings, measured recall@10
    meta.sqlite     table ``images``: id, path (relative to the root), size, mtime_ns, sha256, caption, vector;
                    table ``skipped``: unreadable files; table ``state``: a generation counter
    vectors.faiss   the search structure, *derived* from meta.sqlite; ``vectors.json`` names the generation it holds
    lock            held (``flock``) by the one process that writes

Why it survives a kill at any moment: SQLite is the source of truth and every change is a transaction (a batch of
embedded images is committed at once, or not at all). The FAISS file is rewritten atomically (temp + rename) after
the database and is trusted only when its generation matches the database's; otherwise readers fall back to exact
search straight from SQLite and the next ``update`` rebuilds it. A rerun recomputes what is missing from a diff of
the folder against the database, so nothing is lost or duplicated (paths are UNIQUE, ids never reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError, IndexError_
from vlens.faults import fault_point
from vlens.retrieval.ann import (  # noqa: F401
    VLENS_KINDS,
    auto_nlist,
    drop_self,
    exact_topk,
    is_factory,
    make_faiss,
    needs_training,
    recall_at_k,
    search_knob,
    set_search_param,
    tune,
)

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
    total: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{self.total} images indexed", f"{self.added} added", f"{self.changed} changed",
                 f"{self.removed} removed", f"{self.renamed} renamed", f"{self.unchanged} unchanged"]
        line = ", ".join(parts) + f" in {self.seconds:.1f} s"
        if self.embedded:
            line += f" ({self.embedded} embedded, {self.images_per_s:.1f} images/s)"
        if self.skipped:
            line += f"\nskipped {len(self.skipped)} unreadable file(s):"
            line += "".join(f"\n  {p}: {r}" for p, r in self.skipped[:10])
            if len(self.skipped) > 10:
                line += f"\n  ... and {len(self.skipped) - 10} more (vlens index info --json lists all)"
        return line


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


def connect(folder, readonly: bool = False) -> sqlite3.Connection:
    """Open meta.sqlite (WAL: readers never block the writer, a kill never tears a transaction)."""
    path = Path(folder) / DB
    if readonly:
        if not path.exists():
            raise IndexError_(f"{folder} has no {DB}; rebuild it with `vlens index build --force`")
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    else:
        con = sqlite3.connect(path, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(SCHEMA)
    return con


def generation(con: sqlite3.Connection) -> int:
    row = con.execute("SELECT value FROM state WHERE key='generation'").fetchone()
    return int(row[0]) if row else 0


def _bump(con: sqlite3.Connection) -> None:
    con.execute("UPDATE state SET value = value + 1 WHERE key='generation'")


@contextlib.contextmanager
def index_lock(folder, command: str = "vlens index") -> Iterator[None]:
    """Hold the index's write lock, or fail at once naming the holder. The OS drops it if the holder dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan(root: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Image files under ``root``: {relative posix path: (size, mtime_ns)}, plus files refused (links out)."""
    from vlens.images import list_images

    real_root = root.resolve()
    found, refused = {}, []
    for p in list_images(root):
        rel = p.relative_to(root).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (e.g. Latin-1 names from an old camera or zip)
            shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
            refused.append((shown, "the file name is not valid UTF-8; rename the file to index it"))
            continue
        if not p.resolve().is_relative_to(real_root):
            refused.append((rel, "a link that points outside the indexed folder"))
            continue
        st = p.stat()
        found[rel] = (st.st_size, st.st_mtime_ns)
    return found, refused


def safe_join(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (after resolving links), else None."""
    if not rel or rel.startswith("/") or ".." in Path(rel).parts:
        return None
    p = (root / rel).resolve()
    return p if p.is_relative_to(root.resolve()) and p.is_file() else None


# ----------------------------------------------------------------------------------------------- FAISS


def _vectors(con: sqlite3.Connection, dim: int, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


def build_faiss(folder: Path, con: sqlite3.Connection, manifest: dict, config: IndexConfig, log=print) -> dict:
    """(Re)build vectors.faiss from the database, tune ANN settings, write it atomically; returns ANN info."""
    import faiss

    from vlens.runs import atomic_path, write_json

    dim, kind = int(manifest["dim"]), config.kind
    gen = generation(con)
    n = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    train = None
    if needs_training(kind):
        nlist = config.nlist or auto_nlist(n)
        m = min(n, max(nlist * 64, 10_000, 256 * 40 if kind != "ivf" else 0))
        rows = con.execute("SELECT vector FROM images ORDER BY random() LIMIT ?", (m,)).fetchall()
        train = np.frombuffer(b"".join(r[0] for r in rows), np.float32).reshape(len(rows), dim) if rows else None
    index = make_faiss(kind, dim, n, config, train)
    for ids, vecs in _vectors(con, dim):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    ann = {"kind": kind, "count": int(index.ntotal)}
    if kind != "flat" and n:
        rng = np.random.default_rng(0)
        qn = min(256, n)  # leave-one-out queries: stored vectors, each excluded from its own results
        qids = np.sort(rng.choice(n, qn, replace=False))
        # Queries: stored vectors picked at random positions (by rank in id order).
        all_ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM images ORDER BY id")), np.int64, n)
        pick = all_ids[qids].tolist()
        qrows = {}
        for i in range(0, len(pick), 900):
            part = pick[i:i + 900]
            qrows.update(con.execute(f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(part))})",
                                     part).fetchall())
        queries = np.stack([np.frombuffer(qrows[i], np.float32) for i in pick])  # (Q, d)
        own = np.array(pick, np.int64)
        _, truth = exact_topk(queries, _vectors(con, dim), 11)
        param, rec, curve = tune(index, kind, queries, drop_self(truth, own, 10), config.target_recall, own=own)
        ann.update({"param": search_knob(index), "value": param,
                    "recall_at_10": round(rec, 4), "recall_queries": int(qn), "curve": curve})
        if search_knob(index).startswith("nprobe"):
            ann["nlist"] = int(faiss.extract_index_ivf(index).nlist)
        if kind == "ivfpq":
            ann["pq_bytes"] = int(faiss.extract_index_ivf(index).code_size)
        if rec < config.target_recall:
            log(f"warning: recall@10 {rec:.3f} is below the target {config.target_recall} at the largest setting")
    elif kind == "flat":
        ann["recall_at_10"] = 1.0
    with atomic_path(folder / FAISS_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(folder / FAISS_STATE, {"generation": gen, **ann})
    return ann


MMAP_AUTO_BYTES = 1 << 30
"""``ImageIndex(mmap=None)`` memory-maps FAISS files larger than this (1 GiB)."""


def load_faiss(folder: Path, gen: int, mmap: bool | None = None):
    """The FAISS index if it matches database generation ``gen``, else None (stale or missing).

    ``mmap``: map the file instead of reading it (the OS pages in what searches touch, a server starts at once
    and shares the pages with other processes); None = only files above :data:`MMAP_AUTO_BYTES`.
    """
    import faiss

    from vlens.runs import read_json

    try:
        state = read_json(folder / FAISS_STATE)
    except (FileNotFoundError, json.JSONDecodeError):
        return None, None
    if state.get("generation") != gen or not (folder / FAISS_FILE).is_file():
        return None, state
    path = folder / FAISS_FILE
    if mmap is None:
        mmap = path.stat().st_size > MMAP_AUTO_BYTES
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(str(path), flags)
    if state.get("value") is not None:
        set_search_param(index, state["kind"], state["value"])
    return index, state


# ----------------------------------------------------------------------------------------------- writing


def _default_embedder(model: str, device: str = "auto",
                      dtype: str = "auto") -> tuple[Callable[[list], np.ndarray], int]:
    from vlens.retrieval.model import DualEncoder

    enc = DualEncoder.from_spec(model, device=device, dtype=dtype)
    return enc.encode_images, enc.dim


def _captioner_fn(spec: str) -> Callable[[list], list[str]]:
    try:
        from vlens.caption import Captioner, DecodeSettings
    except ImportError:
        raise ConfigError("captioning is not available in this vlens install (vlens.caption is missing); "
                          "build without --captioner") from None
    cap = Captioner.from_spec(spec)
    settings = DecodeSettings()
    return lambda images: [c[0].text if c else "" for c in cap.caption(images, settings)]


def _model_spec(model: str) -> str:
    """Store local model folders as absolute paths so the index works from any working directory."""
    p = Path(model).expanduser()
    return str(p.resolve()) if not model.startswith("builtin:") and p.exists() else model


def build_index(images_dir, out, config: IndexConfig | None = None, *, force: bool = False, embedder=None,
                progress: bool = True, log=print, workers: int = 2, device: str = "auto",
                dtype: str = "auto") -> UpdateReport:
    """Create an index of every image under ``images_dir`` in folder ``out`` (or resume an unfinished one).

    ``embedder``: optional ``(fn(list[PIL]) -> (n, d) unit float32, d)`` to reuse a loaded model.
    An existing index for the same folder and model is resumed/updated; a different one needs ``force``.
    ``workers``: processes decoding images while the model runs. Under torchrun / ``accelerate launch`` every
    process embeds a disjoint shard and process 0 writes the index (the same index one process would write).
    """
    from vlens.bulk import Processes

    config = config or IndexConfig()
    config.check()
    procs = Processes()
    if not procs.is_main:
        follow_build(procs, embedder or _default_embedder(_model_spec(config.model), device, dtype))
        return UpdateReport()
    root, out = Path(images_dir).expanduser(), Path(out).expanduser()
    if not root.is_dir():
        raise IndexError_(f"{root} is not a folder; give the folder of images to index")
    config.model = _model_spec(config.model)
    if config.captioner:
        config.captioner = _model_spec(config.captioner)
    if out.exists() and not out.is_dir():
        raise IndexError_(f"{out} is a file; choose a folder for the index (--out)")
    foreign = sorted(p.name for p in out.iterdir() if not _is_index_file(p.name)) if out.is_dir() else []
    if foreign and not is_index(out):
        raise IndexError_(f"{out} holds files that are not a vlens index ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new --out folder")
    # Resolve the models before anything is written: a mistyped --model or --captioner (or a kill while a model
    # loads) must leave nothing behind that a rerun would trip over.
    effective = config
    if is_index(out) and not force:
        with contextlib.suppress(IndexError_, TypeError):
            m = read_manifest(out)
            effective = IndexConfig(**{**_known(m.get("config", {})), "batch_size": config.batch_size})
    fault_point("index.model")
    if embedder is None:
        embedder = _default_embedder(effective.model, device, dtype)
    if effective.captioner:
        from vlens.models.hub import resolve

        resolve(effective.captioner)  # a ModelLoadError now, not after the images are embedded
    out.mkdir(parents=True, exist_ok=True)
    with index_lock(out, "vlens index build"):
        fault_point("index.start")
        remove_temps(out)
        if is_index(out) and not force:
            m = read_manifest(out)
            same = (m.get("root") == str(root.resolve()) and m.get("model") == config.model
                    and m.get("kind") == config.kind)
            if not same:
                raise IndexError_(f"{out} already holds an index of {m.get('root')} with {m.get('model')} "
                                  f"({m.get('kind')}); use --force to replace it or choose another --out")
            config = IndexConfig(**{**_known(m.get("config", {})), "batch_size": config.batch_size})
            _check_stored(config, out)
        else:  # --force, or what a run killed before it wrote the manifest left (no image rows yet): start clean
            for name in (MANIFEST, DB, DB + "-wal", DB + "-shm", FAISS_FILE, FAISS_STATE):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        encode, dim = embedder
        con = connect(out)
        if not is_index(out):
            from vlens import __version__

            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_manifest(out, {"format": FORMAT_VERSION, "vlens_version": __version__, "model": config.model,
                                 "dim": int(dim), "metric": "cosine", "kind": config.kind,
                                 "root": str(root.resolve()), "created": now, "updated": now,
                                 "config": asdict(config), "count": 0, "ann": {}})
        return _sync(out, con, config, encode, progress=progress, log=log, procs=procs, workers=workers)


def _known(stored: dict) -> dict:
    return {k: v for k, v in stored.items() if k in IndexConfig.__dataclass_fields__}


def _check_stored(config: IndexConfig, folder: Path) -> None:
    try:
        config.check()
    except ConfigError as exc:
        raise IndexError_(f"{folder / MANIFEST} holds an invalid setting ({exc}); rebuild the index with "
                          "`vlens index build IMAGES --out FOLDER --force`") from None


def update_index(index_dir, *, root=None, embedder=None, progress: bool = True, log=print, workers: int = 2,
                 device: str = "auto", dtype: str = "auto") -> UpdateReport:
    """Bring an index up to date with its folder: embed new and changed files, drop deleted ones."""
    from vlens.bulk import Processes

    folder = Path(index_dir).expanduser()
    manifest = read_manifest(folder)
    procs = Processes()
    if not procs.is_main:
        follow_build(procs, embedder or _default_embedder(manifest["model"], device, dtype))
        return UpdateReport()
    try:
        config = IndexConfig(**_known(manifest.get("config", {})))
    except TypeError as exc:
        raise IndexError_(f"{folder / MANIFEST} is damaged ({exc}); rebuild with `vlens index build --force`") from None
    _check_stored(config, folder)
    if embedder is None:  # before anything is written: a model that cannot load leaves the index as it was
        fault_point("index.model")
        embedder = _default_embedder(manifest["model"], device, dtype)
    with index_lock(folder, "vlens index update"):
        fault_point("index.start")
        remove_temps(folder)
        if root is not None:
            root = Path(root).expanduser()
            if not root.is_dir():
                raise IndexError_(f"{root} is not a folder")
            manifest["root"] = str(root.resolve())
            write_manifest(folder, manifest)
        if not Path(manifest["root"]).is_dir():
            raise IndexError_(f"the indexed folder {manifest['root']} is gone; if it moved, run "
                              f"`vlens index update {folder} --root NEW_FOLDER`")
        encode, dim = embedder
        if int(dim) != int(manifest["dim"]):
            raise IndexError_(f"model {manifest['model']} now gives {dim}-d vectors but the index holds "
                              f"{manifest['dim']}-d; rebuild with `vlens index build --force`")
        return _sync(folder, connect(folder), config, encode, progress=progress, log=log, procs=procs,
                     workers=workers)


def _sync(folder: Path, con: sqlite3.Connection, config: IndexConfig, encode, *, progress: bool,
          log, procs=None, workers: int = 2) -> UpdateReport:
    """Diff the folder against the database, apply it in crash-safe transactions, rebuild FAISS.

    Under torchrun / ``accelerate launch`` this runs on rank 0 only; the other ranks follow in
    :func:`_embed_steps` (they embed their shard of every step, rank 0 commits it).
    """
    from vlens.bulk import Processes

    procs = procs or Processes()
    t0 = time.time()
    manifest = read_manifest(folder)
    root, dim = Path(manifest["root"]), int(manifest["dim"])
    rep = UpdateReport()
    disk, refused = scan(root)
    db = {p: (i, s, m, h) for i, p, s, m, h in con.execute("SELECT id, path, size, mtime_ns, sha256 FROM images")}
    skipped_db = {p: (s, m) for p, s, m in con.execute("SELECT path, size, mtime_ns FROM skipped")}

    removed = {p: db[p] for p in db.keys() - disk.keys()}
    todo, touched = [], []
    for p, (size, mtime) in sorted(disk.items()):
        old = db.get(p)
        if old is not None and (old[1], old[2]) == (size, mtime):
            rep.unchanged += 1
            continue
        if old is None and skipped_db.get(p) == (size, mtime):
            continue  # still the same unreadable file
        sha = file_sha256(root / p)
        if old is not None and old[3] == sha:  # touched, content unchanged
            touched.append((size, mtime, old[0]))
            rep.unchanged += 1
            continue
        todo.append((p, size, mtime, sha, old))

    # Renames: a new path whose content equals a removed row's takes over that row (same id, no re-embedding).
    removed_by_sha = {}
    for p, (_i, _s, _m, h) in removed.items():
        removed_by_sha.setdefault(h, []).append(p)
    renames, rest = [], []
    for item in todo:
        p, size, mtime, sha, old = item
        if old is None and removed_by_sha.get(sha):
            src = removed_by_sha[sha].pop()
            renames.append((p, size, mtime, removed.pop(src)[0]))
        else:
            rest.append(item)
    with con:  # one transaction: deletions, renames, touches, forgotten skips
        con.executemany("DELETE FROM images WHERE id = ?", [(v[0],) for v in removed.values()])
        con.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?", renames)
        con.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", touched)
        con.executemany("DELETE FROM skipped WHERE path = ?", [(p,) for p in skipped_db.keys() - disk.keys()])
        _bump(con)
    rep.removed, rep.renamed = len(removed), len(renames)

    # Content already indexed under another path: copy its vector instead of embedding it again.
    to_embed, reuse = [], []
    for item in rest:
        twin = con.execute("SELECT vector, caption FROM images WHERE sha256 = ? AND path != ? LIMIT 1",
                           (item[3], item[0])).fetchone()
        (reuse if twin is not None else to_embed).append((item, twin))
    if reuse:
        with con:
            con.executemany("DELETE FROM images WHERE path = ?", [(it[0],) for it, _ in reuse if it[4] is not None])
            con.executemany("INSERT INTO images (path, size, mtime_ns, sha256, caption, vector, added) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(it[0], it[1], it[2], it[3], tw[1], tw[0], time.time()) for it, tw in reuse])
            con.executemany("DELETE FROM skipped WHERE path = ?", [(it[0],) for it, _ in reuse])
            _bump(con)
        for it, _ in reuse:
            rep.added += it[4] is None
            rep.changed += it[4] is not None
        rep.reused = len(reuse)
    to_embed = [it for it, _ in to_embed]
    plan = {"root": str(root), "paths": [it[0] for it in to_embed], "batch_size": config.batch_size,
            "captioner": config.captioner, "workers": workers}
    procs.broadcast(plan)

    def commit(pairs):
        rows, bad = [], []
        now = time.time()
        for pos, res in pairs:
            p, size, mtime, sha, _old = to_embed[pos]
            if isinstance(res, str):
                bad.append((p, size, mtime, res))
                continue
            vec, cap = res
            if vec.shape != (dim,):
                raise IndexError_(f"the model returned {vec.shape} vectors, the index holds {dim}-d")
            rows.append((p, size, mtime, sha, cap, np.ascontiguousarray(vec, np.float32).tobytes(), now))
        with con:  # one transaction per step: all of it lands, or none of it
            olds = [(to_embed[pos][0],) for pos, _ in pairs if to_embed[pos][4] is not None]
            con.executemany("DELETE FROM images WHERE path = ?", olds)
            con.executemany("INSERT INTO images (path, size, mtime_ns, sha256, caption, vector, added) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            con.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", bad)
            con.executemany("DELETE FROM skipped WHERE path = ?", [(r[0],) for r in rows])
            _bump(con)
        fault_point("index.batch")
        rep.embedded += len(rows)
        for pos, res in pairs:
            if not isinstance(res, str):
                rep.added += to_embed[pos][4] is None
                rep.changed += to_embed[pos][4] is not None

    te = time.time()
    _embed_steps(procs, plan, encode, commit, progress=progress)
    rep.embed_seconds += time.time() - te
    rep.skipped = sorted(refused + [(p, r) for p, r in con.execute("SELECT path, reason FROM skipped")])

    fault_point("index.faiss")
    ann = build_faiss(folder, con, manifest, config, log=log)
    manifest = read_manifest(folder)
    rep.total = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    manifest.update({"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "count": int(rep.total), "ann": ann,
                     "skipped": len(rep.skipped)})
    write_manifest(folder, manifest)
    fault_point("index.done")
    con.close()
    rep.seconds = time.time() - t0
    return rep


def _load_for_index(path):
    """Decode worker: path -> upright RGB image (errors are reported by the pipeline)."""
    from vlens.images import load_image

    return load_image(path)


def _embed_steps(procs, plan: dict, encode, commit, *, progress: bool) -> None:
    """Every rank: embed (and caption) its shard of ``plan["paths"]``; rank 0 gets the results via ``commit``."""
    from vlens.bulk import run_steps

    root = Path(plan["root"])
    captioner = _captioner_fn(plan["captioner"]) if plan["captioner"] and plan["paths"] else None

    def infer(batch):
        good = [d for d in batch if d.error is None]
        images = [d.value for d in good]
        vecs = encode(images) if images else None  # (n, d)
        caps = captioner(images) if captioner and images else [None] * len(images)
        out, k = [], 0
        for d in batch:
            if d.error is not None:
                out.append(d.error)
            else:
                out.append((np.asarray(vecs[k], np.float32), caps[k]))
                k += 1
        return out

    run_steps(procs, [root / p for p in plan["paths"]], plan["batch_size"], _load_for_index, infer, commit,
              workers=plan["workers"], progress=progress, desc="embedding")


def follow_build(procs, embedder, *, progress: bool = False) -> None:
    """What ranks other than 0 do in a sharded build or update: wait for rank 0's plan, embed their shards."""
    plan = procs.broadcast(None)
    if plan is None:
        return
    encode, _dim = embedder
    _embed_steps(procs, plan, encode, commit=None, progress=progress)


# ----------------------------------------------------------------------------------------------- reading


class ImageIndex:
    """An index opened for searching. Cheap to open; never writes; safe to read while another process updates."""

    def __init__(self, folder, mmap: bool | None = None):
        """``mmap``: memory-map the FAISS file (True), read it (False), or map it when larger than 1 GiB (None)."""
        self.mmap = mmap
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder)
        self.root = Path(self.manifest["root"])
        self.dim = int(self.manifest["dim"])
        self.con = connect(self.folder, readonly=True)
        self._inode = (self.folder / DB).stat().st_ino
        self.lock = threading.RLock()  # one sqlite3 connection, shared by a server's threads
        self._load()

    def _load(self) -> None:
        self.generation = generation(self.con)
        self.faiss, self.state = load_faiss(self.folder, self.generation, self.mmap)
        # Stale (killed between the database and the FAISS write, or mid-update): exact search from SQLite.
        self.stale = self.faiss is None

    def refresh(self) -> bool:
        """Pick up another process's update; returns True if anything changed."""
        with self.lock:
            try:
                inode = (self.folder / DB).stat().st_ino
            except FileNotFoundError:  # being rebuilt with --force: keep answering from what we have
                return False
            if inode != self._inode:  # replaced (build --force): open the new database
                if not is_index(self.folder):
                    return False
                self.con.close()
                self.con, self._inode = connect(self.folder, readonly=True), inode
                self.dim = int(read_manifest(self.folder)["dim"])
            elif generation(self.con) == self.generation and not self.stale:
                return False
            self.manifest = read_manifest(self.folder)
            self.root = Path(self.manifest["root"])
            self._load()
            return True

    @property
    def model(self) -> str:
        return self.manifest["model"]

    def __len__(self) -> int:
        with self.lock:
            return int(self.con.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) unit queries -> scores (Q, k), ids (Q, k) (id -1 where fewer than k images)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if q.shape[1] != self.dim:
            raise IndexError_(f"query vectors are {q.shape[1]}-d, the index holds {self.dim}-d "
                              f"(built with {self.model})")
        index = self.faiss
        if index is not None:
            return index.search(q, k)
        with self.lock:
            return exact_topk(q, _vectors(self.con, self.dim), k)

    def rows(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = [int(i) for i in ids if i >= 0]
        out = {}
        with self.lock:
            return self._rows(ids, out)

    def _rows(self, ids: list[int], out: dict) -> dict[int, dict]:
        for i in range(0, len(ids), 900):
            part = ids[i:i + 900]
            for r in self.con.execute("SELECT id, path, size, mtime_ns, sha256, caption FROM images "
                                      f"WHERE id IN ({','.join('?' * len(part))})", part):
                out[r[0]] = {"id": r[0], "path": r[1], "size": r[2], "mtime_ns": r[3], "sha256": r[4],
                             "caption": r[5]}
        return out

    def vector(self, image_id: int) -> np.ndarray | None:
        with self.lock:
            r = self.con.execute("SELECT vector FROM images WHERE id = ?", (int(image_id),)).fetchone()
        return None if r is None else np.frombuffer(r[0], np.float32).copy()

    def file(self, image_id: int) -> Path | None:
        """The image file for ``image_id``, or None; never a path outside the indexed folder."""
        with self.lock:
            r = self.con.execute("SELECT path FROM images WHERE id = ?", (int(image_id),)).fetchone()
        return None if r is None else safe_join(self.root, r[0])

    def info(self) -> dict:
        with self.lock:
            skipped = self.con.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall()
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {"index": str(self.folder), "root": str(self.root), "model": self.model, "dim": self.dim,
                "metric": self.manifest.get("metric"), "kind": self.manifest.get("kind"), "count": len(self),
                "generation": self.generation, "stale": self.stale, "ann": self.manifest.get("ann", {}),
                "captioner": self.manifest.get("config", {}).get("captioner"),
                "vlens_version": self.manifest.get("vlens_version"), "created": self.manifest.get("created"),
                "updated": self.manifest.get("updated"), "disk_bytes": size,
                "skipped": [{"path": p, "reason": r} for p, r in skipped]}

    def close(self) -> None:
        self.con.close()
