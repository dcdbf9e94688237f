"""A dual encoder over Hugging Face ``CLIPModel``: L2-normalised image and text embeddings, batched.

Works for real checkpoints (``openai/clip-vit-base-patch32`` when cached), local folders and ``builtin:clip-tiny``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DualEncoder:
    def __init__(self, loaded, engine: str = "torch"):
        """``loaded``: a :class:`vlens.models.LoadedModel` of kind ``dual_encoder``. ``engine``: torch, onnx or
        auto (:mod:`vlens.engines`) for :meth:`encode_images` and :meth:`encode_texts`; training and the
        differentiable ``embed_*`` methods always run torch."""
        from vlens.engines import check_engine

        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.image_processor
        self.tokenizer = loaded.tokenizer
        self.spec = loaded.spec
        self.engine = check_engine(engine)
        self._towers: dict[str, object] = {}

    @classmethod
    def from_spec(cls, spec: str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                  engine: str = "torch") -> DualEncoder:
        """Load ``spec`` onto ``device`` in ``dtype`` (see :mod:`vlens.devices`; auto = GPU if present, else CPU
        fp32)."""
        from vlens.devices import resolve_device, resolve_dtype
        from vlens.models import load

        enc = cls(load(spec, "dual_encoder"), engine=engine)
        dev = resolve_device(device)
        enc.model.to(device=dev, dtype=resolve_dtype(dtype, dev))
        return enc

    def tower(self, which: str):
        """The ONNX Runtime tower (``image`` or ``text``) the engine chose, or None for torch; decided (and
        exported, verified, timed when needed) on first use."""
        if which not in self._towers:
            from vlens.engines.towers import clip_image_engine, clip_text_engine

            fn = clip_image_engine if which == "image" else clip_text_engine
            self._towers[which] = None if self.engine == "torch" else fn(self.model, self.loaded.path, self.spec,
                                                                       self.engine)
        return self._towers[which]

    def prepare_engines(self) -> DualEncoder:
        """Decide both towers now (exports them when the engine asks): an index build does this so later searches
        find the text tower's export."""
        self.tower("image")
        self.tower("text")
        return self

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
        """Texts -> tokenizer output, truncated to the text model's context; cleaned first as the model's own code
        did (``open_clip`` for models converted from open_clip files: :mod:`vlens.models.text_cleaning`)."""
        from vlens.models.text_cleaning import clean_texts, cleaning_of

        texts = clean_texts(texts, cleaning_of(self.model.config))
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_tokens,
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
        ort = self.tower("image")
        if ort is not None:
            chunks = [ort(pixel_values=np.asarray(self.processor(images=list(images[i:i + batch_size]),
                                                                 return_tensors="np")["pixel_values"], np.float32))
                      for i in range(0, len(images), batch_size)]
            return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                chunks.append(self.embed_pixels(self.image_inputs(images[i:i + batch_size])).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (N, d) float32, unit norm."""
        ort = self.tower("text")
        if ort is not None:
            chunks = []
            for i in range(0, len(texts), batch_size):
                t = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_text_tokens, return_tensors="np")
                chunks.append(ort(input_ids=t["input_ids"].astype(np.int64),
                                  attention_mask=t["attention_mask"].astype(np.int64)))
            return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                t = self.text_inputs(texts[i:i + batch_size])
                chunks.append(self.embed_tokens(t["input_ids"], t["attention_mask"]).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
