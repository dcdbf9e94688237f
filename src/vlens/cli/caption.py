"""``vlens caption``: caption images (default sub-command), evaluate on a dataset, sweep decoding settings,
train."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_TORCH_OPTION,
    JSON_OPTION,
    PRECISION_OPTION,
    QUANTIZE_OPTION,
    DefaultCommandGroup,
    check,
    echo_json,
)


class CaptionGroup(DefaultCommandGroup):
    default_command = "run"


app = typer.Typer(
    cls=CaptionGroup,
    no_args_is_help=True,
    help=(
        "Caption images with a BLIP model and study decoding.\n\n"
        "  vlens caption photo.jpg folder/              caption files and folders (greedy)\n"
        "  vlens caption photos/ --out captions.jsonl   a large collection: streams to a file, resumes on rerun\n"
        "  accelerate launch --num_processes 8 -m vlens caption photos/ --out captions.jsonl   one shard per GPU\n"
        "  vlens caption img.png --strategy sample --top-k 50 --temperature 0.7 --n 3 --seed 0\n"
        "  vlens caption eval --data shapes/ --split test     COCO metrics (BLEU, METEOR, ROUGE-L, CIDEr)\n"
        "  vlens caption sweep --data shapes/ --top-k 10,50,100 --temperature 0.3,0.7,1.0 --seeds 3\n"
        "  vlens caption train --data shapes/ --preset blip-tiny --out runs/blip\n\n"
        "The default model is Salesforce/blip-image-captioning-base when it is in the Hugging Face cache or "
        "can be downloaded (`vlens models fetch defaults`); otherwise builtin:blip-tiny runs (trained on the "
        "shapes dataset: it describes coloured shapes, not photos) and a note says so. VLENS_OFFLINE=1 or "
        "--model builtin:blip-tiny stays offline."
    ),
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="caption")


MODEL_OPTION = typer.Option(
    None,
    "--model",
    "-m",
    help="BLIP captioner: a hub id (default: Salesforce/blip-image-captioning-base when cached or downloadable, "
    "else builtin:blip-tiny with a note), a folder written by save_pretrained (e.g. a `caption train` run's "
    "OUT/best), or builtin:blip-tiny.",
    callback=check.text(),
)
PROMPT_OPTION = typer.Option(
    None,
    "--prompt",
    "-p",
    help="Text the caption continues, e.g. 'a picture of' "
    "(removed from the output). Leave out to use the prompt the model was trained behind "
    "(builtin:blip-tiny: 'a picture of'); --prompt '' for none.",
    callback=check.text(empty=True),
)
STRATEGY_OPTION = typer.Option(
    "greedy",
    "--strategy",
    "-s",
    help="greedy: most probable word each step; beam: "
    "keep --num-beams partial captions; sample: random draws shaped by --top-k, "
    "--top-p and --temperature.",
    callback=check.choice("greedy", "beam", "sample"),
)
TOP_K_OPTION = typer.Option(
    50, "--top-k", help="sample: draw from the k most probable tokens (smaller = safer).",
    callback=check.count(1, 1_000_000),
)
TOP_P_OPTION = typer.Option(
    1.0,
    "--top-p",
    help="sample: nucleus sampling, keep the smallest set of tokens with "
    "this much probability (1 = off; 0.9 is common).",
    callback=check.number(0, 1, lo_open=True),
)
TEMP_OPTION = typer.Option(
    1.0,
    "--temperature",
    "-t",
    help="sample: <1 sharpens towards greedy, >1 flattens (more varied, more mistakes); 0 means greedy.",
    callback=check.number(0, 100),
)
BEAMS_OPTION = typer.Option(
    3, "--num-beams", help="beam: partial captions kept (3-5 usual).", callback=check.count(1, 64)
)
LENPEN_OPTION = typer.Option(
    1.0, "--length-penalty", help="beam: >1 prefers longer captions, <1 shorter.", callback=check.number(-100, 100)
)
REP_OPTION = typer.Option(
    1.0, "--repetition-penalty", help=">1 discourages repeated words (1 = off; 1.2 mild).",
    callback=check.number(0, 100, lo_open=True),
)
MAXTOK_OPTION = typer.Option(
    30, "--max-new-tokens", callback=check.count(1, 1024),
    help="Longest caption in tokens, its end token included; a caption that reaches it is cut (and marked).")
MINTOK_OPTION = typer.Option(0, "--min-new-tokens", help="Shortest caption in tokens.", callback=check.count(0, 1024))
SEED_OPTION = typer.Option(
    None, "--seed", help="Make sampling reproducible (same seed -> same captions).", callback=check.seed()
)
BATCH_OPTION = typer.Option(
    16, "--batch-size", help="Images captioned together (faster than one at a time).", callback=check.count(1, 4096)
)


def _settings(**kw):
    from vlens.caption.captioner import DecodeSettings

    return DecodeSettings(**kw)


@app.command("run")
def run_cmd(
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively); missing and "
                                       "unreadable files are skipped and listed.", callback=check.path()),
    model: str = MODEL_OPTION,
    prompt: str = PROMPT_OPTION,
    strategy: str = STRATEGY_OPTION,
    top_k: int = TOP_K_OPTION,
    top_p: float = TOP_P_OPTION,
    temperature: float = TEMP_OPTION,
    num_beams: int = BEAMS_OPTION,
    length_penalty: float = LENPEN_OPTION,
    repetition_penalty: float = REP_OPTION,
    max_new_tokens: int = MAXTOK_OPTION,
    min_new_tokens: int = MINTOK_OPTION,
    n: int = typer.Option(
        1,
        "--n",
        help="Captions per image (sample: ranked by log-probability; beam: best beams). Greedy gives one.",
        callback=check.count(1, 100),
    ),
    seed: int = SEED_OPTION,
    batch_size: int = BATCH_OPTION,
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Stream captions to this .jsonl (one JSON object per image) or .csv file as they are made. A rerun "
        "skips images already in it, so a killed run resumes losing at most one batch. Under `accelerate "
        "launch`/torchrun each process captions its own shard and the first writes the file.",
        callback=check.output("file"),
    ),
    workers: int = typer.Option(
        2,
        "--workers",
        help="With --out: processes decoding and resizing images while the model runs (0 = none).",
        callback=check.count(lo=0, max=64),
    ),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_TORCH_OPTION,
    quantize: str = QUANTIZE_OPTION,
    json_out: bool = JSON_OPTION,
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Show why these words: for every generated token, the top candidates with their probability under "
        "these settings (temperature, top-k, top-p) and under the model, which ones the filters removed, how "
        "many stayed eligible; also drawn to --figure.",
    ),
    figure: Path = typer.Option(
        None,
        "--figure",
        help="With --explain: the picture, one row per step (one file per image; default explain.png).",
        callback=check.output("file"),
    ),
):
    """Caption image files and folders (the default: `vlens caption IMG...`). Unreadable files are skipped and
    listed. Add --explain to see the candidates behind every word."""
    import sys

    from vlens.caption.captioner import Captioner, caption_files
    from vlens.errors import DatasetError
    from vlens.images import SkipLog, list_images, shown_name

    settings = _settings(
        strategy=strategy,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        num_beams=num_beams,
        length_penalty=length_penalty,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        n=n,
        prompt=prompt,
        seed=seed,
        batch_size=batch_size,
    )
    settings, notes = settings.validated()
    if figure is not None and not explain:
        from vlens.errors import ConfigError

        raise ConfigError(f"--figure draws what --explain shows; add --explain to write {figure}, or drop --figure")
    figure = figure or Path("explain.png")
    if explain and out is not None:
        from vlens.errors import ConfigError

        raise ConfigError("--explain shows the candidates behind each word (text or --json, and --figure); it "
                          "does not stream to --out. Drop --explain to caption a collection into --out, or --out "
                          "to explain a few images")
    if out is not None:
        return _caption_to_file(paths, out, model, settings, notes, workers, device, dtype, json_out, engine,
                                quantize)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = list_images(p)
            if not found:
                typer.echo(f"note: no image files in {p}", err=True)
            files += found
        else:
            files.append(p)  # missing or unreadable files are reported by the loader below
    if not files:
        raise DatasetError("no images to caption; give image files or folders that contain images")
    captioner = Captioner.from_spec(model, device=device, dtype=dtype, engine=engine, quantize=quantize)
    settings, more = captioner.prepare(settings)
    for note in notes + more:
        typer.echo(f"note: {note}", err=True)
    if explain:
        from vlens.cli.explore import explain_images

        return explain_images(captioner, files, settings, figure, json_out, notes + more)
    skips = SkipLog()
    results = []
    for path, caps in caption_files(captioner, files, settings, skips):
        entry = {
            "path": str(path),
            "captions": [
                {"text": c.text, "logprob": round(c.logprob, 4), "mean_logprob": round(c.mean_logprob, 4),
                 "ended": c.ended}
                for c in caps
            ],
        }
        results.append(entry)
        if not json_out:
            if len(caps) == 1:  # one line per image: a newline or tab in a file name is shown escaped
                typer.echo(f"{shown_name(path)}\t{caps[0].text}")
            else:
                typer.echo(shown_name(path))
                for c in caps:  # finished captions rank first; a cut one ends in "…"
                    typer.echo(f"  {c.mean_logprob:7.3f}  {c.text}{'' if c.ended else ' …'}")
            sys.stdout.flush()
    if json_out:
        echo_json(
            {
                "model": captioner.spec,
                "model_source": captioner.loaded.source,
                "settings": settings,
                "notes": notes + more,
                "results": results,
                "skipped": [{"path": p, "reason": r} for p, r in skips.skipped],
            }
        )
    cut = sum(not c["ended"] for r in results for c in r["captions"])
    if cut and not json_out:
        from vlens.caption.captioner import cut_note

        shown = " (shown ending in …)" if settings.n > 1 else ""
        typer.echo(f"note: {cut_note(cut, settings.max_new_tokens)}{shown}", err=True)
    if len(skips):
        typer.echo(skips.summary(limit=20), err=True)
    if not results:
        raise DatasetError("none of the given images could be read")


def _caption_to_file(paths, out: Path, model, settings, notes, workers, device, dtype, json_out,
                     engine: str = "torch", quantize: str = "none") -> None:
    from vlens.bulk import Processes
    from vlens.caption.bulk import caption_to_file
    from vlens.caption.captioner import Captioner
    from vlens.errors import DatasetError

    procs = Processes()
    captioner = Captioner.from_spec(model, device=device, dtype=dtype, engine=engine, quantize=quantize)
    settings, more = captioner.prepare(settings)
    if procs.is_main:
        for note in notes + more:
            typer.echo(f"note: {note}", err=True)
    rep = caption_to_file(paths, out, captioner, settings, workers=workers, procs=procs)
    if not procs.is_main:
        return
    for note in rep.notes or []:
        typer.echo(f"note: {note}", err=True)
    if json_out:
        echo_json({"out": str(out), "model": captioner.spec, "model_source": captioner.loaded.source,
                   "images": rep.total, "already": rep.already,
                   "captioned": rep.done, "seconds": round(rep.seconds, 3),
                   "images_per_s": round(rep.images_per_s, 2), "processes": rep.processes,
                   "notes": rep.notes or [], "skipped": [{"path": p, "reason": r} for p, r in rep.skipped]})
    else:
        line = f"captioned {rep.done} image(s) into {out} in {rep.seconds:.1f} s ({rep.images_per_s:.1f} images/s"
        line += f", {rep.processes} processes)" if rep.processes > 1 else ")"
        if rep.already:
            line += f"; {rep.already} were already there"
        typer.echo(line)
    if rep.skipped:
        from vlens.images import SkipLog

        typer.echo(SkipLog(rep.skipped).summary(limit=20), err=True)
    if rep.total and not rep.done and not rep.already:
        raise DatasetError("none of the given images could be read")


def _csv(text: str, cast, name: str) -> tuple:
    from vlens.errors import ConfigError

    try:
        return tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated numbers, e.g. 10,50,100 (got {text!r})") from None


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Dataset (Karpathy/COCO JSON or folder; `vlens data make-shapes` writes one).",
        callback=check.existing("any"),
    ),
    split: str = typer.Option("test", help="Split to caption.", callback=check.text()),
    limit: int = typer.Option(None, help="Only the first N images of the split.", callback=check.count(1)),
    model: str = MODEL_OPTION,
    prompt: str = PROMPT_OPTION,
    strategy: str = STRATEGY_OPTION,
    top_k: int = TOP_K_OPTION,
    top_p: float = TOP_P_OPTION,
    temperature: float = TEMP_OPTION,
    num_beams: int = BEAMS_OPTION,
    max_new_tokens: int = MAXTOK_OPTION,
    seed: int = SEED_OPTION,
    batch_size: int = BATCH_OPTION,
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder for predictions.json (COCO results format), "
        "metrics.json and config.json. Default: runs/caption-eval-<time>.",
        callback=check.output("dir"),
    ),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="Skip METEOR and the PTB tokenizer (no Java start-up; "
        "same numbers on plain lower-case captions).",
    ),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Caption a dataset split and report COCO metrics x100: BLEU-1..4, METEOR, ROUGE-L, CIDEr (PTB-tokenised;
    SPICE is skipped offline)."""
    import time

    from vlens.caption.evaluate import EvalConfig, run_eval
    from vlens.caption.metrics import METRIC_NAMES, PURE_PYTHON

    settings = _settings(
        strategy=strategy,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        seed=seed,
        batch_size=batch_size,
    )
    out = out or Path("runs") / time.strftime("caption-eval-%Y%m%d-%H%M%S")
    cfg = EvalConfig(
        str(data),
        split,
        limit,
        model,
        settings,
        PURE_PYTHON if fast else METRIC_NAMES,
        "python" if fast else "ptb",
        str(out),
        device=device,
        dtype=dtype,
    )
    report = run_eval(cfg)
    if json_out:
        report.pop("predictions")
        echo_json(report)
        return
    for note in report["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"{report['model']} on {data} [{split}], {report['images']} images, tokenizer {report['tokenizer']}"
    )
    for m in METRIC_NAMES:
        if m in report:
            typer.echo(f"  {m:8s} {report[m]:6.1f}")
    if "attributes" in report:
        from vlens.caption.attributes import LABELS

        acc, counts = report["attributes"]["accuracy"], report["attributes"]["counts"]
        typer.echo("attribute accuracy (captions parsed with the shapes grammar):")
        for a, v in acc.items():
            typer.echo(f"  {LABELS[a]:46s} {v:6.1f}%  ({counts[a]} captions)")
    for r in report["predictions"][:3]:
        typer.echo(f"  e.g. {r['image_id']}: {r['caption']}")
    typer.echo(f"wrote predictions.json and metrics.json to {report['out']}")


@app.command("sweep")
def sweep_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset to caption (e.g. a shapes folder).",
                              callback=check.existing("any")),
    top_k: str = typer.Option("10,50,100", "--top-k", help="Comma-separated top-k values.",
                              callback=check.numbers(1, 1_000_000, integer=True)),
    temperature: str = typer.Option(
        "0.3,0.5,0.7,1.0", "--temperature", help="Comma-separated temperatures (> 0).",
        callback=check.numbers(1e-4, 100),
    ),
    prompt: list[str] = typer.Option(
        None,
        "--prompt",
        help="Repeat for several prompts ('' = none); leave out for the model's training prompt.",
        callback=check.text(empty=True),
    ),
    seeds: int = typer.Option(
        3,
        "--seeds",
        help="Runs per setting with seeds 0..N-1 (mean ± std; one seed of a random process is not evidence).",
        callback=check.count(1, 1000),
    ),
    top_p: float = TOP_P_OPTION,
    split: str = typer.Option("test", help="Split to caption.", callback=check.text()),
    limit: int = typer.Option(None, help="Only the first N images (faster sweeps).", callback=check.count(1)),
    model: str = MODEL_OPTION,
    batch_size: int = typer.Option(64, "--batch-size", help="Images captioned together.",
                                   callback=check.count(1, 4096)),
    ptb: bool = typer.Option(
        False,
        "--ptb",
        help="Tokenise with the PTB tokenizer (Java, ~1 s per run) instead "
        "of the Python one (identical on plain lower-case captions).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder (results.csv, table.md, sweep.png); rerun "
        "with the same --out to resume. Default: runs/caption-sweep-<time>.",
        callback=check.output("dir"),
    ),
    json_out: bool = JSON_OPTION,
):
    """Sample captions for every (prompt, top-k, temperature) x seed; one CSV row per run, a mean ± std table
    (like the lab report's Tables 2 and 3) and a plot of BLEU-4 / CIDEr against temperature per top-k."""
    import time

    from vlens.caption.evaluate import SweepConfig, run_caption_sweep

    out = out or Path("runs") / time.strftime("caption-sweep-%Y%m%d-%H%M%S")
    cfg = SweepConfig(
        str(data),
        str(out),
        split,
        limit,
        model,
        _csv(top_k, int, "top-k"),
        _csv(temperature, float, "temperature"),
        tuple(prompt) if prompt else (None,),
        top_p,
        seeds,
        _settings(strategy="sample", batch_size=batch_size),
        tokenizer="ptb" if ptb else "python",
    )
    res = run_caption_sweep(cfg, log=None if json_out else lambda m: typer.echo(m, err=True))
    if json_out:
        echo_json({k: res[k] for k in ("summary", "greedy", "out", "skipped")})
        return
    typer.echo(res["markdown"])
    typer.echo(f"wrote results.csv, table.md, sweep.png to {res['out']}")


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset with train and val splits.",
                              callback=check.existing("any")),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder; the trained model lands in OUT/best.",
                             callback=check.output("dir")),
    model: str = typer.Option(
        None, "--model", "-m", help="Fine-tune this captioner (hub id, folder, builtin:NAME).",
        callback=check.text(),
    ),
    preset: str = typer.Option(
        None,
        "--preset",
        help="Or train a new model: blip-tiny (embedded model's shape) "
        "or test-blip; a tokenizer is trained on the dataset's captions.",
        callback=check.text(),
    ),
    prompt: str = typer.Option(None, "--prompt", help="Put before every caption, masked out of the loss.",
                               callback=check.text(empty=True)),
    epochs: int = typer.Option(10, help="Passes over the training images.", callback=check.count(1, 100000)),
    lr: float = typer.Option(
        1e-3, help="Peak learning rate (1e-3 new tiny model; 1e-5 fine-tuning BLIP-base).",
        callback=check.number(0, 10, lo_open=True),
    ),
    wd: float = typer.Option(0.05, help="AdamW weight decay (not on norms and biases).", callback=check.number(0, 100)),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per step per process.",
                                   callback=check.count(1, 65536)),
    warmup_epochs: float = typer.Option(
        1.0, "--warmup-epochs", help="Linear warm-up length before the cosine.",
        callback=check.number(0, 100000),
    ),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", help="BLIP's default is 0.1.",
                                          callback=check.number(0, 1, hi_open=True)),
    image_size: int = typer.Option(128, "--image-size", help="New models only: input side in pixels.",
                                   callback=check.side(16, 1024)),
    patch_size: int = typer.Option(
        None,
        "--patch-size",
        help="New models only: ViT patch side in pixels (smaller = finer detail, slower; "
        "default: the preset's, 16 for blip-tiny).",
        callback=check.count(1, 256),
    ),
    patch_class_weight: float = typer.Option(
        0.0,
        "--patch-class-weight",
        help="Weight of a training-only loss that teaches the vision tower each patch's mask class "
        "(needs masks, e.g. shapes; 0 = off, 0.5 a good start). The saved model is plain BLIP.",
        callback=check.number(0, 100),
    ),
    patch_place_weight: float = typer.Option(
        0.0,
        "--patch-place-weight",
        help="Weight of a training-only loss that teaches each object patch the position phrase of its object, "
        "so the decoder can read the place where it reads the colour (shapes data; 0 = off, 1 a good start). "
        "The saved model is plain BLIP.",
        callback=check.number(0, 100),
    ),
    scene_weight: float = typer.Option(
        0.0,
        "--scene-weight",
        help="Weight of a training-only loss that teaches the vision [CLS] token, for each colour, which shape "
        "has it and where it is (shapes data; 0 = off, 1 a good start). The saved model is plain BLIP.",
        callback=check.number(0, 100),
    ),
    max_train: int = typer.Option(None, "--max-train", help="Use only the first N training images.",
                                  callback=check.count(1)),
    val_limit: int = typer.Option(100, "--val-limit", help="Validation images captioned after each epoch.",
                                  callback=check.count(0)),
    seed: int = typer.Option(0, help="Seeds initialisation, caption choice and order.", callback=check.seed()),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt after an interruption."),
    threads: int = typer.Option(
        0,
        "--threads",
        help="CPU threads for torch (0 = vlens's CPU policy: the cores this process may use, shared with the "
        "other processes torchrun starts on the node; VLENS_THREADS sets it too).",
        callback=check.count(0, 1024),
    ),
    mixed_precision: str = PRECISION_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Train or fine-tune a BLIP captioner: prompt masked out of the loss, AdamW + warm-up/cosine, validation
    BLEU-4 / CIDEr each epoch with the best kept in OUT/best, atomic checkpoints and --resume.
    Works under `accelerate launch` (multi-process) too."""
    from vlens import cpu
    from vlens.caption.train import TrainConfig, train

    note = cpu.apply(threads or None).note()
    if note:
        typer.echo(note, err=True)
    cfg = TrainConfig(
        str(data),
        str(out),
        model,
        preset,
        prompt,
        epochs,
        lr,
        wd,
        batch_size,
        warmup_epochs,
        label_smoothing=label_smoothing,
        image_size=image_size,
        patch_size=patch_size,
        patch_class_weight=patch_class_weight,
        patch_place_weight=patch_place_weight,
        scene_weight=scene_weight,
        max_train=max_train,
        val_limit=val_limit,
        seed=seed,
        resume=resume,
        mixed_precision=mixed_precision,
    )
    metrics = train(cfg, log=lambda m: typer.echo(m, err=True))
    if metrics and json_out:
        echo_json(metrics)
    elif metrics:
        typer.echo(
            f"best epoch {metrics['best_epoch']}: val BLEU-4 {metrics['val_BLEU-4']:.1f}, CIDEr "
            f"{metrics['val_CIDEr']:.1f}; model in {metrics['model_dir']} "
            f"(use --model {metrics['model_dir']})"
        )
