"""Report section: image captioning with the embedded BLIP (the lab report's section 3.1, Tables 2-3, Figure
3).

Greedy COCO metrics and attribute accuracies (colour, count, shape, position, relation: each caption parsed
with the shapes grammar, :mod:`vlens.caption.attributes`) on the shapes test split, then sampling sweeps with
several seeds per setting: prompts (the model's training prompt, none, and the lab report's others) at a fixed
top-k / temperature, and top-k x temperature behind the training prompt; a plot of BLEU-4 / CIDEr against
temperature, and example captions the model gets right and wrong.
"""

from __future__ import annotations

import textwrap

from vlens.report.section import LabContext, Section, fmt

PROMPTS = ("", "a picture of", "an image of", "a depiction of", "a figure of")  # "" = no prompt
ATTRIBUTE_COLUMNS = {
    "acc:colour": "colour",
    "acc:count": "count",
    "acc:shape_single": "shape (1 object)",
    "acc:position": "position (1 object)",
    "acc:relation": "relation",
}
TOP_K = (10, 50, 100)
TEMPERATURES = (0.3, 0.5, 0.7, 1.0)


def section(ctx: LabContext) -> Section:
    from vlens.caption.attributes import attribute_columns, caption_attributes
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.evaluate import (
        SweepConfig,
        caption_and_score,
        load_split,
        run_caption_sweep,
    )
    from vlens.caption.metrics import METRIC_NAMES
    from vlens.data.shapes import scene_objects
    from vlens.plots import image_grid
    from vlens.report.sections.data import shapes_dataset

    s = Section("Image captioning")
    data = shapes_dataset(ctx, "target")
    n_images = 24 if ctx.quick else 40
    seeds = 2 if ctx.quick else 3
    cap = Captioner.from_spec("builtin:blip-tiny")
    card = cap.loaded.path / "MODEL_CARD.md"
    trained_prompt = cap.default_prompt
    s.text(
        f"`builtin:blip-tiny` is a {sum(p.numel() for p in cap.model.parameters()) / 1e6:.2f}M-parameter BLIP "
        "(`BlipForConditionalGeneration`) trained by "
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
        "Greedy decoding"
        + (f" (behind the training prompt {trained_prompt!r})" if trained_prompt else "")
        + f", COCO metrics on PTB-tokenised text. {' '.join(greedy.notes)}",
    )
    objects = scene_objects(str(data))
    greedy_attrs = attribute_columns(results, objects)

    base = DecodeSettings(strategy="sample", batch_size=64)
    prompts = run_caption_sweep(
        SweepConfig(
            str(data),
            str(ctx.work("caption") / "prompts"),
            limit=n_images,
            model="builtin:blip-tiny",
            top_k=(50,),
            temperature=(0.7,),
            prompts=(None, *PROMPTS),  # None: the training prompt, listed first
            seeds=seeds,
            base=base,
        )
    )
    rows = [
        [
            e["prompt"] + (" (training prompt)" if e["prompt"] == (trained_prompt or "(none)") else ""),
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
        f"Prompts (cf. the lab report's Table 2): sampled captions, mean ± std over {seeds} seeds; "
        "(none) is no prompt.",
    )
    grid = run_caption_sweep(
        SweepConfig(
            str(data),
            str(ctx.work("caption") / "grid"),
            limit=n_images,
            model="builtin:blip-tiny",
            top_k=TOP_K,
            temperature=TEMPERATURES,
            prompts=(None,),  # the training prompt
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
            f"{metric} by top-k (rows) and temperature (columns), training prompt (cf. Table 3), "
            f"mean ± std over {seeds} seeds.",
        )
    fig = ctx.figures / "caption_sweep.png"
    import shutil

    shutil.copy(ctx.work("caption") / "grid" / "sweep.png", fig)
    s.figure(fig, "BLEU-4 and CIDEr against temperature, one line per top-k (error bars: std over seeds).")
    s.text(describe(grid["summary"], prompts["summary"], greedy["BLEU-4"], trained_prompt))

    best = max(grid["summary"], key=lambda e: e["BLEU-4"])
    worst = min(grid["summary"], key=lambda e: e["BLEU-4"])
    cols = [c for c in ATTRIBUTE_COLUMNS if c in greedy_attrs]
    s.table(
        ["decoding", "BLEU-4", "CIDEr", *[ATTRIBUTE_COLUMNS[c] for c in cols]],
        [
            ["greedy", fmt(greedy.scores["BLEU-4"]), fmt(greedy.scores["CIDEr"]),
             *[fmt(greedy_attrs[c]) for c in cols]],
            *[
                [f"{name}: top-k {e['top_k']}, T {e['temperature']}", _pm(e, "BLEU-4"), _pm(e, "CIDEr"),
                 *[_pm(e, c) for c in cols]]
                for name, e in (("best sampled", best), ("worst sampled", worst))
            ],
        ],
        "Attribute accuracy (% of captions that name it right; shape and position on one-object scenes, "
        "relation where one is stated) beside BLEU-4 / CIDEr: greedy, and the best and worst sampled settings "
        f"of the grid by BLEU-4 (mean ± std over {seeds} seeds). The n-gram scores cannot say whether the "
        "model saw the shape or the place; these columns do.",
    )

    right, wrong = [], []
    for smp, im, r in zip(samples, images, results):
        verdict = caption_attributes(r["caption"], objects.get(smp.id, []))
        missed = [a for a, v in verdict.items() if v is False and a != "shape_single"]
        (wrong if missed else right).append((smp, im, r, missed))
    shown = right[:4] + wrong[:4]
    titles = [
        "\n".join(
            textwrap.wrap(("RIGHT " if not missed else "WRONG ") + "pred: " + r["caption"], 30)
            + textwrap.wrap("ref: " + smp.captions[0], 30)
            + ([f"wrong: {', '.join(missed)}"] if missed else [])
        )
        for smp, _, r, missed in shown
    ]
    fig = image_grid(
        [im for _, im, _, _ in shown], titles, ctx.figures / "caption_examples.png", cols=4, fontsize=7
    )
    s.figure(
        fig,
        f"Greedy captions (pred) and the first of five references (ref) on test images (cf. Figure 3): "
        f"first up to four where every attribute is right (RIGHT; {len(right)} of {len(samples)} captions), then "
        f"up to four where at least one is wrong (WRONG; {len(wrong)}), with what is wrong.",
    )
    s.metrics = {
        "greedy": greedy.scores,
        "greedy_attributes": greedy_attrs,
        "trained_prompt": trained_prompt,
        "best_sampled": {k: best.get(k) for k in ("top_k", "temperature", "BLEU-4", *cols)},
        "worst_sampled": {k: worst.get(k) for k in ("top_k", "temperature", "BLEU-4", *cols)},
        "prompts": {e["prompt"]: e["BLEU-4"] for e in prompts["summary"]},
        "images": len(samples),
        "seeds": seeds,
        "model_card": str(card),
    }
    return s


def _pm(e: dict, metric: str) -> str:
    std = e.get(f"{metric}_std", 0.0)
    return f"{e[metric]:.1f} ± {std:.1f}" if e["n"] > 1 else f"{e[metric]:.1f}"


def describe(grid: list[dict], prompts: list[dict], greedy_bleu4: float, trained_prompt: str = "") -> str:
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
        f"{hot_large:.1f}; at temperature {temps[0]} "
        + ("every top-k gives the same BLEU-4" if round(cold_spread, 1) == 0
           else f"all top-k values lie within {cold_spread:.1f} points")
        + ", since a cold distribution rarely reaches past its first few tokens."
    )
    if prompts:
        hi = max(prompts, key=lambda e: e["BLEU-4"])
        lo = min(prompts, key=lambda e: e["BLEU-4"])
        parts.append(
            f"Prompts move BLEU-4 between {lo['BLEU-4']:.1f} ({lo['prompt']!r}) and {hi['BLEU-4']:.1f} "
            f"({hi['prompt']!r})."
        )
        label = trained_prompt or "(none)"
        trained = next((e for e in prompts if e["prompt"] == label), None)
        others = [e for e in prompts if e["prompt"] not in (label, "(none)")] if trained_prompt else [
            e for e in prompts if e["prompt"] != label
        ]
        if trained and others:
            rest = sum(e["BLEU-4"] for e in others) / len(others)
            if trained_prompt:
                top = max(others, key=lambda e: e["BLEU-4"])
                none = next((e for e in prompts if e["prompt"] == "(none)"), None)
                parts.append(
                    f"The model was fine-tuned behind {trained_prompt!r} (masked out of the loss, as BLIP does): "
                    f"that prompt gives {trained['BLEU-4']:.1f}, the other prefixes {rest:.1f} on average"
                    + (f" and no prompt {none['BLEU-4']:.1f}" if none else "")
                    + (
                        ", so a prompt helps when it is the one the model learnt to continue and is otherwise "
                        "an unfamiliar prefix it has to recover from."
                        if trained["BLEU-4"] >= top["BLEU-4"]
                        else f"; {top['prompt']!r} does as well or better ({top['BLEU-4']:.1f}): a prefix that "
                        "reads like the training prompt works too, one made of words the model rarely saw does not."
                    )
                )
            else:
                parts.append(
                    "The model was trained without a prompt, so every prompt is an unfamiliar prefix it has to "
                    "continue from."
                )
    return " ".join(parts)
