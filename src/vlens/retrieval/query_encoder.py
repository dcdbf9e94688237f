"""What encodes search queries with an index's model: the one seam between query *parsing* and query *encoding*.

:func:`query_encoder` returns an object with ``encode_texts(texts) -> (n, d)``, ``encode_images(images) -> (n, d)``
(unit float32 rows), ``dim`` and ``spec``: a :class:`~vlens.retrieval.model.DualEncoder` under ``--engine torch``,
else an :class:`ExportedQueryEncoder` that runs the model's ONNX exports **without importing torch or
transformers**: the tokenizer through ``tokenizers`` (``tokenizer.json``, the same truncation and padding the
transformers tokenizer applies), images through PIL + numpy exactly as ``CLIPImageProcessor`` prepares them
(shortest side resized bicubic, centre crop, rescale, normalise), the tower through ONNX Runtime. A tower without a
usable export (none yet, damaged, refused, or ``auto`` measured torch faster) is handed to a torch DualEncoder,
loaded then and only then, which exports it when the engine asks. So the first search of an index built without an
export pays for torch once; every later one answers in about a second (README, "Search from the shell").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlens.engines import check_engine


def query_encoder(spec: str, engine: str = "auto"):
    """The encoder for queries against an index built with ``spec``, under ``engine`` (torch | onnx | auto)."""
    engine = check_engine(engine)
    if engine == "torch":
        from vlens.retrieval.model import DualEncoder

        return DualEncoder.from_spec(spec, engine="torch")
    return ExportedQueryEncoder(spec, engine)


def clip_pixels(images: Sequence, cfg: dict) -> np.ndarray:
    """PIL images -> (B, 3, H, W) float32 as ``CLIPImageProcessor`` (PIL backend) makes them from ``cfg``
    (its preprocessor_config.json): resize (bicubic) so the shortest side is ``size.shortest_edge`` (the long side
    ``int(s * long / short)``) or to ``size.height x size.width``, centre crop (top = (h - ch) // 2), multiply by
    ``rescale_factor``, subtract the mean and divide by the std."""
    from PIL import Image

    size = cfg.get("size") or {"shortest_edge": 224}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    resample = Image.Resampling(int(cfg.get("resample", 3)))
    mean = np.asarray(cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), np.float64).reshape(3, 1, 1)
    std = np.asarray(cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711]), np.float64).reshape(3, 1, 1)
    out = []
    for im in images:
        im = im.convert("RGB") if im.mode != "RGB" else im
        if cfg.get("do_resize", True):
            w, h = im.size
            if "shortest_edge" in size:
                s = int(size["shortest_edge"])
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(s * long / short)
                nw, nh = (s, new_long) if w <= h else (new_long, s)
            else:
                nw, nh = int(size["width"]), int(size["height"])
            im = im.resize((nw, nh), resample=resample)
        x = np.asarray(im).transpose(2, 0, 1)  # (3, h, w) uint8
        if cfg.get("do_center_crop", True) and crop:
            ch, cw = int(crop["height"]), int(crop["width"])
            top, left = (x.shape[1] - ch) // 2, (x.shape[2] - cw) // 2
            if top < 0 or left < 0:  # smaller than the crop: pad as transformers does (centred zeros)
                pad = np.zeros((3, max(ch, x.shape[1]), max(cw, x.shape[2])), x.dtype)
                t0, l0 = -(-(pad.shape[1] - x.shape[1]) // 2), -(-(pad.shape[2] - x.shape[2]) // 2)
                pad[:, t0:t0 + x.shape[1], l0:l0 + x.shape[2]] = x
                x = pad
                top, left = (x.shape[1] - ch) // 2, (x.shape[2] - cw) // 2
            x = x[:, top:top + ch, left:left + cw]
        y = x.astype(np.float64)
        if cfg.get("do_rescale", True):
            y = y * float(cfg.get("rescale_factor", 1 / 255))
        if cfg.get("do_normalize", True):
            y = (y - mean) / std
        out.append(y.astype(np.float32))
    return np.stack(out) if out else np.zeros((0, 3, 1, 1), np.float32)


class ExportedQueryEncoder:
    """A dual encoder's towers through their ONNX exports (no torch), torch for a tower without a usable one."""

    def __init__(self, spec: str, engine: str = "auto"):
        from vlens.models.hub import resolve

        self.spec, self.engine = spec, engine
        self.folder, _source = resolve(spec)
        self.config = json.loads((self.folder / "config.json").read_text())
        self.dim = int(self.config.get("projection_dim", 512))
        self._towers: dict[str, object] = {}
        self._torch = None
        self._tokenizer = None

    # -- which runtime runs each tower
    def _export_id(self, which: str):
        from vlens.engines.store import ExportId, weights_fingerprint

        if which == "image":
            s = int(self.config.get("vision_config", {}).get("image_size", 224))
            return ExportId(self.spec, weights_fingerprint(self.folder), "clip-image", f"b,3,{s},{s}")
        return ExportId(self.spec, weights_fingerprint(self.folder), "clip-text", "b,s")

    def tower(self, which: str):
        """The ONNX Runtime tower for ``image`` / ``text`` when its export is usable under the engine, else None."""
        if which not in self._towers:
            from vlens.engines.runtime import available
            from vlens.engines.store import lookup

            tower = None
            if available():
                found = lookup(self._export_id(which))
                if found.state == "ok" and (self.engine == "onnx" or found.manifest.get("choice") == "onnx"):
                    from vlens.engines.export import _OPEN
                    from vlens.engines.runtime import OrtTower

                    tower = _OPEN.get(str(found.folder)) or OrtTower(found.onnx, found.manifest)
            self._towers[which] = tower
        return self._towers[which]

    @property
    def torch_encoder(self):
        """The torch DualEncoder (loaded on first need; it exports a missing tower when the engine asks)."""
        if self._torch is None:
            from vlens.retrieval.model import DualEncoder

            self._torch = DualEncoder.from_spec(self.spec, engine=self.engine)
        return self._torch

    @property
    def uses_torch(self) -> bool:
        return self._torch is not None

    # -- text
    @property
    def max_text_tokens(self) -> int:
        return int(self.config.get("text_config", {}).get("max_position_embeddings", 77))

    def _tok(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(max_length=self.max_text_tokens)
            pad = _pad_token(self.folder)
            pad_id = tok.token_to_id(pad) if pad else None
            tok.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad or "[PAD]")
            self._tokenizer = tok
        return self._tokenizer

    def text_inputs(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Texts -> input_ids, attention_mask (B, L) int64, as the transformers tokenizer makes them, after the
        cleaning the model's config declares (open_clip's for models converted from open_clip files), as
        :meth:`vlens.retrieval.model.DualEncoder.text_inputs` does."""
        from vlens.models.text_cleaning import clean_texts

        enc = self._tok().encode_batch(clean_texts(texts, self.config.get("text_cleaning") or None))
        return {"input_ids": np.asarray([e.ids for e in enc], np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64)}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        ort = self.tower("text") if (self.folder / "tokenizer.json").is_file() else None
        if ort is None:
            return self.torch_encoder.encode_texts(texts, batch_size)
        chunks = [ort(**self.text_inputs(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    # -- images
    def image_inputs(self, images: Sequence) -> np.ndarray:
        cfg_file = self.folder / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        return clip_pixels(images, cfg)

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        ort = self.tower("image")
        if ort is None:
            return self.torch_encoder.encode_images(images, batch_size)
        chunks = [ort(pixel_values=self.image_inputs(images[i:i + batch_size]))
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


def _pad_token(folder: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            pad = json.loads((folder / name).read_text()).get("pad_token")
        except (OSError, ValueError):
            continue
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad:
            return str(pad)
    return None
