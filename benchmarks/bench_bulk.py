"""Bulk inference: streaming captioning against the one-image-at-a-time loop, decode workers 0 vs 2, and
``vlens index build`` with 1 vs 2 processes (torchrun, gloo).

Part 1 (``--caption N``): N generated shapes images (PNG, ``--size`` px) captioned by ``builtin:blip-tiny``
(greedy). Baseline, same run: the loop a script would write (load one image, caption it, print it).
Then ``caption_to_file`` (the code behind ``vlens caption DIR --out``) with 0 and 2 decode workers, batch 32.

Part 2 (``--index N``): ``vlens index build`` of N images with ``builtin:clip-tiny``, as one process and as
``torchrun --nproc_per_node 2 -m vlens index build`` (each process 1 torch thread), end to end (process start,
model load, embedding, FAISS): seconds, images/s, seconds per 1,000 images.

    .venv/bin/python benchmarks/bench_bulk.py --caption 600 --index 10000
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


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def make_images(folder: Path, n: int, size: int) -> Path:
    from vlens.data.shapes import make_shapes

    make_shapes(folder, train=n, val=0, test=0, seed=0, size=size, progress=False)
    return folder / "images"


def bench_caption(n: int, size: int, tmp: Path) -> list[dict]:
    import torch

    from vlens.caption.bulk import caption_to_file
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.images import list_images, load_image

    torch.set_num_threads(1)
    images = make_images(tmp / "cap", n, size)
    files = list_images(images)
    cap = Captioner.from_spec("builtin:blip-tiny", device="cpu", dtype="fp32")
    one = DecodeSettings(batch_size=1)
    cap.caption([load_image(files[0])], one)  # warm-up
    rows = []
    t0 = time.perf_counter()
    for f in files:
        text = cap.caption([load_image(f)], one)[0][0].text
        print(f"{f.name}\t{text}", file=open(os.devnull, "w"))
    loop_s = time.perf_counter() - t0
    rows.append({"method": "one image at a time (loop)", "workers": "-", "batch": 1, "seconds": loop_s,
                 "images_per_s": n / loop_s})
    for workers in (0, 2):
        out = tmp / f"caps{workers}.jsonl"
        t0 = time.perf_counter()
        rep = caption_to_file([images], out, cap, DecodeSettings(batch_size=32), workers=workers, progress=False)
        s = time.perf_counter() - t0
        assert rep.done == n
        rows.append({"method": "caption --out (streaming)", "workers": workers, "batch": 32, "seconds": s,
                     "images_per_s": n / s})
    for r in rows:
        r["vs_loop"] = r["images_per_s"] / rows[0]["images_per_s"]
    return rows


def bench_index(n: int, size: int, tmp: Path) -> list[dict]:
    images = make_images(tmp / "idx", n, size)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", VLENS_PROGRESS="0")
    rows = []
    for procs in (1, 2):
        out = tmp / f"index{procs}"
        launch = [sys.executable, "-m", "vlens"] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m",
            "vlens"]
        cmd = launch + ["index", "build", str(images), "--out", str(out), "--batch-size", "64", "--workers", "1"]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        s = time.perf_counter() - t0
        if res.returncode:
            raise SystemExit(res.stderr[-2000:])
        rows.append({"processes": procs, "seconds": s, "images_per_s": n / s, "s_per_1000": s / n * 1000})
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caption", type=int, default=600, help="images for part 1 (0 = skip)")
    ap.add_argument("--index", type=int, default=10000, help="images for part 2 (0 = skip)")
    ap.add_argument("--size", type=int, default=256, help="side of the generated images in pixels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"load_before": load()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.caption:
            result["caption"] = bench_caption(args.caption, args.size, Path(tmp))
            print(f"\nBulk captioning, {args.caption} images of {args.size} px, builtin:blip-tiny ({load()})")
            print("| method | decode workers | batch | s | images/s | vs loop |\n|---|---:|---:|---:|---:|---:|")
            for r in result["caption"]:
                print(f"| {r['method']} | {r['workers']} | {r['batch']} | {r['seconds']:.1f} | "
                      f"{r['images_per_s']:.1f} | x{r['vs_loop']:.2f} |")
        if args.index:
            result["index"] = bench_index(args.index, args.size, Path(tmp))
            print(f"\nIndex build, {args.index} images of {args.size} px, builtin:clip-tiny ({load()})")
            print("| processes | s | images/s | s per 1,000 | vs 1 process |\n|---:|---:|---:|---:|---:|")
            for r in result["index"]:
                print(f"| {r['processes']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {r['s_per_1000']:.2f} | "
                      f"x{r['speedup']:.2f} |")
    result["load_after"] = load()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
