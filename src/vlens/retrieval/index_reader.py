"""Reading an index: :class:`ImageIndex` opens a folder written by :mod:`vlens.retrieval.index` and searches it
(FAISS when its file is current, else exact search straight from SQLite), never writing."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vlens.errors import IndexError_
from vlens.retrieval.ann import exact_topk
from vlens.retrieval.index_faiss import load_faiss
from vlens.retrieval.index_store import (
    DB,
    METADATA_COLUMNS,
    connect,
    generation,
    image_columns,
    is_index,
    iter_vectors,
    read_manifest,
    safe_join,
)

EXACT_FILTERED = 50_000
"""A filtered search over at most this many images is exact, straight from their stored vectors."""


def _oversampled(index, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ANN search for many allowed ids: search the top ``k'`` unfiltered and keep the allowed, ``k'`` doubled
    until every query has k (or the whole index was asked for)."""
    n = int(index.ntotal)
    kk = min(n, max(2 * k, int(np.ceil(2 * k * n / max(len(allowed), 1)))))
    while True:
        s, i = index.search(q, kk)                                          # (Q, kk)
        keep = np.isin(i, allowed)                                          # (Q, kk)
        if kk >= n or (keep.sum(axis=1) >= k).all():
            break
        kk = min(n, 2 * kk)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for r in range(len(q)):
        sel = np.nonzero(keep[r])[0][:k]
        out_s[r, :len(sel)], out_i[r, :len(sel)] = s[r, sel], i[r, sel]
    return out_s, out_i


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

    def search(self, queries: np.ndarray, k: int = 10,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) unit queries -> scores (Q, k), ids (Q, k) (id -1 where fewer than k images).

        ``allowed``: only these ids may be returned (a filter, :func:`vlens.retrieval.filters.matching_ids`);
        the restriction is part of the search, so the result is the top k among them:

        - exact (``flat``) FAISS index: FAISS's own ID selector, exact;
        - at most :data:`EXACT_FILTERED` allowed ids, or a stale FAISS file: exact search over their stored
          vectors (an ANN graph or list walk restricted to a few ids misses many of them);
        - more, on an ANN kind: the ANN top ``k / fraction allowed`` (times 2, doubled until k pass) is
          filtered, so the filtered result has the ANN's own measured recall.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if q.shape[1] != self.dim:
            raise IndexError_(f"query vectors are {q.shape[1]}-d, the index holds {self.dim}-d "
                              f"(built with {self.model})")
        index = self.faiss
        if allowed is None:
            if index is not None:
                return index.search(q, k)
            with self.lock:
                return exact_topk(q, iter_vectors(self.con, self.dim), k)
        allowed = np.unique(np.asarray(allowed, np.int64))
        if index is not None and self.manifest.get("kind") == "flat":
            import faiss

            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            return index.search(q, k, params=params)
        if index is None or len(allowed) <= EXACT_FILTERED:
            with self.lock:
                return exact_topk(q, self._vectors_of(allowed), k)
        return _oversampled(index, q, k, allowed)

    def _vectors_of(self, ids: np.ndarray, chunk: int = 900):
        """Stream (ids (n,), vectors (n, d)) of the given ids from the database."""
        for i in range(0, len(ids), chunk):
            part = [int(x) for x in ids[i:i + chunk]]
            rows = self.con.execute(f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(part))})",
                                    part).fetchall()
            if rows:
                yield (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                       np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim))

    def rows(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = [int(i) for i in ids if i >= 0]
        out = {}
        with self.lock:
            return self._rows(ids, out)

    def _rows(self, ids: list[int], out: dict) -> dict[int, dict]:
        """Each row with every metadata column (:data:`METADATA_COLUMNS`; None where unknown or where the index
        predates them and was opened read-only)."""
        names = ("id", "path", "size", "mtime_ns", "sha256", "caption", *METADATA_COLUMNS)
        have = image_columns(self.con)
        cols = ", ".join(c if c in have else f"NULL AS {c}" for c in names)
        for i in range(0, len(ids), 900):
            part = ids[i:i + 900]
            for r in self.con.execute(f"SELECT {cols} FROM images WHERE id IN ({','.join('?' * len(part))})", part):
                out[r[0]] = dict(zip(names, r))
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
                "skipped": [{"path": p, "reason": r} for p, r in skipped],
                "passed_over": self.manifest.get("passed_over", {})}

    def close(self) -> None:
        self.con.close()
