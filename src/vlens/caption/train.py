"""Train or fine-tune a BLIP captioner on a captioned dataset (the command behind ``vlens caption train``).

- a new model from a preset (``--preset blip-tiny``) gets a WordPiece tokenizer trained on the dataset's
  captions; an existing one (``--model SPEC``) is fine-tuned with its own tokenizer;
- every training caption is ``BOS + prompt + caption + SEP``; the loss counts only caption and SEP tokens,
  so the prompt conditions the caption without being learnt; the prompt is stored in the saved model's config
  (``caption_prompt``) and ``vlens caption`` uses it by default;
- optional (``patch_class_weight`` > 0, datasets with masks such as shapes): a linear head on the vision
  tower's patch tokens learns each patch's mask class (background or which shape) beside the caption loss.
  Dense labels teach the small tower shapes and where objects are far sooner than one caption word per image;
  the head is training-only and the saved model is a plain ``BlipForConditionalGeneration``;
- optional (``patch_place_weight`` > 0, shapes datasets): a linear head on the patch tokens learns, for each
  object patch, the position phrase of the object it belongs to (background ignored). The decoder already finds
  an object's tokens by content to name its colour; this puts the object's place in those same tokens, where
  cross-attention can read it;
- optional (``scene_weight`` > 0, shapes datasets): a linear head on the vision [CLS] token learns, for each
  colour, which shape has it and where it is (or that none has it). The decoder cross-attends to [CLS] like
  any token; a summary held in one fixed token is far easier for it to find than the object's own patches;
- AdamW (no decay on norms/biases), linear warm-up then cosine learning rate, gradient clipping;
- one epoch = every training image once with one of its captions drawn at random (seeded per epoch);
- after each epoch: greedy captions on the validation split scored with BLEU-4 and CIDEr; the best epoch by
  CIDEr is saved as a ``save_pretrained`` folder (``OUT/best``) that ``--model OUT/best`` loads;
- ``OUT/last.pt`` (atomic, RNG states included) lets ``--resume`` continue after a kill at the next epoch;
- runs the same under ``python``, ``accelerate launch`` and ``torchrun`` (validation on the main process).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vlens.errors import ConfigError


@dataclass
class TrainConfig:
    data: str
    """dataset path (Karpathy/COCO JSON or folder) with train and val splits."""
    out: str
    """run folder: config.json, history.jsonl, metrics.json, last.pt, best/ (the trained model)."""
    model: str | None = None
    """model to fine-tune (hub id, folder, builtin:NAME); leave empty and give preset for a new model."""
    preset: str | None = None
    """new model from a preset in vlens.models.presets (blip-tiny, test-blip)."""
    prompt: str | None = None
    """text put before every caption and masked out of the loss (e.g. "a picture of")."""
    epochs: int = 10
    lr: float = 1e-3
    """peak learning rate; 1e-3 suits a new tiny model, 1e-5 fine-tuning BLIP-base."""
    wd: float = 0.05
    batch_size: int = 32
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.02
    """cosine schedule ends at lr * final_lr_ratio."""
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    image_size: int = 128
    """preset only: model input side in pixels."""
    patch_size: int | None = None
    """preset only: ViT patch side in pixels (image_size / patch_size patches per side); None: the preset's."""
    patch_class_weight: float = 0.0
    """weight of the training-only patch-class loss (needs masks, e.g. shapes; 0 = off)."""
    patch_place_weight: float = 0.0
    """weight of the training-only patch-place loss: per object patch, its object's position phrase (shapes
    data; 0 = off)."""
    scene_weight: float = 0.0
    """weight of the training-only [CLS] scene loss: per colour, the shape and place (shapes data; 0 = off)."""
    vocab_size: int = 400
    """preset only: WordPiece vocabulary size cap (the shapes grammar needs ~60)."""
    max_train: int | None = None
    """use only the first N training images (quick experiments)."""
    val_limit: int = 100
    """validation images captioned after each epoch."""
    seed: int = 0
    resume: bool = False
    mixed_precision: str = "auto"

    def check(self) -> None:
        if bool(self.model) == bool(self.preset):
            raise ConfigError("give exactly one of --model SPEC (fine-tune) or --preset NAME (new model)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.wd < 0 or self.grad_accum < 1:
            raise ConfigError("need --epochs >= 1, --batch-size >= 1, --lr > 0, --wd >= 0")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError("the prompt is empty; leave --prompt out to train without one")
        if self.patch_size is not None and (self.patch_size < 1 or self.image_size % self.patch_size):
            raise ConfigError(
                f"--image-size {self.image_size} must be a multiple of --patch-size {self.patch_size}"
            )
        if self.scene_weight < 0:
            raise ConfigError("--scene-weight must be >= 0 (0 turns the scene loss off)")
        if self.patch_class_weight < 0:
            raise ConfigError("--patch-class-weight must be >= 0 (0 turns the patch-class loss off)")
        if self.patch_place_weight < 0:
            raise ConfigError("--patch-place-weight must be >= 0 (0 turns the patch-place loss off)")


class CaptionPairs:
    """Dataset of (image, caption[, mask]): item i is image i with a caption drawn by ``(seed, epoch, i)``.

    No augmentation on purpose: a flip or crop would contradict captions that say "left" or "top"."""

    def __init__(self, samples, seed: int, with_masks: bool = False, objects: dict | None = None,
                 scene: bool = True):
        self.samples, self.seed, self.epoch, self.with_masks = list(samples), seed, 0, with_masks
        self.objects, self.scene = objects, scene
        """sample id -> shapes objects (None: none passed on); scene: also make the [CLS] scene targets."""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import numpy as np

        from vlens.images import load_image

        s = self.samples[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        caps = [c for c in s.captions if c.strip()] or list(s.captions)  # an empty caption is never a target
        item = (load_image(s.image_path), caps[int(rng.integers(len(caps)))])
        extras = {}
        if self.with_masks:
            from vlens.data.shapes import load_mask

            extras["mask"] = load_mask(s.mask_path)
        if self.objects is not None:
            extras["objects"] = self.objects.get(s.id, [])
            if self.scene:
                extras["scene"] = scene_targets(extras["objects"])
        return (*item, extras) if extras else item


def scene_targets(objects: list[dict]):
    """Per colour of the shapes palette: (shape id (C,), place id (C,)), 0 = no object of that colour; shape
    1..5 in ``SHAPES`` order, place 1..9 in ``vlens.caption.probe.POSITION_PHRASES`` order."""
    import numpy as np

    from vlens.caption.probe import position_class
    from vlens.data.shapes import COLOURS, SHAPES

    shape, place = np.zeros(len(COLOURS), dtype=np.int64), np.zeros(len(COLOURS), dtype=np.int64)
    for o in objects:
        c = list(COLOURS).index(o["colour"])
        shape[c] = SHAPES.index(o["shape"]) + 1
        place[c] = position_class(o["cx"], o["cy"]) + 1
    return shape, place


IGNORE = -100
"""target id that cross-entropy skips (background patches of the patch-place loss)."""


def patch_place_targets(patch_classes, objects: list[dict], grid: int):
    """Per patch, the position phrase of the object it belongs to: (g*g,) patch classes (0 = background, row-major)
    -> (g*g,) int64 ids into ``vlens.caption.probe.POSITION_PHRASES``, ``IGNORE`` on background patches.

    Objects never overlap, so an object patch is given to the object whose centre (``cx``, ``cy`` in [0, 1]) is
    nearest the patch centre. A scene without objects gives all ``IGNORE``."""
    import torch

    from vlens.caption.probe import position_class

    out = torch.full((grid * grid,), IGNORE, dtype=torch.long)
    if not objects:
        return out
    centre = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid  # (g,)
    ys, xs = torch.meshgrid(centre, centre, indexing="ij")  # (g, g) each
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)  # (g*g, 2) patch centres as (x, y)
    obj = torch.tensor([[o["cx"], o["cy"]] for o in objects], dtype=torch.float32)  # (N, 2)
    nearest = torch.cdist(pts, obj).argmin(1)  # (g*g,)
    place = torch.tensor([position_class(o["cx"], o["cy"]) for o in objects])  # (N,)
    fg = patch_classes.reshape(-1) > 0
    out[fg] = place[nearest[fg]]
    return out


class Collate:
    """(image, caption[, extras]) list -> pixel_values (B,3,S,S), input_ids (B,T), attention_mask (B,T),
    loss_mask (B,T-1)[, targets]. With extras ({"mask": (H,W) class ids, "scene": (shape, place), "objects":
    shapes objects}), targets is a dict: "patch_classes" (B, g*g) for a g x g patch grid, "scene_shape" /
    "scene_place" (B, colours), and with ``places`` (needs mask and objects) "patch_places" (B, g*g)."""

    def __init__(self, image_processor, tokenizer, prefix: list[int], sep_id: int, pad_id: int, max_len: int,
                 grid: int | None = None, n_classes: int = 0, places: bool = False):
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.prefix, self.sep_id, self.pad_id, self.max_len = prefix, sep_id, pad_id, max_len
        self.grid, self.n_classes, self.places = grid, n_classes, places

    def __call__(self, batch):
        import torch

        images, captions = [b[0] for b in batch], [b[1] for b in batch]
        pixel_values = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        room = self.max_len - len(self.prefix) - 1
        caps = [ids[:room] for ids in self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]]
        p = len(self.prefix)
        t = p + max(len(c) for c in caps) + 1
        input_ids = torch.full((len(caps), t), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(input_ids)
        for i, c in enumerate(caps):
            row = [*self.prefix, *c, self.sep_id]
            input_ids[i, : len(row)] = torch.tensor(row)
            attn[i, : len(row)] = 1
        # target j (token j+1) is learnt only if it is a caption/SEP token: not BOS/prompt, not padding
        loss_mask = attn[:, 1:].bool().clone()  # (B, T-1)
        loss_mask[:, : p - 1] = False
        if len(batch[0]) < 3:
            return pixel_values, input_ids, attn, loss_mask
        targets = {}
        if "mask" in batch[0][2]:
            from vlens.ssl.probe import patch_labels

            targets["patch_classes"] = torch.stack([
                patch_labels(torch.from_numpy(b[2]["mask"]), (self.grid, self.grid), self.n_classes).reshape(-1)
                for b in batch
            ])  # (B, g*g), row-major like the ViT's patch tokens
            if self.places:
                targets["patch_places"] = torch.stack([
                    patch_place_targets(pc, b[2]["objects"], self.grid)
                    for pc, b in zip(targets["patch_classes"], batch)
                ])  # (B, g*g)
        if "scene" in batch[0][2]:
            targets["scene_shape"] = torch.stack([torch.from_numpy(b[2]["scene"][0]) for b in batch])  # (B, C)
            targets["scene_place"] = torch.stack([torch.from_numpy(b[2]["scene"][1]) for b in batch])  # (B, C)
        return pixel_values, input_ids, attn, loss_mask, targets


def caption_loss(logits, input_ids, loss_mask, label_smoothing: float = 0.0):
    """Next-token cross-entropy over the masked positions. logits (B,T,V), input_ids (B,T), loss_mask
    (B,T-1)."""
    import torch.nn.functional as F

    pred = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    target = input_ids[:, 1:].reshape(-1)  # (B*(T-1),)
    keep = loss_mask.reshape(-1)
    return F.cross_entropy(pred[keep].float(), target[keep], label_smoothing=label_smoothing)


def sincos_2d(side: int, dim: int):
    """Fixed 2-D sine-cosine position codes (MAE / MoCo v3): (side*side, dim), row-major like the patches."""
    import torch

    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")  # (side, side) each
    out = [torch.outer(c.reshape(-1), omega) for c in (xs, ys)]  # 2 x (side*side, dim/4)
    codes = torch.cat([f(o) for o in out for f in (torch.sin, torch.cos)], dim=1)  # (side*side, dim)
    return torch.nn.functional.pad(codes, (0, dim - codes.shape[1]))


def init_sincos_positions(model) -> None:
    """Start a new BLIP's vision position embeddings at 2-D sine-cosine codes instead of ~0.

    HF initialises them with std 1e-10 (fine when loading pretrained weights); from scratch on a few thousand
    images a ViT then takes a long time to learn where anything is (our first blip-tiny run said "in the
    bottom left corner" for every single shape). Still a learnt parameter.
    """
    import torch

    emb = model.vision_model.embeddings
    side = int(round(emb.num_patches**0.5))
    with torch.no_grad():
        emb.position_embedding[0, 0].zero_()  # the [CLS] position
        emb.position_embedding[0, 1:] = sincos_2d(side, emb.embed_dim)


def build_new(cfg: TrainConfig, captions: list[str]):
    """A fresh model from ``cfg.preset`` with a tokenizer trained on ``captions`` (and the prompt)."""
    import transformers

    from vlens.models.presets import get_preset
    from vlens.models.tokenizer import train_wordpiece

    texts = captions + ([cfg.prompt] if cfg.prompt else [])
    tok = train_wordpiece(texts, vocab_size=cfg.vocab_size)
    extra = {} if cfg.patch_size is None else {"patch_size": cfg.patch_size}
    config = get_preset(cfg.preset, vocab_size=len(tok), image_size=cfg.image_size, **extra)
    model = transformers.BlipForConditionalGeneration(config)
    init_sincos_positions(model)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    proc = transformers.BlipImageProcessorPil(size=size)
    return model, tok, proc


N_SHAPE_IDS, N_PLACE_IDS = 6, 10  # 0 = no object of that colour, then 5 shapes / 9 places


def with_aux_heads(model, patch_classes: int = 0, scene: bool = False, places: int = 0):
    """BLIP plus training-only linear heads on its vision tokens: patch classes and patch places (the object's
    position phrase) on the patch tokens, the scene (per colour: shape id, place id) on [CLS].

    forward(pixel_values, input_ids, attention_mask) -> (caption logits (B,T,V), {"patch_classes": (B,L,K),
    "patch_places": (B,L,P), "scene_shape": (B,C,6), "scene_place": (B,C,10)}). One module, so accelerate/DDP
    wraps and synchronises the heads with the model."""
    import torch

    from vlens.data.shapes import COLOURS

    d, n_col = model.config.vision_config.hidden_size, len(COLOURS)

    class BlipWithAuxHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blip = model
            self.head = torch.nn.Linear(d, patch_classes) if patch_classes else None
            self.scene_head = torch.nn.Linear(d, n_col * (N_SHAPE_IDS + N_PLACE_IDS)) if scene else None
            self.place_head = torch.nn.Linear(d, places) if places else None

        def forward(self, pixel_values, input_ids, attention_mask):
            out = self.blip(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
            aux = {}
            if self.head is not None:
                aux["patch_classes"] = self.head(out.image_embeds[:, 1:])  # (B, L, K): [CLS] dropped
            if self.place_head is not None:
                aux["patch_places"] = self.place_head(out.image_embeds[:, 1:])  # (B, L, P)
            if self.scene_head is not None:
                z = self.scene_head(out.image_embeds[:, 0]).view(-1, n_col, N_SHAPE_IDS + N_PLACE_IDS)
                aux["scene_shape"], aux["scene_place"] = z[..., :N_SHAPE_IDS], z[..., N_SHAPE_IDS:]
            return out.logits, aux

    return BlipWithAuxHeads()


def aux_losses(aux: dict, targets: dict) -> dict:
    """Cross-entropy of each auxiliary head against its targets: {"patch": ..., "place": ..., "scene": ...}; the
    place loss is over object patches only (background targets are ``IGNORE``)."""
    import torch.nn.functional as F

    out = {}
    if "patch_classes" in aux:
        logits = aux["patch_classes"]
        out["patch"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets["patch_classes"].reshape(-1))
    if "patch_places" in aux:
        logits, want = aux["patch_places"], targets["patch_places"].reshape(-1)
        out["place"] = (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), want, ignore_index=IGNORE)
                        if (want != IGNORE).any() else logits.sum() * 0.0)  # no object patch: nothing to learn
    if "scene_shape" in aux:
        shape, place = aux["scene_shape"], aux["scene_place"]
        out["scene"] = 0.5 * (
            F.cross_entropy(shape.reshape(-1, shape.shape[-1]), targets["scene_shape"].reshape(-1))
            + F.cross_entropy(place.reshape(-1, place.shape[-1]), targets["scene_place"].reshape(-1))
        )
    return out


def _save_folder(model, tokenizer, processor, folder: Path) -> None:
    """``save_pretrained`` into ``folder`` atomically (write a sibling, then swap)."""
    from vlens.runs import apply_umask_tree

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    apply_umask_tree(tmp)  # safetensors writes its file 0600
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def validate(model, tokenizer, processor, samples, prompt: str | None, batch_size: int = 32,
             objects: dict | None = None) -> dict:
    """Greedy captions on ``samples`` -> BLEU-4 and CIDEr (x100; Python tokenisation, no JVM per epoch), and with
    ``objects`` (shapes data, sample id -> objects) the attribute accuracies ``val_acc:NAME`` (percent)."""
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.metrics import score_captions
    from vlens.images import load_image
    from vlens.models import LoadedModel

    was_training = model.training
    cap = Captioner(
        LoadedModel(model, processor, tokenizer, "training", Path("."), "local", "captioner"),
        device=str(next(model.parameters()).device),
    )
    preds = cap.caption(
        [load_image(s.image_path) for s in samples], DecodeSettings(prompt=prompt, batch_size=batch_size)
    )
    model.train(was_training)
    scores = score_captions(
        {s.id: p[0].text for s, p in zip(samples, preds)},
        {s.id: list(s.captions) for s in samples},
        metrics=("BLEU-4", "CIDEr"),
        tokenizer="python",
    )
    from vlens.caption.attributes import attribute_columns

    attrs = attribute_columns([{"image_id": s.id, "caption": p[0].text} for s, p in zip(samples, preds)],
                              objects or {})
    return {"val_BLEU-4": scores["BLEU-4"], "val_CIDEr": scores["CIDEr"],
            **{f"val_{k}": v for k, v in attrs.items()}, "example": preds[0][0].text}


def train(cfg: TrainConfig, log=print) -> dict:
    """Run training; return the final metrics (also in ``OUT/metrics.json``)."""
    import torch
    import transformers

    from vlens.caption.captioner import Captioner
    from vlens.data import load_dataset
    from vlens.errors import DatasetError
    from vlens.models import LoadedModel, load, load_image_processor
    from vlens.runs import RunDir, atomic_write_text, progress, read_json, seed_everything, to_jsonable
    from vlens.training import (
        cosine_schedule,
        load_checkpoint,
        make_accelerator,
        param_groups,
        save_checkpoint,
    )

    cfg.check()
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise ConfigError(
            f"{out} already holds a training run; use --resume to continue it or pick another --out"
        )
    ds = load_dataset(cfg.data)
    train_set = ds.split("train").limit(cfg.max_train)
    val_set = ds.split("val").limit(cfg.val_limit)
    for name, part in (("training", train_set), ("validation", val_set)):
        if part.uncaptioned:  # nothing to learn from, nothing to score against: left out, and said
            bare = {id(s) for s in part.uncaptioned}
            part.samples = [s for s in part.samples if id(s) not in bare]
            log(f"left out {len(bare)} {name} image(s) without a caption (`vlens data inspect {cfg.data}` lists "
                "them)")
    if not train_set.samples:
        raise DatasetError(f"{cfg.data}: no training image has a caption")
    acc = make_accelerator(cfg.grad_accum, cfg.mixed_precision)
    seed_everything(cfg.seed)
    run = RunDir(out, cfg) if acc.is_main_process else None

    assets = out / "assets"  # config + tokenizer + processor: enough to rebuild the model for --resume
    resume = cfg.resume and ckpt_path.exists()
    if cfg.resume and not resume:
        log(f"--resume: no checkpoint at {ckpt_path} yet, starting from the beginning")
    if resume:
        config = transformers.BlipConfig.from_pretrained(assets)
        model = transformers.BlipForConditionalGeneration(config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(assets)
        processor = load_image_processor(assets)
    elif cfg.preset:
        model, tokenizer, processor = build_new(cfg, [c for s in train_set for c in s.captions])
    else:
        loaded = load(cfg.model, "captioner")
        model, tokenizer, processor = loaded.model, loaded.tokenizer, loaded.image_processor
    model.config.caption_prompt = cfg.prompt  # what the model was last trained behind; None = no prompt
    use_masks, use_scene = cfg.patch_class_weight > 0, cfg.scene_weight > 0
    use_place = cfg.patch_place_weight > 0
    for on, name in ((use_masks, "--patch-class-weight"), (use_place, "--patch-place-weight")):
        if on and not all(s.mask_path for s in train_set):
            raise ConfigError(f"{name} needs a dataset with per-pixel masks (e.g. `vlens data make-shapes`)")
    from vlens.data.shapes import scene_objects

    objects = scene_objects(cfg.data)  # {} unless shapes data
    if use_scene or use_place:
        if not objects:
            name = "--scene-weight" if use_scene else "--patch-place-weight"
            raise ConfigError(f"{name} needs a shapes dataset (its dataset.json lists each scene's objects)")
    if not resume and acc.is_main_process:
        model.config.save_pretrained(assets)
        tokenizer.save_pretrained(assets)
        processor.save_pretrained(assets)
    model.train()

    probe = Captioner(LoadedModel(model, processor, tokenizer, "training", assets, "local", "captioner"))
    prefix = probe.prefix_ids(cfg.prompt)
    vc = model.config.vision_config
    grid = vc.image_size // vc.patch_size
    from vlens.caption.probe import POSITION_PHRASES
    from vlens.data.shapes import CLASSES

    collate = Collate(processor, tokenizer, prefix, probe.sep_id, probe.pad_id, probe.context,
                      grid=grid if use_masks or use_place else None, n_classes=len(CLASSES), places=use_place)
    pairs = CaptionPairs(train_set.samples, cfg.seed, with_masks=use_masks or use_place,
                         objects=objects if use_scene or use_place else None, scene=use_scene)
    use_aux = use_masks or use_scene or use_place
    net = with_aux_heads(
        model, len(CLASSES) if use_masks else 0, use_scene, len(POSITION_PHRASES) if use_place else 0
    ) if use_aux else model
    weights = {"patch": cfg.patch_class_weight, "scene": cfg.scene_weight, "place": cfg.patch_place_weight}
    steps_per_epoch = math.ceil(len(pairs) / (cfg.batch_size * acc.num_processes * cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs
    lrs = cosine_schedule(
        cfg.lr,
        cfg.lr * cfg.final_lr_ratio,
        total,
        int(cfg.warmup_epochs * steps_per_epoch),
        warmup_start=cfg.lr * 0.01,
    )
    optimizer = torch.optim.AdamW(param_groups(net, cfg.wd), lr=cfg.lr, betas=(0.9, 0.98))

    start_epoch, step, best, history = 0, 0, -1.0, []
    if resume:
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        if use_aux:
            net.load_state_dict({**{f"blip.{k}": v for k, v in state["model"].items()}, **state["aux_heads"]})
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best, history = state["epoch"] + 1, state["step"], state["best"], state["history"]
        log(f"resuming from {ckpt_path}: epoch {start_epoch + 1}/{cfg.epochs}, step {step}")
    net, optimizer = acc.prepare(net, optimizer)
    (log if acc.is_main_process else (lambda m: None))(
        f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {len(pairs)} "
        "images, "
        f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs ({acc.num_processes} process(es), {acc.device})"
    )

    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        pairs.epoch = epoch
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(pairs, order.tolist()),
            batch_size=cfg.batch_size,
            collate_fn=collate,
            shuffle=False,
        )
        loader = acc.prepare(loader)
        net.train()
        losses, aux_hist = [], {"patch": [], "place": [], "scene": []}
        for batch in progress(loader, desc=f"epoch {epoch + 1}"):
            pixel_values, input_ids, attn, loss_mask = batch[:4]
            with acc.accumulate(net):
                for g in optimizer.param_groups:
                    g["lr"] = float(lrs[min(step, total - 1)])
                input_ids = input_ids.clone()
                input_ids[:, 0] = probe.bos_id
                if use_aux:
                    logits, aux = net(pixel_values, input_ids, attn)  # (B,T,V), head outputs
                    extra = aux_losses(aux, batch[4])
                    for k, v in extra.items():
                        aux_hist[k].append(float(v.detach()))
                else:
                    logits, extra = net(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attn).logits, {}
                loss = caption_loss(logits, input_ids, loss_mask, cfg.label_smoothing)
                total_loss = loss + sum(weights[k] * v for k, v in extra.items())
                acc.backward(total_loss)
                if acc.sync_gradients and cfg.grad_clip:
                    acc.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                step += 1
            losses.append(float(loss.detach()))
        acc.wait_for_everyone()
        entry = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": sum(losses) / max(len(losses), 1),
            "lr": float(lrs[min(step, total) - 1]),
            "elapsed_s": round(time.time() - t0, 1),
        }
        for k, v in aux_hist.items():
            if v:
                entry[f"{k}_loss"] = sum(v) / len(v)
        if acc.is_main_process:
            raw = acc.unwrap_model(net)
            raw = raw.blip if use_aux else raw
            entry.update(validate(raw, tokenizer, processor, val_set.samples, cfg.prompt, objects=objects))
            if entry["val_CIDEr"] > best:
                best = entry["val_CIDEr"]
                entry["best"] = True
                _save_folder(raw, tokenizer, processor, out / "best")
            history.append(entry)
            atomic_write_text(
                out / "history.jsonl",
                "".join(__import__("json").dumps(to_jsonable(h)) + "\n" for h in history),
            )
            save_checkpoint(
                ckpt_path,
                model=raw.state_dict(),
                aux_heads={k: v for k, v in acc.unwrap_model(net).state_dict().items() if not k.startswith("blip.")}
                if use_aux
                else None,
                optimizer=optimizer.state_dict(),
                epoch=epoch,
                step=step,
                best=best,
                history=history,
                config=asdict(cfg),
            )
            log(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['train_loss']:.3f}"
                + (f" (patch classes {entry['patch_loss']:.3f})" if "patch_loss" in entry else "")
                + (f" (patch places {entry['place_loss']:.3f})" if "place_loss" in entry else "")
                + (f" (scene {entry['scene_loss']:.3f})" if "scene_loss" in entry else "")
                + f"  val BLEU-4 "
                f"{entry['val_BLEU-4']:.1f}  CIDEr {entry['val_CIDEr']:.1f}"
                + (f"  shape {entry['val_acc:shape_single']:.0f}%" if "val_acc:shape_single" in entry else "")
                + (f"  place {entry['val_acc:position']:.0f}%" if "val_acc:position" in entry else "")
                + f"{'  (best)' if entry.get('best') else ''}"
                f'  [{entry["elapsed_s"]:.0f} s]  e.g. "{entry["example"]}"'
            )
        acc.wait_for_everyone()

    metrics = {}
    if acc.is_main_process:
        best_entry = max(history, key=lambda h: h["val_CIDEr"]) if history else {}
        prev = read_json(out / "metrics.json") if (out / "metrics.json").exists() else {}
        metrics = {
            "best_epoch": best_entry.get("epoch"),
            "val_BLEU-4": best_entry.get("val_BLEU-4"),
            "val_CIDEr": best_entry.get("val_CIDEr"),
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "epochs": cfg.epochs,
            "train_images": len(pairs),
            "train_time_s": round(prev.get("train_time_s", 0) + time.time() - t0, 1),
            "model_dir": str(out / "best"),
        }
        run.write_metrics(metrics)
    return metrics
