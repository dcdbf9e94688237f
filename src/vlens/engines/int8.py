"""Where ``--quantize int8`` is offered: only for the (model, tower) pairs whose int8 export kept quality.

The bars (issue 31): BLEU-4 within 1 point on builtin:blip-tiny's held-out scenes, recall@5 within 1 point on
builtin:clip-tiny's, PCK@10 within 1 point on the real pairs, cosine >= 0.99 to fp32 on real-size random models.
Measured by ``benchmarks/bench_int8.py --ort`` / ``--pck`` and ``benchmarks/bench_peers.py --engines``
(benchmarks/RESULTS.md, "Engines"); each refusal below names the measurement that failed or is missing.
"""

from __future__ import annotations

from vlens.errors import ConfigError

CLEARED = {
    "blip-vision": "BLIP's vision encoder: builtin:blip-tiny BLEU-4 80.84 vs 81.09 fp32 on 200 held-out scenes, "
                   "cosine 0.9996+ on real-size weights",
    "vit-tokens": "ViT/DINO token features: builtin:dino-tiny PCK@10 on graffiti and aloe moved at most 0.3 points "
                  "(plain, binned and the offline default fusion), cosine 0.9996 on a real-size DINO ViT-S/8",
}
REFUSED = {
    "clip-image": "the CLIP towers moved builtin:clip-tiny's image->text recall@5 by 1.33 points (bar: within 1)",
    "clip-text": "the CLIP towers moved builtin:clip-tiny's image->text recall@5 by 1.33 points (bar: within 1)",
}


def check_int8(tower: str, quantize: str) -> str:
    """``quantize`` ('none' or 'int8') when offered for ``tower``; a one-line ConfigError otherwise."""
    if quantize in (None, "", "none"):
        return "none"
    if quantize != "int8":
        raise ConfigError(f"unknown --quantize '{quantize}'; none or int8")
    if tower not in CLEARED:
        why = REFUSED.get(tower, "its quality was not measured")
        raise ConfigError(f"--quantize int8 is not offered here: {why}; run without --quantize "
                          "(benchmarks/RESULTS.md, Engines)")
    return "int8"
