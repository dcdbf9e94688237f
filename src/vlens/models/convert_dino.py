"""torch.hub DINO and timm ViT checkpoints -> Hugging Face ``ViTModel`` (what ``facebook/dino-vits8`` is).

Layout expected (learnt from facebookresearch/dino ``vision_transformer.py`` and timm's ``VisionTransformer``, which
loads DINO's files unchanged: ``vit_small_patch8_224.dino`` points at ``dino_deitsmall8_pretrain.pth``). D = width,
N = patches, P = patch size, H = MLP width, L blocks::

    cls_token                      (1, 1, D)
    pos_embed                      (1, 1 + N, D)      N a square grid (784 = 28 x 28 for ViT-S/8 at 224 px)
    patch_embed.proj.weight        (D, 3, P, P)       + .bias (D,)
    blocks.{i}.norm1.weight/bias   (D,)               LayerNorm eps 1e-6, pre-norm
    blocks.{i}.attn.qkv.weight     (3D, D)            + .bias (3D,): rows q, k, v; heads D / 64
    blocks.{i}.attn.proj.weight    (D, D)             + .bias
    blocks.{i}.norm2.weight/bias   (D,)
    blocks.{i}.mlp.fc1.weight      (H, D)             + .bias; GELU
    blocks.{i}.mlp.fc2.weight      (D, H)             + .bias
    norm.weight/bias               (D,)               final LayerNorm
    head.*                         optional: a classifier or DINO projection head, dropped

dino_deitsmall8_pretrain.pth: D 384, L 12, P 8, N 784, H 1536 (6 heads). The HF keys written are the hub format
of ``facebook/dino-vits8`` (``embeddings.*``, ``encoder.layer.{i}.attention.attention.query``..., ``layernorm``).
"""

from __future__ import annotations

from vlens.models.convert_common import HF_VIT_QKV, TIMM_QKV, check_keys, count_blocks, grid_side, heads_for, map_block

LAYOUT = "torch.hub DINO / timm ViT (cls_token, pos_embed, blocks.N.attn.qkv, norm)"


def matches(sd: dict) -> bool:
    return "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" not in sd \
        and "mask_token" not in sd


def expected_keys(width: int, depth: int, patch: int, n_patches: int, mlp: int) -> dict[str, tuple]:
    """Every key of the layout with its shape."""
    d = width
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + n_patches, d), "patch_embed.proj.weight": (d, 3, patch, patch),
            "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                     b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                     b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (mlp, d),
                     b + "mlp.fc1.bias": (mlp,), b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,)})
    return keys


def dims(sd: dict) -> dict:
    """Width, depth, patch, patches and MLP width read from the shapes."""
    width = sd["cls_token"].shape[-1]
    n_patches = sd["pos_embed"].shape[1] - 1
    grid_side(n_patches, "pos_embed")
    return {"width": width, "depth": count_blocks(sd, "blocks."), "patch": sd["patch_embed.proj.weight"].shape[-1],
            "n_patches": n_patches, "mlp": sd["blocks.0.mlp.fc1.weight"].shape[0]}


def convert(sd: dict, num_heads: int | None = None) -> tuple[dict, dict]:
    """(HF ``ViTConfig`` kwargs, HF state dict). Raises :class:`LayoutError` for anything but the layout above."""
    dm = dims(sd)
    check_keys(sd, expected_keys(**dm), LAYOUT, optional=("head.",))
    d, side = dm["width"], grid_side(dm["n_patches"], "pos_embed")
    config = {"model_type": "vit", "hidden_size": d, "num_hidden_layers": dm["depth"],
              "num_attention_heads": heads_for(d, num_heads), "intermediate_size": dm["mlp"],
              "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": side * dm["patch"],
              "patch_size": dm["patch"], "num_channels": 3, "qkv_bias": True,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    renames = (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
               ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"))
    for i in range(dm["depth"]):
        map_block(sd, out, f"blocks.{i}.", f"encoder.layer.{i}.", TIMM_QKV, HF_VIT_QKV, renames, d)
    return config, out
