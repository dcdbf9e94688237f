"""Sub-patch refinement: move each nearest-neighbour match off the patch centre, using the similarities of the
3 x 3 window of target patches around it.

A match found on an ``s``-pixel patch grid is a patch centre, so it is off by up to ``s / 2`` pixels per axis
however good the descriptor (at 448 px with 8 px patches that is ~11 px of a 640 px photo). The neighbours of
the best patch say which side the true point is on:

- ``soft``: a soft-argmax over the 3 x 3 window. With ``s_k`` the cosine similarity of the query to window patch
  ``k`` (centre ``c_k``) and ``s_max`` the largest, the refined point is ``sum_k w_k c_k / sum_k w_k`` with
  ``w_k = exp((s_k - s_max) / T)``, ``T`` = :data:`TEMPERATURE` (0.05). Window patches outside the grid are
  left out.
- ``quadratic``: a parabola through the similarities of the best patch and its two neighbours, along x and
  along y separately; the refined point is each parabola's vertex, ``offset = (s_-1 - s_+1) / (2 (s_-1 - 2 s_0
  + s_+1))`` patches, clipped to +-0.5 (0 where a neighbour is outside the grid or the three are not a peak).
- ``none``: the patch centre.

Cycle distance with refinement: the target patch of a match has its own nearest neighbour back in the source,
refined the same way (the 3 x 3 window of source patches around it, queried with the target patch's
descriptor); the cycle distance is the distance from the source patch centre to that refined point. Without
refinement this is exactly :func:`vlens.match.matching.match_descriptors`' cycle distance.

Everything here is pure: projected descriptors and grid geometry in, points out. Coordinates follow
:mod:`vlens.match.features` (patch ``(i, j)`` of a grid with a step of ``(sx, sy)`` pixels is centred at
``((j + 0.5) sx, (i + 0.5) sy)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from vlens.errors import ConfigError

METHODS = ("none", "soft", "quadratic")
TEMPERATURE = 0.05  # soft-argmax temperature, in cosine-similarity units
_CHUNK = 4096  # queries per block: the gathered window is (chunk, 9, d)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown refinement '{method}'; one of {', '.join(METHODS)}")
    return method


def window_similarity(query: torch.Tensor, b: torch.Tensor, nn: torch.Tensor, grid: tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each query (n, d) to the 3 x 3 window of ``b`` (m = h*w, d, row-major ``grid``)
    around its match ``nn`` (n,). Returns ``(sim (n, 3, 3), inside (n, 3, 3) bool)``; window cell ``[1, 1]`` is
    the match itself, ``[r, c]`` is the patch ``(r - 1, c - 1)`` rows/columns away; cells outside are 0."""
    h, w = grid
    if b.shape[0] != h * w:
        raise ConfigError(f"the descriptor grid {h}x{w} does not hold {b.shape[0]} patches")
    row, col = nn // w, nn % w  # (n,)
    d = torch.arange(-1, 2, device=nn.device)
    rr = row[:, None, None] + d[None, :, None]  # (n, 3, 1)
    cc = col[:, None, None] + d[None, None, :]  # (n, 1, 3)
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)  # (n, 3, 3)
    idx = (rr.clamp(0, h - 1) * w + cc.clamp(0, w - 1)).reshape(-1, 9)  # (n, 9)
    qn = torch.nn.functional.normalize(query.float(), dim=-1)
    bn = torch.nn.functional.normalize(b.float(), dim=-1)
    sims = []
    for r0 in range(0, qn.shape[0], _CHUNK):
        win = bn[idx[r0:r0 + _CHUNK]]  # (c, 9, d)
        sims.append(torch.einsum("cd,ckd->ck", qn[r0:r0 + _CHUNK], win))  # (c, 9)
    sim = torch.cat(sims).reshape(-1, 3, 3) if sims else torch.zeros(0, 3, 3)
    return torch.where(inside, sim, torch.zeros_like(sim)), inside


def refine_offsets(sim: torch.Tensor, inside: torch.Tensor, method: str, temperature: float = TEMPERATURE
                   ) -> torch.Tensor:
    """Sub-patch offsets (n, 2) = (dx, dy) in patches from the window similarities of :func:`window_similarity`."""
    check_method(method)
    n = sim.shape[0]
    if method == "none" or n == 0:
        return torch.zeros(n, 2)
    if method == "soft":
        if temperature <= 0:
            raise ConfigError(f"the soft-argmax temperature must be positive, got {temperature}")
        s = torch.where(inside, sim, torch.full_like(sim, -torch.inf))
        wts = torch.exp((s - s.amax(dim=(1, 2), keepdim=True)) / temperature)  # (n, 3, 3), 0 outside
        wts = wts / wts.sum(dim=(1, 2), keepdim=True)
        d = torch.tensor([-1.0, 0.0, 1.0])
        return torch.stack([(wts.sum(1) * d).sum(1), (wts.sum(2) * d).sum(1)], dim=1)  # (n, 2)
    out = []
    for left, mid, right, ok in ((sim[:, 1, 0], sim[:, 1, 1], sim[:, 1, 2], inside[:, 1, 0] & inside[:, 1, 2]),
                                 (sim[:, 0, 1], sim[:, 1, 1], sim[:, 2, 1], inside[:, 0, 1] & inside[:, 2, 1])):
        curv = left - 2 * mid + right  # < 0 at a peak
        peak = ok & (curv < 0)
        off = 0.5 * (left - right) / torch.where(peak, curv, torch.ones_like(curv))
        out.append(torch.where(peak, off.clamp(-0.5, 0.5), torch.zeros_like(off)))
    return torch.stack(out, dim=1)


def refine_points(query: torch.Tensor, b: torch.Tensor, nn: torch.Tensor, grid: tuple[int, int],
                  step: tuple[float, float], method: str = "soft", temperature: float = TEMPERATURE,
                  origin: tuple[float, float] | None = None) -> torch.Tensor:
    """Refined location (n, 2), in the target's pixels, of each query (n, d) matched to patch ``nn`` (n,) of the
    target descriptors ``b`` (h*w, d) on ``grid`` (h, w) with patch centres ``step`` = (sx, sy) pixels apart, the
    first one at ``origin`` (x, y) pixels (None: half a step, the grid without overlap; :func:`grid_origin`)."""
    check_method(method)
    nn = nn.long()
    w = grid[1]
    col, row = (nn % w).float(), (nn // w).float()
    if method == "none":
        off = torch.zeros(nn.shape[0], 2)
    else:
        off = refine_offsets(*window_similarity(query, b, nn, grid), method, temperature)
    if origin is None:
        return torch.stack([(col + 0.5 + off[:, 0]) * step[0], (row + 0.5 + off[:, 1]) * step[1]], dim=1)
    return torch.stack([(col + off[:, 0]) * step[0] + origin[0], (row + off[:, 1]) * step[1] + origin[1]], dim=1)


def grid_step(features) -> tuple[float, float]:
    """Pixels between neighbouring patch centres of a :class:`~vlens.match.features.DenseFeatures`, (sx, sy)."""
    return features.step_px


def grid_origin(features) -> tuple[float, float] | None:
    """Pixels (x, y) from the image's corner to the first patch centre of a
    :class:`~vlens.match.features.DenseFeatures`; None when that is half a step (no overlapping patches)."""
    if 2 * features.origin == features.step:
        return None
    sx, sy = features.scale
    return features.origin * sx, features.origin * sy


def refine_matches(matches, a: torch.Tensor, b: torch.Tensor, grid_a: tuple[int, int], grid_b: tuple[int, int],
                   step_a: tuple[float, float], step_b: tuple[float, float], method: str = "soft",
                   temperature: float = TEMPERATURE, *, nearest: Callable,
                   origin_a: tuple[float, float] | None = None, origin_b: tuple[float, float] | None = None,
                   back_of: torch.Tensor | None = None):
    """``matches`` (a :class:`~vlens.match.matching.Matches` of source rows ``a`` (n, d) into target rows
    ``b`` (m, d), same projection) with refined target points and refined cycle distances (module docstring).
    Feature distances, indices and ``mutual`` stay those of the patches. ``nearest(q, a)``: the nearest-neighbour
    search, ``(indices (k,), distances (k,))`` of rows ``q`` in ``a`` (the caller's, so that this module does not
    import :mod:`vlens.match.matching`, which calls it)."""
    check_method(method)
    if method == "none" or len(matches) == 0:
        return matches
    src, dst = matches.src_index.long().cpu(), matches.dst_index.long().cpu()
    a, b = a.cpu(), b.cpu()
    dst_xy = refine_points(a[src], b, dst, grid_b, step_b, method, temperature, origin_b)
    uniq, inv = torch.unique(dst, return_inverse=True)
    if back_of is not None:  # the caller's B -> A search (matching runs both directions): not searched twice
        back = back_of.long().cpu()[uniq]
    else:
        back, _ = nearest(b[uniq], a)  # each target patch's nearest source patch
    back_xy = refine_points(b[dst], a, back[inv], grid_a, step_a, method, temperature, origin_a)  # (n, 2)
    src_xy = matches.src_xy.cpu()
    return replace(matches, dst_xy=dst_xy.to(matches.dst_xy.dtype),
                   cycle_distance=(src_xy.float() - back_xy).norm(dim=1).to(matches.cycle_distance.dtype))

DEFAULT_REFINE = "quadratic"
"""What ``vlens match`` and ``vlens explore point`` use unless told, picked by measurement on held-out real pairs
(`vlens bench pairs`, 448 px, 8 px patches; benchmarks/RESULTS.md): both refinements lift dense SIFT's PCK@5 on the
12 opencv:heldout warps from 59.0 to ~69 and PCK@1 from 3.3 to 13.5 (soft) / 16.1 (quadratic); quadratic is level
with or slightly above soft at PCK@5 for the offline default (37.5 / 58.3 / 71.8 vs 37.4 / 57.6 / 71.5 on graffiti /
aloe / heldout). The library's own default stays ``none`` (patch centres), as before."""
