"""What the three training loops (DINO, captioning, retrieval) share.

- ``cosine_schedule``: warm-up then cosine, as a plain per-step array (DINO style), easy to test and resume;
- ``save_checkpoint`` / ``load_checkpoint``: atomic, with the RNG states needed to resume *exactly*;
- ``make_accelerator``: one ``accelerate.Accelerator`` that works on a CPU laptop, one GPU, or under
  ``accelerate launch`` / ``torchrun`` (DDP), with mixed precision only where a GPU exists.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from vlens.runs import atomic_path


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Per-step values: linear warm-up from ``warmup_start`` to ``base``, then cosine from ``base`` to ``final``.

    Returns an array of length ``total_steps``; element 0 is ``warmup_start`` (or ``base`` without warm-up)
    and the last element is ``final``.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    n = total_steps - warmup_steps
    if n == 1:
        rest = np.array([final], dtype=np.float64)
    else:
        t = np.arange(n) / max(n - 1, 1)
        rest = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([warm, rest]).astype(np.float64)


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, **payload) -> Path:
    """Save ``payload`` (state dicts, step, config, ...) plus RNG states atomically with ``torch.save``."""
    import torch

    payload.setdefault("rng", rng_state())
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path, restore_rng: bool = True) -> dict:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=False)
    if restore_rng and "rng" in payload:
        set_rng_state(payload["rng"])
    return payload


def make_accelerator(grad_accum: int = 1, mixed_precision: str = "auto", cpu: bool = False):
    """An Accelerator that behaves the same under ``python``, ``accelerate launch`` and ``torchrun``.

    ``mixed_precision="auto"`` picks bf16 on a GPU that supports it, fp16 on other GPUs, and no mixed
    precision on a CPU (where it only slows things down); ``bf16`` on a CPU is honoured (autocast to bf16).
    """
    import torch
    from accelerate import Accelerator

    from vlens.devices import mixed_precision_for, release_process_group_at_exit

    mixed_precision = mixed_precision_for(mixed_precision)  # checked: fp16 without CUDA is an error
    # Without CUDA, accelerate only sees the other torchrun processes (gloo) when told it runs on the CPU.
    cpu = cpu or not torch.cuda.is_available()
    if mixed_precision == "auto":
        if torch.cuda.is_available() and not cpu:
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "no"
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision, cpu=cpu)
    if accelerator.num_processes > 1:
        release_process_group_at_exit()
    return accelerator


def param_groups(model, weight_decay: float, no_decay_names: tuple[str, ...] = ("logit_scale",)):
    """AdamW groups: no weight decay on biases, norms (1-D params) and named scalars like a temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in no_decay_names):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
