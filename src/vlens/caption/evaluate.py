"""Caption a dataset split and score it (``vlens caption eval``); run a grid of decoding settings
(``vlens caption sweep``) with one CSV row per (setting, seed) and mean ± std tables over seeds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from vlens.caption.attributes import SWEEP_ATTRIBUTES, attribute_columns
from vlens.caption.captioner import Captioner, DecodeSettings
from vlens.caption.metrics import METRIC_NAMES, score_captions
from vlens.data.shapes import scene_objects

SWEEP_METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")


@dataclass
class EvalConfig:
    data: str
    split: str = "test"
    limit: int | None = None
    model: str | None = None
    settings: DecodeSettings = field(default_factory=DecodeSettings)
    metrics: tuple[str, ...] = METRIC_NAMES
    tokenizer: str = "ptb"
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"


def load_split(data: str, split: str, limit: int | None):
    """Readable samples and their images; unreadable images are skipped and returned in a SkipLog."""
    from vlens.data import load_dataset
    from vlens.images import ImageLoadError, SkipLog, load_image
    from vlens.runs import progress

    ds = load_dataset(data).split(split).limit(limit)
    if ds.uncaptioned:  # before any image is read or model loaded: a prediction needs references
        from vlens.errors import DatasetError

        first, more = ds.uncaptioned[0], len(ds.uncaptioned) - 1
        raise DatasetError(f"{ds.source}: image {first.image_path.name} (id {first.id}) has no caption"
                           + (f" (and {more} more in the '{split}' split)" if more else "")
                           + "; evaluation scores each prediction against its image's captions: add captions or "
                           f"drop these images (`vlens data inspect {data}` lists them)")
    samples = ds.samples
    skips, kept, images = SkipLog(), [], []
    for s in progress(samples, desc="images"):
        try:
            images.append(load_image(s.image_path))
            kept.append(s)
        except ImageLoadError as err:
            skips.add(err)
    return kept, images, skips


def caption_and_score(
    captioner: Captioner,
    samples,
    images,
    settings: DecodeSettings,
    metrics=METRIC_NAMES,
    tokenizer: str = "ptb",
):
    """First caption of each image -> (predictions as COCO results, CaptionScores)."""
    from vlens.runs import progress

    preds = []
    bar = progress(total=len(images), desc="captions")
    for start in range(0, len(images), settings.batch_size):
        chunk = images[start : start + settings.batch_size]
        preds += captioner.caption(
            chunk, settings.replace(seed=None if settings.seed is None else settings.seed + start)
        )
        bar.update(len(chunk))
    bar.close()
    results = [{"image_id": s.id, "caption": p[0].text} for s, p in zip(samples, preds)]
    scores = score_captions(
        {r["image_id"]: r["caption"] for r in results},
        {s.id: list(s.captions) for s in samples},
        metrics=metrics,
        tokenizer=tokenizer,
    )
    return results, scores


def attribute_report(data: str, results: list[dict]) -> dict:
    """``{"attributes": {...}}`` (accuracy per attribute, see :mod:`vlens.caption.attributes`) when ``data``
    is a shapes dataset with object metadata; ``{}`` for any other dataset."""
    from vlens.caption.attributes import score_attributes
    from vlens.data.shapes import scene_objects

    objects = scene_objects(data)
    if not objects:
        return {}
    return {"attributes": score_attributes({r["image_id"]: r["caption"] for r in results}, objects).as_dict()}


def run_eval(cfg: EvalConfig) -> dict:
    """Caption ``cfg.split`` of ``cfg.data``; write predictions.json (COCO results) and metrics.json."""
    from vlens.errors import DatasetError
    from vlens.runs import RunDir, write_json

    samples, images, skips = load_split(cfg.data, cfg.split, cfg.limit)  # a bad file fails before the model loads
    captioner = Captioner.from_spec(cfg.model, device=cfg.device, dtype=cfg.dtype)
    settings, notes = captioner.prepare(cfg.settings)
    if not samples:
        raise DatasetError(f"no readable images in the '{cfg.split}' split of {cfg.data}; " + skips.summary())
    results, scores = caption_and_score(captioner, samples, images, settings, cfg.metrics, cfg.tokenizer)
    report = {
        "model": captioner.spec,
        "split": cfg.split,
        "prompt": settings.prompt,
        **scores.as_dict(),
        **attribute_report(cfg.data, results),
        "notes": notes + scores.notes + ([skips.summary()] if len(skips) else []),
        "skipped": [{"path": p, "reason": r} for p, r in skips.skipped],
    }
    if cfg.out:
        run = RunDir(cfg.out, cfg)
        write_json(run.file("predictions.json"), results)
        run.write_metrics(report)
        report["out"] = str(run.path)
    report["predictions"] = results
    return report


@dataclass
class SweepConfig:
    data: str
    out: str
    split: str = "test"
    limit: int | None = None
    model: str | None = None
    top_k: tuple[int, ...] = (10, 50, 100)
    temperature: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)
    prompts: tuple[str | None, ...] = (None,)
    top_p: float = 1.0
    seeds: int = 3
    base: DecodeSettings = field(default_factory=lambda: DecodeSettings(strategy="sample"))
    metrics: tuple[str, ...] = SWEEP_METRICS
    tokenizer: str = "python"
    greedy_baseline: bool = True


def prompt_label(prompt: str | None) -> str:
    """Table label of a resolved prompt ("" or None: no prompt)."""
    return prompt if prompt else "(none)"


def run_caption_sweep(cfg: SweepConfig, log=None) -> dict:
    """One sampled-captioning run per (prompt, top-k, temperature, seed): results.csv, table.md, plot."""
    from vlens.errors import ConfigError
    from vlens.runs import RunDir, atomic_write_text, write_json
    from vlens.sweep import expand_grid, run_sweep, summarize

    if cfg.seeds < 1:
        raise ConfigError("--seeds must be >= 1 (sampling is random: use 3 or more to see the spread)")
    samples, images, skips = load_split(cfg.data, cfg.split, cfg.limit)  # a bad file fails before the model loads
    captioner = Captioner.from_spec(cfg.model)
    cfg = replace(cfg, prompts=tuple(dict.fromkeys(captioner.resolve_prompt(p) for p in cfg.prompts)))
    for p in cfg.prompts:  # fail on a bad prompt before any run
        captioner.prepare(cfg.base.replace(prompt=p, strategy="sample"))
    for t in cfg.temperature:
        if t <= 0:
            raise ConfigError(f"sweep temperatures must be > 0 (got {t}); greedy is reported as the baseline")
    for k in cfg.top_k:
        if k <= 0:
            raise ConfigError(f"top-k must be >= 1 (got {k})")
    objects = scene_objects(cfg.data)
    columns = list(cfg.metrics) + ([f"acc:{a}" for a in SWEEP_ATTRIBUTES] if objects else [])
    run = RunDir(cfg.out, cfg)
    points = expand_grid(
        {
            "prompt": [prompt_label(p) for p in cfg.prompts],
            "top_k": list(cfg.top_k),
            "temperature": list(cfg.temperature),
        }
    )
    by_label = {prompt_label(p): p for p in cfg.prompts}

    def run_fn(point: dict, seed: int) -> dict:
        s = cfg.base.replace(
            strategy="sample",
            prompt=by_label[point["prompt"]],
            top_k=int(point["top_k"]),
            temperature=float(point["temperature"]),
            top_p=cfg.top_p,
            seed=seed,
        )
        results, scores = caption_and_score(captioner, samples, images, s, cfg.metrics, cfg.tokenizer)
        return {**scores.scores, **attribute_columns(results, objects)}

    rows = run_sweep(points, run_fn, run.path, seeds=list(range(cfg.seeds)), log=log)
    by = ["prompt", "top_k", "temperature"]
    summary = summarize(rows, by=by, metrics=columns)
    greedy = {}
    if cfg.greedy_baseline:
        for p in cfg.prompts:
            results, sc = caption_and_score(
                captioner,
                samples,
                images,
                cfg.base.replace(strategy="greedy", prompt=p, n=1),
                cfg.metrics,
                cfg.tokenizer,
            )
            greedy[prompt_label(p)] = {**sc.scores, **attribute_columns(results, objects)}
    md = sweep_markdown(summary, greedy, cfg, columns)
    atomic_write_text(run.file("table.md"), md)
    write_json(run.file("summary.json"), {"summary": summary, "greedy": greedy})
    plot_sweep(summary, run.file("sweep.png"), metrics=("BLEU-4", "CIDEr"))
    run.write_metrics({"runs": len(rows), "images": len(samples), "skipped": len(skips), "greedy": greedy})
    return {
        "rows": rows,
        "summary": summary,
        "greedy": greedy,
        "markdown": md,
        "out": str(run.path),
        "skipped": skips.skipped,
    }


def sweep_markdown(summary: list[dict], greedy: dict, cfg: SweepConfig, columns: list[str] | None = None) -> str:
    """Tables like the lab report's: per prompt, per (top-k, temperature); mean ± std over seeds. ``columns``:
    the metrics plus any attribute accuracies (``acc:NAME``, percent) to show."""
    from vlens.sweep import pivot, summary_table
    from vlens.tables import markdown_table

    metrics = columns or list(cfg.metrics)
    parts = [
        f"Sampled captions on {cfg.data} ({cfg.split}), {cfg.seeds} seed(s) per setting, mean ± std; "
        f"scores x100, tokenizer {cfg.tokenizer}"
        + ("; acc:NAME = attribute accuracy in percent (vlens.caption.attributes).\n" if len(metrics) >
           len(cfg.metrics) else ".\n"),
        summary_table(summary, by=["prompt", "top_k", "temperature"], metrics=metrics).rstrip("\n"),
    ]
    for prompt in dict.fromkeys(e["prompt"] for e in summary):
        sub = [e for e in summary if e["prompt"] == prompt]
        for metric in ("BLEU-4", "CIDEr"):
            if metric not in metrics:
                continue
            headers, rows = pivot(sub, "top_k", "temperature", metric)
            parts.append(f"\n{metric}, prompt {prompt!r}: top-k (rows) x temperature (columns)\n")
            parts.append(markdown_table(headers, rows, align="l" + "r" * (len(headers) - 1)).rstrip("\n"))
    if greedy:
        parts.append("\nGreedy decoding (deterministic, one run):\n")
        rows = [[p, *(float(v.get(m, float("nan"))) for m in metrics)] for p, v in greedy.items()]
        parts.append(markdown_table(["prompt", *metrics], rows, align="l" + "r" * len(metrics)).rstrip("\n"))
    return "\n".join(parts) + "\n"


def plot_sweep(summary: list[dict], path, metrics=("BLEU-4", "CIDEr")) -> Path:
    """metric vs temperature, one line per top-k (error bars: std over seeds), one row per prompt."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    prompts = list(dict.fromkeys(e["prompt"] for e in summary))
    fig, axes = pyplot.subplots(
        len(prompts), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(prompts)), squeeze=False
    )
    for r, prompt in enumerate(prompts):
        sub = [e for e in summary if e["prompt"] == prompt]
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for k in dict.fromkeys(e["top_k"] for e in sub):
                pts = sorted(
                    (e["temperature"], e[metric], e.get(f"{metric}_std", 0.0))
                    for e in sub
                    if e["top_k"] == k and e.get(metric) is not None
                )
                if pts:
                    t, m, s = zip(*pts)
                    ax.errorbar(t, m, yerr=s, marker="o", capsize=3, label=f"top-k {k}")
            ax.set_xlabel("temperature")
            ax.set_ylabel(metric)
            ax.set_title(f"{metric}, prompt {prompt!r}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_fig(fig, path)
