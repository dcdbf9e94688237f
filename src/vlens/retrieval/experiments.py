"""Retrieval experiments built on the trainer: one sweep point = train, then evaluate the best model on test.

``init`` is ``scratch`` or a model spec to fine-tune (``builtin:clip-tiny``), so "fine-tune vs scratch" is just
a sweep over ``init`` with several seeds. Rows go to ``OUT/results.csv`` through :mod:`vlens.sweep` (resumable);
each point keeps its run folder under ``OUT/runs/``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from vlens.retrieval.train import TrainConfig

SWEEP_KEYS = ("init", "lr", "wd", "epochs", "temperature")
METRICS = ("score", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def _slug(point: dict, seed: int) -> str:
    text = "-".join(f"{k}={v}" for k, v in point.items()) + f"-seed={seed}"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def run_point(base: TrainConfig, point: dict, seed: int, out_dir, test_split: str = "test", log=None) -> dict:
    """Train ``base`` with the settings of ``point`` and ``seed``; evaluate the best checkpoint on ``test_split``."""
    from vlens.data import load_dataset
    from vlens.retrieval.evaluate import evaluate_encoder
    from vlens.retrieval.model import DualEncoder
    from vlens.retrieval.train import train

    init = point.get("init", "scratch")
    run = Path(out_dir) / "runs" / _slug(point, seed)
    cfg = replace(base, out=str(run), seed=seed, finetune=None if init == "scratch" else str(init),
                  **{k: point[k] for k in ("lr", "wd", "epochs", "temperature") if k in point})
    cfg.resume = (run / "checkpoint.pt").exists()
    m = train(cfg, log=log or (lambda *_: None))
    scores, _ = evaluate_encoder(DualEncoder.from_spec(m["model"]), load_dataset(base.data).split(test_split))
    row = {k: round(getattr(scores, k), 3) for k in METRICS}
    row.update(best_val_score=round(m["best_val_score"], 3) if m["best_val_score"] is not None else None,
               best_epoch=m["best_epoch"], steps=m["steps"], train_seconds=m["train_seconds"],
               pairs_per_s=m["pairs_per_s"], final_temperature=round(m["final_temperature"], 4))
    return row


def sweep(base: TrainConfig, grid: dict, seeds, out_dir, test_split: str = "test", log=None) -> list[dict]:
    """Every point of ``grid`` (keys from SWEEP_KEYS) x every seed -> rows (also in ``OUT/results.csv``)."""
    from vlens.errors import ConfigError
    from vlens.sweep import expand_grid, run_sweep

    bad = sorted(set(grid) - set(SWEEP_KEYS))
    if bad:
        raise ConfigError(f"cannot sweep {', '.join(bad)}; sweepable: {', '.join(SWEEP_KEYS)}")
    base.check()
    points = expand_grid(grid)
    return run_sweep(points, lambda p, s: run_point(base, p, s, out_dir, test_split, None), out_dir,
                     seeds=list(seeds), log=log)


def varied(rows: list[dict]) -> list[str]:
    """The swept settings that actually take more than one value in ``rows``."""
    return [k for k in SWEEP_KEYS if len({str(r.get(k)) for r in rows if k in r}) > 1]


def sweep_tables(rows: list[dict], metrics=("score", "i2t_r1", "t2i_r1")) -> str:
    """Markdown: mean ± std over seeds for each point (the lab report's hyperparameter table)."""
    from vlens.sweep import summarize, summary_table

    by = [k for k in SWEEP_KEYS if any(k in r for r in rows)]
    return summary_table(summarize(rows, by=by, metrics=list(metrics)), by=by, metrics=list(metrics)).rstrip("\n")


def plot_sweep(rows: list[dict], path, metric: str = "score"):
    """One panel per varied setting: ``metric`` (mean ± std over seeds and other settings) against its values,
    one line per ``init``. Returns the path, or None when nothing varies."""
    from vlens.plots import plt, save_fig
    from vlens.sweep import summarize

    keys = [k for k in varied(rows) if k != "init"] or (["init"] if "init" in varied(rows) else [])
    if not keys:
        return None
    inits = list(dict.fromkeys(str(r.get("init", "scratch")) for r in rows))
    fig, axes = plt().subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for init in inits:
            sub = [r for r in rows if str(r.get("init", "scratch")) == init]
            summ = sorted(summarize(sub, by=[key], metrics=[metric]), key=lambda e: _sortable(e[key]))
            xs = [str(e[key]) for e in summ]
            ys = [e[metric] for e in summ]
            es = [e[f"{metric}_std"] for e in summ]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=init if key != "init" else None)
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {metric} (mean of R@1/5/10 both ways)")
        ax.grid(alpha=0.3)
        if key != "init" and len(inits) > 1:
            ax.legend(fontsize=8)
    return save_fig(fig, path)


def _sortable(v):
    return (0, float(v)) if isinstance(v, int | float) else (1, str(v))


def table_block(rows: list[dict], title: str, command: str, note: str = "",
                metrics=("score", "i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10")) -> dict:
    """A table of sweep rows (mean ± std over seeds) as data: what ``experiments.json`` of a model card holds."""
    from vlens.sweep import summarize

    by = varied(rows) or ["init"]
    summ = summarize(rows, by=by, metrics=list(metrics))
    body = []
    for e in summ:
        cells = [str(e[k]) for k in by]
        for m in metrics:
            cells.append(f"{e[m]:.1f} ± {e[f'{m}_std']:.1f}" if e["n"] > 1 else f"{e[m]:.1f}")
        body.append(cells + [str(e["n"])])
    return {"title": title, "command": command, "note": note, "headers": [*by, *metrics, "seeds"], "rows": body}
