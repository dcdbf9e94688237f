"""Throughput of one DINO training step (student forward/backward on 2 global + 4 local crops (the builtin recipe),
teacher forward,
loss, AdamW, EMA) on the dino-tiny preset, with 1 torch thread and with all cores, measured in the same run.

    .venv/bin/python benchmarks/bench_dino.py [--batch 16] [--steps 5] [--dense-weight 1.0]

Prints images/s for each thread count and the speed-up of all cores over one.
"""

from __future__ import annotations

import argparse
import copy
import os
import time


def bench(threads: int, batch: int, steps: int, dense: bool) -> float:
    import torch

    from vlens.ssl import dino
    from vlens.ssl.train import build_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bb = build_backbone("dino-tiny", 96)
    d = bb.config.hidden_size
    patch_head = dino.DINOHead(d, 256, 2 * d, 64, n_layers=2) if dense else None
    student = dino.MultiCropNet(bb, dino.DINOHead(d, 1024, 512, 128), patch_head)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    crops = [torch.randn(batch, 3, 96, 96) for _ in range(2)] + [torch.randn(batch, 3, 48, 48) for _ in range(4)]
    geom = torch.tensor([[0.0, 0, 200, 200, 0], [50, 50, 250, 250, 1]] + [[60.0, 60, 120, 120, 0]] * 4)
    geom = geom.expand(batch, -1, -1)
    c, cp = torch.zeros(1, 1024), torch.zeros(1, 256)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        s_out, t_out = student(crops), None
        with torch.no_grad():
            t_out = teacher(crops[:2])
        if dense:
            (s_out, s_p, s_tok), (t_out, t_p, t_tok) = s_out, t_out
        loss = dino.dino_loss(s_out, t_out, c, 0.1, 0.04, 2)
        if dense:
            loss = loss + dino.dense_dino_loss(s_p, t_p, geom, cp, 0.1, 0.04)
            loss = loss + dino.dense_contrastive_loss(s_tok, t_tok, geom, 0.1)
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
    ap.add_argument("--dense-weight", type=float, default=1.0,
                    help="> 0 includes the dense DINO and patch InfoNCE terms")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    one = bench(1, args.batch, args.steps, args.dense_weight > 0)
    all_ = bench(cores, args.batch, args.steps, args.dense_weight > 0)
    print(f"dino-tiny DINO step, batch {args.batch}, 2x96 + 4x48 px crops, dense term {args.dense_weight > 0}")
    print(f"  1 thread      {one:7.1f} images/s")
    print(f"  {cores} threads     {all_:7.1f} images/s   ({all_ / one:.2f}x)")


if __name__ == "__main__":
    main()
