"""Throughput of one DINO training step of the builtin:dino-tiny recipe (student forward/backward on 2 global
crops of 128 px, teacher forward, [CLS] DINO + patch InfoNCE with the student's keys, AdamW, EMA) on the dino-tiny
preset, with 1 torch thread and with all cores, measured in the same run.

    .venv/bin/python benchmarks/bench_dino.py [--batch 16] [--steps 5] [--global-size 128] [--n-local 0]

Prints images/s for each thread count and the speed-up of all cores over one.
"""

from __future__ import annotations

import argparse
import copy
import os
import time


def bench(threads: int, batch: int, steps: int, size: int, n_local: int) -> float:
    import torch

    from vlens.ssl import dino
    from vlens.ssl.train import build_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bb = build_backbone("dino-tiny", size)
    d = bb.config.hidden_size
    student = dino.MultiCropNet(bb, dino.DINOHead(d, 1024, 512, 128), return_tokens=True)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    local = size // 2
    crops = [torch.randn(batch, 3, size, size) for _ in range(2)]
    crops += [torch.randn(batch, 3, local, local) for _ in range(n_local)]
    geom = torch.tensor([[0.0, 0, 200, 200, 0, 0], [50, 50, 250, 250, 0, 0.2]] + [[60.0, 60, 120, 120, 0, 0]] * n_local)
    geom = geom.expand(batch, -1, -1)
    c = torch.zeros(1, 1024)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        s_out, t_out = student(crops), None
        with torch.no_grad():
            t_out = teacher(crops[:2])
        (s_out, _, s_tok), (t_out, _, _) = s_out, t_out
        loss = dino.dino_loss(s_out, t_out, c, 0.1, 0.04, 2)
        loss = loss + dino.dense_contrastive_loss(s_tok, s_tok[:2], geom, 0.1, detach_keys=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dino.ema_update(teacher, student, 0.99)
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / steps)  # first step is warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--global-size", type=int, default=128, help="global crop side (px)")
    ap.add_argument("--n-local", type=int, default=0, help="local crops per image (global-size / 2 px)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    one = bench(1, args.batch, args.steps, args.global_size, args.n_local)
    all_ = bench(cores, args.batch, args.steps, args.global_size, args.n_local)
    print(f"dino-tiny DINO step, batch {args.batch}, 2x{args.global_size} + {args.n_local}x{args.global_size // 2} "
          "px crops, [CLS] + patch InfoNCE")
    print(f"  1 thread      {one:7.1f} images/s")
    print(f"  {cores} threads     {all_:7.1f} images/s   ({all_ / one:.2f}x)")


if __name__ == "__main__":
    main()
