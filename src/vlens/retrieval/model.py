"""A dual encoder over Hugging Face ``CLIPModel``: L2-normalised image and text embeddings, batched.

Works for real checkpoints (``openai/clip-vit-base-patch32`` when cached), local folders and ``builtin:clip-tiny``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DualEncoder:
    def __init__(self, loaded):
        """``loaded``: a :class:`vlens.models.LoadedModel` of kind ``dual_encoder``."""
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.image_processor
        self.tokenizer = loaded.tokenizer
        self.spec = loaded.spec

    @classmethod
    def from_spec(cls, spec: str | None = None, device: str | None = "auto", dtype: str | None = "auto"
                  ) -> DualEncoder:
        """Load ``spec`` onto ``device`` in ``dtype`` (see :mod:`vlens.devices`; auto = GPU if present, else CPU
        fp32)."""
        from vlens.devices import resolve_device, resolve_dtype
        from vlens.models import load

        enc = cls(load(spec, "dual_encoder"))
        dev = resolve_device(device)
        enc.model.to(device=dev, dtype=resolve_dtype(dtype, dev))
        return enc

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def image_inputs(self, images: Sequence):
        """PIL images -> pixel_values (B, 3, H, W)."""
        import torch

        px = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return torch.from_numpy(np.asarray(px)).to(device=self.device, dtype=self.dtype)

    def text_inputs(self, texts: Sequence[str]):
        """Texts -> tokenizer output, truncated to the text model's context."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_tokens,
                              return_tensors="pt").to(self.device)

    def embed_pixels(self, pixel_values):
        """(B, 3, H, W) -> (B, d) L2-normalised, differentiable."""
        import torch.nn.functional as F

        out = self.model.get_image_features(pixel_values=pixel_values)
        emb = getattr(out, "pooler_output", out)
        return F.normalize(emb, dim=-1)

    def embed_tokens(self, input_ids, attention_mask):
        """(B, L) token ids -> (B, d) L2-normalised, differentiable."""
        import torch.nn.functional as F

        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        emb = getattr(out, "pooler_output", out)
        return F.normalize(emb, dim=-1)

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """PIL images -> (N, d) float32, unit norm."""
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                chunks.append(self.embed_pixels(self.image_inputs(images[i:i + batch_size])).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (N, d) float32, unit norm."""
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                t = self.text_inputs(texts[i:i + batch_size])
                chunks.append(self.embed_tokens(t["input_ids"], t["attention_mask"]).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
