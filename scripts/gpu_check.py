"""One-shot GPU check: the GPU tests and real-size benchmarks on random weights, one JSON, no network.

On a machine with a CUDA GPU (under 8 minutes; each benchmark stops early if the budget runs out)::

    .venv/bin/python scripts/gpu_check.py --out gpu_check.json

runs ``pytest -m gpu`` and measures, in ``--dtype`` (default bf16, fp16 where bf16 is missing):

- BLIP-base captioning (ViT-B/16 at 384 px + BERT-base decoder, 30,524-token vocabulary), greedy, 20 new tokens
  forced: captions/s at batch 1 and 64, through vlens's ``Captioner``;
- CLIP ViT-B/32 image embeddings at 224 px: images/s at batch 256, through vlens's ``DualEncoder``;
- DINO ViT-S/8 patch features at 448 px (56x56 = 3,136 patches): images/s at batch 16, through
  ``vlens.match.extract_features``;
- 4096 x 4096 patch matching (384-d descriptors, both directions + cycle): ms per pair, ``match_descriptors``;
- checkpoint converters against the originals where those import (timm and open_clip are installed on the GPU
  machines, not beside our CPU torch): a random timm ``vit_small_patch8_224`` (DINO's layout) saved as ``.pth`` and
  loaded with ``vlens.models.load(PATH)`` must give timm's ``forward_features``; a random open_clip ``ViT-B-32``
  converted to ``CLIPModel`` must give open_clip's ``encode_image`` / ``encode_text`` (fp32, CPU, max abs diff).

All models have the real architectures and random weights (``transformers`` configs, nothing downloaded), so the
numbers are speeds, not quality. ``--tiny`` runs the same code with tiny configs on the CPU in seconds (CI runs
it, so the script cannot rot); it never claims a GPU number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, deadline: float) -> tuple[float, int]:
    """Mean seconds per call of ``fn`` after one warm-up call (stops early past ``deadline``)."""
    fn()
    _sync(device)
    t0, n = time.perf_counter(), 0
    while n < repeats and time.time() < deadline:
        fn()
        n += 1
    _sync(device)
    return (time.perf_counter() - t0) / max(n, 1), n


def _loaded(model, processor, tokenizer, kind: str):
    from vlens.models import LoadedModel

    return LoadedModel(model, processor, tokenizer, f"random:{type(model).__name__}", Path("."), "random", kind)


def bench_blip(device, dtype, tiny: bool, deadline: float) -> dict:
    import torch
    import transformers

    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.models.presets import test_blip

    torch.manual_seed(0)
    if tiny:
        cfg, batches, new = test_blip(), (1, 4), 5
    else:  # BlipConfig() defaults are the BLIP-base shapes
        cfg, batches, new = transformers.BlipConfig(), (1, 64), 20
    tc = cfg.text_config
    tc.bos_token_id, tc.sep_token_id, tc.pad_token_id, tc.eos_token_id = 2, 3, 0, 3
    model = transformers.BlipForConditionalGeneration(cfg)
    size = cfg.vision_config.image_size
    tok = _BertLikeTokenizer(tc.vocab_size)  # pixels go in already made: no image processor needed
    cap = Captioner(_loaded(model, None, tok, "captioner"), device=device, dtype=dtype)
    out = {"model": "BLIP-base architecture, random weights" if not tiny else "test_blip (tiny)",
           "image_size": size, "new_tokens": new}
    settings = DecodeSettings(max_new_tokens=new, min_new_tokens=new)
    for b in batches:
        px = torch.randn(b, 3, size, size)
        settings = settings.replace(batch_size=b)
        sec, n = _timed(lambda px=px, s=settings: cap.caption_pixels(px, s), device, 5, deadline)
        out[f"captions_per_s_batch_{b}"] = round(b / sec, 2)
        out[f"runs_batch_{b}"] = n
    return out


class _BertLikeTokenizer:
    """The two things ``Captioner`` asks of a tokenizer for prompt-free greedy captions, for any vocabulary."""

    cls_token_id, sep_token_id = 101, 3

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.cls_token_id, self.sep_token_id]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(f"t{i}" for i in row) for row in ids]


def bench_clip(device, dtype, tiny: bool, deadline: float) -> dict:
    import torch
    import transformers

    from vlens.models.presets import test_clip
    from vlens.retrieval.model import DualEncoder

    torch.manual_seed(0)
    if tiny:
        cfg, batch = test_clip(), 8
    else:  # CLIPConfig() text defaults + ViT-B/32 vision at 224 px
        cfg = transformers.CLIPConfig(vision_config={"patch_size": 32, "image_size": 224}, projection_dim=512)
        batch = 256
    enc = DualEncoder(_loaded(transformers.CLIPModel(cfg), None, None, "dual_encoder"))
    enc.model.to(device=device, dtype=dtype).eval()
    size = cfg.vision_config.image_size
    px = torch.randn(batch, 3, size, size, device=device, dtype=dtype)

    def run():
        with torch.inference_mode():
            enc.embed_pixels(px)

    sec, n = _timed(run, device, 10, deadline)
    return {"model": "CLIP ViT-B/32 architecture, random weights" if not tiny else "test_clip (tiny)",
            "batch": batch, "images_per_s": round(batch / sec, 1), "runs": n}


def bench_dino(device, dtype, tiny: bool, deadline: float) -> dict:
    import torch
    import transformers
    from PIL import Image

    from vlens.match.features import Backbone, extract_features

    torch.manual_seed(0)
    if tiny:
        cfg, size, batch = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=64, image_size=32, patch_size=8), 64, 2
    else:  # ViT-S/8 as DINO trained it
        cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                     intermediate_size=1536, image_size=224, patch_size=8)
        size, batch = 448, 16
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    bb = Backbone("random:vit-s8", model, 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1,
                  cfg.num_hidden_layers, "vit")
    img = Image.new("RGB", (size, size), (120, 90, 60))
    images = [img] * batch
    feats = extract_features(images, bb, size=size, batch_size=batch, device=device, dtype=dtype)
    sec, n = _timed(lambda: extract_features(images, bb, size=size, batch_size=batch, device=device, dtype=dtype),
                    device, 5, deadline)
    return {"model": "ViT-S/8 (DINO) architecture, random weights" if not tiny else "ViT tiny", "size": size,
            "patches": int(feats[0].descriptors.shape[0] * feats[0].descriptors.shape[1]), "batch": batch,
            "images_per_s": round(batch / sec, 2), "runs": n}


def bench_matching(device, tiny: bool, deadline: float) -> dict:
    import torch

    from vlens.match.matching import match_descriptors

    n, d = (256, 16) if tiny else (4096, 384)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, d, generator=g).to(device), torch.randn(n, d, generator=g).to(device)
    xy = torch.rand(n, 2, generator=g).to(device) * 448
    sec, runs = _timed(lambda: match_descriptors(a, b, xy, xy), device, 10, deadline)
    return {"patches": f"{n}x{n}", "dim": d, "ms_per_pair": round(sec * 1000, 2), "runs": runs}


def check_converters(tiny: bool) -> dict:
    """vlens's converted models against timm's and open_clip's own forward passes, random weights, fp32 on the CPU.
    Reports what could not be imported instead of failing (timm and open_clip need torchvision)."""
    import tempfile

    import torch

    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="vlens-convert-"))
    os.environ.setdefault("VLENS_CACHE", str(tmp / "cache"))
    torch.manual_seed(0)
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to load its operators
        out["timm"] = {"skipped": f"timm does not import here ({type(exc).__name__})"}
    else:
        from vlens.models import load

        model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0).eval()
        path = tmp / "vit_small_patch8_224.dino.pth"
        torch.save(model.state_dict(), path)
        hf = load(str(path), "backbone").model.float().eval()
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            want, got = model.forward_features(x), hf(pixel_values=x).last_hidden_state
        out["timm"] = {"model": f"timm {timm.__version__} vit_small_patch8_224, random", "shape": list(got.shape),
                       "max_abs_diff": float((want - got).abs().max()),
                       "ok": bool(torch.allclose(want, got, atol=1e-4))}
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001
        out["open_clip"] = {"skipped": f"open_clip does not import here ({type(exc).__name__})"}
    else:
        import transformers

        from vlens.models.checkpoints import convert_state_dict, write_hf_folder

        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        _, config, state = convert_state_dict(dict(model.state_dict()))
        folder = write_hf_folder(config, state, tmp / "clip")
        hf = transformers.CLIPModel.from_pretrained(folder).eval()
        pixels = torch.randn(2, 3, 224, 224)
        ids = torch.zeros(2, 77, dtype=torch.long)
        ids[:, 0] = 49406  # start of text
        ids[0, 1:4] = torch.tensor([320, 1125, 49407])  # ... end of text (the largest id: open_clip pools there)
        ids[1, 1:6] = torch.tensor([320, 1929, 539, 320, 49407])
        with torch.no_grad():
            di = (model.encode_image(pixels) - hf.get_image_features(pixel_values=pixels).pooler_output).abs().max()
            dt = (model.encode_text(ids) - hf.get_text_features(input_ids=ids).pooler_output).abs().max()
        out["open_clip"] = {"model": f"open_clip {open_clip.__version__} ViT-B-32, random",
                            "image_max_abs_diff": float(di), "text_max_abs_diff": float(dt),
                            "ok": bool(di < 1e-4 and dt < 1e-4)}
    bad = [k for k, v in out.items() if v.get("ok") is False]
    if bad:
        out["error"] = f"converted outputs differ from {', '.join(bad)}'s own"
    return out


def run_gpu_tests(tiny: bool) -> dict:
    if tiny:
        return {"skipped": "tiny mode runs no tests (CI runs the whole suite, where gpu tests skip with a reason)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False, cwd=ROOT)
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-300:]
    return {"returncode": res.returncode, "summary": tail, "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON file to write.")
    ap.add_argument("--tiny", action="store_true", help="Tiny configs on the CPU (CI mode, seconds).")
    ap.add_argument("--device", default=None, help="Default: cuda (cpu with --tiny).")
    ap.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32. Default: bf16 (fp16 on GPUs without "
                    "bf16); fp32 with --tiny.")
    ap.add_argument("--budget", type=float, default=450.0, help="Seconds for everything (default 7.5 min).")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from vlens.devices import dtype_name, resolve_device, resolve_dtype
    from vlens.errors import VlensError

    start = time.time()
    deadline = start + args.budget
    try:
        device = resolve_device(args.device or ("cpu" if args.tiny else "cuda"))
        dtype = resolve_dtype(args.dtype or ("fp32" if args.tiny else "auto"), device)
    except VlensError as exc:
        print(f"error: {exc} (for the CPU smoke test run with --tiny)", file=sys.stderr)
        return 1
    report = {"mode": "tiny" if args.tiny else "full", "device": str(device), "dtype": dtype_name(dtype),
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report["gpu_tests"] = run_gpu_tests(args.tiny)
    steps = [("blip_base_captioning", lambda: bench_blip(device, dtype, args.tiny, deadline)),
             ("clip_vit_b32_embedding", lambda: bench_clip(device, dtype, args.tiny, deadline)),
             ("dino_vit_s8_features", lambda: bench_dino(device, dtype, args.tiny, deadline)),
             ("matching", lambda: bench_matching(device, args.tiny, deadline)),
             ("converters_vs_originals", lambda: check_converters(args.tiny))]
    for name, fn in steps:
        t0 = time.time()
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not lose the others' numbers
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        report[name]["seconds"] = round(time.time() - t0, 1)
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['seconds']} s)")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    tests_failed = report["gpu_tests"].get("returncode") not in (None, 0, 5)  # 5: no tests collected
    return 1 if failed or tests_failed else 0


if __name__ == "__main__":
    sys.exit(main())
