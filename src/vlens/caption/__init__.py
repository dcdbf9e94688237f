"""Image captioning over Hugging Face BLIP: decoding strategies, prompts, COCO metrics, sweeps, training.

``Captioner``, ``DecodeSettings`` and ``Caption`` live in :mod:`vlens.caption.captioner` (imported lazily so
that ``import vlens.caption`` stays cheap).
"""

from __future__ import annotations

__all__ = ["Caption", "Captioner", "DecodeSettings"]


def __getattr__(name: str):
    if name in __all__:
        from vlens.caption import captioner

        return getattr(captioner, name)
    raise AttributeError(name)
