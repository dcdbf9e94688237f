"""Position-embedding interpolation: a ViT's learned grid of position embeddings resized to the patch grid of the
input, under a named convention (the code that made a checkpoint decides which one reproduces it).

Conventions (all bicubic, computed in float32; the class and other prefix tokens keep their embeddings):

``exact``
    resize to the exact output grid, ``F.interpolate(size=(rows, cols))``: transformers' ``ViTModel`` and
    ``Dinov2Model`` (what a Hugging Face id such as ``facebook/dino-vits8`` or ``facebook/dinov2-small`` runs).
``exact-antialias``
    the same with ``antialias=True`` (a Keys a=-0.5 kernel, also when enlarging): transformers'
    ``Dinov2WithRegistersModel`` and timm's ``resample_abs_pos_embed``.
``offset``
    the original facebookresearch/dino and dinov2 code: ``scale_factor = (rows + 0.1) / side`` (and the same for
    columns), no antialiasing. PyTorch samples the source at ``(i + 0.5) * side / (rows + 0.1) - 0.5``, so the grid
    is slightly compressed towards its first row and column compared with ``exact``.

All of them return the table unchanged when the grid is the trained one and the pixel input is square (the
originals' and transformers' shortcut; with a non-square input whose grid happens to be the trained one, ``offset``
still resamples, as the original code does).

A strided patch embedding (stride below the patch size) has ``rows = 1 + (H - patch) // stride``: :func:`grid_of`.
:func:`install` puts :func:`interpolate` behind a Hugging Face ViT / DINOv2 embeddings module, the one place vlens
models resize their position embeddings.
"""

from __future__ import annotations

import types

CONVENTIONS = {
    "exact": "bicubic to the exact grid (transformers ViTModel / Dinov2Model)",
    "exact-antialias": "bicubic with antialiasing to the exact grid (transformers Dinov2WithRegistersModel, timm)",
    "offset": "bicubic by scale factor (grid + 0.1) / side (original DINO / DINOv2 code)",
}
CONFIG_KEY = "pos_embed_interpolation"  # where a model's convention is kept in its config.json
_TRANSFORMERS = {"vit": "exact", "deit": "exact", "dino": "exact", "dinov2": "exact",
                 "dinov2_with_registers": "exact-antialias"}
OFFSET = 0.1


def transformers_convention(model_type: str) -> str | None:
    """What transformers' own class for ``model_type`` does (None: it does not interpolate, e.g. CLIP)."""
    return _TRANSFORMERS.get(model_type)


def convention_of(config) -> str | None:
    """The convention a loaded model's config declares (``config.pos_embed_interpolation``), else the one of
    transformers' class for its model type; None for models that run at their trained size only."""
    declared = getattr(config, CONFIG_KEY, None)
    if declared:
        if declared not in CONVENTIONS:
            raise ValueError(f"unknown position-embedding interpolation '{declared}'; one of {', '.join(CONVENTIONS)}")
        return declared
    return transformers_convention(getattr(config, "model_type", ""))


def grid_of(height: int, width: int, patch: int, stride: int | None = None) -> tuple[int, int]:
    """Patch-grid (rows, cols) of an input of ``height`` x ``width`` pixels: ``1 + (H - patch) // stride``
    (= ``H // patch`` for the usual stride = patch)."""
    s = stride or patch
    return 1 + (height - patch) // s, 1 + (width - patch) // s


def resize_grid(grid, rows: int, cols: int, convention: str):
    """(1, side*side, D) grid embeddings -> (1, rows*cols, D) under ``convention`` (no shortcut: always resampled)."""
    import math

    import torch.nn.functional as F

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown position-embedding interpolation '{convention}'; one of {', '.join(CONVENTIONS)}")
    n, d = grid.shape[1], grid.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} grid position embeddings are not a square grid")
    x = grid.float().reshape(1, side, side, d).permute(0, 3, 1, 2)  # (1, D, side, side)
    if convention == "offset":
        x = F.interpolate(x, scale_factor=((rows + OFFSET) / side, (cols + OFFSET) / side), mode="bicubic")
    else:
        x = F.interpolate(x, size=(rows, cols), mode="bicubic", align_corners=False,
                          antialias=convention == "exact-antialias")
    if tuple(x.shape[-2:]) != (rows, cols):  # floor((rows + 0.1) / side * side) is rows for any grid vlens meets
        raise ValueError(f"interpolation gave a {tuple(x.shape[-2:])} grid, expected ({rows}, {cols})")
    return x.permute(0, 2, 3, 1).reshape(1, rows * cols, d).to(grid.dtype)  # (1, rows*cols, D)


def interpolate(pos, rows: int, cols: int, convention: str, *, prefix: int = 1, square_input: bool = True):
    """(1, prefix + side*side, D) position embeddings (the first ``prefix`` for class/register tokens) ->
    (1, prefix + rows*cols, D). Unchanged when (rows, cols) is the trained grid and ``square_input`` (the pixel
    input was square), as in the code each convention comes from."""
    native = rows == cols and rows * cols == pos.shape[1] - prefix
    if native and (square_input or convention != "offset"):  # elsewhere resampling to the same grid is identity
        return pos
    import torch

    return torch.cat([pos[:, :prefix], resize_grid(pos[:, prefix:], rows, cols, convention)], dim=1)


def install(model, convention: str | None = None) -> str | None:
    """Make a Hugging Face ViT / DINOv2 model (or its ``embeddings`` module) resize its position embeddings with
    :func:`interpolate` under ``convention`` (default: what its config declares, :func:`convention_of`). The grid
    comes from the patch projection's kernel and stride, so a strided patch embedding gets its own grid. Returns the
    convention installed (None: the model has no such embeddings, nothing changed)."""
    emb = getattr(model, "embeddings", model)
    if not (hasattr(emb, "position_embeddings") and hasattr(emb, "patch_embeddings")
            and hasattr(emb, "interpolate_pos_encoding")):
        return None
    config = getattr(model, "config", None) or getattr(emb, "config", None)
    convention = convention or convention_of(config)
    if convention is None:
        return None
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown position-embedding interpolation '{convention}'; one of {', '.join(CONVENTIONS)}")

    def interpolate_pos_encoding(self, embeddings, height: int, width: int):
        proj = self.patch_embeddings.projection
        rows, cols = grid_of(height, width, proj.kernel_size[0], proj.stride[0])
        if proj.kernel_size[1] != proj.kernel_size[0] or proj.stride[1] != proj.stride[0]:
            cols = 1 + (width - proj.kernel_size[1]) // proj.stride[1]
        return interpolate(self.position_embeddings, rows, cols, self.vlens_pos_embed_interpolation,
                           square_input=height == width)

    emb.vlens_pos_embed_interpolation = convention
    emb.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, emb)
    if config is not None:
        setattr(config, CONFIG_KEY, convention)
    return convention
