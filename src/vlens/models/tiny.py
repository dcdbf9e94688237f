"""Build and save the tiny test models (random weights, real HF classes) used by tests and examples."""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEXTS = [
    "a red circle on the left", "a big blue square at the top", "a small green triangle in the middle",
    "there is a yellow star on the right", "a purple diamond to the left of a white circle",
    "two shapes : an orange box above a red rhombus", "an image of", "a picture of",
]


def save_tiny(kind: str, out, texts=None, seed: int = 0, image_size: int = 32, family: str = "vit") -> Path:
    """Write a tiny random ``kind`` model (backbone | captioner | dual_encoder) to ``out`` with processor files."""
    import torch
    import transformers

    from vlens.models import presets
    from vlens.models.tokenizer import train_wordpiece

    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = {"height": image_size, "width": image_size}
    if kind == "backbone":
        cfg = presets.test_dinov2(image_size) if family == "dinov2" else presets.test_vit(image_size)
        model = transformers.AutoModel.from_config(cfg)
        proc = transformers.ViTImageProcessorPil(size=size) if family == "vit" else \
            transformers.BitImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size=size, image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225])
        model.save_pretrained(out)
        proc.save_pretrained(out)
        return out
    tok = train_wordpiece(texts or DEFAULT_TEXTS, vocab_size=200)
    v = len(tok)
    if kind == "captioner":
        model = transformers.BlipForConditionalGeneration(presets.test_blip(vocab_size=v, image_size=image_size))
        proc = transformers.BlipImageProcessorPil(size=size)
    elif kind == "dual_encoder":
        model = transformers.CLIPModel(presets.test_clip(vocab_size=v, image_size=image_size))
        proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=size)
    else:
        raise ValueError(kind)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    return out
