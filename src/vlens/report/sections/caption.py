"""Report section: image captioning with the embedded BLIP (the lab report's section 3.1, Tables 2-3, Figure
3).

Greedy COCO metrics on the shapes test split, then sampling sweeps with several seeds per setting: prompts at
a fixed top-k / temperature, and top-k x temperature without a prompt; a plot of BLEU-4 / CIDEr against
temperature and example captions next to their references.
"""

from __future__ import annotations

import textwrap

from vlens.report.section import LabContext, Section, fmt

PROMPTS = (None, "a picture of", "an image of", "a depiction of", "a figure of")
TOP_K = (10, 50, 100)
TEMPERATURES = (0.3, 0.5, 0.7, 1.0)


def section(ctx: LabContext) -> Section:
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.evaluate import (
        SweepConfig,
        caption_and_score,
        load_split,
        run_caption_sweep,
    )
    from vlens.caption.metrics import METRIC_NAMES
    from vlens.report.plots import image_grid
    from vlens.report.sections.data import shapes_dataset

    s = Section("Image captioning")
    data = shapes_dataset(ctx, "target")
    n_images = 24 if ctx.quick else 40
    seeds = 2 if ctx.quick else 3
    cap = Captioner.from_spec("builtin:blip-tiny")
    card = cap.loaded.path / "MODEL_CARD.md"
    s.text(
        "`builtin:blip-tiny` is a 1.3M-parameter BLIP (`BlipForConditionalGeneration`) trained by "
        "`vlens caption train` on the target-style shapes dataset (see its model card). Captions here are "
        "for "
        f"the first {n_images} images of the test split, which the model never saw. Scores are x100, "
        "corpus-level, from pycocoevalcap."
    )

    samples, images, _ = load_split(str(data), "test", n_images)
    results, greedy = caption_and_score(
        cap, samples, images, DecodeSettings(batch_size=64), METRIC_NAMES, "ptb"
    )
    s.table(
        ["decoding", *greedy.scores],
        [["greedy", *[fmt(v) for v in greedy.scores.values()]]],
        f"Greedy decoding, COCO metrics on PTB-tokenised text. {' '.join(greedy.notes)}",
    )

    base = DecodeSettings(strategy="sample", batch_size=64)
    prompts = run_caption_sweep(
        SweepConfig(
            str(data),
            str(ctx.work("caption") / "prompts"),
            limit=n_images,
            model="builtin:blip-tiny",
            top_k=(50,),
            temperature=(0.7,),
            prompts=PROMPTS,
            seeds=seeds,
            base=base,
        )
    )
    rows = [
        [
            e["prompt"],
            e["top_k"],
            e["temperature"],
            *[_pm(e, m) for m in ("BLEU-4", "CIDEr")],
            fmt(prompts["greedy"][e["prompt"]]["BLEU-4"]),
        ]
        for e in prompts["summary"]
    ]
    s.table(
        ["prompt", "top-k", "temperature", "BLEU-4", "CIDEr", "greedy BLEU-4"],
        rows,
        f"Prompts (cf. the lab report's Table 2): sampled captions, mean ± std over {seeds} seeds.",
    )
    grid = run_caption_sweep(
        SweepConfig(
            str(data),
            str(ctx.work("caption") / "grid"),
            limit=n_images,
            model="builtin:blip-tiny",
            top_k=TOP_K,
            temperature=TEMPERATURES,
            prompts=(None,),
            seeds=seeds,
            base=base,
            greedy_baseline=False,
        )
    )
    from vlens.sweep import pivot

    for metric in ("BLEU-4", "CIDEr"):
        headers, table = pivot(grid["summary"], "top_k", "temperature", metric)
        s.table(
            headers,
            table,
            f"{metric} by top-k (rows) and temperature (columns), no prompt (cf. Table 3), "
            f"mean ± std over {seeds} seeds.",
        )
    fig = ctx.figures / "caption_sweep.png"
    import shutil

    shutil.copy(ctx.work("caption") / "grid" / "sweep.png", fig)
    s.figure(fig, "BLEU-4 and CIDEr against temperature, one line per top-k (error bars: std over seeds).")
    s.text(describe(grid["summary"], prompts["summary"], greedy["BLEU-4"]))

    shown = list(zip(samples, images, results))[:8]
    titles = [
        "\n".join(textwrap.wrap("pred: " + r["caption"], 30) + textwrap.wrap("ref: " + smp.captions[0], 30))
        for smp, _, r in shown
    ]
    fig = image_grid(
        [im for _, im, _ in shown], titles, ctx.figures / "caption_examples.png", cols=4, fontsize=7
    )
    s.figure(
        fig, "Greedy captions (pred) and the first of five references (ref) on test images (cf. Figure 3)."
    )
    best = max(grid["summary"], key=lambda e: e["BLEU-4"])
    s.metrics = {
        "greedy": greedy.scores,
        "best_sampled": {k: best[k] for k in ("top_k", "temperature", "BLEU-4")},
        "prompts": {e["prompt"]: e["BLEU-4"] for e in prompts["summary"]},
        "images": len(samples),
        "seeds": seeds,
        "model_card": str(card),
    }
    return s


def _pm(e: dict, metric: str) -> str:
    std = e.get(f"{metric}_std", 0.0)
    return f"{e[metric]:.1f} ± {std:.1f}" if e["n"] > 1 else f"{e[metric]:.1f}"


def describe(grid: list[dict], prompts: list[dict], greedy_bleu4: float) -> str:
    """What the tables show, in words computed from them (nothing here is typed in)."""
    best = max(grid, key=lambda e: e["BLEU-4"])
    worst = min(grid, key=lambda e: e["BLEU-4"])
    temps = sorted({e["temperature"] for e in grid})
    ks = sorted({e["top_k"] for e in grid})

    def mean(rows):
        return sum(e["BLEU-4"] for e in rows) / len(rows)

    cold = mean([e for e in grid if e["temperature"] == temps[0]])
    hot = mean([e for e in grid if e["temperature"] == temps[-1]])
    hot_small = mean([e for e in grid if e["temperature"] == temps[-1] and e["top_k"] == ks[0]])
    hot_large = mean([e for e in grid if e["temperature"] == temps[-1] and e["top_k"] == ks[-1]])
    cold_spread = max(e["BLEU-4"] for e in grid if e["temperature"] == temps[0]) - min(
        e["BLEU-4"] for e in grid if e["temperature"] == temps[0]
    )
    parts = [
        f"Greedy decoding scores BLEU-4 {greedy_bleu4:.1f}; the best sampled setting is top-k "
        f"{best['top_k']}, "
        f"temperature {best['temperature']} ({best['BLEU-4']:.1f} ± {best['BLEU-4_std']:.1f}), the worst "
        f"top-k {worst['top_k']}, temperature {worst['temperature']} ({worst['BLEU-4']:.1f} ± "
        f"{worst['BLEU-4_std']:.1f})."
    ]
    parts.append(
        f"Averaged over top-k, BLEU-4 goes from {cold:.1f} at temperature {temps[0]} to {hot:.1f} at "
        f"{temps[-1]}: "
        + (
            "lower temperature is better, as in the lab report."
            if cold > hot
            else "here lower temperature is not better, unlike the lab report."
        )
    )
    parts.append(
        f"At temperature {temps[-1]}, top-k {ks[0]} gives {hot_small:.1f} and top-k {ks[-1]} gives "
        f"{hot_large:.1f}; at temperature {temps[0]} all top-k values lie within {cold_spread:.1f} "
        "points, since a cold distribution rarely reaches past its first few tokens."
    )
    if prompts:
        hi = max(prompts, key=lambda e: e["BLEU-4"])
        lo = min(prompts, key=lambda e: e["BLEU-4"])
        parts.append(
            f"Prompts move BLEU-4 between {lo['BLEU-4']:.1f} ({lo['prompt']!r}) and {hi['BLEU-4']:.1f} "
            f"({hi['prompt']!r}); the model was trained without a prompt, so every prompt is an unfamiliar "
            "prefix it has to continue from."
        )
    return " ".join(parts)
