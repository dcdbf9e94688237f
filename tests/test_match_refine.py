"""Sub-patch refinement: a known sub-pixel shift recovered, and refined points / cycle distances by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlens.errors import ConfigError
from vlens.match.features import DenseFeatures, patch_centers
from vlens.match.matching import match_features
from vlens.match.refine import refine_offsets, refine_points, window_similarity

STEP = 8  # px between patch centres


def _field(xy: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """A smooth descriptor field: Gaussian bumps on a 4 px lattice, evaluated at points (n, 2): (n, k)."""
    g = torch.arange(-16.0, 120.0, 4.0)
    anchors = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)  # (k, 2)
    return torch.exp(-torch.cdist(xy.double(), anchors.double()) ** 2 / (2 * sigma**2)).float()


def _features(desc: torch.Tensor, grid: tuple[int, int], step: int = STEP) -> DenseFeatures:
    h, w = grid
    return DenseFeatures(desc.reshape(h, w, -1), patch_centers(h, w, step), (w * step, h * step),
                         (w * step, h * step), step, "synthetic", -1, "token")


@pytest.mark.parametrize("method", ["soft", "quadratic"])
def test_known_subpixel_shift_is_recovered(method):
    # B shows A's scene moved by t: the point at p in A is at p + t in B. t is about half a patch on each axis,
    # so the nearest patch centre is ~4 px off on each axis; the refined point must be within 1 px.
    t = torch.tensor([3.7, 4.3])
    grid = (12, 12)
    centers = patch_centers(*grid, STEP)  # (144, 2)
    fa = _features(_field(centers), grid)
    fb = _features(_field(centers - t), grid)  # B's patch at c shows A's point c - t
    plain = match_features(fa, fb, pca=None)
    refined = match_features(fa, fb, pca=None, refine=method)
    truth = fa.centers + t
    inner = ((fa.centers >= 2 * STEP) & (fa.centers <= 9 * STEP)).all(1)  # window and truth inside the grid
    err_plain = (plain.dst_xy - truth).norm(dim=1)[inner]
    err_ref = (refined.dst_xy - truth).norm(dim=1)[inner]
    assert (plain.dst_xy - truth)[inner].abs().min() >= 3.6  # nearest patch: off by ~half a patch on both axes
    assert err_plain.min() > 5.0
    assert err_ref.max() < 1.0, err_ref.max()
    assert torch.equal(refined.dst_index, plain.dst_index)  # same patches, finer points
    assert torch.equal(refined.feature_distance, plain.feature_distance)


def _unit(*v):
    x = torch.tensor(v, dtype=torch.float64)
    return x / x.norm()


def _hand_pair():
    """3 x 3 grids, 10 px apart. A's centre is e1 with right neighbour u(0.9) and upper neighbour w(0.95); B's
    centre is e1 with left neighbour u(0.8) and lower neighbour w(0.9); every other patch is r (cos 0 with e1).
    u(s) = (s, sqrt(1 - s^2), 0), w(s) = (s, 0, sqrt(1 - s^2)) have cosine s with e1."""
    def u(s):
        return _unit(s, math.sqrt(1 - s * s), 0)

    def w(s):
        return _unit(s, 0, math.sqrt(1 - s * s))

    r = _unit(0, -1, -1)
    a = [r] * 9
    a[4], a[5], a[1] = _unit(1, 0, 0), u(0.9), w(0.95)
    b = [r] * 9
    b[4], b[3], b[7] = _unit(1, 0, 0), u(0.8), w(0.9)
    return (_features(torch.stack(a).float(), (3, 3), 10), _features(torch.stack(b).float(), (3, 3), 10))


def test_refined_point_and_cycle_distance_by_hand():
    fa, fb = _hand_pair()
    m = match_features(fa, fb, pca=None, refine="soft")
    assert int(m.dst_index[4]) == 4  # A's centre -> B's centre
    # forward window in B around its centre: left 0.8, below 0.9, centre 1, six cells at 0
    e = math.exp
    z = 1 + e(-0.2 / 0.05) + e(-0.1 / 0.05) + 6 * e(-1 / 0.05)
    dx, dy = -e(-4) / z, e(-2) / z  # the six zero cells cancel on both axes
    assert m.dst_xy[4].tolist() == pytest.approx([15 + 10 * dx, 15 + 10 * dy], abs=1e-4)
    # B's centre goes back to A's centre; window in A: right 0.9, above 0.95
    z2 = 1 + e(-0.1 / 0.05) + e(-0.05 / 0.05) + 6 * e(-1 / 0.05)
    bx, by = e(-2) / z2, -e(-1) / z2
    assert float(m.cycle_distance[4]) == pytest.approx(10 * math.hypot(bx, by), abs=1e-4)
    assert bool(m.mutual[4])  # still mutual at the patch level; the cycle distance is now sub-patch
    plain = match_features(fa, fb, pca=None)
    assert float(plain.cycle_distance[4]) == 0.0 and plain.dst_xy[4].tolist() == [15.0, 15.0]
    # quadratic: parabola through (0.8, 1, 0) along x and (0, 1, 0.9) along y
    q = match_features(fa, fb, pca=None, refine="quadratic")
    assert q.dst_xy[4].tolist() == pytest.approx([15 + 10 * 0.5 * 0.8 / -1.2, 15 + 10 * 0.5 * -0.9 / -1.1],
                                                 abs=1e-4)
    # back in A: x through (0, 1, 0.9), y through (0.95, 1, 0)
    cx, cy = 0.5 * -0.9 / -1.1, 0.5 * 0.95 / -1.05
    assert float(q.cycle_distance[4]) == pytest.approx(10 * math.hypot(cx, cy), abs=1e-4)


def test_window_at_the_border_and_bad_method():
    b = torch.eye(4)  # a 2 x 2 grid of orthogonal descriptors
    sim, inside = window_similarity(torch.eye(4)[:1], b, torch.tensor([0]), (2, 2))
    assert inside[0].tolist() == [[False, False, False], [False, True, True], [False, True, True]]
    assert sim[0, 1, 1] == 1 and sim[0, 1, 2] == 0
    off = refine_offsets(sim, inside, "quadratic")
    assert off.tolist() == [[0.0, 0.0]]  # a neighbour outside: no parabola
    xy = refine_points(torch.eye(4)[:1], b, torch.tensor([0]), (2, 2), (8, 8), "none")
    assert xy.tolist() == [[4.0, 4.0]]
    with pytest.raises(ConfigError, match="unknown refinement"):
        refine_points(torch.eye(4)[:1], b, torch.tensor([0]), (2, 2), (8, 8), "cubic")
    with pytest.raises(ConfigError, match="does not hold"):
        window_similarity(torch.eye(4)[:1], b, torch.tensor([0]), (3, 3))


def test_refined_cycle_ranking_keeps_mutual_matches_first_by_feature_distance():
    fa, fb = _hand_pair()
    plain, soft = match_features(fa, fb, pca=None), match_features(fa, fb, pca=None, refine="soft")
    assert float(soft.cycle_distance[4]) > 0 and bool(soft.mutual[4])  # refined, sub-patch, still mutual
    k = int(plain.mutual.sum())
    # the mutual matches still come first, in the same order (by feature distance): refinement noise does not
    # reshuffle them; only the non-mutual ones are ordered by their refined cycle distance
    assert torch.equal(soft.order("cycle")[:k], plain.order("cycle")[:k]) and bool(soft.mutual[soft.order()[:k]].all())
