"""Does dynamic int8 quantisation earn a place on the CPU? Speed on real-size architectures, quality on the builtins.

    .venv/bin/python benchmarks/bench_int8.py            # speed (BLIP-base, CLIP ViT-B/32) + quality (blip/clip-tiny)
    .venv/bin/python benchmarks/bench_int8.py --skip-speed

``torch.ao.quantization.quantize_dynamic`` turns every ``nn.Linear`` into an int8 kernel (weights int8 once,
activations quantised on the fly). The bar (issue 20): ship ``--dtype int8`` only if it is at least x1.3 faster on
BLIP-base and CLIP ViT-B/32 and costs builtin:blip-tiny / builtin:clip-tiny under 1 point of BLEU-4 / recall
score on held-out data. fp32 and int8 run alternately in one process, on the same inputs and threads.

Speed: random weights, real shapes (BLIP-base: greedy, 20 new tokens, batch 4, 384 px; CLIP ViT-B/32: image
embeddings, batch 16). Quality: blip-tiny greedy on the 200 held-out test scenes of `make-shapes --style target
--seed 0` (BLEU-4, Python tokenisation), clip-tiny zero-shot on 300 held-out test scenes of `--style pretrain
--seed 0` (the recall score: mean of i2t/t2i R@1/5/10).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path


def quantized(model):
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    import torch

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def alternate(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(repeats: int) -> list[tuple[str, float, float]]:
    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_caption import blip_base_random
    from bench_peers import photos

    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.models import LoadedModel
    from vlens.retrieval.model import DualEncoder

    rows = []
    loaded = blip_base_random()
    fp = Captioner(loaded)
    q8 = Captioner(LoadedModel(quantized(loaded.model), loaded.image_processor, loaded.tokenizer, "int8", None,
                               "random", "captioner"))
    imgs = photos(4)
    s = DecodeSettings(max_new_tokens=20, batch_size=4)
    t = alternate({"fp32": lambda: fp.caption(imgs, s), "int8": lambda: q8.caption(imgs, s)}, repeats)
    rows.append(("BLIP-base greedy 20 tokens, batch 4", t["fp32"], t["int8"]))
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig()).eval()
    proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    e32 = DualEncoder(LoadedModel(clip, proc, None, "fp32", None, "random", "dual_encoder"))
    e8 = DualEncoder(LoadedModel(quantized(clip), proc, None, "int8", None, "random", "dual_encoder"))
    imgs = photos(16)
    t = alternate({"fp32": lambda: e32.encode_images(imgs, 16), "int8": lambda: e8.encode_images(imgs, 16)},
                  repeats)
    rows.append(("CLIP ViT-B/32 image embeddings, batch 16", t["fp32"], t["int8"]))
    return rows


def quality(tmp: Path) -> list[tuple[str, float, float]]:
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.evaluate import caption_and_score, load_split
    from vlens.data import load_dataset
    from vlens.data.shapes import make_shapes
    from vlens.models import LoadedModel
    from vlens.retrieval.evaluate import evaluate_encoder
    from vlens.retrieval.model import DualEncoder

    rows = []
    tgt = make_shapes(tmp / "target", train=0, val=0, test=200, seed=0, style="target", progress=False)
    fp = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    l8 = fp.loaded
    q8 = Captioner(LoadedModel(quantized(l8.model), l8.image_processor, l8.tokenizer, "int8", None, "builtin",
                               "captioner"))
    samples, images, _ = load_split(str(tgt), "test", None)
    bleu = {}
    for name, cap in (("fp32", fp), ("int8", q8)):
        _, scores = caption_and_score(cap, samples, images, DecodeSettings(batch_size=50), metrics=("BLEU-4",),
                                      tokenizer="python")
        bleu[name] = scores["BLEU-4"]
    rows.append(("builtin:blip-tiny BLEU-4, 200 held-out scenes", bleu["fp32"], bleu["int8"]))
    pre = make_shapes(tmp / "pretrain", train=0, val=0, test=300, seed=0, style="pretrain", progress=False)
    enc = DualEncoder.from_spec("builtin:clip-tiny", device="cpu")
    e8 = DualEncoder(LoadedModel(quantized(enc.model), enc.processor, enc.tokenizer, "int8", None, "builtin",
                                 "dual_encoder"))
    ds = load_dataset(str(pre)).split("test")
    score = {name: evaluate_encoder(e, ds)[0].score for name, e in (("fp32", enc), ("int8", e8))}
    rows.append(("builtin:clip-tiny recall score, 300 held-out scenes", score["fp32"], score["int8"]))
    return rows


def quality_ort(tmp: Path) -> list[tuple[str, float, float]]:
    """The same bars for ONNX Runtime dynamic int8 exports (:mod:`vlens.engines`): CLIP's image and text towers
    (recall@5, both directions), BLIP's vision encoder (BLEU-4; its text decoder stays fp32 torch ``generate``)."""
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.evaluate import caption_and_score, load_split
    from vlens.data import load_dataset
    from vlens.data.shapes import make_shapes
    from vlens.engines.towers import blip_vision_engine, clip_image_engine, clip_text_engine
    from vlens.retrieval.evaluate import evaluate_encoder
    from vlens.retrieval.model import DualEncoder

    rows = []
    pre = make_shapes(tmp / "pretrain", train=0, val=0, test=300, seed=0, style="pretrain", progress=False)
    fp = DualEncoder.from_spec("builtin:clip-tiny", device="cpu")
    q8 = DualEncoder.from_spec("builtin:clip-tiny", device="cpu", engine="onnx")
    q8._towers = {"image": clip_image_engine(q8.model, q8.loaded.path, q8.spec, "onnx", "int8"),
                  "text": clip_text_engine(q8.model, q8.loaded.path, q8.spec, "onnx", "int8")}
    ds = load_dataset(str(pre)).split("test")
    sc = {name: evaluate_encoder(e, ds)[0] for name, e in (("fp32", fp), ("int8", q8))}
    for k in ("i2t_r5", "t2i_r5"):
        rows.append((f"builtin:clip-tiny {k} (ORT int8 towers: {q8._towers['image'] is not None}), 300 held-out scenes",
                     getattr(sc["fp32"], k), getattr(sc["int8"], k)))
    tgt = make_shapes(tmp / "target", train=0, val=0, test=200, seed=0, style="target", progress=False)
    cap32 = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    cap8 = Captioner(cap32.loaded, device="cpu", engine="onnx")
    cap8._vision_tower = blip_vision_engine(cap8.model, cap8.loaded.path, cap8.spec, "onnx", "int8")
    samples, images, _ = load_split(str(tgt), "test", None)
    bleu = {}
    for name, cap in (("fp32", cap32), ("int8", cap8)):
        _, scores = caption_and_score(cap, samples, images, DecodeSettings(batch_size=50), metrics=("BLEU-4",),
                                      tokenizer="python")
        bleu[name] = scores["BLEU-4"]
    rows.append((f"builtin:blip-tiny BLEU-4 (ORT int8 vision encoder: {cap8._vision_tower is not None}), 200 held-out "
                 "scenes", bleu["fp32"], bleu["int8"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--ort", action="store_true", help="quality of ONNX Runtime int8 exports instead (no speed)")
    a = ap.parse_args()
    from vlens import cpu

    plan = cpu.apply()
    import os

    import torch

    print(f"{plan.describe()}; torch {torch.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    if a.ort:
        import os as _os

        with tempfile.TemporaryDirectory() as d:
            _os.environ.setdefault("VLENS_CACHE", str(Path(d) / "cache"))
            print("| model | fp32 | ORT int8 | cost (bar: under 1 point) |")
            print("|---|---:|---:|---:|")
            for name, v32, v8 in quality_ort(Path(d)):
                print(f"| {name} | {v32:.2f} | {v8:.2f} | {v32 - v8:+.2f} |", flush=True)
        print(f"load average at end {os.getloadavg()[0]:.2f}")
        return
    if not a.skip_speed:
        print("| model | fp32 (s) | int8 (s) | int8 speed-up (bar: x1.3) |")
        print("|---|---:|---:|---:|")
        for name, t32, t8 in speed(a.repeats):
            print(f"| {name} | {t32:.2f} | {t8:.2f} | x{t32 / t8:.2f} |", flush=True)
    if not a.skip_quality:
        print("| model | fp32 | int8 | cost (bar: under 1 point) |")
        print("|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as d:
            for name, v32, v8 in quality(Path(d)):
                print(f"| {name} | {v32:.2f} | {v8:.2f} | {v32 - v8:+.2f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
