"""Recall@K for 5,000 images x 25,000 captions at d=512: the chunked vectorised path vs a naive per-query loop.

    .venv/bin/python benchmarks/bench_recall.py              # full size, naive loop timed on --naive-queries
    .venv/bin/python benchmarks/bench_recall.py --quick      # 1,000 x 5,000

Process CPU time is printed next to wall time because the development machine is shared: on a busy machine the
wall time says more about the neighbours than about the code. Embeddings are synthetic but structured (each
caption = its image's embedding + noise, re-normalised), so ranks
are neither all 0 nor random. The naive loop (one query at a time: a matrix-vector product, a full sort, find
the first positive) is timed on the first --naive-queries queries of each direction and extrapolated linearly to
all 30,000 queries (it would take minutes otherwise); its ranks are checked equal to the fast path's.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def synthetic(n: int, caps: int, d: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(n), caps)
    txt = img[t2i] + noise * rng.standard_normal((n * caps, d)).astype(np.float32) / np.sqrt(d)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt.astype(np.float32), t2i


def main() -> None:
    import torch

    from vlens.retrieval.evaluate import RetrievalScores
    from vlens.retrieval.recall import naive_ranks, ranks_from_embeddings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--noise", type=float, default=12.0, help="caption noise (sets how hard retrieval is)")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-queries", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.images, a.naive_queries, a.repeats = 1000, 100, 2
    img, txt, t2i = synthetic(a.images, a.captions_per_image, a.dim, a.noise)
    n, m = len(img), len(txt)

    times, cpu = [], []
    for _ in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        i2t, t2i_r = ranks_from_embeddings(img, txt, t2i, chunk=a.chunk)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    fast = min(times)
    scores = RetrievalScores.from_ranks(i2t, t2i_r)

    q = a.naive_queries
    t0 = time.perf_counter()
    ni2t, nt2i = naive_ranks(img, txt, t2i, queries=q)
    naive_sub = time.perf_counter() - t0
    assert (ni2t == i2t[:q]).all() and (nt2i == t2i_r[:q]).all(), "naive and fast ranks disagree"
    naive_full = naive_sub * (n + m) / (2 * q)  # both directions, extrapolated (per-query cost ~ constant)

    res = {
        "images": n, "captions": m, "dim": a.dim, "chunk": a.chunk, "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "fast_s_best": round(fast, 3), "fast_s_all": [round(t, 3) for t in times],
        "fast_cpu_s_best": round(min(cpu), 3),
        "naive_s_measured": round(naive_sub, 3), "naive_queries_per_direction": q,
        "naive_s_extrapolated": round(naive_full, 1), "speedup": round(naive_full / fast, 1),
        "ranks_agree_on_measured_queries": True, "score": round(scores.score, 2),
    }
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"recall@K, {n} images x {m} captions, d={a.dim}, {res['threads']} threads "
          f"(1-min load average {res['load_avg_1min']})")
    print(f"  chunked vectorised : {fast:.2f} s (best of {a.repeats}: {', '.join(f'{t:.2f}' for t in times)}); "
          f"{min(cpu):.2f} s of process CPU time")
    print(f"  naive per-query    : {naive_sub:.2f} s for {q}+{q} queries -> ~{naive_full:.0f} s for all "
          f"{n + m} (extrapolated)")
    print(f"  speed-up           : {naive_full / fast:.0f}x; ranks identical on the measured queries; "
          f"score {scores.score:.1f}")


if __name__ == "__main__":
    main()
