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


def backbone_tokens(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """All last-layer tokens (after the final layer norm) of an HF ViT / DINOv2 model: (B, 1 + h*w, D)."""
    kw = {"interpolate_pos_encoding": True} if backbone.config.model_type == "vit" else {}
    return backbone(pixel_values=pixel_values, **kw).last_hidden_state


class MultiCropNet(nn.Module):
    """Backbone + head applied to a list of crops. Crops of the same size go through the backbone together
    (one forward per distinct size); the head sees all [CLS] vectors in one batch.

    ``forward(crops)`` with ``crops`` a list of (B, 3, H_i, W_i) tensors returns (len(crops) * B, out_dim),
    crop-major: rows ``i*B:(i+1)*B`` belong to crop ``i``. With a ``patch_head`` or ``return_tokens`` it returns
    ``(cls_logits, patch_logits, patch_tokens)`` where ``patch_logits[i]`` is (B, h_i*w_i, patch_out_dim) (an
    empty list without a patch head) and ``patch_tokens[i]`` the backbone's (B, h_i*w_i, D) patch tokens. With a
    ``sift_head`` (a training-only linear map of patch tokens to 128-d SIFT space) a 4th item: its output on the
    first two (global) crops, (B, 2, h*w, 128).
    """

    def __init__(self, backbone: nn.Module, head: DINOHead, patch_head: DINOHead | None = None,
                 return_tokens: bool = False, sift_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patch_head = patch_head
        self.sift_head = sift_head
        self.return_tokens = return_tokens or patch_head is not None or sift_head is not None

    def forward(self, crops: list[torch.Tensor]):
        cls, patches, tokens_out, i = [], [], [], 0
        n_prefix = 1 + int(getattr(self.backbone.config, "num_register_tokens", 0) or 0)
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape[-2:] == crops[i].shape[-2:]:
                j += 1
            b = crops[i].shape[0]
            tokens = backbone_tokens(self.backbone, torch.cat(crops[i:j]))  # ((j-i)*B, prefix + h*w, D)
            cls.append(tokens[:, 0])
            if self.patch_head is not None:
                out = self.patch_head(tokens[:, n_prefix:])  # ((j-i)*B, h*w, K_p)
                patches += list(out.split(b))  # j-i tensors of (B, h*w, K_p)
            if self.return_tokens:
                tokens_out += list(tokens[:, n_prefix:].split(b))  # j-i tensors of (B, h*w, D)
            i = j
        logits = self.head(torch.cat(cls))  # (n_crops*B, out_dim)
        if self.sift_head is not None:
            sift = self.sift_head(torch.stack(tokens_out[:2], 1))  # (B, 2, h*w, 128)
            return logits, patches, tokens_out, sift
        return (logits, patches, tokens_out) if self.return_tokens else logits


def apply_unit_homography(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map points (B, N) of the unit square through per-sample homographies ``h`` (B, 3, 3)."""
    w = h[:, 2, 0:1] * u + h[:, 2, 1:2] * v + h[:, 2, 2:3]  # (B, N)
    return ((h[:, 0, 0:1] * u + h[:, 0, 1:2] * v + h[:, 0, 2:3]) / w,
            (h[:, 1, 0:1] * u + h[:, 1, 1:2] * v + h[:, 1, 2:3]) / w)


def view_to_image(geom: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points given in a view's own units (``u``, ``v`` in [0, 1) across / down the crop as shown) -> image pixels.

    ``geom``: (B, 5, 6 or 15) ``x0, y0, x1, y1, flipped[, angle[, h00..h22]]``: the box before rotation, a flip
    flag, the rotation about the box centre in radians (0 if absent) and a projective warp of the unit square
    (row-major 3x3, applied after un-flipping, before the box; see vlens.ssl.augment.random_perspective).
    ``u``, ``v``: (B, N) or (1, N). Returns (B, N) x, y.
    """
    x0, y0, x1, y1, fl = (geom[:, k:k + 1] for k in range(5))  # each (B, 1)
    ang = geom[:, 5:6] if geom.shape[1] > 5 else torch.zeros_like(x0)
    u = torch.where(fl > 0.5, 1 - u, u)  # a flipped crop shows its box mirrored
    if geom.shape[1] > 6:
        u, v = apply_unit_homography(geom[:, 6:15].reshape(-1, 3, 3), u.expand_as(x0 * u), v.expand_as(x0 * v))
    dx, dy = (u - 0.5) * (x1 - x0), (v - 0.5) * (y1 - y0)  # offsets from the box centre, box frame
    c, s = torch.cos(ang), torch.sin(ang)
    return (x0 + x1) / 2 + c * dx - s * dy, (y0 + y1) / 2 + s * dx + c * dy


def image_to_view(geom: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`view_to_image`: image pixels (B, N) -> the view's (u, v) units."""
    x0, y0, x1, y1, fl = (geom[:, k:k + 1] for k in range(5))
    ang = geom[:, 5:6] if geom.shape[1] > 5 else torch.zeros_like(x0)
    px, py = x - (x0 + x1) / 2, y - (y0 + y1) / 2
    c, s = torch.cos(ang), torch.sin(ang)
    dx, dy = c * px + s * py, -s * px + c * py  # rotate back by -angle
    u, v = dx / (x1 - x0) + 0.5, dy / (y1 - y0) + 0.5
    if geom.shape[1] > 6:
        u, v = apply_unit_homography(torch.linalg.inv(geom[:, 6:15].reshape(-1, 3, 3)), u, v)
    return torch.where(fl > 0.5, 1 - u, u), v


def patch_correspondence(geom_s: torch.Tensor, geom_t: torch.Tensor, grid_s: int, grid_t: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every patch centre of student view s, the index of the teacher-view patch that covers the same
    image point, and whether that point lies inside the teacher view at all.

    ``geom_*``: (B, 5, 6 or 15) crop geometry (see :func:`view_to_image`); square grids of ``grid_s`` / ``grid_t``
    patches. Returns ``idx`` (B, grid_s**2) into the teacher's row-major patches and ``valid`` (B, grid_s**2).
    """
    c = (torch.arange(grid_s, dtype=torch.float32, device=geom_s.device) + 0.5) / grid_s  # (g,)
    v, u = torch.meshgrid(c, c, indexing="ij")  # (g, g) row = y, column = x
    x, y = view_to_image(geom_s, u.reshape(1, -1), v.reshape(1, -1))  # (B, g*g) image pixels
    ut, vt = image_to_view(geom_t, x, y)  # (B, g*g) in teacher-view units
    valid = (ut >= 0) & (ut < 1) & (vt >= 0) & (vt < 1)
    col = (ut.clamp(0, 1 - 1e-6) * grid_t).long()
    row = (vt.clamp(0, 1 - 1e-6) * grid_t).long()
    return row * grid_t + col, valid


def dense_dino_loss(student_patches: list[torch.Tensor], teacher_patches: list[torch.Tensor], geom: torch.Tensor,
                    center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINO's cross-entropy between patches that show the same image point in two views.

    ``student_patches[v]``: (B, g_v**2, K) for every view; ``teacher_patches[t]``: (B, g_t**2, K) for the global
    views; ``geom``: (B, V, 6) crop geometry; ``center``: (1, K). For each (teacher view t, student view s != t),
    each student patch is paired with the teacher patch covering its centre; pairs outside the teacher view are
    ignored. Returns the mean over all valid pairs (0 if there are none).
    """
    total = student_patches[0].new_zeros(())
    count = 0
    for t, tp in enumerate(teacher_patches):
        q_all = F.softmax((tp - center) / teacher_temp, dim=-1).detach()  # (B, g_t^2, K)
        g_t = round(tp.shape[1] ** 0.5)
        for s, sp in enumerate(student_patches):
            if s == t:
                continue
            g_s = round(sp.shape[1] ** 0.5)
            idx, valid = patch_correspondence(geom[:, s], geom[:, t], g_s, g_t)  # (B, g_s^2)
            q = torch.gather(q_all, 1, idx.unsqueeze(-1).expand(-1, -1, q_all.shape[-1]))  # (B, g_s^2, K)
            ce = -(q * F.log_softmax(sp / student_temp, dim=-1)).sum(-1)  # (B, g_s^2)
            total = total + (ce * valid).sum()
            count += int(valid.sum())
    return total / max(count, 1)


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


def dense_contrastive_loss(student_tokens: list[torch.Tensor], teacher_tokens: list[torch.Tensor], geom: torch.Tensor,
                           temp: float = 0.1, detach_keys: bool = True) -> torch.Tensor:
    """InfoNCE between patches: each student patch must pick, among *all* patches of the teacher's view of the
    same image, the one covering the same image point (cosine similarity / ``temp``). Unlike the DINO terms,
    this rewards features that tell apart locations within one image, which is what dense matching needs.

    ``student_tokens[v]``: (B, g_v**2, D); ``teacher_tokens[t]``: (B, g_t**2, D) for the global views; ``geom``:
    (B, V, 6). Pairs whose point falls outside the teacher view are ignored. The keys may also be the
    student's own global-view tokens (``detach_keys=False``: gradients flow through both sides, like SimCLR);
    on small CPU runs that learns faster than keys from the slow EMA teacher.
    """
    total = student_tokens[0].new_zeros(())
    count = 0
    for t, tt in enumerate(teacher_tokens):
        k = F.normalize(tt.detach() if detach_keys else tt, dim=-1)  # (B, Nt, D)
        g_t = round(tt.shape[1] ** 0.5)
        for s, st in enumerate(student_tokens):
            if s == t:
                continue
            g_s = round(st.shape[1] ** 0.5)
            idx, valid = patch_correspondence(geom[:, s], geom[:, t], g_s, g_t)  # (B, Ns)
            logits = F.normalize(st, dim=-1) @ k.transpose(1, 2) / temp  # (B, Ns, Nt)
            ce = F.cross_entropy(logits.flatten(0, 1), idx.flatten(), reduction="none").view_as(idx)  # (B, Ns)
            total = total + (ce * valid).sum()
            count += int(valid.sum())
    return total / max(count, 1)


def sift_distill_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distillation of a classical descriptor: mean ``1 - cos(pred, target)`` over all patches.

    ``pred``: (B, N, 128) a linear head's output on the patch tokens; ``target``: (B, N, 128) the dense SIFT
    descriptors of the same patches (L2-normalised). 0 when every prediction points along its target."""
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
