"""DINOv2 torch.hub checkpoints (``dinov2_vits14_pretrain.pth``, ``..._reg4_pretrain.pth``) -> Hugging Face
``Dinov2Model`` / ``Dinov2WithRegistersModel`` (what ``facebook/dinov2-small`` is).

Layout expected (learnt from facebookresearch/dinov2 ``models/vision_transformer.py``, ``layers/block.py``,
``layers/layer_scale.py``; the hub backbones are built with ``block_chunks=0``, so blocks are numbered straight).
D = width, N = patches, P = patch, H = MLP width, R = register tokens, L blocks::

    cls_token                      (1, 1, D)
    pos_embed                      (1, 1 + N, D)      N a square grid (1369 = 37 x 37 for ViT-S/14 at 518 px)
    mask_token                     (1, D)
    register_tokens                (1, R, D)          only in the *_reg4 checkpoints
    patch_embed.proj.weight        (D, 3, P, P)       + .bias (D,)
    blocks.{i}.norm1.weight/bias   (D,)               LayerNorm eps 1e-6
    blocks.{i}.attn.qkv.weight     (3D, D)            + .bias: rows q, k, v; heads D / 64
    blocks.{i}.attn.proj.weight    (D, D)             + .bias
    blocks.{i}.ls1.gamma           (D,)               LayerScale after attention
    blocks.{i}.norm2.weight/bias   (D,)
    blocks.{i}.mlp.fc1.weight      (H, D)             + .bias; GELU (the SwiGLU of ViT-g, mlp.w12/w3, is refused)
    blocks.{i}.mlp.fc2.weight      (D, H)             + .bias
    blocks.{i}.ls2.gamma           (D,)               LayerScale after the MLP
    norm.weight/bias               (D,)

timm's DINOv2 files (``vit_small_patch14_dinov2``, ``vit_small_patch14_reg4_dinov2``: ``model.safetensors`` or a
``.pth``) have the same blocks but no ``mask_token`` (inference never uses it; written as zeros), the registers as
``reg_token`` (1, R, D), and with registers no class position: ``pos_embed`` (1, N, D) (timm's ``no_embed_class``;
the class token then gets no position embedding, written as a zero row).

dinov2_vits14_pretrain.pth: D 384, L 12, P 14, N 1369, H 1536 (6 heads). The HF keys written are the hub format of
``facebook/dinov2-small`` (``embeddings.*``, ``encoder.layer.{i}.attention.attention.query``, ``layer_scale1.lambda1``).
"""

from __future__ import annotations

from vlens.models.convert_common import (
    HF_VIT_QKV,
    TIMM_QKV,
    LayoutError,
    check_keys,
    count_blocks,
    grid_side,
    heads_for,
    map_block,
)

LAYOUT = ("DINOv2 torch.hub or timm (cls_token, mask_token or none, register_tokens or reg_token, pos_embed of 1 + "
          "a square grid or a square grid, blocks.N.attn.qkv, blocks.N.ls1.gamma, norm)")


def matches(sd: dict) -> bool:
    return "cls_token" in sd and ("mask_token" in sd or "blocks.0.ls1.gamma" in sd)


def expected_keys(width: int, depth: int, patch: int, n_patches: int, mlp: int, registers: int,
                  timm: bool = False, cls_pos: bool = True) -> dict:
    """Every key with its shape: torch.hub's layout, or timm's (``timm``: no mask token, ``reg_token``; ``cls_pos``
    False: ``pos_embed`` without the class position)."""
    d = width
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, int(cls_pos) + n_patches, d),
            "patch_embed.proj.weight": (d, 3, patch, patch), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,)}
    if not timm:
        keys["mask_token"] = (1, d)
    if registers:
        keys["reg_token" if timm else "register_tokens"] = (1, registers, d)
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                     b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                     b + "ls1.gamma": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                     b + "mlp.fc1.weight": (mlp, d), b + "mlp.fc1.bias": (mlp,), b + "mlp.fc2.weight": (d, mlp),
                     b + "mlp.fc2.bias": (d,), b + "ls2.gamma": (d,)})
    return keys


def _grid(n_pos: int) -> tuple[int, bool]:
    """(patches, has a class position) from pos_embed's length: 1 + a square (torch.hub, timm without registers)
    or a square (timm with registers)."""
    import math

    if math.isqrt(n_pos - 1) ** 2 == n_pos - 1:
        return n_pos - 1, True
    if math.isqrt(n_pos) ** 2 == n_pos:
        return n_pos, False
    raise LayoutError(f"pos_embed has {n_pos} positions, neither 1 + a square grid (DINOv2 torch.hub, e.g. 1370 = 1 + "
                      f"37 x 37) nor a square grid (timm's DINOv2 with registers, e.g. 1369); expected: {LAYOUT}")


def dims(sd: dict) -> dict:
    if "blocks.0.mlp.w12.weight" in sd:
        raise LayoutError("a DINOv2 checkpoint with a SwiGLU MLP (ViT-g/14: blocks.N.mlp.w12) is not supported; "
                          "use ViT-S/B/L/14 (blocks.N.mlp.fc1)")
    if "blocks.0.0.norm1.weight" in sd:
        raise LayoutError("DINOv2 blocks saved in chunks (blocks.C.N.*, block_chunks > 0); expected the torch.hub "
                          "layout blocks.N.* (block_chunks=0)")
    width = sd["cls_token"].shape[-1]
    n_patches, cls_pos = _grid(sd["pos_embed"].shape[1])
    timm = "mask_token" not in sd
    regs = sd.get("reg_token" if timm else "register_tokens")
    return {"width": width, "depth": count_blocks(sd, "blocks."), "patch": sd["patch_embed.proj.weight"].shape[-1],
            "n_patches": n_patches, "mlp": sd["blocks.0.mlp.fc1.weight"].shape[0],
            "registers": regs.shape[1] if regs is not None else 0, "timm": timm, "cls_pos": cls_pos}


def convert(sd: dict, num_heads: int | None = None) -> tuple[dict, dict]:
    """(HF config kwargs, HF state dict). Raises :class:`LayoutError` for anything but the layout above."""
    dm = dims(sd)
    check_keys(sd, expected_keys(**dm), LAYOUT)
    d, side = dm["width"], grid_side(dm["n_patches"], "pos_embed")
    if dm["mlp"] % d:
        raise LayoutError(f"{LAYOUT}: MLP width {dm['mlp']} is not a multiple of the width {d}")
    config = {"model_type": "dinov2_with_registers" if dm["registers"] else "dinov2", "hidden_size": d,
              "num_hidden_layers": dm["depth"], "num_attention_heads": heads_for(d, num_heads),
              "mlp_ratio": dm["mlp"] // d, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
              "image_size": side * dm["patch"], "patch_size": dm["patch"], "num_channels": 3, "qkv_bias": True,
              "layerscale_value": 1.0, "use_swiglu_ffn": False}
    if dm["registers"]:
        config["num_register_tokens"] = dm["registers"]
    import torch

    pos = sd["pos_embed"]
    if not dm["cls_pos"]:  # timm's no_embed_class: the class token gets no position embedding, a zero row here
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
    mask = sd["mask_token"] if "mask_token" in sd else torch.zeros_like(sd["cls_token"][0])  # (1, D), unused
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.mask_token": mask,
           "embeddings.position_embeddings": pos,
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    if dm["registers"]:
        out["embeddings.register_tokens"] = sd["reg_token" if dm["timm"] else "register_tokens"]
    renames = (("attn.proj", "attention.output.dense"), ("norm1", "norm1"), ("norm2", "norm2"),
               ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
    for i in range(dm["depth"]):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        map_block(sd, out, b, h, TIMM_QKV, HF_VIT_QKV, renames, d)
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return config, out
