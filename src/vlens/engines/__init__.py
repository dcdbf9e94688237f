"""Which runtime runs a model's towers: torch (eager, the reference) or ONNX Runtime (an export kept as a cache).

``--engine torch|onnx|auto`` means the same in every command, the library and the server:

- ``torch``: the Hugging Face model as loaded, eager.
- ``onnx``: an ONNX export of the tower run by ONNX Runtime. Made once per model (weights fingerprint), tower,
  input-shape family, opset and runtime version under ``$VLENS_CACHE/exports`` (:mod:`vlens.engines.store`),
  checked against torch on a probe batch before it is kept (:mod:`vlens.engines.export`); a tower whose export
  does not match is refused with one line and runs on torch.
- ``auto``: the faster of the two *on this machine*, for this model and shape: the export records a few timed
  runs of both, and ``auto`` follows that record, so a machine where ONNX Runtime is slower keeps torch.

This package is on the ground floor. :mod:`~vlens.engines.store` and :mod:`~vlens.engines.runtime` never import
torch (the one-second ``vlens search`` path runs on them); :mod:`~vlens.engines.export` and
:mod:`~vlens.engines.towers` do.
"""

from __future__ import annotations

ENGINES = ("torch", "onnx", "auto")
QUANTIZE = ("none", "int8")


def check_engine(engine: str | None) -> str:
    """The engine name, lower-cased; a one-line ConfigError for anything else (None -> auto)."""
    from vlens.errors import ConfigError

    name = (engine or "auto").strip().lower()
    if name not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; one of {', '.join(ENGINES)}")
    return name
