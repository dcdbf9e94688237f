"""``vlens retrieval``: train a dual encoder contrastively, evaluate recall@K, sweep hyperparameters."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_OPTION,
    JSON_OPTION,
    PRECISION_OPTION,
    check,
    echo_json,
)

app = typer.Typer(help="Image-text retrieval: contrastive training (scratch or fine-tune), the COCO 5-captions "
                  "recall protocol, hyperparameter sweeps.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="retrieval")


def _floats(text: str, flag: str) -> list[float]:
    from vlens.errors import ConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, e.g. 1e-4,5e-4; got '{text}'") from None


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset: Karpathy/COCO JSON, image folder with metadata, or "
                              "a `vlens data make-shapes` folder. Uses its train split (and val, if present).",
                              callback=check.existing("any")),
    out: Path = typer.Option(..., "--out", help="Run folder: config.json, metrics.json, checkpoint.pt (resume), "
                             "best/ (the best-on-validation model, loadable with --model).",
                             callback=check.output("dir")),
    scratch: bool = typer.Option(False, "--scratch", help="Start from random weights of --preset (the default "
                                 "when --finetune is not given)."),
    finetune: str = typer.Option(None, "--finetune", help="Start from this dual encoder: builtin:clip-tiny, a "
                                 "save_pretrained folder, or a cached hub id such as openai/clip-vit-base-patch32.",
                                 callback=check.text()),
    preset: str = typer.Option("clip-tiny", help="Architecture for --scratch (clip-tiny: 128 wide, 4+4 layers, "
                               "64 px; test-clip: the 32-wide test model).", callback=check.text()),
    image_size: int = typer.Option(64, help="--scratch only: input resolution of the new model.",
                                   callback=check.side(16, 1024)),
    lr: float = typer.Option(5e-4, help="Peak AdamW learning rate (after warm-up). Scratch tiny models: 5e-4 - "
                             "1e-3; fine-tuning: 1e-4 - 3e-4; real CLIP checkpoints: 1e-5.",
                             callback=check.number(0, 10, lo_open=True)),
    wd: float = typer.Option(0.1, help="AdamW weight decay (never applied to biases, norms, temperature).",
                             callback=check.number(0, 100)),
    epochs: int = typer.Option(10, help="Passes over the training images (one random caption each per pass).",
                               callback=check.count(1, 100000)),
    batch_size: int = typer.Option(64, help="Global batch (all processes together). Bigger = more negatives "
                                   "per image = usually better recall.", callback=check.count(1, 65536)),
    temperature: float = typer.Option(0.07, help="Softmax temperature T (logits = cos / T). 0.07 is CLIP's "
                                      "start; lower is sharper.", callback=check.number(0, 100, lo_open=True)),
    learn_temperature: bool = typer.Option(False, "--learn-temperature", help="Learn T (as log(1/T)), clamped "
                                           "to [0.01, 1] after each step; --temperature is the start value."),
    warmup: int = typer.Option(20, help="Optimiser steps of linear learning-rate warm-up, then cosine to 0.",
                               callback=check.count(0)),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimiser step. Note: negatives stay within a "
                                   "micro-batch, so this saves memory but is not a bigger contrastive batch.",
                                   callback=check.count(1, 4096)),
    freeze: str = typer.Option("none", help="Freeze a tower: none, image or text (e.g. fine-tune only text).",
                               callback=check.choice("none", "image", "text")),
    limit: int = typer.Option(None, help="Use only the first N training images (quick experiments).",
                              callback=check.count(1)),
    seed: int = typer.Option(0, help="Seeds weights, data order and caption sampling.", callback=check.seed()),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    mixed_precision: str = PRECISION_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Train a CLIP-style dual encoder with symmetric InfoNCE; validation recall each epoch, best kept.

    Runs as is on a laptop; for several GPUs or CPU processes use `accelerate launch -m vlens.cli.main
    retrieval train ...` or `torchrun --nproc_per_node N -m vlens.cli.main retrieval train ...`: the loss is
    computed over embeddings gathered from all processes.
    """
    import sys

    from vlens.errors import ConfigError
    from vlens.retrieval.train import TrainConfig, train

    if scratch and finetune:
        raise ConfigError("give either --scratch or --finetune MODEL, not both")
    cfg = TrainConfig(data=str(data), out=str(out), finetune=finetune, preset=preset, image_size=image_size,
                      lr=lr, wd=wd, epochs=epochs, batch_size=batch_size, temperature=temperature,
                      learn_temperature=learn_temperature, warmup=warmup, grad_accum=grad_accum, freeze=freeze,
                      limit=limit, seed=seed, resume=resume, mixed_precision=mixed_precision)
    metrics = train(cfg, log=lambda m: typer.echo(m, err=True))
    if not metrics:  # not the main process
        return
    if json_out:
        echo_json({k: v for k, v in metrics.items() if k != "history"})
        return
    best = metrics["best_val_score"]
    typer.echo(f"trained {metrics['epochs_done']} epoch(s), {metrics['steps']} steps, "
               f"{metrics['pairs_per_s']} pairs/s; "
               + (f"best val score {best:.1f} at epoch {metrics['best_epoch']}" if best is not None
                  else "no validation split: kept the last epoch")
               + f"\nmodel: {metrics['model']}  (evaluate: vlens retrieval eval --data {data} --model "
                 f"{metrics['model']})")
    sys.stdout.flush()


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset (any format `vlens data inspect` reads).",
                              callback=check.existing("any")),
    model: str = typer.Option(None, "--model", help="Dual encoder: a hub id (default: "
                              "openai/clip-vit-base-patch32 when cached or downloadable, else builtin:clip-tiny), a "
                              "folder (e.g. RUN/best), an open_clip checkpoint file or builtin:clip-tiny.",
                              callback=check.text()),
    split: str = typer.Option("test", help="Split to evaluate (train, val, test or all).",
                              callback=check.text()),
    limit: int = typer.Option(None, help="Evaluate only the first N images of the split.", callback=check.count(1)),
    batch_size: int = typer.Option(64, help="Images per forward pass.", callback=check.count(1, 65536)),
    out: Path = typer.Option(None, "--out", help="Also write metrics.json, recall.md and ranks (.npz) here.",
                             callback=check.output("dir")),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Recall@1/5/10 both ways (COCO 5-captions protocol: an image hits if ANY of its captions is in the top K)
    and their mean, the "score". Ties count against the query."""
    from vlens.data import load_dataset
    from vlens.retrieval.evaluate import evaluate_encoder, notes_for
    from vlens.retrieval.model import DualEncoder

    ds = load_dataset(data).split(split).limit(limit)
    enc = DualEncoder.from_spec(model, device=device, dtype=dtype, engine=engine)
    scores, details = evaluate_encoder(enc, ds, batch_size=batch_size)
    notes = notes_for(details)
    result = {"model": enc.spec, "model_source": enc.loaded.source, "data": str(data), "split": split,
              **scores.as_dict(),
              "captions_per_image": details["captions_per_image"],
              "truncated_captions": details["truncated_captions"], "empty_captions": details["empty_captions"],
              "skipped_images": details["skipped_images"], "notes": notes}
    if out is not None:
        import numpy as np

        from vlens.runs import RunDir, atomic_path, atomic_write_text

        run = RunDir(out, {"data": str(data), "model": enc.spec, "split": split, "limit": limit})
        run.write_metrics(result)
        atomic_write_text(run.file("recall.md"), scores.markdown() + "\n")
        with atomic_path(run.file("ranks.npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, i2t=details["i2t_ranks"], t2i=details["t2i_ranks"])
    if json_out:
        echo_json(result)
        return
    typer.echo(f"{enc.spec} on {data} [{split}]: {scores.images} images, {scores.captions} captions")
    typer.echo(scores.markdown())
    for n in notes:
        typer.echo(f"note: {n}", err=True)


@app.command("sweep")
def sweep_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset with train, val and test splits.",
                              callback=check.existing("any")),
    out: Path = typer.Option(..., "--out", help="Sweep folder: results.csv (one row per run; rerun the same "
                             "command to resume), results.md, sweep.png, runs/<point>/.", callback=check.output("dir")),
    init: str = typer.Option("scratch", help="Comma-separated starting points: 'scratch' and/or model specs to "
                             "fine-tune, e.g. scratch,builtin:clip-tiny.", callback=check.text()),
    lr: str = typer.Option("5e-4", help="Comma-separated learning rates, e.g. 1e-4,5e-4,1e-3.",
                           callback=check.numbers(1e-9, 10)),
    wd: str = typer.Option("0.1", help="Comma-separated weight decays.", callback=check.numbers(0, 100)),
    epochs: str = typer.Option("10", help="Comma-separated epoch counts.",
                               callback=check.numbers(1, 100000, integer=True)),
    temperature: str = typer.Option("0.07", help="Comma-separated temperatures.", callback=check.numbers(1e-4, 100)),
    seeds: str = typer.Option("0", help="Comma-separated seeds; tables show mean ± std over them.",
                              callback=check.numbers(0, 2**32 - 1, integer=True)),
    batch_size: int = typer.Option(64, help="Global batch for every run.", callback=check.count(1, 65536)),
    learn_temperature: bool = typer.Option(False, "--learn-temperature", help="Learn T in every run "
                                           "(the swept temperature is then the start value)."),
    warmup: int = typer.Option(20, help="Warm-up steps for every run.", callback=check.count(0)),
    preset: str = typer.Option("clip-tiny", help="Architecture of the scratch runs.", callback=check.text()),
    image_size: int = typer.Option(64, help="Input resolution of the scratch runs.", callback=check.side(16, 1024)),
    limit: int = typer.Option(None, help="Use only the first N training images.", callback=check.count(1)),
    test_split: str = typer.Option("test", help="Split each best-on-val model is scored on.",
                                   callback=check.text()),
    json_out: bool = JSON_OPTION,
):
    """Grid over init x lr x wd x epochs x temperature x seeds: train, pick the best epoch on val, score on
    test; a Markdown table (mean ± std over seeds) and a plot, like the lab report's hyperparameter search."""
    from vlens.errors import ConfigError
    from vlens.retrieval.experiments import plot_sweep, sweep, sweep_tables
    from vlens.retrieval.train import TrainConfig
    from vlens.runs import atomic_write_text

    inits = [x.strip() for x in init.split(",") if x.strip()]
    if not inits:
        raise ConfigError("--init needs at least one of scratch or a model spec")
    grid = {"init": inits, "lr": _floats(lr, "--lr"), "wd": _floats(wd, "--wd"),
            "epochs": [int(x) for x in _floats(epochs, "--epochs")],
            "temperature": _floats(temperature, "--temperature")}
    base = TrainConfig(data=str(data), out=str(out), preset=preset, image_size=image_size, batch_size=batch_size,
                       warmup=warmup,
                       learn_temperature=learn_temperature, limit=limit)
    seed_list = [int(x) for x in _floats(seeds, "--seeds")]
    rows = sweep(base, grid, seed_list, out, test_split=test_split, log=lambda m: typer.echo(m, err=True))
    table = sweep_tables(rows)
    atomic_write_text(out / "results.md", table + "\n")
    fig = plot_sweep(rows, out / "sweep.png")
    if json_out:
        echo_json({"rows": rows, "table": table, "plot": str(fig) if fig else None})
        return
    typer.echo(table)
    typer.echo(f"\nrows: {out / 'results.csv'}" + (f"\nplot: {fig}" if fig else ""))
