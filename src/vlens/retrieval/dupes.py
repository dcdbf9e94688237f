"""Duplicates in an index: exact copies (same file hash) and near copies (a resized, re-encoded or lightly edited
version), grouped.

Near copies need two agreeing signals, so neither one's failure mode makes a group on its own:

1. the embeddings: cosine similarity >= ``threshold`` between the two images' stored vectors (a CLIP vector
   says "same scene", but burst shots and two photos of one landmark also score high);
2. a perceptual hash: the 64-bit difference hash (dHash) of each image differs in at most ``max_bits`` bits (a
   dHash survives resizing, re-encoding and small colour changes, but not a crop or a different moment).

Candidates come from the index's own search (each image's ``neighbours`` nearest), so the cost is one search per
image plus a small decode of each candidate image for its hash. Pairs join into groups by union-find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def dhash(image, size: int = 8) -> int:
    """The difference hash of a PIL image: grey, resized to (size+1) x size, one bit per horizontally adjacent
    pair (1 when the left pixel is brighter). 64 bits for ``size`` 8."""
    from PIL import Image

    g = image.convert("L")
    g.draft("L", (4 * (size + 1), 4 * size))  # JPEG: decode at a reduced scale, much faster
    g = g.resize((size + 1, size), Image.Resampling.BOX)
    px = np.asarray(g, np.int16)                                          # (size, size+1)
    bits = (px[:, :-1] > px[:, 1:]).ravel()                               # (size*size,)
    return int(np.packbits(bits).view(">u8")[0]) if size == 8 else int("".join("01"[b] for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


@dataclass
class DupeGroup:
    kind: str
    """"exact" (every file the same bytes) or "near"."""
    ids: list[int]
    paths: list[str]
    similarity: list[float] = field(default_factory=list)
    """Cosine similarity of each image to the group's first (1.0 for the first)."""
    bits: list[int | None] = field(default_factory=list)
    """dHash bits differing from the first (None where a file could not be read)."""
    sizes: list[int] = field(default_factory=list)


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(index, threshold: float = 0.95, max_bits: int = 10, neighbours: int = 10,
                    progress: bool = False) -> list[DupeGroup]:
    """Groups of duplicate images in an opened :class:`~vlens.retrieval.index_reader.ImageIndex`, the largest
    first. Exact copies always group; near copies need cosine >= ``threshold`` and dHash distance <= ``max_bits``.
    Inside a group the largest file comes first (the one to keep, usually the original)."""
    from vlens.errors import ConfigError
    from vlens.retrieval.index_store import iter_vectors

    if not -1 <= threshold <= 1:
        raise ConfigError(f"--threshold is a cosine similarity, -1 to 1 (got {threshold})")
    if not 0 <= max_bits <= 64:
        raise ConfigError(f"--max-bits is 0 to 64 of the 64-bit perceptual hash (got {max_bits})")
    ix = index
    ix.refresh()
    with ix.lock:
        rows = ix.con.execute("SELECT id, path, size, sha256 FROM images ORDER BY id").fetchall()
    info = {r[0]: r for r in rows}
    uf = _UnionFind()
    by_sha: dict[str, list[int]] = {}
    for i, _p, _s, sha in rows:
        by_sha.setdefault(sha, []).append(i)
    for same in by_sha.values():
        for j in same[1:]:
            uf.union(same[0], j)

    hashes: dict[int, int | None] = {}

    def hash_of(i: int) -> int | None:
        if i not in hashes:
            from vlens.images import load_image

            p = ix.file(i)
            try:
                hashes[i] = dhash(load_image(p)) if p is not None else None
            except Exception:  # noqa: BLE001 - an unreadable file simply gets no perceptual vote
                hashes[i] = None
        return hashes[i]

    vecs: dict[int, np.ndarray] = {}
    with ix.lock:
        chunks = list(iter_vectors(ix.con, ix.dim))
    from vlens.runs import progress as progress_bar

    total = sum(len(c[0]) for c in chunks)
    bar = progress_bar(total=total, desc="comparing", disable=None if progress else True)
    kk = min(neighbours + 1, max(total, 1))
    for ids, v in chunks:
        for i, row in zip(ids, v):
            vecs[int(i)] = row
        scores, found = ix.search(v, kk)                                    # (n, kk)
        for a, srow, frow in zip(ids, scores, found):
            for s, b in zip(srow, frow):
                a, b = int(a), int(b)
                if b < 0 or b == a or s < threshold or uf.find(a) == uf.find(b):
                    continue
                if info.get(b) is None:
                    continue
                ha, hb = hash_of(a), hash_of(b)
                if ha is not None and hb is not None and hamming(ha, hb) <= max_bits:
                    uf.union(a, b)
        bar.update(len(ids))
    bar.close()

    members: dict[int, list[int]] = {}
    for i, *_ in rows:
        members.setdefault(uf.find(i), []).append(i)
    groups = []
    for ids in members.values():
        if len(ids) < 2:
            continue
        ids.sort(key=lambda i: (-info[i][2], info[i][1]))  # largest file first, then by path
        first = vecs[ids[0]]
        kind = "exact" if len({info[i][3] for i in ids}) == 1 else "near"
        h0 = hash_of(ids[0]) if kind == "near" else None
        groups.append(DupeGroup(
            kind=kind, ids=ids, paths=[info[i][1] for i in ids],
            similarity=[round(float(first @ vecs[i]), 5) for i in ids],
            bits=[0 if kind == "exact" else (None if h0 is None or hash_of(i) is None else hamming(h0, hash_of(i)))
                  for i in ids],
            sizes=[int(info[i][2]) for i in ids]))
    groups.sort(key=lambda g: (-len(g.ids), g.paths[0]))
    return groups


def group_sheets(groups: list[DupeGroup], root, out_dir) -> list[Path]:
    """One contact sheet per group (``group-001.png`` ...) in ``out_dir``: each image with its cosine to the
    first and its file name."""
    from vlens.retrieval.search import SearchHit, contact_sheet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets = []
    for n, g in enumerate(groups, 1):
        hits = [SearchHit(i, p, s) for i, p, s in zip(g.ids, g.paths, g.similarity)]
        title = f"group {n}: {len(g.ids)} {g.kind} duplicates (score = cosine to the first)"
        sheets.append(contact_sheet(hits, root, out_dir / f"group-{n:03d}.png", title=title,
                                    cols=min(5, len(hits))))
    return sheets
