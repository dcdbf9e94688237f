"""Saliency: where the [CLS] token of the last block looks, as a 0-1 foreground map (the "Deep ViT Features"
recipe's mask for keeping foreground matches).

``saliency`` takes the raw attention row of [CLS] in the last block (eager attention, see
:mod:`vlens.match.attention`), keeps its patch part, averages the chosen heads (all by default) and min-max
normalises the result to 0..1 over the image (a constant map, which carries no evidence, becomes all ones so it
masks nothing). ``saliency_at`` samples the map at any descriptor grid's patch centres (bilinear, in the original
image's pixels), so it lines up with fused, strided or binned features alike.

Backbones without a [CLS] token (``sift``, ``pixels``) have no saliency: :func:`saliency_source` says so in one
line. A fusion uses its first part with a model (its ViT) and says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlens.errors import ConfigError


@dataclass(frozen=True)
class Saliency:
    map: torch.Tensor  # (h, w) in [0, 1] on the attention's patch grid
    image_size: tuple[int, int]  # original (W, H)
    input_size: tuple[int, int]  # model input (W_in, H_in)
    patch_size: int
    model: str  # the backbone that attended (a fusion's ViT part)
    heads: tuple[int, ...]  # heads averaged, counted from 1
    layer: int  # block counted from 1 (the last)
    stride: int | None = None  # input pixels between the map's patch centres (None: the patch size)

    @property
    def step(self) -> int:
        return self.stride or self.patch_size


def normalize01(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1]; a constant input gives all ones. Any shape."""
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


def head_mean(row: torch.Tensor, heads: tuple[int, ...] | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Average of the chosen heads (counted from 1; None = all) of a per-head map (heads, ...) -> (...)."""
    n = row.shape[0]
    chosen = tuple(range(1, n + 1)) if not heads else tuple(heads)
    bad = [h for h in chosen if not 1 <= h <= n]
    if bad:
        raise ConfigError(f"head {bad[0]} does not exist: this model has {n} heads (use 1..{n})")
    return row[[h - 1 for h in chosen]].mean(0), chosen


def saliency_source(spec: str | None) -> str:
    """The spec whose attention gives the saliency of ``spec`` (a fusion's first part with a model), or a one-line
    ConfigError for descriptors without a [CLS] token."""
    from vlens.match.features import load_backbone

    bb = load_backbone(spec)
    if bb.parts:
        learnt = [p for p, _ in bb.parts if p.has_model]
        if not learnt:
            raise ConfigError(f"'{bb.spec}' has no ViT part: no [CLS] token, so no saliency (drop "
                              "--saliency-threshold or fuse with a ViT, e.g. builtin:dino-tiny*0.2+sift:8*0.8)")
        return learnt[0].spec
    if not bb.has_model:
        raise ConfigError(f"'{bb.spec}' ({bb.model_type}) has no [CLS] token, so no saliency: drop "
                          "--saliency-threshold or pick a ViT / DINO / DINOv2 backbone")
    return bb.spec


def saliency(image, model: str | None = None, *, heads: tuple[int, ...] | None = None, size: int = 448,
             device=None, dtype=None, stride: int | None = None) -> Saliency:
    """The 0-1 saliency map of ``image`` (PIL image or path) from the last block's [CLS] attention of ``model``
    (a fusion: its ViT part), averaged over ``heads`` (counted from 1; None = all); ``stride``: on an
    overlapping patch grid (:mod:`vlens.match.strided`; attention memory grows with (patch / stride)^4)."""
    from vlens.match.attention import cls_attention

    att = cls_attention(image, saliency_source(model), layer=-1, size=size, device=device, dtype=dtype,
                        stride=stride)
    # back to the raw attention row (the reference's): AttentionMaps renormalised each head's patch part
    raw = att.maps * (1 - att.prefix_mass)[:, None, None]  # (heads, h, w)
    mean, chosen = head_mean(raw, heads)  # (h, w)
    return Saliency(normalize01(mean), att.image_size, att.input_size, att.patch_size, att.model, chosen,
                    att.layer, att.stride)


def saliency_at(sal: Saliency, centers: torch.Tensor) -> torch.Tensor:
    """The saliency at points ``centers`` (n, 2) in original-image pixels (e.g. a DenseFeatures' patch centres),
    bilinear between the attention grid's patch centres: (n,)."""
    from vlens.match.features import resample_grid

    return resample_grid(sal.map[..., None], sal.step, sal.patch_size / 2, sal.input_size, sal.image_size,
                         centers)[:, 0]


def mask_matches(m, sal_a: torch.Tensor, sal_b: torch.Tensor, threshold: float):
    """The matches of ``m`` whose source AND target ends have saliency >= ``threshold`` (``sal_a`` (N_a,) and
    ``sal_b`` (N_b,) per patch of each image's grid), in their order: foreground matches only."""
    keep = (sal_a[m.src_index] >= threshold) & (sal_b[m.dst_index] >= threshold)  # (N,)
    return m.select(torch.nonzero(keep).flatten())


def pair_saliency(img_a, img_b, fa, fb, model: str | None, *, heads=None, size: int = 448, device=None,
                  dtype=None) -> tuple[torch.Tensor, torch.Tensor, Saliency, Saliency]:
    """Saliency of both images sampled at their features' patch centres: ``(sal_a (N_a,), sal_b (N_b,), maps)``.

    The maps come from the plain patch grid whatever the features' stride: the eager attention of an overlapping
    grid costs (patch / stride)^4 the memory (16x at stride 4 of 8: ~14 GB for a ViT-S/8 at 448 px), and a
    foreground mask gains little from it; bilinear sampling puts it on the finer grid."""
    sa = saliency(img_a, model, heads=heads, size=size, device=device, dtype=dtype)
    sb = saliency(img_b, model, heads=heads, size=size, device=device, dtype=dtype)
    return saliency_at(sa, fa.centers), saliency_at(sb, fb.centers), sa, sb
