"""The towers vlens exports, as small torch modules with one tensor out, and their export descriptions.

Each ``*_engine`` function takes the loaded Hugging Face model and returns what runs the tower under the chosen
engine: an :class:`~vlens.engines.runtime.OrtTower` (ONNX Runtime) or None (run torch as before). The modules
compute exactly what the torch paths of vlens compute, so a verified export gives the same outputs:

- :class:`ClipImage`: ``pixel_values (B, 3, S, S) -> (B, d)`` unit vectors (``get_image_features`` normalised);
- :class:`ClipText`: ``input_ids, attention_mask (B, L) -> (B, d)`` unit vectors (batch and length dynamic);
- :class:`VitTokens`: ``pixel_values (B, 3, H, W) -> (B, h*w, d)`` patch tokens of one block with the final
  layer norm, prefix tokens dropped (the ``token`` facet of :mod:`vlens.match.features`), one export per input
  size (the position embeddings are interpolated for the size at export time);
- :class:`BlipVision`: ``pixel_values (B, 3, S, S) -> (B, L, D)`` BLIP's vision encoder (what ``generate`` reads).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vlens.engines.export import prepare
from vlens.engines.store import ExportId, weights_fingerprint


class ClipImage(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):  # (B, 3, S, S) -> (B, d)
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)


class ClipText(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids, attention_mask):  # (B, L) each -> (B, d)
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)


class VitTokens(torch.nn.Module):
    def __init__(self, model, block: int, prefix: int, interpolate: bool):
        super().__init__()
        self.model, self.block, self.prefix, self.interpolate = model, block, prefix, interpolate

    def forward(self, pixel_values):  # (B, 3, H, W) -> (B, h*w, d)
        kw = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **kw)
        tokens = out.hidden_states[self.block + 1]
        norm = getattr(self.model, "layernorm", None)
        if norm is not None:
            tokens = norm(tokens)
        return tokens[:, self.prefix:]


class BlipVision(torch.nn.Module):
    def __init__(self, vision_model):
        super().__init__()
        self.vision = vision_model

    def forward(self, pixel_values):  # (B, 3, S, S) -> (B, L, D)
        return self.vision(pixel_values=pixel_values).last_hidden_state


def _exportable(model, folder) -> bool:
    """Only fp32 CPU models loaded from files (a fingerprint) are exported; others run torch."""
    p = next(model.parameters())
    return folder is not None and Path(folder).is_dir() and p.dtype == torch.float32 and p.device.type == "cpu"


def _pixels(b: int, s_h: int, s_w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, s_h, s_w, generator=g)


def clip_image_engine(clip, folder, spec: str, engine: str, quantize: str = "none"):
    if not _exportable(clip, folder):
        return None
    s = int(clip.config.vision_config.image_size)
    eid = ExportId(spec, weights_fingerprint(folder), "clip-image", f"b,3,{s},{s}", quantize)
    return prepare(eid, ClipImage(clip).eval(), {"pixel_values": _pixels(1, s, s)},
                   {"pixel_values": _pixels(3, s, s, 1)}, {"pixel_values": {0: "batch"}, "output": {0: "batch"}},
                   engine, what=f"the image tower of {spec}")


def clip_text_engine(clip, folder, spec: str, engine: str, quantize: str = "none"):
    if not _exportable(clip, folder):
        return None
    cfg = clip.config.text_config
    n = int(cfg.max_position_embeddings)
    eos = int(cfg.eos_token_id if cfg.eos_token_id is not None else 2)
    g = torch.Generator().manual_seed(0)
    low = 5 if cfg.vocab_size > 10 else 0

    def ids(b, length, lengths):
        x = torch.randint(low, int(cfg.vocab_size), (b, length), generator=g)
        x = torch.where(x == eos, torch.full_like(x, low), x)
        mask = torch.zeros(b, length, dtype=torch.long)
        for i, n_i in enumerate(lengths):
            x[i, n_i - 1] = eos
            x[i, n_i:] = int(cfg.pad_token_id or 0)
            mask[i, :n_i] = 1
        return x, mask

    e_ids, e_mask = ids(1, min(7, n), [min(7, n)])
    p_len = min(12, n)
    p_ids, p_mask = ids(3, p_len, [p_len, max(2, p_len // 2), 2])
    eid = ExportId(spec, weights_fingerprint(folder), "clip-text", "b,s", quantize)
    return prepare(eid, ClipText(clip).eval(), {"input_ids": e_ids, "attention_mask": e_mask},
                   {"input_ids": p_ids, "attention_mask": p_mask},
                   {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                    "output": {0: "batch"}}, engine, what=f"the text tower of {spec}")


def vit_tokens_engine(model, folder, spec: str, engine: str, block: int, prefix: int, size: tuple[int, int],
                      stride: int | None = None, quantize: str = "none"):
    """``size``: the model input (H, W); one export per size, block and patch stride. Call it where the torch
    forward would run (inside :func:`vlens.match.strided.strided_patches` for a stride): the export traces that."""
    if not _exportable(model, folder):
        return None
    h, w = size
    interpolate = model.config.model_type in ("vit", "deit", "dino")
    # what changes the traced graph beyond the weights: the position-embedding convention and the patch stride
    convention = getattr(model.config, "pos_embed_interpolation", None) or "-"
    stride = stride or model.config.patch_size
    family = f"b,3,{h},{w}:block{block}:pos-{convention}:stride{stride}"
    eid = ExportId(spec, weights_fingerprint(folder), "vit-tokens", family, quantize)
    return prepare(eid, VitTokens(model, block, prefix, interpolate).eval(), {"pixel_values": _pixels(1, h, w)},
                   {"pixel_values": _pixels(2, h, w, 1)}, {"pixel_values": {0: "batch"}, "output": {0: "batch"}},
                   engine, what=f"{spec} (block {block + 1}, {w}x{h} input, stride {stride})")


def blip_vision_engine(blip, folder, spec: str, engine: str, quantize: str = "none"):
    if not _exportable(blip, folder):
        return None
    s = int(blip.config.vision_config.image_size)
    eid = ExportId(spec, weights_fingerprint(folder), "blip-vision", f"b,3,{s},{s}", quantize)
    return prepare(eid, BlipVision(blip.vision_model).eval(), {"pixel_values": _pixels(1, s, s)},
                   {"pixel_values": _pixels(2, s, s, 1)}, {"pixel_values": {0: "batch"}, "output": {0: "batch"}},
                   engine, what=f"the vision encoder of {spec}")
