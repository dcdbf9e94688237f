"""The DINO training loop: data -> multi-crop -> student/teacher -> loss -> schedules -> checkpoints -> backbone.

Runs unchanged as ``python -m vlens.cli.main ssl train`` or under ``torchrun`` / ``accelerate launch`` (DDP; each
process takes a disjoint slice of every global batch, the centre is all-reduced, the teacher is an EMA of the
synchronised student so it stays identical everywhere). Everything random is keyed by ``(seed, epoch, position)``
so ``--resume`` after a kill continues exactly as if the run had never stopped.

Run folder: ``config.json``, ``checkpoint.pt`` (atomic, every ``checkpoint_every`` steps), ``log.jsonl`` (one line
per step), ``loss_curve.png``, ``metrics.json`` and ``backbone/`` (the teacher's backbone, ``save_pretrained``
plus the image processor and ``MODEL_CARD.md``), loadable with ``vlens.models.load(path, "backbone")``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError
from vlens.ssl.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig


@dataclass
class DINOConfig:
    """Settings of one DINO run. Defaults suit a small image set on a CPU (a few thousand steps of a tiny ViT)."""

    out: str = "runs/dino"
    images: list[str] = field(default_factory=lambda: ["photos"])
    """Image sets: ``photos``, ``photos:matching``, ``shapes``, ``shapes:pretrain`` or folders; mixed uniformly."""
    preset: str = "dino-tiny"
    """Backbone shape from ``vlens.models.presets`` (``test-vit`` for tests, ``dino-tiny``, ``vit-tiny``, ...)."""
    init: str = ""
    """Start the backbone (student and teacher) from these weights, a model spec such as ``builtin:dino-tiny``
    with the preset's shape, instead of a fresh initialisation; the heads start fresh. Empty = from scratch."""
    epochs: int = 100
    samples_per_epoch: int = 0
    """Crops-sets per epoch; 0 = one pass over the images (at least one global batch). Small image sets want a
    larger value so that schedules measured in epochs stay meaningful."""
    batch_size: int = 32
    """Images per process per step (each gives 2 global + n_local crops)."""
    lr: float = 5e-4
    """Peak AdamW learning rate (reached after the warm-up). Not rescaled by batch size: set it directly."""
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    """Linear learning-rate warm-up; DINO is unstable without it."""
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    """Weight decay follows a cosine from weight_decay to weight_decay_end (higher late = flatter features)."""
    momentum_teacher: float = 0.996
    """Teacher EMA momentum at the start; a cosine raises it to 1.0. Lower (0.99) for short runs or small batches
    so the teacher moves; higher (0.9995) for long runs."""
    teacher_temp: float = 0.04
    """Teacher softmax temperature after warm-up: lower = sharper targets. Above 0.07 tends to collapse."""
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    """Linear warm-up of the teacher temperature from warmup_teacher_temp; use it if the loss stalls early."""
    student_temp: float = 0.1
    center_momentum: float = 0.9
    """Momentum of the centre subtracted from teacher outputs (prevents collapse to one prototype)."""
    clip_grad: float = 3.0
    """Clip the global gradient norm to this (0 disables)."""
    freeze_last_layer: int = 1
    """Epochs during which the head's last layer is not updated (avoids early collapse)."""
    out_dim: int = 1024
    """Number of prototypes (head outputs). DINO uses 65536 on ImageNet; small data needs far fewer."""
    head_hidden_dim: int = 512
    head_bottleneck_dim: int = 128
    head_layers: int = 3
    norm_last_layer: bool = True
    dense_weight: float = 0.0
    """Weight of a dense DINO term: the same cross-entropy between *patches* of two views that show the same
    image point (known from the crop boxes), through a small patch head. 0 = plain DINO on [CLS]. Raise it
    (e.g. 1.0) when the features are for dense matching or segmentation."""
    patch_out_dim: int = 256
    """Prototypes of the patch head (used when dense_weight > 0)."""
    contrast_weight: float = 0.0
    """Weight of a patch InfoNCE term: a student patch must find the teacher patch showing the same image point
    among all patches of that view (rewards features that separate locations within an image, for matching)."""
    sift_weight: float = 0.0
    """Weight of a dense-SIFT distillation term: a training-only linear head on the student's patch tokens of
    the global views regresses (cosine) the L2-normalised dense SIFT descriptor of the same patch of the view
    (vlens.match.sift, 48 px support): the tokens learn the gradient-orientation histograms that make SIFT a
    strong matcher. The head is not exported. 0 = off."""
    sift_head: str = "linear"
    """What maps patch tokens to SIFT space for that term: ``linear`` (a training-only linear layer, D -> 128) or
    ``none`` (the tokens themselves must point along the SIFT descriptor; needs 128-wide tokens, as dino-tiny's)."""
    contrast_temp: float = 0.1
    contrast_keys: str = "student"
    """Where the InfoNCE term's keys come from: ``student`` (the student's own global views, gradients on both
    sides; learns fastest in short runs) or ``teacher`` (the EMA teacher's, MoCo-style)."""
    cls_weight: float = 1.0
    """Weight of DINO's [CLS] term. Lower it when the features are only for dense matching: the [CLS] target
    pulls all patches of an image towards one image-level code."""
    export: str = "teacher"
    """Which backbone is saved: ``teacher`` (DINO's choice: the EMA average is better after long runs) or
    ``student`` (better after short runs, where the EMA teacher still lags the student)."""
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    processor_size: int = 0
    """Input size written into the saved image processor; 0 = the global crop size."""
    max_side: int = 512
    """Images are shrunk once so their longer side is at most this (crops are cut from the shrunk image)."""
    seed: int = 0
    checkpoint_every: int = 50
    """Steps between atomic checkpoints (and log / curve updates)."""
    resume: bool = False
    """Continue from ``out/checkpoint.pt`` if it exists (settings are taken from the checkpoint)."""
    stop_after: int = 0
    """Stop this invocation after this many steps (checkpointed; resume later). 0 = run to the end."""
    workers: int = 0
    """DataLoader worker processes for cropping (0 = in the training process; best on 2 cores)."""
    mixed_precision: str = "auto"


def load_config(path) -> DINOConfig:
    """A DINOConfig from a JSON file (a run's ``config.json`` works too)."""
    import typing

    from vlens import fields
    from vlens.errors import DatasetError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"cannot read the settings file {path}: {str(exc) or type(exc).__name__}") from None
    data = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not isinstance(data.get("crops", {}), dict):
        raise DatasetError(f"{path}: expected a JSON object of DINO settings (a run's config.json works)")
    known = set(DINOConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown DINO setting(s) in {path}: {', '.join(unknown)}")
    hints, crop_hints = typing.get_type_hints(DINOConfig), typing.get_type_hints(MultiCropConfig)
    crops_in = dict(data.pop("crops", {}))
    unknown = sorted(set(crops_in) - set(crop_hints))
    if unknown:
        raise ConfigError(f"unknown crop setting(s) in {path}: {', '.join(unknown)}")
    crops = MultiCropConfig(**{k: fields.of_type(v, crop_hints[k], f"{path} field 'crops.{k}'")
                               for k, v in crops_in.items()})
    return DINOConfig(**{k: fields.of_type(v, hints[k], f"{path} field '{k}'") for k, v in data.items()},
                      crops=crops)


def build_backbone(preset: str, image_size: int):
    """A fresh HF backbone (ViTModel without pooler, or Dinov2Model) from a preset name."""
    import transformers

    from vlens.models.presets import get_preset

    cfg = get_preset(preset, image_size=image_size)
    if cfg.model_type == "vit":
        return transformers.ViTModel(cfg, add_pooling_layer=False)
    if cfg.model_type == "dinov2":
        return transformers.Dinov2Model(cfg)
    raise ConfigError(f"preset '{preset}' is a '{cfg.model_type}' model; DINO needs a ViT or DINOv2 preset")


def init_backbone(backbone, spec: str) -> None:
    """Copy the weights of the backbone ``spec`` into ``backbone`` (same shape required; one-line error if not)."""
    from vlens.models import load

    src = load(spec, "backbone").model.state_dict()
    dst = backbone.state_dict()
    bad = [k for k in dst if k not in src or src[k].shape != dst[k].shape]
    if bad:
        raise ConfigError(f"--init {spec}: its weights do not fit the preset (first mismatch: {bad[0]}); pick the "
                          "preset it was trained with")
    backbone.load_state_dict({k: src[k] for k in dst})


def image_processor(size: int):
    import transformers

    return transformers.ViTImageProcessorPil(size={"height": size, "width": size}, resample=3,
                                             image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


class CropDataset:
    """Map-style dataset: item ``(epoch, position)`` -> the multi-crop list of image ``order[epoch][position]``.

    Images are read lazily; up to ``cache_limit`` shrunk images are kept in memory (small sets are read once).
    """

    def __init__(self, paths: list[Path], crops: MultiCropConfig, seed: int, samples_per_epoch: int,
                 max_side: int = 512, cache_limit: int = 2048):
        self.paths, self.crops, self.seed = list(paths), crops, seed
        self.samples_per_epoch, self.max_side, self.cache_limit = samples_per_epoch, max_side, cache_limit
        self._cache: dict[int, object] = {}
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """Image index of every position of an epoch: concatenated shuffles, so each image appears evenly."""
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch, 7])
            reps = -(-self.samples_per_epoch // len(self.paths))
            self._orders = {epoch: np.concatenate([rng.permutation(len(self.paths)) for _ in range(reps)])}
        return self._orders[epoch]

    def image(self, i: int):
        if i in self._cache:
            return self._cache[i]
        from PIL import Image

        from vlens.images import load_image

        img = load_image(self.paths[i])
        if max(img.size) > self.max_side:
            s = self.max_side / max(img.size)
            img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
        if len(self._cache) < self.cache_limit:
            self._cache[i] = img
        return img

    def __getitem__(self, key):
        from vlens.ssl.augment import multi_crop, rng_for

        epoch, pos = key
        img = self.image(int(self.order(epoch)[pos]))
        return multi_crop(img, self.crops, rng_for(self.seed, epoch, pos))

    def __len__(self):
        return self.samples_per_epoch


def step_positions(step: int, steps_per_epoch: int, batch: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The (epoch, position) keys this process handles at ``step``: rank r takes the r-th slice of the global
    batch, so ranks never see the same sample and the union is the same for any world size."""
    epoch, it = divmod(step, steps_per_epoch)
    start = it * batch * world + rank * batch
    return [(epoch, p) for p in range(start, start + batch)]


class _StepSampler:
    """Yields the keys of steps ``start..end-1`` for one process (a DataLoader batch = one step)."""

    def __init__(self, start, end, steps_per_epoch, batch, rank, world):
        self.args = (start, end, steps_per_epoch, batch, rank, world)

    def __iter__(self):
        start, end, spe, batch, rank, world = self.args
        for step in range(start, end):
            yield step_positions(step, spe, batch, rank, world)

    def __len__(self):
        return self.args[1] - self.args[0]


def _resolve_images(specs: list[str], log=None) -> list[Path]:
    """The training images, each decoded once up front: unreadable files are left out and listed (``log``), so
    the list every epoch draws from, and so a resume, never changes under the run."""
    from vlens.data.image_sets import image_set
    from vlens.images import SkipLog, load_images_safely

    paths: list[Path] = []
    for spec in specs:
        paths += image_set(spec)
    if not paths:
        raise ConfigError("no training images; pass --images photos|shapes|DIR")
    skips = SkipLog()
    readable = [p for p, _ in load_images_safely(paths, skips)]
    if len(skips) and log:
        log(skips.summary(limit=20))
    if not readable:
        raise ConfigError("none of the training images can be read: " + skips.summary(limit=3))
    return readable


def _checksum(module) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in module.state_dict().values()
                         if p.is_floating_point()))


def train(cfg: DINOConfig, log=print) -> dict:
    """Train DINO as configured; returns the metrics dict (also written to ``out/metrics.json``)."""
    import torch

    from vlens.runs import RunDir, seed_everything, write_json
    from vlens.ssl import dino
    from vlens.training import (
        cosine_schedule,
        load_checkpoint,
        make_accelerator,
        param_groups,
        save_checkpoint,
    )

    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if cfg.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        keep = {"resume": True, "stop_after": cfg.stop_after, "out": cfg.out, "workers": cfg.workers}
        cfg = load_config_dict(ckpt["config"])
        for k, v in keep.items():
            setattr(cfg, k, v)
    _validate(cfg)

    accelerator = make_accelerator(mixed_precision=cfg.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(cfg.seed)  # identical initial weights on every process
    paths = _resolve_images(cfg.images, log if accelerator.is_main_process else None)
    samples = cfg.samples_per_epoch or len(paths)
    samples = max(samples, cfg.batch_size * world)
    spe = samples // (cfg.batch_size * world)  # steps per epoch
    total = spe * cfg.epochs
    if accelerator.is_main_process and ckpt is None:
        RunDir(out, cfg)  # writes config.json

    backbone = build_backbone(cfg.preset, cfg.crops.global_size)
    if cfg.init and ckpt is None:
        init_backbone(backbone, cfg.init)
        log(f"backbone initialised from {cfg.init}")
    head = dino.DINOHead(backbone.config.hidden_size, cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                         cfg.head_layers, cfg.norm_last_layer)
    patch_head = None
    if cfg.dense_weight > 0:
        d = backbone.config.hidden_size
        patch_head = dino.DINOHead(d, cfg.patch_out_dim, hidden_dim=2 * d, bottleneck_dim=64, n_layers=2)
    dense = cfg.dense_weight > 0 or cfg.contrast_weight > 0 or cfg.sift_weight > 0  # any patch-level term
    sift_head = None
    if cfg.sift_weight > 0:  # training-only head: tokens -> SIFT descriptor (not part of the exported backbone)
        if cfg.sift_head == "none" and backbone.config.hidden_size != 128:
            raise ConfigError(f"--sift-head none needs 128-wide tokens (SIFT's size); {cfg.preset} has "
                              f"{backbone.config.hidden_size}: use --sift-head linear")
        sift_head = (torch.nn.Linear(backbone.config.hidden_size, 128) if cfg.sift_head == "linear"
                     else torch.nn.Identity())
        cfg.crops.sift_patch = int(backbone.config.patch_size)
    student = dino.MultiCropNet(backbone, head, patch_head, return_tokens=cfg.contrast_weight > 0,
                                sift_head=sift_head)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay))

    lr_s = cosine_schedule(cfg.lr, cfg.min_lr, total, cfg.warmup_epochs * spe)
    wd_s = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total)
    mom_s = cosine_schedule(cfg.momentum_teacher, 1.0, total)
    tt_s = dino.teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs,
                                      cfg.epochs, spe)
    center = torch.zeros(1, cfg.out_dim)
    center_p = torch.zeros(1, cfg.patch_out_dim)
    start, history, elapsed = 0, [], 0.0
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        center = ckpt["center"]
        center_p = ckpt.get("center_patch", center_p)
        start, history, elapsed = ckpt["step"], ckpt["history"], ckpt.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt_path} at step {start}/{total}")
    student, optimizer = accelerator.prepare(student, optimizer)
    teacher.to(accelerator.device)
    center = center.to(accelerator.device)
    center_p = center_p.to(accelerator.device)
    raw_student = accelerator.unwrap_model(student)

    end = total if not cfg.stop_after else min(total, start + cfg.stop_after)
    data = CropDataset(paths, cfg.crops, cfg.seed, samples, cfg.max_side)
    from torch.utils.data import DataLoader

    from vlens.ssl.augment import collate_crops

    loader = DataLoader(data, batch_sampler=_StepSampler(start, end, spe, cfg.batch_size, rank, world),
                        collate_fn=collate_crops, num_workers=cfg.workers)
    if accelerator.is_main_process:
        log(f"DINO: {len(paths)} images, {world} process(es) x batch {cfg.batch_size}, {spe} steps/epoch, "
            f"{cfg.epochs} epochs = {total} steps; preset {cfg.preset}, "
            f"{sum(p.numel() for p in backbone.parameters()) / 1e6:.2f}M backbone parameters")
    from vlens.runs import progress

    bar = progress(total=end - start, desc="dino", disable=None if accelerator.is_main_process else True)
    t0 = time.time()
    step = start

    def checkpoint(step_done: int):
        if accelerator.is_main_process:
            save_checkpoint(ckpt_path, student=raw_student.state_dict(), teacher=teacher.state_dict(),
                            optimizer=optimizer.state_dict(), center=center.cpu(), center_patch=center_p.cpu(),
                            step=step_done,
                            history=history, config=asdict(cfg), elapsed_s=elapsed + time.time() - t0)
            _write_log(out, history)
        accelerator.wait_for_everyone()

    for crops, geom, *sift in loader:
        crops = [c.to(accelerator.device, non_blocking=True) for c in crops]
        geom = geom.to(accelerator.device)  # (B, V, 6) crop geometry, for the dense terms
        epoch = step // spe
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = lr_s[step]
            if i == 0:
                group["weight_decay"] = wd_s[step]
        with accelerator.autocast():
            s_out = student(crops)
            with torch.no_grad():
                t_out = teacher(crops[:2])
            if dense:
                (s_out, s_patch, s_tok, *s_sift), (t_out, t_patch, t_tok, *_) = s_out, t_out
            s_out, t_out = s_out.float(), t_out.float()  # (V*B, K), (2*B, K)
            loss_cls = dino.dino_loss(s_out, t_out, center, cfg.student_temp, float(tt_s[step]), 2)
            loss = cfg.cls_weight * loss_cls
            terms = {}  # the patch-level terms that are part of the loss, for the log
            if patch_head is not None:
                s_patch, t_patch = [p.float() for p in s_patch], [p.float() for p in t_patch]
                terms["loss_dense"] = dino.dense_dino_loss(s_patch, t_patch, geom, center_p, cfg.student_temp,
                                                           float(tt_s[step]))
                loss = loss + cfg.dense_weight * terms["loss_dense"]
            if cfg.contrast_weight > 0:
                keys = s_tok[:2] if cfg.contrast_keys == "student" else t_tok
                terms["loss_contrast"] = dino.dense_contrastive_loss(
                    [x.float() for x in s_tok], [x.float() for x in keys], geom, cfg.contrast_temp,
                    detach_keys=cfg.contrast_keys != "student")
                loss = loss + cfg.contrast_weight * terms["loss_contrast"]
            if cfg.sift_weight > 0:
                target = sift[0].to(accelerator.device)  # (B, 2, N, 128) dense SIFT of the global views
                terms["loss_sift"] = dino.sift_distill_loss(s_sift[0].float(), target)
                loss = loss + cfg.sift_weight * terms["loss_sift"]
        if not torch.isfinite(loss):
            raise ConfigError(f"DINO loss is {loss.item()} at step {step}; lower --lr or raise --warmup-epochs")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(student.parameters(), cfg.clip_grad) if cfg.clip_grad else None
        if epoch < cfg.freeze_last_layer:
            dino.cancel_last_layer_grad(raw_student.head)
        optimizer.step()
        dino.ema_update(teacher, raw_student, float(mom_s[step]))
        ent, batch_ent = dino.output_entropy(t_out, float(tt_s[step]), center)
        center = dino.update_center(center, t_out, cfg.center_momentum)
        if patch_head is not None:
            center_p = dino.update_center(center_p, torch.cat(t_patch).flatten(0, 1), cfg.center_momentum)
        if terms:
            terms["loss_cls"] = loss_cls
        extra = {k: round(accelerator.reduce(v.detach(), reduction="mean").item(), 5) for k, v in terms.items()}
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
        step += 1
        history.append({"step": step, "epoch": round(step / spe, 4), "loss": round(mean_loss, 5),
                        "lr": float(lr_s[step - 1]), "wd": float(wd_s[step - 1]),
                        "momentum": float(mom_s[step - 1]), "teacher_temp": float(tt_s[step - 1]),
                        "teacher_entropy": round(ent, 4), "teacher_batch_entropy": round(batch_ent, 4),
                        "grad_norm": None if grad_norm is None else round(float(grad_norm), 4),
                        "time_s": round(elapsed + time.time() - t0, 2), **extra})
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", ep=epoch)
        if step % cfg.checkpoint_every == 0 or step == end:
            checkpoint(step)
    bar.close()
    wall = elapsed + time.time() - t0
    sums = accelerator.gather(torch.tensor([[_checksum(raw_student), _checksum(teacher)]],
                                           dtype=torch.float64, device=accelerator.device)).cpu().tolist()
    in_sync = all(abs(s[0] - sums[0][0]) <= 1e-9 * abs(sums[0][0]) and
                  abs(s[1] - sums[0][1]) <= 1e-9 * abs(sums[0][1]) for s in sums)
    metrics = {"steps": step, "total_steps": total, "finished": step == total, "epochs": cfg.epochs,
               "images": len(paths), "world_size": world, "global_batch": cfg.batch_size * world,
               "final_loss": history[-1]["loss"] if history else None,
               "wall_time_s": round(wall, 1),
               "images_per_s": round(step * cfg.batch_size * world / max(wall, 1e-9), 2),
               "rank_checksums": sums, "ranks_in_sync": in_sync, "main_process": accelerator.is_main_process}
    if not in_sync:
        raise RuntimeError(f"DDP processes diverged: parameter checksums {sums}")
    if accelerator.is_main_process:
        write_json(out / "metrics.json", metrics)
        _loss_curve(out, history)
        if step == total:
            chosen = teacher if cfg.export == "teacher" else raw_student
            export_backbone(chosen.backbone, out / "backbone", cfg, metrics, history)
            log(f"saved backbone to {out / 'backbone'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def load_config_dict(data: dict) -> DINOConfig:
    data = dict(data)
    crops = MultiCropConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("crops").items()})
    return DINOConfig(**data, crops=crops)


def _validate(cfg: DINOConfig) -> None:
    checks = [
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (cfg.warmup_epochs <= cfg.epochs, "--warmup-epochs must not exceed --epochs"),
        (0 <= cfg.momentum_teacher <= 1, "--momentum-teacher must be in [0, 1]"),
        (cfg.teacher_temp > 0 and cfg.student_temp > 0, "temperatures must be positive"),
        (cfg.crops.global_size >= 8 and cfg.crops.local_size >= 8, "crop sizes must be at least 8 px"),
        (cfg.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
        (cfg.contrast_keys in ("student", "teacher"), "--contrast-keys must be student or teacher"),
        (cfg.cls_weight >= 0, "--cls-weight must not be negative"),
        (cfg.export in ("student", "teacher"), "--export must be student or teacher"),
        (0 <= cfg.crops.rotation <= 180, "--rotation must be in [0, 180] degrees"),
        (0 <= cfg.crops.perspective < 0.5, "--perspective must be in [0, 0.5)"),
        (cfg.sift_weight >= 0, "--sift-weight must not be negative"),
        (cfg.sift_head in ("linear", "none"), "--sift-head must be linear or none"),
        (0 < cfg.crops.global_scale[0] <= cfg.crops.global_scale[1] <= 1,
         f"--global-scale MIN MAX needs 0 < MIN <= MAX <= 1 (got {' '.join(map(str, cfg.crops.global_scale))})"),
        (0 < cfg.crops.local_scale[0] <= cfg.crops.local_scale[1] <= 1,
         f"--local-scale MIN MAX needs 0 < MIN <= MAX <= 1 (got {' '.join(map(str, cfg.crops.local_scale))})"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _write_log(out: Path, history: list[dict]) -> None:
    from vlens.runs import atomic_write_text

    atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))


LOSS_TERMS = {"loss_cls": "[CLS] (DINO)", "loss_dense": "dense DINO (patches)", "loss_contrast": "patch InfoNCE",
              "loss_sift": "dense-SIFT distillation"}


def loss_curve_figure(history: list[dict], path: Path, height: float = 3.2) -> Path:
    """Two panels from a run's per-step log: the total loss and every logged term, and the teacher entropies
    (a collapse shows as both falling to 0, or rising to log K). Used by runs and by the lab report."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    fig, ax = pyplot.subplots(1, 2, figsize=(9, height))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["loss"] for h in history], lw=0.8, label="total")
    for key, label in LOSS_TERMS.items():
        if key in history[-1]:
            ax[0].plot(steps, [h.get(key) for h in history], lw=0.8, label=label)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("loss")
    ax[0].legend(fontsize=7)
    ax[1].plot(steps, [h["teacher_entropy"] for h in history], lw=0.8, label="teacher, per sample")
    ax[1].plot(steps, [h["teacher_batch_entropy"] for h in history], lw=0.8, label="teacher, batch mean")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("entropy (nats)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    return save_fig(fig, path)


def _loss_curve(out: Path, history: list[dict]) -> None:
    if history:
        loss_curve_figure(history, out / "loss_curve.png")


def export_backbone(backbone, folder: Path, cfg: DINOConfig, metrics: dict, history: list[dict]) -> Path:
    """Save a trained backbone (float32) with its image processor and a model card."""
    from vlens.models import quiet_transformers

    quiet_transformers()
    images = training_list(cfg)  # first: a training image that cannot be found stops here, before any file
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(folder)
    image_processor(cfg.processor_size or cfg.crops.global_size).save_pretrained(folder)
    write_model_card(folder, cfg, metrics)
    write_training_list(folder, *images)
    from vlens.runs import apply_umask_tree

    return apply_umask_tree(folder)  # safetensors writes its file 0600


def training_list(cfg: DINOConfig) -> tuple[list[Path], str, list[dict]]:
    """What ``training_images.json`` lists: the run's image paths, a one-line source, and the rows of the weights
    it started from (``--init``), so benchmarks can refuse them all (vlens.match.heldout)."""
    from vlens.match.heldout import training_images

    source = ", ".join(cfg.images) + (f" (initialised from {cfg.init})" if cfg.init else "")
    return _resolve_images(cfg.images), source, training_images(cfg.init) if cfg.init else []


def write_training_list(folder: Path, paths: list[Path], source: str, inherited: list[dict]) -> Path:
    """``training_images.json`` in ``folder`` (see :func:`training_list`)."""
    from vlens.match.heldout import write_training_images

    return write_training_images(folder, paths, source, inherited)


def write_model_card(folder: Path, cfg: DINOConfig, metrics: dict, extra: str = "") -> Path:
    import sys

    from vlens.runs import atomic_write_text

    cmd = "vlens " + " ".join(sys.argv[1:]) if sys.argv and "ssl" in sys.argv else "(library call)"
    text = (f"# DINO backbone ({cfg.preset})\n\n"
            "Self-supervised ViT trained with `vlens ssl train` (DINO: multi-crop, EMA teacher, centering and "
            "sharpening). Load it with `vlens.models.load(PATH, 'backbone')`.\n\n"
            f"- data: {', '.join(cfg.images)}\n- command: `{cmd}`\n- seed: {cfg.seed}\n"
            f"- steps: {metrics['steps']} ({cfg.epochs} epochs, global batch {metrics['global_batch']}, "
            f"{metrics['world_size']} process(es))\n"
            f"- crops: 2 x {cfg.crops.global_size} px global + {cfg.crops.n_local} x {cfg.crops.local_size} px local\n"
            f"- wall time: {metrics['wall_time_s']:.0f} s ({metrics['images_per_s']} images/s)\n"
            f"- final loss: {metrics['final_loss']}\n")
    return atomic_write_text(folder / "MODEL_CARD.md", text + extra)


def export_checkpoint(checkpoint, folder) -> Path:
    """Save the backbone of a checkpoint (e.g. of a run still in progress) as a loadable model folder: the one
    its ``export`` setting names (teacher by default)."""
    from vlens.training import load_checkpoint

    ckpt = load_checkpoint(checkpoint, restore_rng=False)
    cfg = load_config_dict(ckpt["config"])
    backbone = build_backbone(cfg.preset, cfg.crops.global_size)
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ckpt[cfg.export].items() if k.startswith(prefix)}
    backbone.load_state_dict(state)
    hist = ckpt["history"]
    metrics = {"steps": ckpt["step"], "global_batch": cfg.batch_size, "world_size": 1,
               "wall_time_s": ckpt.get("elapsed_s", 0.0), "images_per_s": "-",
               "final_loss": hist[-1]["loss"] if hist else None}
    return export_backbone(backbone, Path(folder), cfg, metrics, hist)
