"""What a checkpoint's tensors do not say, established from what the user holds beside them: the activation
(GELU or QuickGELU), the attention head count, the position-embedding interpolation and the text cleaning.

Sources, first that knows wins, each decision naming its source:

1. ``open_clip_config.json`` beside the file (open_clip's hub repos: ``model_cfg.quick_gelu``,
   ``vision_cfg.width/head_width``, ``text_cfg.width/heads``);
2. timm's ``config.json`` beside the file (``architecture``, ``model_args``, ``pretrained_cfg``): a timm model;
3. inside the file: OpenAI's TorchScript archive (QuickGELU) or a DINO training checkpoint's ``args.arch``;
4. the known-model table below: open_clip's pretrained table (QuickGELU tags), the Hugging Face cache repo the file
   sits in (``models--timm--vit_base_patch32_clip_224.openai/snapshots/<rev>/...``), the widths of the released
   ViT families and their head counts;
5. open_clip's default (GELU) for the activation; nothing for the heads: a width no source explains is refused in
   one line (a wrong head count converts silently to a different model).

Pure reading of small JSON files and names: no weights are touched here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vlens.models.convert_common import LayoutError

OPEN_CLIP_CONFIG = "open_clip_config.json"
TIMM_CONFIG = "config.json"

# open_clip's pretrained table: these tags (and every ``-quickgelu`` model name) were trained with QuickGELU; the
# weights files (``open_clip_pytorch_model.bin``, ``open_clip_model.safetensors``) do not say so.
QUICK_GELU_TAGS = ("openai", "laion400m", "metaclip", "quickgelu")
# Attention heads of the released ViTs, by width (heads are not stored in a state dict).
VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1536: 24}  # ViT-T/S/B/L/g: DINO, DINOv2, timm (64-wide heads)
TIMM_ARCH_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16, "vit_giant": 24}
OPEN_CLIP_VISION_HEADS = {768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}  # B, L, H (80-wide), g (88), bigG (104)
OPEN_CLIP_TEXT_HEADS = {512: 8, 768: 12, 1024: 16, 1280: 20}
OPEN_CLIP_CLEANING = "open_clip"  # ftfy + HTML unescape + whitespace (vlens.models.text_cleaning)


@dataclass
class Settings:
    """What :func:`establish` decided: converter keyword arguments, the convention metadata, and for each decision
    the source that made it (``sources``: what -> where from)."""

    kwargs: dict = field(default_factory=dict)
    origin: str = ""  # which code made the file: torch.hub DINO / DINOv2, timm, open_clip, OpenAI
    interpolation: str | None = None  # vlens.models.pos_embed convention; None: fixed input size
    text_cleaning: str | None = None
    sources: dict = field(default_factory=dict)

    def line(self, path) -> str:
        """One log line: the file, its origin, and each setting with its source."""
        parts = [f"{k} {v}" for k, v in self.sources.items()]
        return f"{path}: {self.origin} checkpoint; " + "; ".join(parts)


def hf_cache_repo(path: Path | None) -> str | None:
    """``ORG/NAME`` when ``path`` lies in a Hugging Face cache (``models--ORG--NAME/snapshots/<rev>/...``)."""
    for part in Path(path).parts if path is not None else ():
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
    return None


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{path} beside the checkpoint is unreadable ({exc.__class__.__name__}: {exc}); fix or "
                          "remove it") from None
    return data if isinstance(data, dict) else None


def _timm_config(path: Path | None) -> dict | None:
    cfg = _read_json(path.parent / TIMM_CONFIG if path is not None else None)
    return cfg if cfg and "architecture" in cfg else None  # transformers' config.json has model_type instead


def _heads_from_table(width: int, table: dict, what: str, sources: dict, label: str) -> int:
    if width in table:
        sources[label] = f"{table[width]} (known-model table, width {width})"
        return table[width]
    raise LayoutError(f"cannot establish the attention heads of this {width}-wide {what}: no released model of that "
                      f"width is known (widths {', '.join(map(str, sorted(table)))}); put the config its code wrote "
                      f"beside the file ({OPEN_CLIP_CONFIG} for open_clip, timm's {TIMM_CONFIG})")


def _check_heads(width: int, heads: int, what: str) -> int:
    if heads <= 0 or width % heads:
        raise LayoutError(f"{what}: width {width} does not split into {heads} attention heads")
    return heads


def _vit_settings(path: Path, family: str, sd: dict, hints: dict) -> Settings:
    s = Settings()
    width = sd["cls_token"].shape[-1]
    timm = _timm_config(path)
    repo = hf_cache_repo(path) or ""
    timm_layout = family == "dinov2" and "mask_token" not in sd  # timm's DINOv2 files drop the mask token
    if timm is not None or repo.startswith("timm/") or timm_layout:
        s.origin = "timm"
        s.interpolation = "exact-antialias"
        why = (f"timm {TIMM_CONFIG} beside the file" if timm is not None else
               f"timm repo {repo}" if repo.startswith("timm/") else "timm's DINOv2 layout (no mask_token)")
        s.sources["interpolation"] = f"exact-antialias (timm's resample_abs_pos_embed; {why})"
    else:
        s.origin = "torch.hub DINOv2" if family == "dinov2" else "torch.hub DINO"
        s.interpolation = "offset"
        s.sources["interpolation"] = ("offset (the original DINO/DINOv2 code; no timm config.json beside the file, "
                                      "so not taken for a timm file)")
    heads = None
    if timm is not None:
        args = timm.get("model_args") or {}
        arch = str(timm.get("architecture", ""))
        if isinstance(args, dict) and args.get("num_heads"):
            heads = int(args["num_heads"])
            s.sources["heads"] = f"{heads} ({TIMM_CONFIG} model_args)"
        else:
            prefix = next((p for p in TIMM_ARCH_HEADS if arch.startswith(p + "_") or arch == p), None)
            if prefix is not None:
                heads = TIMM_ARCH_HEADS[prefix]
                s.sources["heads"] = f"{heads} ({TIMM_CONFIG} architecture {arch})"
    if heads is None and hints.get("args_arch"):
        arch = str(hints["args_arch"])
        if arch in TIMM_ARCH_HEADS:
            heads = TIMM_ARCH_HEADS[arch]
            s.sources["heads"] = f"{heads} (training checkpoint args.arch {arch})"
    if heads is None:
        heads = _heads_from_table(width, VIT_HEADS, "ViT", s.sources, "heads")
    s.kwargs["num_heads"] = _check_heads(width, heads, s.origin)
    return s


def _quick_gelu_from_name(path: Path) -> str | None:
    """The open_clip tag that marks QuickGELU in the file's name or its Hugging Face cache repo, if any."""
    if path is None:
        return None
    for where in (hf_cache_repo(path) or "", path.name):
        low = where.lower()
        tag = next((t for t in QUICK_GELU_TAGS if t in low), None)
        if tag:
            return f"'{tag}' in {'repo ' + where if where != path.name else 'the file name'}"
    return None


def _open_clip_settings(path: Path, sd: dict, hints: dict) -> Settings:
    s = Settings(origin="open_clip", interpolation=None, text_cleaning=OPEN_CLIP_CLEANING)
    vw, tw = sd["visual.class_embedding"].shape[0], sd["token_embedding.weight"].shape[1]
    cfg = _read_json(path.parent / OPEN_CLIP_CONFIG if path is not None else None)
    model_cfg = (cfg or {}).get("model_cfg", cfg) if cfg else None
    vision_heads = text_heads = quick = None
    if model_cfg:
        vcfg, tcfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
        for what, have, said in (("vision width", vw, vcfg.get("width")), ("text width", tw, tcfg.get("width"))):
            if said is not None and int(said) != have:
                raise LayoutError(f"{OPEN_CLIP_CONFIG} beside {path} says {what} {said} but the weights have {have}: "
                                  "the config belongs to another model")
        if "quick_gelu" in model_cfg:
            quick = bool(model_cfg["quick_gelu"])
            s.sources["activation"] = f"{'QuickGELU' if quick else 'GELU'} ({OPEN_CLIP_CONFIG} model_cfg.quick_gelu)"
        if vcfg.get("head_width") or vcfg.get("width"):
            vision_heads = vw // int(vcfg.get("head_width") or 64)  # open_clip's default head width is 64
            s.sources["vision heads"] = f"{vision_heads} ({OPEN_CLIP_CONFIG} vision_cfg.head_width " \
                                        f"{vcfg.get('head_width') or '64 (default)'})"
        if tcfg.get("heads") or tcfg.get("width"):
            text_heads = int(tcfg.get("heads") or 8)  # open_clip's default text heads
            s.sources["text heads"] = f"{text_heads} ({OPEN_CLIP_CONFIG} text_cfg.heads)"
        s.sources.setdefault("config", f"{OPEN_CLIP_CONFIG} beside the file")
    if quick is None and hints.get("jit"):
        quick = True
        s.origin = "OpenAI"
        s.sources["activation"] = "QuickGELU (OpenAI's TorchScript file)"
    if quick is None:
        tag = _quick_gelu_from_name(path)
        quick = tag is not None
        s.sources["activation"] = (f"QuickGELU (known-model table: {tag})" if quick else
                                   "GELU (open_clip's default; no open_clip_config.json beside the file and no "
                                   "QuickGELU tag in its name)")
    if vision_heads is None:
        vision_heads = _heads_from_table(vw, OPEN_CLIP_VISION_HEADS, "open_clip vision tower", s.sources,
                                         "vision heads")
    if text_heads is None:
        text_heads = _heads_from_table(tw, OPEN_CLIP_TEXT_HEADS, "open_clip text tower", s.sources, "text heads")
    s.kwargs.update(quick_gelu=quick, vision_heads=_check_heads(vw, vision_heads, "open_clip vision tower"),
                    text_heads=_check_heads(tw, text_heads, "open_clip text tower"))
    s.sources["interpolation"] = "none (open_clip runs at its trained size)"
    s.sources["text cleaning"] = "open_clip's (ftfy, HTML unescape, whitespace)"
    return s


def establish(path: Path | None, family: str, sd: dict, hints: dict) -> Settings:
    """The settings of checkpoint ``path`` (the name the user gave: its folder is where configs are looked for;
    None: a bare state dict, only the tables decide) of ``family`` with state dict ``sd``; ``hints`` from reading
    the file (``jit``, ``args_arch``)."""
    path = Path(path) if path is not None else None
    if family == "open_clip":
        return _open_clip_settings(path, sd, hints)
    return _vit_settings(path, family, sd, hints)
