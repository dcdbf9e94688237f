"""vlens against the plain Hugging Face call a user would write instead, on real-size architectures.

    .venv/bin/python benchmarks/bench_peers.py                  # BLIP-base, CLIP ViT-B/32, DINO ViT-S/8; 3 repeats
    .venv/bin/python benchmarks/bench_peers.py --models clip --repeats 2

Models have random weights (no hub here) and the real shapes: BLIP-base (ViT-B/16 at 384 px + BERT-base decoder;
greedy, 20 new tokens, batch 1 and 8), CLIP ViT-B/32 (224 px image embeddings, batch 8) and DINO ViT-S/8 (patch
tokens of a 448 x 448 input, batch 1). Both sides get the same images and include their preprocessing:

- BLIP:  ``processor(images)`` + ``BlipForConditionalGeneration.generate`` vs ``Captioner.caption`` (which also
  returns each caption's log-probability);
- CLIP:  ``processor(images)`` + ``CLIPModel.get_image_features`` vs ``DualEncoder.encode_images`` (unit-norm);
- DINO:  ``processor(image)`` + ``ViTModel(..., interpolate_pos_encoding=True)`` vs ``extract_features``.

Each configuration runs in its own process (the OpenMP wait policy is fixed when torch loads), with vlens and the
plain call alternating inside it (ABBA: who goes first alternates), in the same threads. Conditions: idle, and
beside one busy process (a pure-Python loop on one core). Under the busy process, the plain call also runs under
torch's own defaults (``VLENS_CPU_POLICY=off``: all cores, spinning barriers): what a user gets without vlens's
policy. Besides the ratio of medians, the table gives the median of the per-repeat ratios and in how many repeats
vlens was the faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLEAR = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "VLENS_THREADS",
         "VLENS_CPU_POLICY", "VLENS_AUTO_OMP_NUM_THREADS")
CASES = {"blip": [("BLIP-base greedy 20 tokens", 1), ("BLIP-base greedy 20 tokens", 8)],
         "clip": [("CLIP ViT-B/32 image embeddings", 8)],
         "dino": [("DINO ViT-S/8 patch tokens at 448 px", 1)]}


def photos(n: int, side: int = 512):
    """Real photos (scikit-image), square-cropped so both sides run the same input size (seeded noise where
    scikit-image is missing, e.g. a bare GPU machine: the weights are random, so content does not matter)."""
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        import numpy as np

        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry", "hubble_deep_field"]
    out = []
    for i in range(n):
        a = getattr(skimage.data, names[i % len(names)])()
        im = Image.fromarray(a).convert("RGB")
        s = min(im.size)
        out.append(im.crop((0, 0, s, s)).resize((side, side)))
    return out


DEVICE = "cpu"


def _sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def blip_case(batch: int):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_caption import blip_base_random

    from vlens.caption.captioner import Captioner, DecodeSettings

    loaded = blip_base_random()
    cap = Captioner(loaded, device=DEVICE)
    images = photos(batch)
    s = DecodeSettings(max_new_tokens=20, batch_size=batch)

    def ours():
        return cap.caption(images, s)

    def plain():
        with torch.inference_mode():
            px = loaded.image_processor(images=images, return_tensors="pt")["pixel_values"].to(DEVICE)
            return cap.model.generate(pixel_values=px, max_new_tokens=20, min_new_tokens=0, do_sample=False,
                                      num_beams=1)

    calls = {"vision": 0, "decoder": 0}  # forward passes, counted by hooks while same() runs each side once
    for name, module in (("vision", cap.model.vision_model), ("decoder", cap.model.text_decoder)):
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    def counted(fn):
        for k in calls:
            calls[k] = 0
        out = fn()
        return out, dict(calls)

    def same():  # greedy: vlens's caption tokens are generate's (prompt and stop removed), from the same passes
        from vlens.caption.decode import strip_prompt

        (caps, work_ours), (seqs, work_plain) = counted(ours), counted(plain)
        ok = [c[0].token_ids for c in caps] == strip_prompt(seqs.cpu(), 1, cap.eos_ids, cap.pad_id)
        return ok, {"plain": work_plain, "vlens": work_ours}
    return ours, plain, same


def clip_case(batch: int):
    import torch
    import transformers

    from vlens.models import LoadedModel
    from vlens.retrieval.model import DualEncoder

    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig()).eval().to(DEVICE)  # the defaults are ViT-B/32
    proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    enc = DualEncoder(LoadedModel(model, proc, None, "random CLIP ViT-B/32", None, "random", "dual_encoder"))
    images = photos(batch)

    def ours():
        return enc.encode_images(images, batch_size=batch)

    def plain():
        with torch.inference_mode():
            px = proc(images=images, return_tensors="pt")["pixel_values"].to(DEVICE)
            return model.get_image_features(pixel_values=px).pooler_output

    def same():
        a = torch.from_numpy(ours())
        b = torch.nn.functional.normalize(plain(), dim=-1).cpu()
        return bool(torch.allclose(a, b, atol=1e-4))
    return ours, plain, same


def dino_case(batch: int):
    import torch
    import transformers

    from vlens.match.features import Backbone, extract_features

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=8, image_size=224, qkv_bias=True,
                                 layer_norm_eps=1e-6)  # facebook/dino-vits8
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval().to(DEVICE)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    proc = transformers.ViTImageProcessorPil(size={"height": 448, "width": 448}, image_mean=list(mean),
                                             image_std=list(std), resample=3)
    bb = Backbone("random dino-vits8", model, 8, mean, std, 1, 12, "vit")
    images = photos(batch)

    def ours():
        return extract_features(images, bb, size=448, batch_size=batch)

    def plain():
        with torch.inference_mode():
            px = proc(images=images, return_tensors="pt")["pixel_values"].to(DEVICE)
            return model(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state

    def same():
        a = ours()[0].descriptors
        b = plain()[0, 1:].reshape(56, 56, -1).cpu()
        return bool(torch.allclose(a, b, atol=2e-2))  # PIL resamples differently from our resize: close, not equal
    return ours, plain, same


def matmul_peak_gflops(n: int = 2048, runs: int = 5) -> float:
    """This machine's fp32 matmul rate (n x n @ n x n, best of ``runs``) in the threads now in force: the roof."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(runs))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward_flops(fn) -> float:
    """FLOPs of one call of ``fn`` as torch's FlopCounterMode counts them (matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return float(fc.get_total_flops())


def engine_case(key: str, folder: Path):
    """(name, batch, plain, {engine: vlens call}, same(engine) -> max diff, flops): the plain Hugging Face call and
    vlens on torch, ONNX Runtime fp32 and ONNX Runtime dynamic int8, on the same images and threads."""
    import torch
    import transformers

    from vlens.engines.export import compare
    from vlens.models import LoadedModel

    torch.manual_seed(0)
    if key == "clip":
        from vlens.engines.towers import clip_image_engine
        from vlens.retrieval.model import DualEncoder

        model = transformers.CLIPModel(transformers.CLIPConfig()).eval()
        proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        if not (folder / "config.json").is_file():
            model.save_pretrained(folder)
        images, batch = photos(8), 8
        loaded = LoadedModel(model, proc, None, "random CLIP ViT-B/32", folder, "random", "dual_encoder")
        encs = {e: DualEncoder(loaded, engine="torch" if e == "torch" else "onnx") for e in ("torch", "onnx", "int8")}
        encs["int8"]._towers["image"] = clip_image_engine(model, folder, "random CLIP ViT-B/32", "onnx", "int8")
        if encs["int8"]._towers["image"] is None:  # refused: cosine under 0.99 against torch on the probe
            encs.pop("int8")

        def plain():
            with torch.inference_mode():
                px = proc(images=images, return_tensors="pt")["pixel_values"]
                return model.get_image_features(pixel_values=px).pooler_output

        calls = {e: (lambda enc=enc: enc.encode_images(images, batch_size=batch)) for e, enc in encs.items()}
        ref = torch.nn.functional.normalize(plain(), dim=-1).numpy()
        flops = forward_flops(plain)
        return "CLIP ViT-B/32 image tower", batch, plain, calls, lambda e: compare(ref, calls[e]()), flops
    from vlens.engines.towers import vit_tokens_engine
    from vlens.match import features as feats

    cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                                 patch_size=8, image_size=224, qkv_bias=True, layer_norm_eps=1e-6)
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    if not (folder / "config.json").is_file():
        model.save_pretrained(folder)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    proc = transformers.ViTImageProcessorPil(size={"height": 448, "width": 448}, image_mean=list(mean),
                                             image_std=list(std), resample=3)
    bb = feats.Backbone("random dino-vits8", model, 8, mean, std, 1, 12, "vit", folder=folder)
    images, batch = photos(1), 1
    int8 = vit_tokens_engine(model, folder, "random dino-vits8", "onnx", 11, 1, (448, 448), 8, "int8")

    def plain():
        with torch.inference_mode():
            px = proc(images=images, return_tensors="pt")["pixel_values"]
            return model(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state

    def with_int8():
        real = feats._onnx_tokens
        feats._onnx_tokens = lambda bb_, x, *a: None if int8 is None else torch.from_numpy(int8(pixel_values=x.numpy()))
        try:
            return feats.extract_features(images, bb, size=448, batch_size=batch, engine="onnx")
        finally:
            feats._onnx_tokens = real

    calls = {"torch": lambda: feats.extract_features(images, bb, size=448, batch_size=batch, engine="torch"),
             "onnx": lambda: feats.extract_features(images, bb, size=448, batch_size=batch, engine="onnx"),
             **({"int8": with_int8} if int8 is not None else {})}
    ref = calls["torch"]()[0].descriptors.numpy()[None]
    flops = forward_flops(plain)
    return ("DINO ViT-S/8 patch tokens at 448 px", batch, plain, calls,
            lambda e: compare(ref, calls[e]()[0].descriptors.numpy()[None]), flops)


def engines_worker(models: list[str], repeats: int, work: Path) -> list[dict]:
    import torch

    rows = []
    peak = matmul_peak_gflops()
    for key in models:
        if key not in ("clip", "dino"):
            continue
        name, batch, plain, calls, same, flops = engine_case(key, work / key)
        checks = {e: same(e) for e in calls}  # also the warm-up of each
        plain()
        times = {"plain": [], **{e: [] for e in calls}}
        order = [("plain", plain), *calls.items()]
        for k in range(repeats):  # rotate who goes first
            for label, fn in order[k % len(order):] + order[:k % len(order)]:
                times[label].append(_timed(fn))
        rows.append({"case": name, "batch": batch, "threads": torch.get_num_threads(), "peak_gflops": peak,
                     "int8_refused": "int8" not in calls,
                     "flops": flops, "times": times,
                     "checks": {e: {k: c.get(k) for k in ("ok", "max_abs_diff", "min_cosine")}
                                for e, c in checks.items()}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def engines_report(rows: list[dict], repeats: int) -> None:
    load = os.getloadavg()[0]
    print(f"Engines against the plain Hugging Face call, random weights, median of {repeats} rotating repeats, "
          f"one process, {rows[0]['threads'] if rows else '?'} threads, load average {load:.2f}; fp32 matmul peak "
          f"{rows[0]['peak_gflops'] if rows else 0:.0f} GFLOP/s (2048^2, best of 5, same threads)")
    print("| case | batch | plain HF (s) | vlens torch | vlens ONNX Runtime | vlens ONNX int8 | "
          "ONNX max diff (cosine) | int8 cosine | roofline: GFLOP/s plain / torch / ONNX / int8 (% of peak) |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med = {k: statistics.median(v) for k, v in r["times"].items()}
        p = med["plain"]
        g = {k: r["flops"] / v / 1e9 for k, v in med.items()}
        roof = " / ".join(f"{g[k]:.0f} ({100 * g[k] / r['peak_gflops']:.0f}%)" for k in ("plain", "torch", "onnx")
                          if k in g)
        if r.get("int8_refused"):
            roof += " / int8 refused"
        else:
            roof += f" / {g['int8']:.0f} ({100 * g['int8'] / r['peak_gflops']:.0f}%)"
        c = r["checks"]
        i8 = f"x{med['int8'] / p:.2f}" if "int8" in med else "refused"
        i8c = f"{c['int8']['min_cosine']:.4f}" if "int8" in c else "refused (< 0.99 on the probe)"
        print(f"| {r['case']} | {r['batch']} | {p:.3f} | x{med['torch'] / p:.2f} | x{med['onnx'] / p:.2f} | {i8} | "
              f"{c['onnx']['max_abs_diff']:.1e} ({c['onnx']['min_cosine']:.6f}) | {i8c} | {roof} |")
    print("(int8 is ONNX Runtime dynamic quantisation of every weight matrix; on random weights its cosine says "
          "nothing about quality on trained ones: see benchmarks/RESULTS.md, int8.)")


def worker(models: list[str], repeats: int, only_plain: bool) -> list[dict]:
    import torch

    rows = []
    for key in models:
        for name, batch in CASES[key]:
            ours, plain, same = {"blip": blip_case, "clip": clip_case, "dino": dino_case}[key](batch)
            ok = None if only_plain else same()  # also the warm-up of both
            ok, work = ok if isinstance(ok, tuple) else (ok, None)  # work: forward passes per side, where counted
            if only_plain:
                plain()
            t_ours, t_plain = [], []
            for k in range(repeats):  # ABBA: who goes first alternates, so neither gains from going second
                pair = [(plain, t_plain), (None if only_plain else ours, t_ours)]
                for fn, acc in (pair if k % 2 == 0 else pair[::-1]):
                    if fn is None:
                        continue
                    _sync()
                    t0 = time.perf_counter()
                    fn()
                    _sync()
                    acc.append(time.perf_counter() - t0)
            rows.append({"case": name, "batch": batch, "threads": torch.get_num_threads(), "same_output": ok,
                         "forward_passes": work, "plain_s": t_plain, "vlens_s": t_ours})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run_config(models, repeats, policy: str, busy: bool, device: str = "cpu") -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAR}
    env.update(HF_HUB_OFFLINE="1", VLENS_PROGRESS="0")
    if policy == "torch":
        env["VLENS_CPU_POLICY"] = "off"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        r = subprocess.run([sys.executable, __file__, "--worker", "--models", ",".join(models), "--repeats",
                            str(repeats), "--device", device, *(["--only-plain"] if policy == "torch" else [])],
                           env=env, check=True, stdout=subprocess.PIPE, text=True)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="blip,clip,dino")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conditions", default="idle,busy")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only-plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (then use --conditions idle)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--engines", action="store_true", help="torch eager vs ONNX Runtime vs int8 vs the plain HF call "
                    "(clip, dino), with a roofline line per model, in one process")
    ap.add_argument("--work", default="/tmp/vlens-bench-engines", help="--engines: where the models and their "
                    "exports are kept (reruns reuse the exports)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    models = [m for m in a.models.split(",") if m]
    if a.engines:
        from vlens import cpu

        os.environ.setdefault("VLENS_CACHE", str(Path(a.work) / "cache"))
        cpu.apply()
        rows = engines_worker(models, a.repeats, Path(a.work))
        engines_report(rows, a.repeats)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return
    if a.worker:
        from vlens import cpu

        if not cpu.disabled():
            cpu.apply()  # before torch loads, as the CLI does
        print(json.dumps(worker(models, a.repeats, a.only_plain)))
        return
    results = {}
    for cond in a.conditions.split(","):
        busy = cond == "busy"
        results[(cond, "vlens")] = run_config(models, a.repeats, "vlens", busy, a.device)
        if busy:
            results[(cond, "torch")] = run_config(models, a.repeats, "torch", busy, a.device)
    load = os.getloadavg()
    print(f"vlens vs the plain Hugging Face call, random weights, median of {a.repeats} alternating repeats "
          f"(device {a.device}; load average at end {load[0]:.2f}; {os.cpu_count()} cores)")
    print("| case | batch | condition | plain HF (s) | vlens (s) | vlens / plain | paired ratio (vlens faster) | "
          "same output | plain HF under torch defaults (s) | vlens / that |")
    print("|---|---:|---|---:|---:|---:|---|---|---:|---:|")
    out = []
    for cond in a.conditions.split(","):
        base = {(r["case"], r["batch"]): r for r in results.get((cond, "torch"), [])}
        for r in results[(cond, "vlens")]:
            p, v = statistics.median(r["plain_s"]), statistics.median(r["vlens_s"])
            pairs = [a / b for a, b in zip(r["vlens_s"], r["plain_s"])]  # each repeat's vlens / plain
            paired = f"x{statistics.median(pairs):.3f} ({sum(x < 1 for x in pairs)}/{len(pairs)})" if pairs else "-"
            b = base.get((r["case"], r["batch"]))
            bt = statistics.median(b["plain_s"]) if b else None
            extra = f"{bt:.2f} | x{v / bt:.2f}" if bt else "- | -"
            print(f"| {r['case']} | {r['batch']} | {cond} | {p:.2f} | {v:.2f} | x{v / p:.3f} | {paired} | "
                  f"{r['same_output']} | {extra} |")
            out.append({**r, "condition": cond, "plain_median_s": p, "vlens_median_s": v, "ratio": v / p,
                        "paired_ratio_median": statistics.median(pairs) if pairs else None,
                        "plain_torch_defaults_median_s": bt})
    for r in out:
        if r.get("forward_passes"):
            w = r["forward_passes"]
            print(f"{r['case']}, batch {r['batch']}, {r['condition']}: forward passes (vision model, text decoder) "
                  f"plain {w['plain']['vision']}, {w['plain']['decoder']}; vlens {w['vlens']['vision']}, "
                  f"{w['vlens']['decoder']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
