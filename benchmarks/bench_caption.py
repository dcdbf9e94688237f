"""Captions per second: batched generation vs one image at a time, with the same model, in the same run.

    .venv/bin/python benchmarks/bench_caption.py            # builtin:blip-tiny + a random BLIP-base at 384 px
    .venv/bin/python benchmarks/bench_caption.py --quick    # blip-tiny only

For each model and strategy (greedy; top-k 50 sampling at temperature 0.7) it captions the same images twice:
batched (--batch-size) and one at a time, and prints captions/s and the ratio. Both paths use the same
``Captioner.caption`` (vision encoder once per batch, HF ``generate`` with a KV cache, one rescoring pass).
The random BLIP-base never emits [SEP], so every caption has exactly --max-new-tokens tokens there: an equal
amount of work per image in both paths.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def blip_base_random(image_size: int = 384):
    """BlipForConditionalGeneration with BLIP-base's shape (ViT-B/16 at 384 px, BERT-base decoder), random
    weights, and a synthetic 30,524-token WordPiece vocabulary (only ids matter here)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    from vlens.models import LoadedModel
    from vlens.models.tokenizer import SPECIAL_TOKENS

    torch.manual_seed(0)
    cfg = transformers.BlipConfig(
        text_config=dict(bos_token_id=2, sep_token_id=3, eos_token_id=3, pad_token_id=0),
        vision_config=dict(image_size=image_size),
    )
    model = transformers.BlipForConditionalGeneration(cfg).eval()
    vocab = {
        t: i
        for i, t in enumerate([*SPECIAL_TOKENS, *[f"w{i}" for i in range(cfg.text_config.vocab_size - 5)]])
    }
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    tok = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    proc = transformers.BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return LoadedModel(model, proc, tok, "random BLIP-base (384 px)", None, "random", "captioner")


def measure(captioner, images, settings, batch_size: int) -> dict:
    """Wall time for all images batched, then one at a time (after one warm-up call each)."""
    captioner.caption(images[:batch_size], settings.replace(batch_size=batch_size))
    t0 = time.perf_counter()
    batched = captioner.caption(images, settings.replace(batch_size=batch_size))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [captioner.caption([im], settings.replace(batch_size=1))[0] for im in images]
    t_single = time.perf_counter() - t0
    n = len(images)
    return {
        "batched_caps_per_s": n / t_batched,
        "single_caps_per_s": n / t_single,
        "speedup": t_single / t_batched,
        "mean_tokens": sum(len(c[0].token_ids) for c in batched) / n,
        "same_greedy_tokens": settings.strategy != "greedy"
        or [c[0].token_ids for c in batched] == [c[0].token_ids for c in single],
    }


def main() -> None:
    import torch

    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.data.shapes import make_scene

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="blip-tiny only")
    ap.add_argument("--base-only", action="store_true", help="only the BLIP-base-sized model")
    ap.add_argument("--images", type=int, default=64, help="images for blip-tiny")
    ap.add_argument("--base-images", type=int, default=8, help="images for the BLIP-base-sized model")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [make_scene(0, "target", "test", i, 128)[0] for i in range(args.images)]
    greedy = DecodeSettings(max_new_tokens=20)
    sample = DecodeSettings(strategy="sample", top_k=50, temperature=0.7, seed=0, max_new_tokens=20)
    results = []
    runs = []
    if not args.base_only:
        tiny = lambda: Captioner.from_spec("builtin:blip-tiny", device="cpu")  # noqa: E731
        runs.append(("builtin:blip-tiny", tiny, images, args.batch_size))
    if not args.quick:
        runs.append(
            (
                "random BLIP-base 384 px",
                lambda: Captioner(blip_base_random()),
                images[: args.base_images],
                min(args.batch_size, args.base_images),
            )
        )
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}, "
          f"load average (1 min) at start: {os.getloadavg()[0]:.1f}")
    print("| model | strategy | images | batch | batched caps/s | one-by-one caps/s | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, make, imgs, bs in runs:
        cap = make()
        for label, s in (("greedy", greedy), ("top-k 50, T 0.7", sample)):
            r = measure(cap, imgs, s, bs)
            results.append({"model": name, "strategy": label, "images": len(imgs), "batch": bs, **r})
            print(
                f"| {name} | {label} | {len(imgs)} | {bs} | {r['batched_caps_per_s']:.1f} | "
                f"{r['single_caps_per_s']:.2f} | x{r['speedup']:.1f} |",
                flush=True,
            )
            assert r["same_greedy_tokens"], "batched greedy captions differ from one-at-a-time ones"
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
