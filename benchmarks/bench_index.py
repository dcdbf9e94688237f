"""Benchmark the image index: query latency (exact vs IVF vs HNSW) at 100k / 1M vectors, and build / update speed.

Part 1 (``--sizes``): clustered synthetic unit vectors (d=512; 1 query = one held-out point of the same
distribution), indexes made by the same code as ``vlens index build --kind``, search parameters tuned the same
way (raised until recall@10 >= 0.95 on 256 stored vectors). Reported on 500 held-out queries, one at a time:
p50 / p99 latency, recall@10 against exact search, and the speed-up over exact (the baseline, same run).

Part 2 (``--images``): ``vlens index build`` throughput with the builtin model on generated shapes images, and
``vlens index update`` time after 1% of the files changed (baseline: an update with nothing changed).

    .venv/bin/python benchmarks/bench_index.py --sizes 100000 1000000 --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """n unit vectors around ``clusters`` random centres: (n, d) float32. Built in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        noise = rng.normal(scale=spread / np.sqrt(d), size=(m, d)).astype(np.float32)
        x = centres[rng.integers(0, clusters, m)] + noise
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One query at a time: (latencies in ms (Q,), ids (Q, k))."""
    ids, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, i = index.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append(i[0])
    return np.array(times), np.stack(ids)


def bench_ann(n: int, d: int, kinds: list[str], n_queries: int, seed: int, threads: int) -> list[dict]:
    import faiss

    from vlens.retrieval.ann import auto_nlist, drop_self, make_faiss, recall_at_k, tune
    from vlens.retrieval.index import IndexConfig

    rows = []
    t0 = time.time()
    data = clustered(n + n_queries, d, clusters=max(100, n // 1000), seed=seed)
    base, queries = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64)
    print(f"[{n:,}] data {time.time() - t0:.1f} s", flush=True)
    flat = make_faiss("flat", d, n, IndexConfig())
    flat.add_with_ids(base, ids)
    faiss.omp_set_num_threads(threads)
    exact_ms, truth = latencies(flat, queries)
    rows.append({"n": n, "kind": "flat (exact)", "build_s": None, "param": "-", "recall_at_10": 1.0,
                 "p50_ms": float(np.percentile(exact_ms, 50)), "p99_ms": float(np.percentile(exact_ms, 99))})
    print(f"[{n:,}] flat p50 {rows[-1]['p50_ms']:.2f} ms", flush=True)
    own = np.sort(np.random.default_rng(seed).choice(n, 256, replace=False)).astype(np.int64)
    tune_q = base[own]
    _, tune_truth = flat.search(tune_q, 11)
    tune_truth = drop_self(tune_truth, own, 10)
    del flat
    for kind in kinds:
        cfg = IndexConfig(kind=kind)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t0 = time.time()
        train = base[np.random.default_rng(seed).choice(n, min(n, max(auto_nlist(n) * 64, 10_000)), replace=False)]
        index = make_faiss(kind, d, n, cfg, train)
        for i in range(0, n, 100_000):
            index.add_with_ids(base[i:i + 100_000], ids[i:i + 100_000])
        build_s = time.time() - t0
        faiss.omp_set_num_threads(threads)
        param, _, _ = tune(index, kind, tune_q, tune_truth, cfg.target_recall, own=own)
        ms, found = latencies(index, queries)
        rec = recall_at_k(found, truth)
        extra = f"nlist={index.nlist}, nprobe={param}" if kind == "ivf" else f"M={cfg.hnsw_m}, efSearch={param}"
        rows.append({"n": n, "kind": kind, "build_s": round(build_s, 1), "param": extra,
                     "recall_at_10": round(rec, 4), "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99))})
        print(f"[{n:,}] {kind} build {build_s:.1f} s, {extra}, recall@10 {rec:.3f}, p50 {rows[-1]['p50_ms']:.2f} ms "
              f"(x{rows[0]['p50_ms'] / rows[-1]['p50_ms']:.1f} vs exact)", flush=True)
        del index
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def bench_build(n_images: int, model: str, work: Path, seed: int) -> dict:
    from PIL import Image

    from vlens.data.shapes import make_shapes
    from vlens.retrieval.index import IndexConfig, build_index, update_index
    from vlens.retrieval.model import DualEncoder

    t0 = time.time()
    ds = make_shapes(work / "shapes", train=n_images, val=0, test=0, seed=seed, size=128, progress=False)
    root = work / "photos"
    shutil.move(str(ds / "images"), root)
    print(f"[build] {n_images} shapes images in {time.time() - t0:.1f} s", flush=True)
    t0 = time.time()
    enc = DualEncoder.from_spec(model)
    load_s = time.time() - t0
    emb = (enc.encode_images, enc.dim)
    out = work / "idx"
    rep = build_index(root, out, IndexConfig(model=model, batch_size=64), embedder=emb, progress=False)
    nothing = update_index(out, embedder=emb, progress=False)
    files = sorted(root.glob("*.png"))
    changed = files[:: 100][: max(1, n_images // 100)]
    for p in changed:
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p)
    upd = update_index(out, embedder=emb, progress=False)
    assert upd.changed == len(changed), upd.summary()
    return {"images": n_images, "model": model, "model_load_s": round(load_s, 2), "build_s": round(rep.seconds, 2),
            "build_images_per_s": round(n_images / rep.seconds, 1), "embed_images_per_s": round(rep.images_per_s, 1),
            "update_nothing_s": round(nothing.seconds, 3), "update_1pct_s": round(upd.seconds, 3),
            "update_1pct_changed": upd.changed,
            "update_vs_rebuild": round(rep.seconds / upd.seconds, 1)}


def _ann_table(results: dict, threads: int) -> None:
    print(f"\n{results['cpus']} CPUs, FAISS threads for queries: {threads}, load average at start: "
          f"{results['load_avg_at_start'][0]:.1f}")
    print("\n| vectors | index | build s | settings | recall@10 | p50 ms | p99 ms | p50 speed-up vs exact |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    exact = {r["n"]: r["p50_ms"] for r in results["ann"] if r["kind"].startswith("flat")}
    for r in results["ann"]:
        print(f"| {r['n']:,} | {r['kind']} | {r['build_s'] if r['build_s'] is not None else '-'} | {r['param']} | "
              f"{r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | x{exact[r['n']] / r['p50_ms']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="collection sizes for the ANN part "
                    "(none: skip it)")
    ap.add_argument("--kinds", nargs="*", default=["ivf", "hnsw"])
    ap.add_argument("--kinds-1m", nargs="*", default=None, help="kinds at >= 1M (default: same as --kinds)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--images", type=int, default=1000, help="images for the build/update part (0 = skip)")
    ap.add_argument("--model", default="builtin:clip-tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads for the single-query timings and torch "
                    "threads for embedding (1: one request per core, as in the server; ANN index building always "
                    "uses all cores)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    results = {"ann": [], "build": None, "threads": args.threads, "cpus": os.cpu_count(),
               "load_avg_at_start": os.getloadavg()}
    for n in args.sizes:
        kinds = args.kinds_1m if (n >= 1_000_000 and args.kinds_1m is not None) else args.kinds
        results["ann"] += bench_ann(n, args.dim, kinds, args.queries, args.seed, args.threads)
    if args.images:
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            results["build"] = bench_build(args.images, args.model, Path(tmp), args.seed)
    if results["ann"]:
        _ann_table(results, args.threads)
    if results["build"]:
        b = results["build"]
        print(f"\nbuild: {b['images']} images with {b['model']}: {b['build_s']} s = {b['build_images_per_s']} images/s "
              f"(embedding alone {b['embed_images_per_s']} images/s; model load {b['model_load_s']} s)")
        print(f"update, 1% changed ({b['update_1pct_changed']} files): {b['update_1pct_s']} s "
              f"(x{b['update_vs_rebuild']} faster than the build); "
              f"update with nothing changed: {b['update_nothing_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
