"""Model presets stored as data: name -> function returning a Hugging Face config.

``test-*`` presets are the tiny ones the tests use (width 32, 2 layers, 32 px, patch 8: build, save, load and
run in milliseconds). Presets of the embedded models live next to their trainers but are listed here too, so
``vlens ... --preset NAME`` has one place to look.
"""

from __future__ import annotations


def test_vit(image_size: int = 32, patch_size: int = 8):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=image_size, patch_size=patch_size)


def test_dinov2(image_size: int = 32, patch_size: int = 8):
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        image_size=image_size, patch_size=patch_size)


def vit_tiny(image_size: int = 224, patch_size: int = 16):
    """The ViT-Tiny shape of DeiT (192 wide, 12 layers, 3 heads, ~5.5M parameters)."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                     image_size=image_size, patch_size=patch_size)


def dino_tiny(image_size: int = 96, patch_size: int = 8, width: int = 128, layers: int = 4, heads: int = 4):
    """The embedded ``builtin:dino-tiny`` shape: a small ViT/8 that trains with DINO on 2 CPU cores in ~30 min."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * width, image_size=image_size, patch_size=patch_size)


def vit_small(image_size: int = 224, patch_size: int = 16):
    """ViT-S/16 as used by DINO (384 wide, 12 layers, 6 heads, ~21M parameters)."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                     image_size=image_size, patch_size=patch_size)


def test_blip(vocab_size: int = 1000, bos_token_id: int = 2, eos_token_id: int = 3, pad_token_id: int = 0,
              sep_token_id: int = 3, image_size: int = 32, patch_size: int = 8):
    from transformers import BlipConfig

    text = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=64,
                bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                sep_token_id=sep_token_id, decoder_start_token_id=bos_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=image_size, patch_size=patch_size)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def blip_tiny(vocab_size: int = 400, bos_token_id: int = 2, eos_token_id: int = 3, pad_token_id: int = 0,
              sep_token_id: int = 3, image_size: int = 128, patch_size: int = 16):
    """The embedded ``builtin:blip-tiny`` (~1.3M parameters, ~5 MB): 128 px, 64 patches, width 128,
    4 vision layers, 3 text layers with cross-attention. Small enough to train on 2 CPU cores in minutes."""
    from transformers import BlipConfig

    text = dict(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=256, encoder_hidden_size=128, max_position_embeddings=48,
                bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                sep_token_id=sep_token_id, decoder_start_token_id=bos_token_id)
    # initializer_range: HF's vision default (1e-10) suits loading pretrained weights, not training from scratch
    vision = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                  image_size=image_size, patch_size=patch_size, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=128)


def test_clip(vocab_size: int = 1000, eos_token_id: int = 3, pad_token_id: int = 0, bos_token_id: int = 2,
              image_size: int = 32, patch_size: int = 8):
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def clip_tiny(vocab_size: int = 1000, eos_token_id: int = 3, pad_token_id: int = 0, bos_token_id: int = 2,
              image_size: int = 64, patch_size: int = 8, width: int = 128, layers: int = 4):
    """The ``builtin:clip-tiny`` shape: ViT 64 px / patch 8 and a text transformer, 128 wide, 4 layers each."""
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                intermediate_size=4 * width, max_position_embeddings=32, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    vision = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * width,
                  image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)


PRESETS = {
    "test-vit": test_vit,
    "test-dinov2": test_dinov2,
    "vit-tiny": vit_tiny,
    "dino-tiny": dino_tiny,
    "vit-small": vit_small,
    "test-blip": test_blip,
    "blip-tiny": blip_tiny,
    "test-clip": test_clip,
    "clip-tiny": clip_tiny,
}


def get_preset(name: str, **overrides):
    from vlens.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)
