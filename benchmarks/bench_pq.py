"""Indexes for large collections: IVF-PQ against exact search, and the memory/build-time table of the README.

Part 1 (``--n``, default 2,000,000 at ``--dim`` 128): clustered synthetic unit vectors (the generator of
``bench_index.py``), an ``ivfpq`` index made and tuned by vlens's own code (``make_faiss`` + ``tune``, target
recall@10 0.95 on stored vectors), then 500 held-out queries one at a time against exact FAISS (flat inner
product; the baseline, same run): recall@10, p50/p99 ms. RAM: the resident memory a fresh process adds when it
opens the saved index (read, and memory-mapped) and answers the queries.

Part 2 (``--table-n``, default 100,000 at ``--table-dim`` 512, CLIP ViT-B/32's width): every kind built by vlens,
measured: build seconds, file bytes per vector, RAM added by opening it (read / mmap). The README table
extrapolates these per-vector numbers linearly to 1M-1B vectors and says so.

    nice -n 10 .venv/bin/python benchmarks/bench_pq.py --n 2000000 --dim 128 --table-n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import clustered, latencies  # noqa: E402

PROBE = r"""
import sys, numpy as np, faiss
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
path, mmap, dim = sys.argv[1], sys.argv[2] == '1', int(sys.argv[3])
q = np.random.default_rng(0).standard_normal((200, dim)).astype('float32')
q /= np.linalg.norm(q, axis=1, keepdims=True)
faiss.omp_set_num_threads(1)
r0 = rss()
flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
ix = faiss.read_index(path, flags)
r1 = rss()
for x in q: ix.search(x[None], 10)
print(r1 - r0, rss() - r0)
"""


def rss_added(path: Path, mmap: bool, dim: int) -> tuple[int, int]:
    """Resident bytes a fresh process adds by opening ``path`` and by then answering 200 queries."""
    res = subprocess.run([sys.executable, "-c", PROBE, str(path), "1" if mmap else "0", str(dim)],
                         capture_output=True, text=True, check=True)
    opened, queried = res.stdout.split()
    return int(opened), int(queried)


def build(kind: str, base: np.ndarray, **cfg):
    from vlens.retrieval.ann import auto_nlist, make_faiss
    from vlens.retrieval.index import IndexConfig

    n, d = base.shape
    config = IndexConfig(kind=kind, **cfg)
    t0 = time.perf_counter()
    m = min(n, max((config.nlist or auto_nlist(n)) * 64, 10_000, 256 * 40))
    train = base[np.random.default_rng(0).choice(n, m, replace=False)] if kind in ("ivf", "ivfpq") else None
    index = make_faiss(kind, d, n, config, train)
    for i in range(0, n, 200_000):
        index.add_with_ids(base[i:i + 200_000], np.arange(i, min(i + 200_000, n), dtype=np.int64))
    return index, time.perf_counter() - t0


def tune_on_stored(index, kind: str, base: np.ndarray, target: float = 0.95):
    import faiss

    from vlens.retrieval.ann import drop_self, tune

    n = len(base)
    own = np.sort(np.random.default_rng(1).choice(n, 256, replace=False)).astype(np.int64)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, truth = flat.search(base[own], 11)
    del flat
    return tune(index, kind, base[own], drop_self(truth, own, 10), target, own=own)


def part1(n: int, dim: int, queries: int, tmp: Path) -> dict:
    import faiss

    from vlens.retrieval.ann import recall_at_k

    t0 = time.time()
    data = clustered(n + queries, dim, clusters=max(100, n // 1000), seed=0)
    base, held = data[:n], data[n:]
    print(f"[{n:,} x {dim}] data {time.time() - t0:.0f} s", flush=True)
    index, build_s = build("ivfpq", base, nlist=2048 if n > 500_000 else 0)
    param, rec, curve = tune_on_stored(index, "ivfpq", base)
    path = tmp / "ivfpq.faiss"
    faiss.write_index(index, str(path))
    faiss.omp_set_num_threads(1)
    pq_ms, found = latencies(index, held)
    del index
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    exact_ms, truth = latencies(flat, held)
    flat_path = tmp / "flat.faiss"
    faiss.write_index(flat, str(flat_path))
    del flat
    out = {"n": n, "dim": dim, "build_s": build_s, "param": param, "tuned_recall": rec, "curve": curve,
           "recall_at_10": recall_at_k(found, truth),
           "ivfpq_p50_ms": float(np.percentile(pq_ms, 50)), "ivfpq_p99_ms": float(np.percentile(pq_ms, 99)),
           "exact_p50_ms": float(np.percentile(exact_ms, 50)), "exact_p99_ms": float(np.percentile(exact_ms, 99)),
           "ivfpq_file_bytes": path.stat().st_size, "flat_file_bytes": flat_path.stat().st_size}
    out["ivfpq_rss_read"], out["ivfpq_rss_read_queried"] = rss_added(path, False, dim)
    out["ivfpq_rss_mmap"], out["ivfpq_rss_mmap_queried"] = rss_added(path, True, dim)
    out["flat_rss_read"], _ = rss_added(flat_path, False, dim)
    return out


def part2(n: int, dim: int, tmp: Path) -> list[dict]:
    import faiss

    base = clustered(n, dim, clusters=max(100, n // 1000), seed=1)
    rows = []
    for kind in ("flat", "ivf", "hnsw", "ivfpq"):
        index, build_s = build(kind, base)
        rec = tune_on_stored(index, kind, base)[1] if kind != "flat" else 1.0
        path = tmp / f"{kind}.faiss"
        faiss.write_index(index, str(path))
        del index
        read = rss_added(path, False, dim)[1]
        mapped_open, mapped = rss_added(path, True, dim)
        rows.append({"kind": kind, "n": n, "dim": dim, "build_s": build_s, "recall_at_10": rec,
                     "file_bytes_per_vector": path.stat().st_size / n, "ram_read_bytes_per_vector": read / n,
                     "ram_mmap_open_bytes_per_vector": mapped_open / n, "ram_mmap_bytes_per_vector": mapped / n})
        print(f"[table] {kind}: {json.dumps(rows[-1])}", flush=True)
        path.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--table-n", type=int, default=100_000)
    ap.add_argument("--table-dim", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = {"load_before": "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        if args.table_n:
            res["table"] = part2(args.table_n, args.table_dim, Path(tmp))
            print(f"\nPer-vector cost at {args.table_n:,} x {args.table_dim} (measured)")
            print("| kind | build s | recall@10 | file B/vector | RAM read B/vector | RAM mmap at open | "
                  "RAM mmap after 200 queries |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for r in res["table"]:
                print(f"| {r['kind']} | {r['build_s']:.1f} | {r['recall_at_10']:.3f} | "
                      f"{r['file_bytes_per_vector']:.0f} | {r['ram_read_bytes_per_vector']:.0f} | "
                      f"{r['ram_mmap_open_bytes_per_vector']:.0f} | {r['ram_mmap_bytes_per_vector']:.0f} |")
        if args.n:
            r = part1(args.n, args.dim, args.queries, Path(tmp))
            res["ivfpq"] = r
            mb = 1 / 2**20
            print(f"\nIVF-PQ at {r['n']:,} x {r['dim']} vs exact FAISS, {args.queries} held-out queries, 1 thread")
            print("| index | recall@10 | p50 ms | p99 ms | file MB | RAM read MB | RAM mmap MB (open / after "
                  "200 queries) |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            print(f"| flat (exact, baseline) | 1.000 | {r['exact_p50_ms']:.1f} | {r['exact_p99_ms']:.1f} | "
                  f"{r['flat_file_bytes'] * mb:.0f} | {r['flat_rss_read'] * mb:.0f} | - |")
            print(f"| ivfpq ({r['param']}) | {r['recall_at_10']:.3f} | {r['ivfpq_p50_ms']:.2f} | "
                  f"{r['ivfpq_p99_ms']:.2f} | {r['ivfpq_file_bytes'] * mb:.0f} | "
                  f"{r['ivfpq_rss_read_queried'] * mb:.0f} | {r['ivfpq_rss_mmap'] * mb:.0f} / "
                  f"{r['ivfpq_rss_mmap_queried'] * mb:.0f} |")
            print(f"build {r['build_s']:.0f} s; speed-up at p50 x{r['exact_p50_ms'] / r['ivfpq_p50_ms']:.1f}")
    res["load_after"] = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
