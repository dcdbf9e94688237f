"""Log-binned descriptors, as in "Deep ViT Features as Dense Visual Descriptors" (Amir et al.): each patch's
descriptor concatenated with its neighbouring cells at growing scales, so it carries the context around it.

Layout, for ``levels`` L (the reference's default L = 2 gives 17 cells, so 17 x d dimensions):

- level 0 (cells of 1 patch): the 3 x 3 neighbourhood at offsets -1, 0, +1 in rows and columns, 9 cells, the
  patch itself in the middle (cell 4);
- level k >= 1 (cells of 3^k x 3^k patches, average-pooled): the 8 cells whose centres sit at offsets -3^k, 0,
  +3^k around the patch (the centre cell left out: level 0 already holds the patch).

Cells are taken row-major (top-left first) within a level, level 0 first: ``[level-0 cells (9 d), level-1 cells
(8 d), ...]``, 1 + 8 L cells in all.

Borders (the reference's handling, written independently here): a pooling window that hangs over the grid's
edge averages only the patches inside it (no zero padding), and a cell whose centre falls outside the grid takes
the cell centred on the nearest grid patch (its row and column clamped to the grid). So a border patch repeats
its own edge's context instead of reading zeros, and every descriptor has the same length whatever the grid.
"""

from __future__ import annotations

import dataclasses

import torch

from vlens.errors import ConfigError

DEFAULT_LEVELS = 2
MATCH_BIN_LEVELS = 2
"""What `vlens match`, `vlens explore point` and the web Match tab bin with unless told (--no-bin): measured on
graffiti, aloe and the held-out warps together (README "Overlapping patches, log-binning"), binning lifts every
descriptor's mean PCK@5 at stride 8 (dino-tiny 26.2 -> 64.6, dense SIFT 52.1 -> 54.4, quadratic refinement). The
library's own default (``extract_features(bin_levels=0)``) stays off."""
MAX_LEVELS = 5  # cells of 81 x 81 patches: beyond any grid vlens makes


def cells(levels: int) -> int:
    """Cells per binned descriptor: 1 + 8 ``levels``."""
    return 1 + 8 * levels


def check_levels(levels: int) -> int:
    if not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ConfigError(f"log-binning levels must be 1..{MAX_LEVELS} (2 = cells of 1 and of 3 x 3 patches, the "
                          f"reference's default), got {levels}")
    return levels


def box_mean(desc: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the k x k window centred on every patch (k odd), counting only patches inside the grid:
    (h, w, d) -> (h, w, d). Summed-area table (float64), so the cost does not grow with k."""
    h, w, d = desc.shape
    r = k // 2
    s = torch.zeros(h + 1, w + 1, d, dtype=torch.float64, device=desc.device)  # (h+1, w+1, d)
    s[1:, 1:] = desc.double().cumsum(0).cumsum(1)  # s[i, j] = sum of desc[:i, :j]
    top = (torch.arange(h, device=desc.device) - r).clamp(0, h)  # (h,) first row in the window
    bot = (torch.arange(h, device=desc.device) + r + 1).clamp(0, h)  # (h,) one past the last row
    left = (torch.arange(w, device=desc.device) - r).clamp(0, w)  # (w,)
    right = (torch.arange(w, device=desc.device) + r + 1).clamp(0, w)  # (w,)
    total = s[bot][:, right] - s[top][:, right] - s[bot][:, left] + s[top][:, left]  # (h, w, d)
    count = ((bot - top)[:, None] * (right - left)[None, :]).to(torch.float64)  # (h, w) patches inside
    return (total / count[..., None]).to(desc.dtype)


def log_bin(desc: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """Log-binned descriptors of a grid (module docstring): (h, w, d) -> (h, w, (1 + 8 levels) d)."""
    check_levels(levels)
    if desc.ndim != 3:
        raise ConfigError(f"log-binning needs a (rows, cols, dim) grid, got shape {tuple(desc.shape)}")
    h, w, _ = desc.shape
    rows = torch.arange(h, device=desc.device)  # (h,)
    cols = torch.arange(w, device=desc.device)  # (w,)
    out = []
    for k in range(levels):
        step = 3 ** k
        pooled = desc if k == 0 else box_mean(desc, step)  # (h, w, d) cell of step x step centred on each patch
        for di in (-step, 0, step):
            r = (rows + di).clamp(0, h - 1)  # (h,) the cell centre's row, clamped into the grid
            for dj in (-step, 0, step):
                if k > 0 and di == 0 and dj == 0:
                    continue  # the centre cell of a coarser level: level 0 holds the patch itself
                c = (cols + dj).clamp(0, w - 1)  # (w,)
                out.append(pooled[r][:, c])  # (h, w, d)
    return torch.cat(out, dim=-1)  # (h, w, (1 + 8 levels) d)


def bin_features(f, levels: int = DEFAULT_LEVELS):
    """A :class:`~vlens.match.features.DenseFeatures` with log-binned descriptors (same grid and centres)."""
    return dataclasses.replace(f, descriptors=log_bin(f.descriptors, levels).contiguous(), bin_levels=levels)
