"""DINO's pieces as small modules and pure tensor functions (Caron et al. 2021, "Emerging properties in
self-supervised vision transformers").

- :class:`DINOHead`: MLP -> L2-normalised bottleneck -> weight-normalised linear layer (its norm fixed to 1);
- :class:`MultiCropNet`: backbone + head over a list of crops of different sizes (one forward per size);
- :func:`dino_loss`: cross-entropy between sharpened, centred teacher targets and student predictions over all
  (teacher view, student view) pairs that are not the same view;
- :func:`update_center`: momentum update of the centre from the teacher outputs (averaged over all processes);
- :func:`ema_update`: teacher <- m * teacher + (1 - m) * student.

Nothing here knows about data, schedules or files: train.py composes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """Projection head: ``n_layers`` MLP to a ``bottleneck_dim`` vector, L2-normalised, then a weight-normalised
    linear layer to ``out_dim`` "prototype" logits.

    ``norm_last_layer=True`` fixes the weight-norm magnitude to 1 (not trained), which DINO found stabilises
    training of small models.
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 n_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        n_layers = max(n_layers, 1)
        if n_layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(n_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        # parametrization: weight = g * v / ||v|| per output row; original0 is g (out_dim, 1), original1 is v
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (N, bottleneck)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)  # (N, out_dim)


def backbone_cls(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The [CLS] token of the last layer (after the final layer norm) of an HF ViT / DINOv2 model: (B, D)."""
    kw = {"interpolate_pos_encoding": True} if backbone.config.model_type == "vit" else {}
    out = backbone(pixel_values=pixel_values, **kw)
    return out.last_hidden_state[:, 0]  # (B, 1 + h*w, D) -> (B, D)


class MultiCropNet(nn.Module):
    """Backbone + head applied to a list of crops. Crops of the same size go through the backbone together
    (one forward per distinct size); the head sees all [CLS] vectors in one batch.

    ``forward(crops)`` with ``crops`` a list of (B, 3, H_i, W_i) tensors returns (len(crops) * B, out_dim),
    crop-major: rows ``i*B:(i+1)*B`` belong to crop ``i``.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        feats, i = [], 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape[-2:] == crops[i].shape[-2:]:
                j += 1
            batch = torch.cat(crops[i:j])  # ((j-i)*B, 3, H, W)
            feats.append(backbone_cls(self.backbone, batch))
            i = j
        return self.head(torch.cat(feats))  # (n_crops*B, out_dim)


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float, n_global: int) -> torch.Tensor:
    """DINO cross-entropy, averaged over the (teacher view t, student view s != t) pairs and the batch.

    ``student_out``: (S*B, K) logits for S views, crop-major (the first ``n_global`` views are the global ones);
    ``teacher_out``: (n_global*B, K) logits of the teacher on the global views; ``center``: (1, K).
    Teacher targets are centred and sharpened: softmax((t - c) / teacher_temp); no gradient flows into them.
    """
    n_views = student_out.shape[0] // (teacher_out.shape[0] // n_global)
    b = teacher_out.shape[0] // n_global
    log_p = F.log_softmax(student_out / student_temp, dim=-1).view(n_views, b, -1)  # (S, B, K)
    q = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().view(n_global, b, -1)  # (T, B, K)
    # ce[t, s] = mean over batch of -sum_k q[t] log_p[s]: one einsum instead of the double loop
    ce = -torch.einsum("tbk,sbk->ts", q, log_p) / b  # (T, S)
    keep = ~torch.eye(n_global, n_views, dtype=torch.bool, device=ce.device)  # same view pairs are skipped
    return ce[keep].mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> torch.Tensor:
    """New centre = m * centre + (1 - m) * mean of the teacher outputs over the whole (global) batch.

    Under torch.distributed the batch mean is all-reduced, so every process keeps the same centre.
    """
    total = teacher_out.sum(dim=0, keepdim=True)  # (1, K)
    count = torch.tensor([float(teacher_out.shape[0])], device=teacher_out.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(count)
    return center * momentum + (total / count) * (1.0 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (in place)."""
    t_params = [p for _, p in sorted(teacher.named_parameters())]
    s_params = [p.detach() for _, p in sorted(student.named_parameters())]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


def cancel_last_layer_grad(head: DINOHead) -> None:
    """Drop the gradient of the last layer (DINO freezes it during the first epoch to avoid early collapse)."""
    for p in head.last_layer.parameters():
        p.grad = None


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int,
                          steps_per_epoch: int):
    """Per-step teacher temperature: linear from ``warmup_temp`` to ``temp`` over ``warmup_epochs``, then flat."""
    import numpy as np

    warm = np.linspace(warmup_temp, temp, warmup_epochs * steps_per_epoch)
    rest = np.full(max(epochs - warmup_epochs, 0) * steps_per_epoch, temp)
    return np.concatenate([warm, rest])[: epochs * steps_per_epoch]


def output_entropy(logits: torch.Tensor, temp: float, center: torch.Tensor | None = None) -> tuple[float, float]:
    """(mean per-sample entropy, entropy of the batch-mean distribution), in nats: collapse diagnostics.

    Collapse to one prototype shows as both near 0; collapse to uniform shows as both near log(K).
    """
    c = 0 if center is None else center
    p = F.softmax((logits - c) / temp, dim=-1)  # (N, K)
    per = -(p * torch.log(p + 1e-12)).sum(-1).mean()
    m = p.mean(0)
    batch = -(m * torch.log(m + 1e-12)).sum()
    return float(per), float(batch)
