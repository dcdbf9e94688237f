"""Training throughput (image-caption pairs/s) of the retrieval trainer's step, and what dominates it.

    .venv/bin/python benchmarks/bench_retrieval_train.py             # preset clip-tiny, batch 64
    .venv/bin/python benchmarks/bench_retrieval_train.py --quick     # test-clip, batch 32

Times the same step the trainer runs (both towers in one module, symmetric InfoNCE, AdamW) on synthetic
pixels and token ids, split into its parts with a synchronising timer: image tower forward, text tower forward,
loss, backward, optimiser step. Reports mean milliseconds per part over --steps steps after --warmup steps.
Process CPU time is printed next to wall time because the development machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    import torch
    import torch.nn.functional as F
    import transformers

    from vlens.models.presets import get_preset
    from vlens.retrieval.loss import info_nce
    from vlens.training import param_groups

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="clip-tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--caption-tokens", type=int, default=16, help="tokens per caption incl. [CLS]/[SEP] "
                    "(shapes captions: 8-20)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.preset, a.batch_size, a.steps = "test-clip", 32, 5
    torch.manual_seed(0)
    cfg = get_preset(a.preset, vocab_size=200)
    model = transformers.CLIPModel(cfg).train()
    size = cfg.vision_config.image_size
    b, n_tok = a.batch_size, a.caption_tokens
    px = torch.randn(b, 3, size, size)
    ids = torch.randint(5, 200, (b, n_tok))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    parts = {k: [] for k in ("image_fwd", "text_fwd", "loss", "backward", "optimizer", "step")}
    cpu = []
    for i in range(a.warmup + a.steps):
        c0, t0 = time.process_time(), time.perf_counter()
        img = model.get_image_features(pixel_values=px)
        img = F.normalize(getattr(img, "pooler_output", img), dim=-1)
        t1 = time.perf_counter()
        txt = model.get_text_features(input_ids=ids, attention_mask=mask)
        txt = F.normalize(getattr(txt, "pooler_output", txt), dim=-1)
        t2 = time.perf_counter()
        loss = info_nce(img, txt, model.logit_scale)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if i >= a.warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                parts[k].append(v)
            cpu.append(time.process_time() - c0)
    med = {k: statistics.fmean(v) for k, v in parts.items()}  # means, so the parts add up to the step
    res = {
        "preset": a.preset, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "image_size": size, "batch": b, "caption_tokens": n_tok, "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "pairs_per_s": round(b / med["step"], 1), "pairs_per_cpu_s": round(b / statistics.median(cpu), 1),
        "ms": {k: round(1000 * v, 1) for k, v in med.items()},
        "share": {k: round(100 * v / med["step"], 1) for k, v in med.items() if k != "step"},
    }
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{a.preset} ({res['params_m']} M params, {size} px, {n_tok}-token captions), batch {b}, "
          f"{res['threads']} threads, 1-min load average {res['load_avg_1min']}")
    print(f"  {res['pairs_per_s']} pairs/s wall, {res['pairs_per_cpu_s']} pairs per CPU-second")
    for k in ("image_fwd", "text_fwd", "loss", "backward", "optimizer"):
        print(f"  {k:10s} {res['ms'][k]:8.1f} ms  {res['share'][k]:5.1f} %")


if __name__ == "__main__":
    main()
