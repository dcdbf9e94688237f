"""The FAISS file of an index (``vectors.faiss`` + ``vectors.json``): built from the database with its ANN setting
tuned to a target recall, written atomically, and trusted only when its generation matches the database's. The
index kinds and the tuning itself are pure functions in :mod:`vlens.retrieval.ann`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from vlens.retrieval.ann import (
    drop_self,
    exact_topk,
    faiss_notes,
    make_faiss,
    needs_training,
    search_knob,
    set_search_param,
    training_rows,
    tune,
)
from vlens.retrieval.index_store import FAISS_FILE, FAISS_STATE, IndexConfig, generation, iter_vectors


def build_faiss(folder: Path, con: sqlite3.Connection, manifest: dict, config: IndexConfig, log=print) -> dict:
    """(Re)build vectors.faiss from the database, tune ANN settings, write it atomically; returns ANN info."""
    import faiss

    from vlens.runs import atomic_path, write_json

    dim, kind = int(manifest["dim"]), config.kind
    gen = generation(con)
    n = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    train = None
    if needs_training(kind):
        m = training_rows(kind, n, config)
        rows = con.execute("SELECT vector FROM images ORDER BY random() LIMIT ?", (m,)).fetchall()
        train = np.frombuffer(b"".join(r[0] for r in rows), np.float32).reshape(len(rows), dim) if rows else None
    messages: list[str] = []
    index = make_faiss(kind, dim, n, config, train, messages=messages)
    for note in faiss_notes(messages):
        log(f"note: {note}")
    for ids, vecs in iter_vectors(con, dim):
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
        _, truth = exact_topk(queries, iter_vectors(con, dim), 11)
        param, rec, curve = tune(index, kind, queries, drop_self(truth, own, 10), config.target_recall, own=own)
        ann.update({"param": search_knob(index), "value": param,
                    "recall_at_10": round(rec, 4), "recall_queries": int(qn), "curve": curve})
        if (search_knob(index) or "").startswith("nprobe"):
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
