"""Contrastive training of a CLIP-style dual encoder, from scratch (a preset) or fine-tuned (a checkpoint).

One step: take a global batch of images, one caption each (sampled afresh every epoch, so all five COCO-style
captions are used over the epochs and no two positives of one image compete in a batch), embed both towers,
gather the embeddings of all processes, symmetric InfoNCE, AdamW (no decay on biases, norms, temperature),
warm-up + cosine learning rate, optional gradient accumulation. After every epoch: validation recall, an atomic
checkpoint (``checkpoint.pt``, for ``--resume``) and, when validation improves, ``best/`` (a
``save_pretrained`` folder that ``--model`` / ``--finetune`` accept).

The data order depends only on ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted
run would have seen; the test ``test_resume_is_exact`` checks that the weights come out identical. (Bit-exact
on one thread: multi-threaded CPU backward kernels add in a thread-dependent order, so two *uninterrupted* runs
with 2+ threads already differ in the last bits, and those differences grow.)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError, DatasetError


@dataclass
class TrainConfig:
    """Settings of one retrieval training run (``vlens retrieval train --help`` explains each flag)."""

    data: str
    out: str
    finetune: str | None = None  # checkpoint to start from; None = from scratch with ``preset``
    preset: str = "clip-tiny"
    image_size: int = 64  # scratch only
    vocab_size: int = 1000  # scratch only: WordPiece vocabulary trained on the training captions
    train_split: str = "train"
    val_split: str | None = "val"
    limit: int | None = None  # use the first N training images
    lr: float = 5e-4
    wd: float = 0.1
    epochs: int = 10
    batch_size: int = 64  # global batch per micro-step, over all processes
    grad_accum: int = 1
    warmup: int = 20  # optimiser steps of linear warm-up
    min_lr_ratio: float = 0.0
    temperature: float = 0.07
    learn_temperature: bool = False
    min_temperature: float = 0.01
    max_temperature: float = 1.0
    freeze: str = "none"  # none | image | text
    seed: int = 0
    resume: bool = False
    mixed_precision: str = "auto"
    cache_mb: int = 1024  # keep preprocessed training images in memory up to this size
    stop_after: int | None = None  # stop after this many epochs (simulates a kill; used by tests)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.grad_accum < 1:
            raise ConfigError("--epochs must be >= 1, --batch-size >= 2 (contrastive needs negatives), "
                              "--grad-accum >= 1")
        if self.lr <= 0 or self.wd < 0:
            raise ConfigError("--lr must be > 0 and --wd >= 0")
        if not (0 < self.min_temperature <= self.temperature <= self.max_temperature):
            raise ConfigError(f"--temperature {self.temperature} must lie in [{self.min_temperature}, "
                              f"{self.max_temperature}] (typical: 0.07)")
        if self.freeze not in ("none", "image", "text"):
            raise ConfigError(f"--freeze must be none, image or text, not '{self.freeze}'")


# ----------------------------------------------------------------------------------------------- model
class Towers:
    """Factory for the nn.Module DDP wraps: forward(pixels, ids, mask) -> (img (b, d), txt (b, d), logit_scale).

    DDP only synchronises gradients of what runs inside ``forward``, so both towers must run there (calling
    ``get_image_features`` on the unwrapped model would silently skip the all-reduce).
    """

    @staticmethod
    def build(clip):
        import torch.nn.functional as F
        from torch import nn

        class _Towers(nn.Module):
            def __init__(self, clip):
                super().__init__()
                self.clip = clip

            def forward(self, pixel_values, input_ids, attention_mask):
                img = self.clip.get_image_features(pixel_values=pixel_values)
                txt = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
                img = getattr(img, "pooler_output", img)  # (b, d)
                txt = getattr(txt, "pooler_output", txt)  # (b, d)
                return F.normalize(img, dim=-1), F.normalize(txt, dim=-1), self.clip.logit_scale

        return _Towers(clip)


def build_scratch(cfg: TrainConfig, captions: list[str]):
    """A fresh CLIPModel from ``cfg.preset`` with a WordPiece tokenizer trained on ``captions``."""
    import transformers

    from vlens.models.presets import get_preset
    from vlens.models.tokenizer import train_wordpiece

    tok = train_wordpiece(captions, vocab_size=cfg.vocab_size)
    kw = {"vocab_size": len(tok)}
    if cfg.image_size:
        kw["image_size"] = cfg.image_size
    try:
        config = get_preset(cfg.preset, **kw)
    except TypeError:
        raise ConfigError(f"preset '{cfg.preset}' is not a CLIP preset; use clip-tiny or test-clip") from None
    if getattr(config, "model_type", "") != "clip":
        raise ConfigError(f"preset '{cfg.preset}' builds a '{config.model_type}' model; a dual encoder needs "
                          "a CLIP preset (clip-tiny, test-clip)")
    size = config.vision_config.image_size
    proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size,
                                                                                       "width": size})
    return transformers.CLIPModel(config), proc, tok


def load_start(cfg: TrainConfig, captions: list[str]):
    """(CLIPModel, image processor, tokenizer) to start from: ``--finetune M`` or a preset."""
    if cfg.finetune:
        from vlens.errors import ModelLoadError
        from vlens.models import load

        try:
            lm = load(cfg.finetune, "dual_encoder")
        except ModelLoadError as exc:
            raise ModelLoadError(f"--finetune: {exc}") from None
        return lm.model, lm.image_processor, lm.tokenizer
    return build_scratch(cfg, captions)


def freeze_tower(clip, which: str) -> None:
    parts = {"image": (clip.vision_model, clip.visual_projection), "text": (clip.text_model, clip.text_projection),
             "none": ()}[which]
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class PairSet:
    """Preprocessed images (lazily, with a bounded cache) and tokenised captions of one split."""

    paths: list
    caption_ids: list  # per image: (c_i, L) int64 tensor of its captions' token ids
    caption_mask: list  # per image: (c_i, L) attention masks
    processor: object
    cache: dict
    cache_limit: int
    skipped: list
    truncated: int
    empty: int

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, i: int):
        """(3, H, W) float32 for image ``i``."""
        import torch

        if i in self.cache:
            return self.cache[i].float()
        from vlens.images import load_image

        px = self.processor(images=[load_image(self.paths[i])], return_tensors="np")["pixel_values"][0]
        t = torch.from_numpy(np.asarray(px, dtype=np.float32))  # (3, H, W)
        if len(self.cache) < self.cache_limit:
            self.cache[i] = t.half()
        return t


def build_pairs(samples, processor, tokenizer, max_tokens: int, cache_mb: int, image_size: int) -> PairSet:
    """Drop empty captions and unreadable images (listed), tokenise with truncation (counted), warm the cache."""
    from vlens.errors import ImageLoadError

    per_image = 3 * image_size * image_size * 2  # fp16 bytes
    limit = max(0, int(cache_mb * 2**20 // per_image))
    kept, caps, skipped, empty = [], [], [], 0
    for s in samples:
        good = [c.strip() for c in s.captions if c.strip()]
        empty += len(s.captions) - len(good)
        if good:
            kept.append(s.image_path)
            caps.append(good)
    flat = [c for cs in caps for c in cs]
    if not flat:
        raise DatasetError("no image with a non-empty caption to train on")
    lengths = [len(x) for x in tokenizer(flat, add_special_tokens=True, truncation=False)["input_ids"]]
    truncated = int(sum(n > max_tokens for n in lengths))
    enc = tokenizer(flat, padding="max_length", truncation=True, max_length=min(max_tokens, max(lengths)),
                    return_tensors="pt")
    ids, mask, k = [], [], 0
    for cs in caps:
        ids.append(enc["input_ids"][k:k + len(cs)])
        mask.append(enc["attention_mask"][k:k + len(cs)])
        k += len(cs)
    pairs = PairSet(kept, ids, mask, processor, {}, limit, skipped, truncated, empty)
    # One pass to find unreadable images now (not in epoch 3) and fill the cache.
    good = []
    for i, _p in enumerate(pairs.paths):
        try:
            pairs.pixels(i)
            good.append(i)
        except ImageLoadError as err:
            skipped.append((err.path, err.reason))
    if len(good) < len(pairs.paths):
        cache = {j: pairs.cache[i] for j, i in enumerate(good) if i in pairs.cache}
        pairs = PairSet([pairs.paths[i] for i in good], [ids[i] for i in good], [mask[i] for i in good],
                        processor, cache, limit, skipped, truncated, empty)
    if len(pairs) < 2:
        raise DatasetError(f"only {len(pairs)} readable image(s) with captions; contrastive training needs at "
                           "least 2")
    return pairs


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int):
    """The global batches of one epoch: a permutation of ``range(n)`` cut into batches; depends only on
    ``(seed, epoch)``. A last batch that cannot be split evenly over ``world`` processes is trimmed."""
    order = np.random.default_rng([seed, epoch, 17]).permutation(n)
    out = []
    for s in range(0, n, batch_size):
        b = order[s:s + batch_size]
        b = b[:len(b) // world * world]
        if len(b) >= max(2, world):
            out.append(b)
    return out


def caption_choice(pairs: PairSet, seed: int, epoch: int) -> np.ndarray:
    """Which caption of each image this epoch uses: (n,) indices, uniform, depends only on (seed, epoch)."""
    counts = np.array([len(x) for x in pairs.caption_ids])
    u = np.random.default_rng([seed, epoch, 23]).random(len(counts))
    return np.minimum((u * counts).astype(np.int64), counts - 1)


def make_batch(pairs: PairSet, idx: np.ndarray, choice: np.ndarray):
    """-> pixel_values (b, 3, H, W), input_ids (b, L'), attention_mask (b, L') trimmed to the longest caption."""
    import torch

    px = torch.stack([pairs.pixels(int(i)) for i in idx])  # (b, 3, H, W)
    ids = torch.stack([pairs.caption_ids[i][choice[i]] for i in idx])  # (b, L)
    mask = torch.stack([pairs.caption_mask[i][choice[i]] for i in idx])  # (b, L)
    width = int(mask.sum(1).max())
    return px, ids[:, :width], mask[:, :width]


# ------------------------------------------------------------------------------------------ validation
def validate(clip, pairs: PairSet, batch_size: int = 128):
    """Recall on a PairSet with all its captions -> RetrievalScores (uses the cached pixels)."""
    import torch
    import torch.nn.functional as F

    from vlens.retrieval.evaluate import RetrievalScores
    from vlens.retrieval.recall import ranks_from_embeddings

    was_training = clip.training
    clip.eval()
    dev = next(clip.parameters()).device
    imgs, txts, t2i = [], [], []
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            px = torch.stack([pairs.pixels(i) for i in range(s, min(s + batch_size, len(pairs)))]).to(dev)
            out = clip.get_image_features(pixel_values=px)
            imgs.append(F.normalize(getattr(out, "pooler_output", out).float(), dim=-1).cpu())
        ids = torch.cat(pairs.caption_ids)  # (M, L)
        mask = torch.cat(pairs.caption_mask)
        t2i = np.repeat(np.arange(len(pairs)), [len(x) for x in pairs.caption_ids])
        for s in range(0, len(ids), 4 * batch_size):
            out = clip.get_text_features(input_ids=ids[s:s + 4 * batch_size].to(dev),
                                         attention_mask=mask[s:s + 4 * batch_size].to(dev))
            txts.append(F.normalize(getattr(out, "pooler_output", out).float(), dim=-1).cpu())
    clip.train(was_training)
    i2t_r, t2i_r = ranks_from_embeddings(torch.cat(imgs), torch.cat(txts), t2i)
    return RetrievalScores.from_ranks(i2t_r, t2i_r)


def save_model(clip, processor, tokenizer, folder: Path) -> Path:
    """A ``save_pretrained`` folder (weights, config, tokenizer, image processor), written then renamed."""
    import shutil

    from vlens.runs import apply_umask_tree, make_temp_dir

    folder = Path(folder)
    tmp = make_temp_dir(folder.parent, folder.name)
    clip.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    apply_umask_tree(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------- training
def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) one training run into ``cfg.out``; returns its metrics (also in ``metrics.json``)."""
    import torch

    from vlens.data import load_dataset
    from vlens.models import quiet_transformers
    from vlens.retrieval.loss import clamp_logit_scale_, contrastive_loss, temperature_to_logit_scale
    from vlens.runs import RunDir, progress, read_json, seed_everything, write_json
    from vlens.training import (
        cosine_schedule,
        load_checkpoint,
        make_accelerator,
        param_groups,
        save_checkpoint,
    )

    cfg.check()
    quiet_transformers()
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if out.is_dir() and ckpt_path.exists() and not cfg.resume:
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    # gradient accumulation is done here, by hand (so make_accelerator gets grad_accum=1)
    acc = make_accelerator(1, cfg.mixed_precision)
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    seed_everything(cfg.seed)

    ds = load_dataset(cfg.data)
    train_ds = ds.split(cfg.train_split).limit(cfg.limit)
    val_ds = None
    if cfg.val_split and cfg.val_split in ds.splits:
        val_ds = ds.split(cfg.val_split)
    captions = [c for s in train_ds for c in s.captions if c.strip()]

    resuming = cfg.resume and ckpt_path.exists()
    if resuming:
        from vlens.models import load

        lm = load(str(out / "init"), "dual_encoder")
        clip, processor, tokenizer = lm.model, lm.image_processor, lm.tokenizer
    else:
        clip, processor, tokenizer = load_start(cfg, captions)
        with torch.no_grad():
            clip.logit_scale.fill_(temperature_to_logit_scale(cfg.temperature))
        if main:
            save_model(clip, processor, tokenizer, out / "init")
    clip.logit_scale.requires_grad_(cfg.learn_temperature)
    freeze_tower(clip, cfg.freeze)
    clip.train()
    max_tokens = int(clip.config.text_config.max_position_embeddings)
    image_size = int(clip.config.vision_config.image_size)
    pairs = build_pairs(train_ds.samples, processor, tokenizer, max_tokens, cfg.cache_mb, image_size)
    val_pairs = build_pairs(val_ds.samples, processor, tokenizer, max_tokens, cfg.cache_mb, image_size) \
        if val_ds is not None else None
    for name, ps in (("training", pairs), ("validation", val_pairs)):
        if ps is not None and main:
            if ps.truncated:
                log(f"note: {ps.truncated} {name} caption(s) exceed the text context of {max_tokens} tokens "
                    "and were truncated")
            if ps.empty:
                log(f"note: {ps.empty} empty {name} caption(s) ignored")
            if ps.skipped:
                from vlens.images import shown_path

                log(f"note: skipped {len(ps.skipped)} unreadable {name} image(s): "
                    + "; ".join(f"{shown_path(p)} ({r})" for p, r in ps.skipped[:5]))

    batches_per_epoch = len(epoch_batches(len(pairs), cfg.batch_size, cfg.seed, 0, world))
    if batches_per_epoch == 0:
        raise DatasetError(f"{len(pairs)} training images make no batch of >= 2 for {world} process(es)")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    lrs = cosine_schedule(cfg.lr, cfg.lr * cfg.min_lr_ratio, total_steps, min(cfg.warmup, total_steps // 2))

    model = Towers.build(clip)
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start_epoch, step, best, history = 0, 0, {"score": -1.0, "epoch": None}, []
    if resuming:
        state = load_checkpoint(ckpt_path)
        clip.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], state["history"]
        if main:
            log(f"resuming from {ckpt_path}: {start_epoch} epoch(s) done, step {step}")
    model, opt = acc.prepare(model, opt)
    run = RunDir(out, {**asdict(cfg), "world_size": world}) if main else None
    t_train, n_pairs = 0.0, 0

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after is not None and epoch >= cfg.stop_after:
            break
        batches = epoch_batches(len(pairs), cfg.batch_size, cfg.seed, epoch, world)
        choice = caption_choice(pairs, cfg.seed, epoch)
        t0, losses = time.time(), []
        bar = progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if main else True)
        for k, gidx in enumerate(bar):
            b = len(gidx) // world
            px, ids, mask = make_batch(pairs, gidx[rank * b:(rank + 1) * b], choice)
            last_of_epoch = k == len(batches) - 1
            sync = (k + 1) % cfg.grad_accum == 0 or last_of_epoch
            for g in opt.param_groups:
                g["lr"] = float(lrs[min(step, total_steps - 1)])
            with acc.no_sync(model) if not sync and world > 1 else _null():
                with acc.autocast():
                    img, txt, scale = model(px.to(acc.device), ids.to(acc.device), mask.to(acc.device))
                    loss = contrastive_loss(img.float(), txt.float(), scale.float())
                acc.backward(loss / cfg.grad_accum)
            if sync:
                opt.step()
                opt.zero_grad(set_to_none=True)
                if cfg.learn_temperature:
                    clamp_logit_scale_(acc.unwrap_model(model).clip.logit_scale, cfg.min_temperature,
                                       cfg.max_temperature)
                step += 1
            losses.append(float(loss.detach()))
            n_pairs += len(gidx)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        t_train += time.time() - t0
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                 "temperature": float(1.0 / clip.logit_scale.detach().exp()),
                 "lr": float(lrs[min(step, total_steps) - 1]),
                 "seconds": round(time.time() - t0, 2)}
        if main:
            if val_pairs is not None:
                vs = validate(clip, val_pairs)
                entry.update(val_score=vs.score, val_i2t_r1=vs.i2t_r1, val_t2i_r1=vs.t2i_r1)
            history.append(entry)
            current = entry.get("val_score", float(epoch))  # no validation split: keep the latest
            improved = current > best["score"]
            if improved:
                best = {"score": float(current), "epoch": epoch + 1}
                save_model(clip, processor, tokenizer, out / "best")
            save_checkpoint(ckpt_path, model=clip.state_dict(), optimizer=opt.optimizer.state_dict()
                            if hasattr(opt, "optimizer") else opt.state_dict(), epoch=epoch + 1, step=step,
                            best=best, history=history, config=asdict(cfg))
            val_txt = f"  val score {entry['val_score']:.1f}" + (" (best)" if improved else "") \
                if "val_score" in entry else ""
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {entry['loss']:.4f}  T {entry['temperature']:.4f}"
                f"{val_txt}  {entry['seconds']:.1f} s")
        acc.wait_for_everyone()

    metrics = {}
    if main:
        finished = bool(history) and history[-1]["epoch"] == cfg.epochs
        prev = read_json(out / "metrics.json") if (out / "metrics.json").exists() and resuming else {}
        metrics = {
            "finished": finished, "epochs_done": history[-1]["epoch"] if history else 0, "steps": step,
            "best_epoch": best["epoch"], "best_val_score": best["score"] if val_pairs is not None else None,
            "final_loss": history[-1]["loss"] if history else None,
            "final_temperature": history[-1]["temperature"] if history else None,
            "train_images": len(pairs), "train_captions": sum(len(x) for x in pairs.caption_ids),
            "skipped_images": [{"path": p, "reason": r} for p, r in pairs.skipped],
            "truncated_captions": pairs.truncated, "empty_captions": pairs.empty,
            "pairs_per_s": round(n_pairs / t_train, 1) if t_train > 0 else prev.get("pairs_per_s"),
            "train_seconds": round(t_train, 2) + (prev.get("train_seconds") or 0.0),
            "world_size": world, "history": history, "model": str(out / "best"),
        }
        run.write_metrics(metrics)
        write_json(out / "history.json", history)
    acc.wait_for_everyone()
    return metrics


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
