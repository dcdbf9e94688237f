"""open_clip ViT checkpoints (``ViT-B-32`` ``.pt`` / ``.safetensors`` / ``open_clip_pytorch_model.bin``; OpenAI's
TorchScript ``ViT-B-32.pt`` once unpacked) -> Hugging Face ``CLIPModel`` (what ``openai/clip-vit-base-patch32`` is).

Layout expected (learnt from mlfoundations/open_clip ``model.py`` ``CLIP`` and ``transformer.py``
``VisionTransformer`` / ``ResidualAttentionBlock``; the attention keeps ``nn.MultiheadAttention``'s parameter names).
W = vision width, T = text width, E = embedding, P = patch, N = patches, C = context, V = vocabulary::

    visual.class_embedding                     (W,)
    visual.positional_embedding                (1 + N, W)     N a square grid (49 = 7 x 7 for ViT-B/32 at 224 px)
    visual.conv1.weight                        (W, 3, P, P)   no bias
    visual.ln_pre.weight/bias                  (W,)
    visual.transformer.resblocks.{i}.ln_1.weight/bias          pre-norm, eps 1e-5
    visual.transformer.resblocks.{i}.attn.in_proj_weight       (3W, W) + in_proj_bias (3W,): rows q, k, v
    visual.transformer.resblocks.{i}.attn.out_proj.weight      (W, W) + .bias
    visual.transformer.resblocks.{i}.ln_2.weight/bias
    visual.transformer.resblocks.{i}.mlp.c_fc.weight           (4W, W) + .bias; GELU (QuickGELU for OpenAI weights)
    visual.transformer.resblocks.{i}.mlp.c_proj.weight         (W, 4W) + .bias
    visual.ln_post.weight/bias                 (W,)           on the class token
    visual.proj                                (W, E)         x @ proj
    token_embedding.weight                     (V, T)
    positional_embedding                       (C, T)
    transformer.resblocks.{i}.*                as above with T (causal; pooled at the argmax token id = end of text)
    ln_final.weight/bias                       (T,)
    text_projection                            (T, E)         x @ text_projection
    logit_scale                                ()

ViT-B-32: W 768 (12 layers, 12 heads), T 512 (12 layers, 8 heads), E 512, P 32, N 49, C 77, V 49408.
The activation is not in the file: open_clip's ``ViT-B-32`` config uses GELU, its ``-quickgelu`` variants and
OpenAI's weights QuickGELU; :func:`convert` takes ``quick_gelu``.
"""

from __future__ import annotations

from vlens.models.convert_common import LayoutError, check_keys, count_blocks, grid_side, heads_for, map_block

LAYOUT = ("open_clip ViT CLIP (visual.class_embedding, visual.conv1, visual.transformer.resblocks.N, "
          "token_embedding, transformer.resblocks.N, text_projection, logit_scale)")


def matches(sd: dict) -> bool:
    return "visual.class_embedding" in sd or "visual.conv1.weight" in sd


def _block_keys(prefix: str, w: int, mlp: int) -> dict:
    return {prefix + "ln_1.weight": (w,), prefix + "ln_1.bias": (w,), prefix + "attn.in_proj_weight": (3 * w, w),
            prefix + "attn.in_proj_bias": (3 * w,), prefix + "attn.out_proj.weight": (w, w),
            prefix + "attn.out_proj.bias": (w,), prefix + "ln_2.weight": (w,), prefix + "ln_2.bias": (w,),
            prefix + "mlp.c_fc.weight": (mlp, w), prefix + "mlp.c_fc.bias": (mlp,),
            prefix + "mlp.c_proj.weight": (w, mlp), prefix + "mlp.c_proj.bias": (w,)}


def expected_keys(vision_width: int, vision_layers: int, vision_mlp: int, patch: int, n_patches: int,
                  text_width: int, text_layers: int, text_mlp: int, context: int, vocab: int, embed: int) -> dict:
    w, t = vision_width, text_width
    keys = {"visual.class_embedding": (w,), "visual.positional_embedding": (1 + n_patches, w),
            "visual.conv1.weight": (w, 3, patch, patch), "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
            "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,), "visual.proj": (w, embed),
            "token_embedding.weight": (vocab, t), "positional_embedding": (context, t), "ln_final.weight": (t,),
            "ln_final.bias": (t,), "text_projection": (t, embed), "logit_scale": ()}
    for i in range(vision_layers):
        keys.update(_block_keys(f"visual.transformer.resblocks.{i}.", w, vision_mlp))
    for i in range(text_layers):
        keys.update(_block_keys(f"transformer.resblocks.{i}.", t, text_mlp))
    return keys


def dims(sd: dict) -> dict:
    for k in ("visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight", "visual.proj",
              "token_embedding.weight", "positional_embedding", "text_projection",
              "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"):
        if k not in sd:
            raise LayoutError(f"not a {LAYOUT} state dict: missing {k}")
    n_patches = sd["visual.positional_embedding"].shape[0] - 1
    grid_side(n_patches, "visual.positional_embedding")
    return {"vision_width": sd["visual.class_embedding"].shape[0],
            "vision_layers": count_blocks(sd, "visual.transformer.resblocks."),
            "vision_mlp": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "patch": sd["visual.conv1.weight"].shape[-1], "n_patches": n_patches,
            "text_width": sd["token_embedding.weight"].shape[1],
            "text_layers": count_blocks(sd, "transformer.resblocks."),
            "text_mlp": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "context": sd["positional_embedding"].shape[0], "vocab": sd["token_embedding.weight"].shape[0],
            "embed": sd["visual.proj"].shape[1]}


def _blocks(sd: dict, out: dict, src: str, dst: str, layers: int, width: int) -> None:
    renames = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
               ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for i in range(layers):
        map_block(sd, out, f"{src}{i}.", f"{dst}{i}.", ("attn.in_proj_weight", "attn.in_proj_bias"),
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), renames, width)


def convert(sd: dict, quick_gelu: bool = False, vision_heads: int | None = None,
            text_heads: int | None = None) -> tuple[dict, dict]:
    """(HF ``CLIPConfig`` kwargs, HF state dict). Raises :class:`LayoutError` for anything but the layout above."""
    dm = dims(sd)
    check_keys(sd, expected_keys(**dm), LAYOUT)
    act = "quick_gelu" if quick_gelu else "gelu"
    side = grid_side(dm["n_patches"], "visual.positional_embedding")
    config = {
        "model_type": "clip", "projection_dim": dm["embed"],
        "text_config": {"vocab_size": dm["vocab"], "hidden_size": dm["text_width"],
                        "intermediate_size": dm["text_mlp"], "num_hidden_layers": dm["text_layers"],
                        "num_attention_heads": heads_for(dm["text_width"], text_heads),
                        "max_position_embeddings": dm["context"], "hidden_act": act, "layer_norm_eps": 1e-5,
                        # eos id 2 is transformers' "pool at the argmax token id" rule, which is open_clip's
                        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": dm["embed"]},
        "vision_config": {"hidden_size": dm["vision_width"], "intermediate_size": dm["vision_mlp"],
                          "num_hidden_layers": dm["vision_layers"],
                          "num_attention_heads": heads_for(dm["vision_width"], vision_heads),
                          "image_size": side * dm["patch"], "patch_size": dm["patch"], "num_channels": 3,
                          "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": dm["embed"]},
    }
    if sd["logit_scale"].numel() != 1:
        raise LayoutError(f"{LAYOUT}: logit_scale is not a single number")
    out = {"logit_scale": sd["logit_scale"].reshape(()),
           "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"],
           "text_projection.weight": sd["text_projection"].t(),
           "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
           "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],  # sic: transformers' name
           "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
           "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
           "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
           "visual_projection.weight": sd["visual.proj"].t()}
    _blocks(sd, out, "transformer.resblocks.", "text_model.encoder.layers.", dm["text_layers"], dm["text_width"])
    _blocks(sd, out, "visual.transformer.resblocks.", "vision_model.encoder.layers.", dm["vision_layers"],
            dm["vision_width"])
    return config, out
