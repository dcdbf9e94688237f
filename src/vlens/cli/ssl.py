"""``vlens ssl``: self-supervised DINO training of a ViT backbone, and a probe that compares backbones."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import JSON_OPTION, PRECISION_OPTION, check, echo_json

app = typer.Typer(help="Self-supervised learning: train a ViT with DINO on your images (`train`), compare backbones "
                       "on the shapes segmentation probe (`probe`).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ssl")


def _absolute(spec: str) -> str:
    """A spec naming an existing path (an image folder, a model folder) as an absolute path, so the run's config
    still finds it when the run is resumed or exported from another directory; other specs (photos,
    opencv:train, builtin:NAME, a hub id) as given."""
    return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint.pt, log.jsonl, loss_curve.png, metrics.json, "
                             "backbone/ (the trained backbone, loadable with --model OUT/backbone).",
                             callback=check.output("dir")),
    images: list[str] = typer.Option(["photos"], "--images", help="Training images: photos (scikit-image's), "
                                     "photos:matching, shapes, shapes:pretrain, or a folder. Repeat to mix.",
                                     callback=check.text()),
    preset: str = typer.Option("dino-tiny", help="Backbone shape: dino-tiny (128 wide, 4 layers, patch 8; the "
                               "builtin), vit-tiny, vit-small, test-vit (tests). See vlens.models.presets.",
                               callback=check.text()),
    init: str = typer.Option("", "--init", help="Start the backbone from these weights (e.g. builtin:dino-tiny; "
                             "same shape as --preset) instead of from scratch: fine-tuning on new images.",
                             callback=check.text(empty=True)),
    epochs: int = typer.Option(100, help="Passes over --samples-per-epoch crop-sets.", callback=check.count(1, 100000)),
    samples_per_epoch: int = typer.Option(0, help="Images (each multi-cropped) per epoch; 0 = one pass over the "
                                          "images. Raise it for small image sets (e.g. 512 for the 18 photos).",
                                          callback=check.count(0)),
    batch_size: int = typer.Option(32, help="Images per process per step; the global batch is this x processes.",
                                   callback=check.count(1, 65536)),
    lr: float = typer.Option(5e-4, help="Peak learning rate after warm-up (AdamW). Halve it if the loss spikes.",
                             callback=check.number(0, 10, lo_open=True)),
    min_lr: float = typer.Option(1e-6, help="Learning rate at the end of the cosine decay.",
                                 callback=check.number(0, 10)),
    warmup_epochs: int = typer.Option(10, help="Epochs of linear learning-rate warm-up.",
                                      callback=check.count(0, 100000)),
    weight_decay: float = typer.Option(0.04, help="Weight decay at the start (cosine to --weight-decay-end).",
                                       callback=check.number(0, 100)),
    weight_decay_end: float = typer.Option(0.4, help="Weight decay at the end.", callback=check.number(0, 100)),
    momentum_teacher: float = typer.Option(0.996, help="Teacher EMA momentum at the start (cosine to 1). Use ~0.99 "
                                           "for short runs so the teacher keeps up, 0.9995 for long ones.",
                                           callback=check.number(0, 1)),
    teacher_temp: float = typer.Option(0.04, help="Teacher temperature (sharpening); keep <= 0.07.",
                                       callback=check.number(0, 100, lo_open=True)),
    warmup_teacher_temp: float = typer.Option(0.04, help="Teacher temperature at the start of its warm-up.",
                                              callback=check.number(0, 100, lo_open=True)),
    warmup_teacher_temp_epochs: int = typer.Option(0, help="Epochs to go from --warmup-teacher-temp to "
                                                   "--teacher-temp.", callback=check.count(0, 100000)),
    student_temp: float = typer.Option(0.1, help="Student temperature.", callback=check.number(0, 100, lo_open=True)),
    center_momentum: float = typer.Option(0.9, help="Momentum of the output centre (anti-collapse).",
                                          callback=check.number(0, 1)),
    clip_grad: float = typer.Option(3.0, help="Max gradient norm (0 = no clipping).", callback=check.number(0, 1e6)),
    freeze_last_layer: int = typer.Option(1, help="Epochs with the head's last layer frozen (avoids early collapse).",
                                          callback=check.count(0, 100000)),
    out_dim: int = typer.Option(1024, help="Head outputs (prototypes). Small data: 512-4096.",
                                callback=check.count(1, 1_000_000)),
    dense_weight: float = typer.Option(0.0, help="Weight of the dense DINO term on patches that show the same image "
                                       "point in two views (0 = plain DINO). 1.0 helps dense matching.",
                                       callback=check.number(0, 1000)),
    contrast_weight: float = typer.Option(0.0, help="Weight of a patch InfoNCE term: each patch must find its "
                                          "counterpart among all patches of the other view (helps matching).",
                                          callback=check.number(0, 1000)),
    contrast_temp: float = typer.Option(0.1, help="Temperature of the patch InfoNCE term.",
                                        callback=check.number(0, 100, lo_open=True)),
    contrast_keys: str = typer.Option("student", help="Keys of the InfoNCE term: student (its own other global "
                                      "view; fastest on short runs) or teacher (the EMA teacher's, MoCo-style).",
                                      callback=check.choice("student", "teacher")),
    sift_weight: float = typer.Option(0.0, help="Weight of a dense-SIFT distillation term: a training-only linear "
                                      "head on the patch tokens regresses the dense SIFT descriptor of the same "
                                      "patch of each global view (0 = off).", callback=check.number(0, 1000)),
    sift_head: str = typer.Option("linear", help="Map from patch tokens to SIFT space for --sift-weight: linear (a "
                                  "training-only layer) or none (the 128-wide tokens themselves).",
                                  callback=check.choice("linear", "none")),
    cls_weight: float = typer.Option(1.0, help="Weight of DINO's [CLS] term (lower it for matching-only "
                                     "backbones: it pulls the patches of an image towards one code).",
                                     callback=check.number(0, 1000)),
    patch_out_dim: int = typer.Option(256, help="Prototypes of the patch head (with --dense-weight > 0).",
                                      callback=check.count(1, 1_000_000)),
    export: str = typer.Option("teacher", help="Backbone saved at the end: teacher (DINO's choice, best after long "
                               "runs) or student (best after short runs, where the EMA teacher lags).",
                               callback=check.choice("teacher", "student")),
    global_size: int = typer.Option(96, help="Global crop side in px (the teacher's input).",
                                    callback=check.side(16, 1024)),
    local_size: int = typer.Option(48, help="Local crop side in px.", callback=check.side(8, 1024)),
    n_local: int = typer.Option(6, help="Local crops per image (0 = two global views only).",
                                callback=check.count(0, 64)),
    global_scale: tuple[float, float] = typer.Option((0.25, 1.0), help="Area fraction range (of the image after "
                                                     "--max-side) cut for a global crop. Match it to the scale "
                                                     "you will use the features at.",
                                                     callback=check.number(0, 1, lo_open=True)),
    local_scale: tuple[float, float] = typer.Option((0.05, 0.25), help="Area fraction range for local crops.",
                                                    callback=check.number(0, 1, lo_open=True)),
    flip_p: float = typer.Option(0.5, help="Probability of a horizontal flip per crop. Flips make features "
                                 "mirror-invariant, which blurs left/right for dense matching: use 0 for matching.",
                                 callback=check.number(0, 1)),
    gray_p: float = typer.Option(0.2, help="Probability of a grey crop (colour invariance; 0 keeps colour as a "
                                 "cue for matching).", callback=check.number(0, 1)),
    rotation: float = typer.Option(0.0, help="Largest crop rotation in degrees (+-); the dense terms follow the "
                                   "rotation exactly. 15 teaches the tilt of the crop benchmark's geometric "
                                   "scenario.", callback=check.number(0, 180)),
    perspective: float = typer.Option(0.0, help="Projective warp of the global crops: corners move inwards by up "
                                      "to this fraction of the side (a viewpoint-like homography between the "
                                      "views; the dense terms follow it exactly). 0 = none.",
                                      callback=check.number(0, 0.5, hi_open=True)),
    min_overlap: float = typer.Option(0.0, help="Redraw the second global crop until it overlaps the first by this "
                                      "fraction of the smaller box (the dense terms learn only on the overlap).",
                                      callback=check.number(0, 1)),
    solarize_p: float = typer.Option(0.2, help="Probability of solarising the second global crop.",
                                     callback=check.number(0, 1)),
    hue: float = typer.Option(0.1, help="Largest hue shift of the colour jitter, in turns (0 = hues kept).",
                              callback=check.number(0, 0.5)),
    max_side: int = typer.Option(512, help="Shrink images once so the longer side is at most this (px).",
                                 callback=check.side(16)),
    processor_size: int = typer.Option(0, help="Input size saved in the image processor (0 = --global-size).",
                                       callback=check.integer(0, 4096)),
    seed: int = typer.Option(0, help="Seeds weights and every crop; same seed + settings = same run.",
                             callback=check.seed()),
    checkpoint_every: int = typer.Option(50, help="Steps between atomic checkpoints.", callback=check.count(1)),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt exactly (the saved "
                                "settings win over flags)."),
    stop_after: int = typer.Option(0, help="Stop after this many steps of this invocation (resume later).",
                                   callback=check.count(0)),
    workers: int = typer.Option(0, help="DataLoader processes for cropping; 0 is best on 2 cores.",
                                callback=check.count(0, 256)),
    threads: int = typer.Option(0, help="torch CPU threads per process (0 = vlens's CPU policy: the cores this "
                                "process may use, shared with the other processes torchrun starts on the node; "
                                "VLENS_THREADS sets it too).",
                                callback=check.count(0, 1024)),
    config: Path = typer.Option(None, "--config", help="JSON file of settings (e.g. a previous run's config.json); "
                                "flags given explicitly override it.", callback=check.existing("file")),
    mixed_precision: str = PRECISION_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Train a ViT backbone with DINO (self-distillation, no labels) and save it with save_pretrained.

    Example (the builtin:dino-tiny recipe is in its MODEL_CARD.md):

      vlens ssl train --images photos --epochs 20 --samples-per-epoch 256 --out runs/dino
    """
    from vlens import cpu
    from vlens.ssl.train import DINOConfig, load_config, train

    note = cpu.apply(threads or None, workers=workers).note()  # cropping workers: cores from the model's
    if note:
        typer.echo(note, err=True)
    given = {k for k in ctx.params if ctx.get_parameter_source(k).name != "DEFAULT"}
    cfg = load_config(config) if config else DINOConfig()
    crop_fields = {"global_size", "local_size", "n_local", "global_scale", "local_scale", "flip_p", "gray_p",
                   "hue", "rotation", "min_overlap", "solarize_p", "perspective"}
    for name, value in ctx.params.items():
        if name in ("config", "json_out", "threads"):
            continue
        if config and name not in given and name != "out":
            continue
        if name in crop_fields:
            setattr(cfg.crops, name, tuple(value) if isinstance(value, list | tuple) else value)
        elif name == "out":
            cfg.out = str(value)
        elif name == "images":
            cfg.images = [_absolute(v) for v in value]
        elif name == "init":
            cfg.init = _absolute(value)
        else:
            setattr(cfg, name, value)
    metrics = train(cfg, log=lambda m: typer.echo(m, err=json_out))
    if not metrics.get("main_process", True):
        return  # under torchrun / accelerate launch only the first process reports
    if json_out:
        echo_json(metrics)
    else:
        typer.echo(f"{metrics['steps']}/{metrics['total_steps']} steps, final loss {metrics['final_loss']}, "
                   f"{metrics['wall_time_s']:.0f} s ({metrics['images_per_s']} images/s) -> {out}")


@app.command("probe")
def probe_cmd(
    models: list[str] = typer.Option(["builtin:dino-tiny", "random:builtin:dino-tiny", "pixels"], "--model",
                                     help="Backbones to compare: a model spec, random:<spec> (same architecture, "
                                     "random weights), or pixels (raw pixel patches). Repeat.", callback=check.text()),
    hub: list[str] = typer.Option(["facebook/dinov2-small", "facebook/dino-vits16"], "--hub",
                                  help="Hub models added when already in the Hugging Face cache (never downloaded).",
                                  callback=check.text()),
    data: Path = typer.Option(None, "--data", help="A shapes dataset folder (vlens data make-shapes); default: a "
                              "small generated one.", callback=check.existing("dir")),
    size: int = typer.Option(128, help="Images are resized to this side before feature extraction.",
                             callback=check.side(16, 1024)),
    train_images: int = typer.Option(120, help="Training images for the probes.", callback=check.count(1, 100000)),
    test_images: int = typer.Option(40, help="Test images.", callback=check.count(1, 100000)),
    k: int = typer.Option(10, help="Neighbours of the kNN probe.", callback=check.count(1, 10000)),
    out: Path = typer.Option(None, "--out", help="Write results.json and table.md here.", callback=check.output("dir")),
    json_out: bool = JSON_OPTION,
):
    """Compare backbones on the shapes masks: linear and kNN probes of patch features -> patch-level mIoU."""
    from vlens.ssl.probe import ProbeConfig, format_table, run_probe

    cfg = ProbeConfig(models=list(models), hub=list(hub), data=str(data) if data else None, size=size,
                      train_images=train_images, test_images=test_images, k=k)
    res = run_probe(cfg, log=lambda m: typer.echo(m, err=True))
    table = format_table(res)
    if out:
        from vlens.runs import RunDir, atomic_write_text, write_json

        run = RunDir(out, cfg)
        write_json(run.file("results.json"), res)
        atomic_write_text(run.file("table.md"), table + "\n")
    if json_out:
        echo_json(res)
    else:
        typer.echo(table)
