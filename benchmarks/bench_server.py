"""Load-test `vlens serve` on 127.0.0.1: a bounded number of search requests at fixed concurrency.

Starts a real server process (``vlens serve --index ...``) on a free local port over an index of generated shapes
images, then sends ``--requests`` text searches (captions of the dataset, so most queries differ) with
``--concurrency`` in flight, then thumbnail fetches. Reports errors, p50 / p99 latency and throughput; the
baseline in the same run is the library call (``Searcher.text``) in this process, one query at a time.

    .venv/bin/python benchmarks/bench_server.py --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(base: str, jobs: list[tuple[str, str, dict | None]], concurrency: int, deadline_s: float):
    """Run (method, path, json) jobs with ``concurrency`` in flight; returns (latencies ms, statuses, seconds)."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat, status = [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        t_end = time.perf_counter() + deadline_s

        async def one(method, path, body):
            async with sem:
                if time.perf_counter() > t_end:
                    status.append("deadline")
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, json=body)
                    status.append(r.status_code)
                except httpx.HTTPError as exc:
                    status.append(type(exc).__name__)
                lat.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(*j) for j in jobs))
        return np.array(lat), status, time.perf_counter() - t0


def summary(name: str, lat: np.ndarray, status: list, seconds: float) -> dict:
    errors = sum(1 for s in status if s != 200)
    d = {"what": name, "requests": len(status), "errors": errors, "seconds": round(seconds, 2),
         "req_per_s": round(len(status) / seconds, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
         "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2)}
    print(f"{name}: {d['requests']} requests, {errors} errors, {d['req_per_s']} req/s, p50 {d['p50_ms']} ms, "
          f"p99 {d['p99_ms']} ms", flush=True)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--thumbs", type=int, default=500, help="thumbnail GETs after the searches")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--model", default="builtin:clip-tiny")
    ap.add_argument("--deadline", type=float, default=300, help="seconds; requests not sent by then are errors")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.requests > 20000 or args.concurrency > 64:
        sys.exit("keep the load bounded: at most 20000 requests and concurrency 64")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vlens.data import load_dataset
    from vlens.data.shapes import make_shapes
    from vlens.retrieval.index import IndexConfig, build_index
    from vlens.retrieval.model import DualEncoder
    from vlens.retrieval.search import Searcher

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = make_shapes(tmp / "shapes", train=args.images, val=0, test=0, seed=0, size=96, progress=False)
        captions = [c for s in load_dataset(ds) for c in s.captions]
        enc = DualEncoder.from_spec(args.model)
        build_index(ds / "images", tmp / "idx", IndexConfig(model=args.model, batch_size=64),
                    embedder=(enc.encode_images, enc.dim), progress=False)
        queries = [captions[i % len(captions)] for i in range(args.requests)]
        print(f"index: {args.images} images; {args.requests} queries, {len(set(queries))} distinct", flush=True)

        # Baseline: the library, in this process, one query at a time (fresh Searcher: no cache hits).
        import torch

        torch.set_num_threads(1)
        s = Searcher(tmp / "idx", encoder=enc)
        base_ms = []
        for q in queries[:300]:
            t0 = time.perf_counter()
            s.text(q, 12)
            base_ms.append((time.perf_counter() - t0) * 1000)
        base = {"what": "library Searcher.text (baseline, sequential)", "p50_ms": round(float(np.median(base_ms)), 2),
                "p99_ms": round(float(np.percentile(base_ms, 99)), 2)}
        print(f"baseline library call: p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms", flush=True)
        ids = [h.id for h in s.text("a shape", k=args.images)]
        s.index.close()

        port = free_port()
        env = dict(os.environ, VLENS_PROGRESS="0")
        server = subprocess.Popen([sys.executable, "-m", "vlens.cli.main", "serve", "--index", str(tmp / "idx"),
                                   "--port", str(port), "--threads", "1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            import httpx

            t0 = time.time()
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.time() - t0 > 120:
                    sys.exit("server did not start: " + server.stderr.read().decode()[-2000:])
                time.sleep(0.2)
            url = f"http://127.0.0.1:{port}"
            jobs = [("POST", "/api/search", {"query": q, "k": 12}) for q in queries]
            results = [base]
            results.append(summary(f"POST /api/search, concurrency {args.concurrency}",
                                   *asyncio.run(load(url, jobs, args.concurrency, args.deadline))))
            thumbs = [("GET", f"/api/images/{ids[i % len(ids)]}?size=256", None) for i in range(args.thumbs)]
            if thumbs:
                results.append(summary(f"GET thumbnails, concurrency {args.concurrency}",
                                       *asyncio.run(load(url, thumbs, args.concurrency, args.deadline))))
        finally:
            server.terminate()
            server.wait(10)
    r = results[1]
    print(f"\nHTTP p50 / library p50 = x{r['p50_ms'] / base['p50_ms']:.1f} "
          f"(includes queueing: {args.concurrency} requests in flight on {os.cpu_count()} cores)")
    print("\n| what | requests | errors | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|")
    for d in results:
        print(f"| {d['what']} | {d.get('requests', '-')} | {d.get('errors', '-')} | {d.get('req_per_s', '-')} | "
              f"{d['p50_ms']} | {d['p99_ms']} |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "load_avg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
