"""A persistent image index: vectors in FAISS, metadata (and a copy of every vector) in SQLite, a JSON manifest.
This module is the build pipeline (``build_index``, ``update_index``); the folder's layout, manifest and settings
are in :mod:`vlens.retrieval.index_store`, its FAISS file in :mod:`vlens.retrieval.index_faiss`, reading and
searching in :mod:`vlens.retrieval.index_reader`.

Why it survives a kill at any moment: SQLite is the source of truth and every change is a transaction (a batch of
embedded images is committed at once, or not at all). The FAISS file is rewritten atomically (temp + rename) after
the database and is trusted only when its generation matches the database's; otherwise readers fall back to exact
search straight from SQLite and the next ``update`` rebuilds it. A rerun recomputes what is missing from a diff of
the folder against the database, so nothing is lost or duplicated (paths are UNIQUE, ids never reused).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError, IndexError_
from vlens.faults import fault_point
from vlens.retrieval.ann import check_buildable, faiss_reason, is_factory
from vlens.retrieval.index_faiss import build_faiss
from vlens.retrieval.index_store import (
    DB,
    FAISS_FILE,
    FAISS_STATE,
    FORMAT_VERSION,
    INDEX_FILES,
    MANIFEST,
    IndexConfig,
    UpdateReport,
    _bump,
    _check_stored,
    _is_index_file,
    _known,
    connect,
    faiss_state,
    generation,
    index_lock,
    is_index,
    read_manifest,
    remove_temps,
    write_manifest,
)
from vlens.runs import file_sha256

# ----------------------------------------------------------------------------------------------- files


def scan(root: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Image files under ``root``: {relative posix path: (size, mtime_ns)}, plus files refused (links out, names
    that cannot be stored and printed as one line: :func:`vlens.images.name_problem`), by their shown name."""
    found, refused, _passed = scan_counts(root)
    return found, refused


def scan_counts(root: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]], dict[str, int]]:
    """:func:`scan`, plus every other file the walk passed over, counted by kind
    (:attr:`vlens.images.FolderScan.passed_over`). One ``stat`` per image file, nothing opened."""
    from vlens.images import name_problem, scan_folder, shown_name

    real_root = root.resolve()
    walk = scan_folder(root)
    found, refused = {}, []
    for rel, entry in walk.images:
        # not UTF-8 (an old camera, a zip), or a newline/tab that breaks every line (isprintable: the fast path)
        problem = None if rel.isprintable() else name_problem(rel)
        if problem:
            refused.append((shown_name(rel), problem.replace("to use it", "to index it")))
            continue
        if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(real_root):
            refused.append((rel, "a link that points outside the indexed folder"))
            continue
        try:
            st = entry.stat()
        except OSError:  # vanished, or a link to nothing
            continue
        found[rel] = (st.st_size, st.st_mtime_ns)
    return found, refused, walk.passed_over


def all_skipped(info: dict) -> list[dict]:
    """Every file an index leaves out, as ``index info``, ``index build`` and the web app's /api/info list it:
    the unreadable files stored in the index (``info["skipped"]``, from :meth:`ImageIndex.info`) and what the
    folder scan refuses by name right now (not stored: links out of the folder, names that cannot be printed).
    Paths are relative to the indexed folder, as every skip list vlens prints."""
    out = list(info.get("skipped", []))
    if Path(info["root"]).is_dir():
        known = {s["path"] for s in out}
        out += [{"path": p, "reason": r} for p, r in scan(Path(info["root"]))[1] if p not in known]
    return out


# ----------------------------------------------------------------------------------------------- writing


def _default_embedder(model: str, device: str = "auto", dtype: str = "auto",
                      engine: str = "torch") -> tuple[Callable[[list], np.ndarray], int]:
    from vlens.retrieval.model import DualEncoder

    enc = DualEncoder.from_spec(model, device=device, dtype=dtype, engine=engine)
    if engine != "torch":
        enc.prepare_engines()  # the text tower too: later searches of this index find its export
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


ANN_FIELDS = ("kind", "nlist", "hnsw_m", "pq_bytes", "target_recall")
"""The settings of the search structure alone: changing them rebuilds vectors.faiss from the stored vectors."""


def build_index(images_dir, out, config: IndexConfig | None = None, *, force: bool = False, embedder=None,
                progress: bool = True, log=print, workers: int = 2, device: str = "auto",
                dtype: str = "auto", given=None, engine: str = "torch") -> UpdateReport:
    """Create an index of every image under ``images_dir`` in folder ``out`` (or resume an unfinished one).

    ``embedder``: optional ``(fn(list[PIL]) -> (n, d) unit float32, d)`` to reuse a loaded model.
    An existing index for the same folder and model is resumed/updated; a different folder or model needs
    ``force``. Its search settings (:data:`ANN_FIELDS`: kind, lists, PQ bytes, ...) may change: the stored
    vectors are reused, nothing is re-embedded. ``given``: the names of the settings the caller chose (the CLI
    passes the options typed on the command line); the others keep the index's stored values. None = all.
    Every setting is checked against the image count before any image is embedded, and one that still fails
    to build is never kept (see :func:`_sync`).
    ``workers``: processes decoding images while the model runs. Under torchrun / ``accelerate launch`` every
    process embeds a disjoint shard and process 0 writes the index (the same index one process would write).
    ``engine``: torch, onnx or auto for the image tower (:mod:`vlens.engines`); onnx/auto also export the text
    tower, so searches of the index run without torch.
    """
    from vlens.bulk import Processes

    config = config or IndexConfig()
    config.check()
    procs = Processes()
    if not procs.is_main:
        follow_build(procs, embedder or _default_embedder(_model_spec(config.model), device, dtype, engine))
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
        embedder = _default_embedder(effective.model, device, dtype, engine)
    if effective.captioner:
        from vlens.models.hub import resolve

        resolve(effective.captioner)  # a ModelLoadError now, not after the images are embedded
    made_dir = not out.exists()  # a refused build takes away what it made (see below)
    fresh = made_dir or not any(out.iterdir())
    try:
        return _build_locked(root, out, config, embedder, force=force, given=given, progress=progress, log=log,
                             procs=procs, workers=workers)
    except Exception:
        if fresh and out.is_dir() and not is_index(out):  # refused before the manifest: nothing worth keeping
            for name in INDEX_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            if made_dir:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if empty: a file someone put there meanwhile stays
        raise


def _build_locked(root: Path, out: Path, config: IndexConfig, embedder, *, force: bool, given, progress: bool, log,
                  procs, workers: int) -> UpdateReport:
    """:func:`build_index` from the write lock on (the checks before it are done)."""
    out.mkdir(parents=True, exist_ok=True)
    with index_lock(out, "vlens index build"):
        fault_point("index.start")
        remove_temps(out)
        previous = None
        if is_index(out) and not force:
            m = read_manifest(out)
            same = m.get("root") == str(root.resolve()) and m.get("model") == config.model
            if not same:
                raise IndexError_(f"{out} already holds an index of {m.get('root')} with {m.get('model')}; use "
                                  "--force to replace it or choose another --out")
            previous = IndexConfig(**{**_known(m.get("config", {})), "batch_size": config.batch_size})
            _check_stored(previous, out)
            chosen = set(ANN_FIELDS if given is None else given) & set(ANN_FIELDS)
            config = IndexConfig(**{**asdict(previous), **{k: getattr(config, k) for k in chosen}})
            config.check()
            if _ann(config) != _ann(previous):
                check_buildable(config.kind, int(m["dim"]), _expected_count(root), config)
                log(f"search settings {_ann_text(previous)} -> {_ann_text(config)}: vectors.faiss is rebuilt from "
                    "the stored vectors (nothing is re-embedded)")
                m.update(kind=config.kind, config=asdict(config))
                write_manifest(out, m)
        else:  # --force, or what a run killed before it wrote the manifest left (no image rows yet): start clean
            for name in (MANIFEST, DB, DB + "-wal", DB + "-shm", FAISS_FILE, FAISS_STATE):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        encode, dim = embedder
        if not is_index(out):  # nothing embedded yet: a kind that cannot work stops here, before any work
            check_buildable(config.kind, int(dim), _expected_count(root), config)
        con = connect(out)
        if not is_index(out):
            from vlens import __version__

            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_manifest(out, {"format": FORMAT_VERSION, "vlens_version": __version__, "model": config.model,
                                 "dim": int(dim), "metric": "cosine", "kind": config.kind,
                                 "root": str(root.resolve()), "created": now, "updated": now,
                                 "config": asdict(config), "count": 0, "ann": {}})
        return _sync(out, con, config, lambda: encode, progress=progress, log=log, procs=procs, workers=workers,
                     previous=previous)


def _ann(config: IndexConfig) -> tuple:
    return tuple(getattr(config, k) for k in ANN_FIELDS)


def _ann_text(config: IndexConfig) -> str:
    extra = [f"{k}={getattr(config, k)}" for k in ANN_FIELDS[1:]
             if getattr(config, k) != getattr(IndexConfig, k, None)]
    return config.kind + (f" ({', '.join(extra)})" if extra else "")


def _expected_count(root: Path) -> int:
    """Images the index will hold (every image file under ``root``; unreadable ones make it a bound)."""
    return len(scan(root)[0])


def update_index(index_dir, *, root=None, embedder=None, progress: bool = True, log=print, workers: int = 2,
                 device: str = "auto", dtype: str = "auto", engine: str = "torch") -> UpdateReport:
    """Bring an index up to date with its folder: embed new and changed files, drop deleted ones."""
    from vlens.bulk import Processes

    folder = Path(index_dir).expanduser()
    manifest = read_manifest(folder)
    procs = Processes()
    if not procs.is_main:
        follow_build(procs, embedder or _default_embedder(manifest["model"], device, dtype, engine))
        return UpdateReport()
    try:
        config = IndexConfig(**_known(manifest.get("config", {})))
    except TypeError as exc:
        raise IndexError_(f"{folder / MANIFEST} is damaged ({exc}); rebuild with `vlens index build --force`") from None
    _check_stored(config, folder)
    if is_factory(config.kind):  # a manifest from before factory strings were tried: refused, not a FAISS crash
        try:
            check_buildable(config.kind, int(manifest.get("dim") or 1), int(manifest.get("count") or 0), config)
        except ConfigError as exc:
            raise IndexError_(f"the stored index kind cannot be built: {exc}. To switch kinds without re-embedding: "
                              f"`vlens index build "
                              f"{manifest.get('root')} --out {folder} --kind flat`") from None

    def load_encoder():
        """The model, loaded only when something needs embedding (an update that finds nothing new never
        imports torch), and before anything is written: a model that cannot load leaves the index as it was."""
        nonlocal embedder
        if embedder is None:
            fault_point("index.model")
            embedder = _default_embedder(manifest["model"], device, dtype, engine)
        encode, dim = embedder
        if int(dim) != int(manifest["dim"]):
            raise IndexError_(f"model {manifest['model']} now gives {dim}-d vectors but the index holds "
                              f"{manifest['dim']}-d; rebuild with `vlens index build --force`")
        return encode

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
        return _sync(folder, connect(folder), config, load_encoder, progress=progress, log=log, procs=procs,
                     workers=workers, previous=config)


def _sync(folder: Path, con: sqlite3.Connection, config: IndexConfig, load_encoder, *, progress: bool,
          log, procs=None, workers: int = 2, previous: IndexConfig | None = None) -> UpdateReport:
    """Diff the folder against the database, apply it in crash-safe transactions, rebuild FAISS.

    Unchanged files (same size and mtime as stored) are never opened: a rerun over a library where nothing changed
    costs one directory walk with a ``stat`` per image, one read of the paths table, and no model (``load_encoder()``
    -> the encode function is called only when something must be embedded; the FAISS file is kept when the
    database did not change).

    If FAISS cannot build ``config``'s search structure for what the folder now holds (the checks before
    embedding catch what they can; deletions can still leave too few images for a trained kind), the embedded
    work is kept: the index falls back to ``previous`` settings (or exact ``flat`` search), records that in the
    manifest so later updates work, and the error says how to choose another kind without re-embedding.

    Under torchrun / ``accelerate launch`` this runs on rank 0 only; the other ranks follow in
    :func:`_embed_steps` (they embed their shard of every step, rank 0 commits it).
    """
    from vlens.bulk import Processes

    procs = procs or Processes()
    t0 = time.time()
    manifest = read_manifest(folder)
    root, dim = Path(manifest["root"]), int(manifest["dim"])
    rep = UpdateReport(root=str(root))
    disk, refused, rep.passed_over = scan_counts(root)
    gen0 = generation(con)
    if not disk and not refused:
        log(f"note: no image files under {root}: the index holds 0 images; add images there and run `vlens index "
            f"update {folder}`")
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
    encode = load_encoder() if rest else None  # before the first write (see update_index)
    gone_skips = [(p,) for p in skipped_db.keys() - disk.keys()]
    if removed or renames or touched or gone_skips:
        with con:  # one transaction: deletions, renames, touches, forgotten skips
            con.executemany("DELETE FROM images WHERE id = ?", [(v[0],) for v in removed.values()])
            con.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ?, folder = ?, format = ? "
                            "WHERE id = ?", [(p, sz, mt, *_where(p), i) for p, sz, mt, i in renames])
            con.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", touched)
            con.executemany("DELETE FROM skipped WHERE path = ?", gone_skips)
            _bump(con)
    rep.removed, rep.renamed = len(removed), len(renames)

    # Content already indexed under another path: copy its vector instead of embedding it again.
    to_embed, reuse = [], []
    for item in rest:
        twin = con.execute(f"SELECT vector, caption, {_EXIF_COLS} FROM images WHERE sha256 = ? AND path != ? "
                           "LIMIT 1", (item[3], item[0])).fetchone()
        (reuse if twin is not None else to_embed).append((item, twin))
    if reuse:
        with con:
            con.executemany("DELETE FROM images WHERE path = ?", [(it[0],) for it, _ in reuse if it[4] is not None])
            con.executemany(_INSERT, [(it[0], it[1], it[2], it[3], tw[1], tw[0], time.time(), *tw[2:], *_where(it[0]))
                                      for it, tw in reuse])
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
            vec, cap, meta = res
            if vec.shape != (dim,):
                raise IndexError_(f"the model returned {vec.shape} vectors, the index holds {dim}-d")
            rows.append((p, size, mtime, sha, cap, np.ascontiguousarray(vec, np.float32).tobytes(), now,
                         *(meta.get(c) for c in EXIF_COLUMNS), *_where(p)))
        with con:  # one transaction per step: all of it lands, or none of it
            olds = [(to_embed[pos][0],) for pos, _ in pairs if to_embed[pos][4] is not None]
            con.executemany("DELETE FROM images WHERE path = ?", olds)
            con.executemany(_INSERT, rows)
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
    if to_embed or procs.world > 1:  # the other ranks wait for this step whatever it holds
        _embed_steps(procs, plan, encode or load_encoder(), commit, progress=progress)
    rep.embed_seconds += time.time() - te
    rep.skipped = sorted(refused + [(p, r) for p, r in con.execute("SELECT path, reason FROM skipped")])
    rep.described = _describe_old_rows(con, root, log)

    fault_point("index.faiss")
    failed = None
    current = faiss_state(folder) if previous is not None and _ann(previous) == _ann(config) else None
    try:
        if current is not None and current.get("generation") == gen0 == generation(con) \
                and current.get("kind") == config.kind:
            ann = {k: v for k, v in current.items() if k != "generation"}  # nothing changed: the file is current
        else:
            ann = build_faiss(folder, con, manifest, config, log=log)
    except (RuntimeError, ConfigError) as exc:
        failed = (config.kind, faiss_reason(exc))
        config = previous if previous is not None and _ann(previous) != _ann(config) else \
            IndexConfig(**{**asdict(config), "kind": "flat"})
        ann = build_faiss(folder, con, manifest, config, log=log)
    manifest = read_manifest(folder)
    if failed:
        manifest.update(kind=config.kind, config=asdict(config))
    rep.total = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    manifest.update({"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "count": int(rep.total), "ann": ann,
                     "skipped": len(rep.skipped), "passed_over": rep.passed_over})
    write_manifest(folder, manifest)
    fault_point("index.done")
    con.close()
    rep.seconds = time.time() - t0
    if failed:
        raise IndexError_(f"index kind '{failed[0]}' could not be built for {rep.total} image(s) ({failed[1]}); "
                          f"the {rep.total} embedded images are kept and the index searches with "
                          f"'{config.kind}' meanwhile. To try another kind without re-embedding: `vlens index "
                          f"build {root} --out {folder} --kind KIND`")
    return rep


EXIF_COLUMNS = ("taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon", "width", "height")
"""The metadata columns read from the image (the others, folder and format, come from its path)."""
_EXIF_COLS = ", ".join(EXIF_COLUMNS)
_INSERT = (f"INSERT INTO images (path, size, mtime_ns, sha256, caption, vector, added, {_EXIF_COLS}, folder, format) "
           f"VALUES ({', '.join('?' * (9 + len(EXIF_COLUMNS)))})")


def _where(rel: str) -> tuple[str, str | None]:
    """(folder, format) columns of a stored path."""
    from vlens.photo_meta import file_fields

    f = file_fields(rel)
    return f["folder"], f["format"]


def _exif_meta(image) -> dict:
    """The :data:`EXIF_COLUMNS` of a decoded image (:func:`vlens.photo_meta.image_fields`)."""
    from vlens.photo_meta import image_fields

    meta = image_fields(image, "")
    return {k: meta[k] for k in EXIF_COLUMNS}


def _describe_old_rows(con: sqlite3.Connection, root: Path, log, chunk: int = 500) -> int:
    """Fill the photo metadata of rows written before vlens stored it (``format`` NULL: every row vlens writes now
    has it) from the files' headers; nothing is decoded or re-embedded. Returns how many rows were read."""
    from vlens.images import header_meta

    todo = con.execute("SELECT id, path FROM images WHERE format IS NULL").fetchall()
    if not todo:
        return 0
    log(f"reading the photo metadata (capture time, camera, GPS, size) of {len(todo)} image(s) indexed before "
        "vlens stored it; nothing is re-embedded")
    for i in range(0, len(todo), chunk):
        rows = []
        for image_id, rel in todo[i:i + chunk]:
            m = header_meta(root / rel)
            rows.append((*(m[c] for c in EXIF_COLUMNS), *_where(rel), image_id))
        with con:
            con.executemany(f"UPDATE images SET {', '.join(c + ' = ?' for c in EXIF_COLUMNS)}, folder = ?, "
                            "format = ? WHERE id = ?", rows)
    return len(todo)


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
                out.append((np.asarray(vecs[k], np.float32), caps[k], _exif_meta(images[k])))
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
