"""What the checkpoint converters share: the layout error, a key-set check that names what was expected, the
split of a fused query-key-value projection. Pure functions on state dicts (name -> tensor); nothing is loaded."""

from __future__ import annotations

import math

from vlens.errors import ModelLoadError


class LayoutError(ModelLoadError):
    """A state dict is not in the layout a converter expects (the message names the layout and the difference)."""


def _few(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_keys(sd: dict, expected: dict[str, tuple | None], layout: str, optional: tuple[str, ...] = ()) -> None:
    """``sd`` must have exactly the keys of ``expected`` (plus any starting with one of ``optional``) with those
    shapes (None = any shape). One-line :class:`LayoutError` naming ``layout`` and the first differences."""
    have = set(sd)
    missing = set(expected) - have
    extra = {k for k in have - set(expected) if not k.startswith(optional)}
    if missing or extra:
        parts = ([f"missing {_few(missing)}"] if missing else []) + ([f"unexpected {_few(extra)}"] if extra else [])
        raise LayoutError(f"not a {layout} state dict: {'; '.join(parts)}")
    for k, shape in expected.items():
        if shape is not None and tuple(sd[k].shape) != tuple(shape):
            raise LayoutError(f"not a {layout} state dict: {k} has shape {tuple(sd[k].shape)}, expected "
                              f"{tuple(shape)}")


def count_blocks(sd: dict, prefix: str) -> int:
    """How many numbered blocks ``prefix{i}.`` the state dict has (0, 1, ... without gaps)."""
    heads = {k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)}
    ids = {int(h) for h in heads if h.isdigit()}
    if ids != set(range(len(ids))):
        raise LayoutError(f"blocks {prefix}N are not numbered 0..{len(ids) - 1} without gaps")
    return len(ids)


def grid_side(n_patches: int, what: str) -> int:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise LayoutError(f"{what}: {n_patches} patch positions is not a square grid")
    return side


def split_qkv(weight, bias, dim: int) -> list:
    """A fused (3*dim, dim) projection and its (3*dim,) bias -> [(Wq, bq), (Wk, bk), (Wv, bv)] (rows in q, k, v
    order, as timm/DINO's ``qkv`` and PyTorch's ``in_proj`` both store them)."""
    return [(weight[i * dim:(i + 1) * dim], None if bias is None else bias[i * dim:(i + 1) * dim]) for i in range(3)]


TIMM_QKV = ("attn.qkv.weight", "attn.qkv.bias")  # timm / DINO / DINOv2 blocks' fused projection
HF_VIT_QKV = tuple(f"attention.attention.{n}" for n in ("query", "key", "value"))  # HF ViT / DINOv2 names


def map_block(sd: dict, out: dict, src: str, dst: str, qkv: tuple[str, str], qkv_names, renames, width: int) -> None:
    """One transformer block into Hugging Face's names: the fused projection ``sd[src + qkv[0]]`` (weight) and
    ``sd[src + qkv[1]]`` (bias) split into ``dst + name`` for each of the three ``qkv_names``, then every
    ``(from, to)`` of ``renames`` copied as ``src + from`` -> ``dst + to`` (weight and bias)."""
    for name, (w, b) in zip(qkv_names, split_qkv(sd[src + qkv[0]], sd[src + qkv[1]], width), strict=True):
        out[dst + name + ".weight"] = w
        out[dst + name + ".bias"] = b
    for a, c in renames:
        out[dst + c + ".weight"] = sd[src + a + ".weight"]
        out[dst + c + ".bias"] = sd[src + a + ".bias"]


def heads_for(width: int, num_heads: int | None) -> int:
    """Attention heads: not stored in a state dict, so the caller establishes them
    (:mod:`vlens.models.checkpoint_settings`); never guessed from the width."""
    if not num_heads:
        raise LayoutError(f"the attention heads of a {width}-wide tower are not known; put the config its code wrote "
                          "beside the checkpoint (open_clip_config.json, timm's config.json)")
    if width % num_heads:
        raise LayoutError(f"width {width} does not split into {num_heads} attention heads")
    return num_heads
