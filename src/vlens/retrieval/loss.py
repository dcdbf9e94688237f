"""Symmetric InfoNCE for image-text pairs, with a log-parametrised temperature and a cross-process gather.

The temperature ``T`` is stored as ``logit_scale = log(1 / T)`` (the ``CLIPModel.logit_scale`` parameter), so
gradient steps change it multiplicatively and it can never become negative. When it is learnt, it is clamped
after every optimiser step to ``[min_temperature, max_temperature]`` (CLIP clamps at T = 0.01, i.e. a scale of
100): without the clamp the scale keeps growing on easy data and the loss becomes spiky.

Under ``torchrun`` / ``accelerate launch`` every process embeds its slice of the global batch; ``gather``
concatenates the slices in rank order *with gradients* (an autograd Function around ``all_gather``), so each process
computes the loss over the whole global batch. The backward of that gather sums the gradients every process
sends to a slice; DDP then averages parameter gradients over processes, which together gives exactly the
gradient of the global-batch loss (test: ``tests/test_retrieval_distributed.py``).
"""

from __future__ import annotations

import math


def temperature_to_logit_scale(temperature: float) -> float:
    return math.log(1.0 / float(temperature))


def clamp_logit_scale_(logit_scale, min_temperature: float = 0.01, max_temperature: float = 1.0) -> None:
    """In place: keep ``exp(logit_scale)`` within ``[1 / max_temperature, 1 / min_temperature]``."""
    import torch

    with torch.no_grad():
        logit_scale.clamp_(min=math.log(1.0 / max_temperature), max=math.log(1.0 / min_temperature))


def info_nce(image_emb, text_emb, logit_scale):
    """Symmetric InfoNCE over a batch of matching pairs.

    image_emb, text_emb: (B, d), L2-normalised; row i of each is a positive pair, every other row a negative.
    logit_scale: scalar tensor, log(1 / temperature).
    Returns the mean of the image->text and text->image cross-entropies (a scalar).
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp() * image_emb @ text_emb.t()  # (B, B): image i vs text j
    target = torch.arange(logits.shape[0], device=logits.device)  # (B,)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_with_grad():
    import torch
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        """all_gather whose backward sums the gradients all processes computed for this process's slice."""

        @staticmethod
        def forward(ctx, x):
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            ctx.rows = x.shape[0]
            return torch.cat(parts, dim=0)  # (world * b, d)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()  # (world * b, d)
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            r, b = dist.get_rank(), ctx.rows
            return grad[r * b:(r + 1) * b]  # (b, d)

    return GatherWithGrad


def gather(x):
    """(b, d) on each process -> (world * b, d) in rank order, differentiable; identity on one process.

    Every process must pass the same ``b`` (the trainer drops a last, uneven global batch).
    """
    if world_size() == 1:
        return x
    return _gather_with_grad().apply(x)


def contrastive_loss(image_emb, text_emb, logit_scale):
    """InfoNCE over the *global* batch: local (b, d) embeddings are gathered from all processes first."""
    return info_nce(gather(image_emb), gather(text_emb), logit_scale)
