"""Filtered search at library scale: the top 10 of every filter equal brute force, and what a filter costs.

    python benchmarks/bench_filtered_search.py --n 100000

Builds an index folder the way ``vlens index build`` lays it out (meta.sqlite rows with photo metadata, an exact
FAISS file) from N random unit vectors and random metadata (dates over two years, 4 cameras, 7 folders, GPS around
3 cities, 6 formats), then for each filter runs the same queries through :class:`vlens.retrieval.search.Searcher`
and through numpy brute force over the vectors that pass (metadata read independently), and prints whether the
top 10 agree and the time per query against the unfiltered search in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    import test_search_filters as t

    from vlens.retrieval.filters import Filters
    from vlens.retrieval.index_reader import ImageIndex
    from vlens.retrieval.search import Searcher

    t.N, t.D = args.n, args.dim
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        vecs, meta = t._library(Path(tmp) / "idx", "flat")
        print(f"built {args.n} x {args.dim} index with metadata in {time.perf_counter() - t0:.1f} s")
        s = Searcher(ImageIndex(Path(tmp) / "idx"), encoder=object())
        q = np.random.default_rng(7).standard_normal((args.queries, args.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        t0 = time.perf_counter()
        for row in q:
            s.vectors(row[None], 10)
        base = (time.perf_counter() - t0) / len(q) * 1000
        print(f"unfiltered: {base:.1f} ms/query")
        print("| filter | pass | top 10 = brute force | ms/query | x unfiltered |\n|---|---|---|---|---|")
        for fargs, rule in t.CASES:
            f = Filters.from_text(**fargs)
            mask = np.array([rule(m) for m in meta])
            same = 0
            t0 = time.perf_counter()
            got = [[h.id for h in s.vectors(row[None], 10, f)[0]] for row in q]
            ms = (time.perf_counter() - t0) / len(q) * 1000
            for row, ids in zip(q, got):
                sc = np.where(mask, vecs @ row, -np.inf)
                want = (np.argsort(-sc, kind="stable")[:min(10, int(mask.sum()))] + 1).tolist()
                same += ids == want
            print(f"| {fargs} | {int(mask.sum())} | {same}/{len(q)} | {ms:.1f} | {ms / base:.1f} |")
        s.index.close()


if __name__ == "__main__":
    main()
