"""Matching against an independent brute-force loop, the cycle distance on a hand-made case, ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlens.errors import ConfigError
from vlens.match.matching import Matches, match_descriptors, nearest_neighbors, nearest_neighbors_both


def brute_force(a: np.ndarray, b: np.ndarray):
    idx, dist = [], []
    for row in a:
        d = np.sqrt(((b - row) ** 2).sum(1))
        j = int(np.argmin(d))
        idx.append(j)
        dist.append(d[j])
    return np.array(idx), np.array(dist)


@pytest.mark.parametrize("tile_bytes", [64 * 2**20, 64 * 1024, 16 * 1024])  # one tile / 2x9 tiles / 2x33 tiles
def test_nearest_neighbors_equals_brute_force(tile_bytes):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 24, generator=g, dtype=torch.float64)
    b = torch.randn(257, 24, generator=g, dtype=torch.float64)
    idx, dist = nearest_neighbors(a, b, tile_bytes=tile_bytes)
    ref_idx, ref_dist = brute_force(a.numpy(), b.numpy())
    assert idx.tolist() == ref_idx.tolist()
    np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-12, atol=1e-12)
    ab_i, ab_d, ba_i, ba_d = nearest_neighbors_both(a, b, tile_bytes=tile_bytes)  # one pass, both directions
    ref_ba_i, ref_ba_d = brute_force(b.numpy(), a.numpy())
    assert ab_i.tolist() == ref_idx.tolist() and ba_i.tolist() == ref_ba_i.tolist()
    np.testing.assert_allclose(ab_d.numpy(), ref_dist, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ba_d.numpy(), ref_ba_d, rtol=1e-12, atol=1e-12)


def test_nearest_neighbors_float32_and_exact_duplicates():
    g = torch.Generator().manual_seed(1)
    b = torch.randn(100, 16, generator=g)
    a = b[[5, 17, 99]].clone()  # exact copies: distance must come out 0, not sqrt(rounding noise)
    idx, dist = nearest_neighbors(a, b)
    assert idx.tolist() == [5, 17, 99]
    assert dist.abs().max() == 0


def test_cycle_distance_hand_made():
    # A has 3 patches on a line at x = 0.5, 1.5, 2.5 (1-D descriptors = their own values); B has 2 patches.
    desc_a = torch.tensor([[0.0], [1.0], [2.0]])
    desc_b = torch.tensor([[0.1], [1.8]])
    xy_a = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    xy_b = torch.tensor([[10.0, 0.0], [20.0, 0.0]])
    m = match_descriptors(desc_a, desc_b, xy_a, xy_b)
    # A->B: 0->b0, 1->b1 (|1-1.8|=0.8 < 0.9), 2->b1.  B->A: b0->a0, b1->a2.
    assert m.dst_index.tolist() == [0, 1, 1]
    # cycles: a0->b0->a0 (0 px), a1->b1->a2 (1 px), a2->b1->a2 (0 px)
    assert m.cycle_distance.tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert m.mutual.tolist() == [True, False, True]
    assert m.feature_distance.tolist() == pytest.approx([0.1, 0.8, 0.2])
    assert m.dst_xy.tolist() == [[10.0, 0.0], [20.0, 0.0], [20.0, 0.0]]
    # ranking: cycle ties (a0, a2 at 0 px) broken by feature distance; feature ranks by distance alone
    assert m.order("cycle").tolist() == [0, 2, 1]
    assert m.order("feature").tolist() == [0, 2, 1]
    assert m.score("cycle").tolist() == pytest.approx([0.0, -1.0, 0.0])
    top = m.top(2, "cycle")
    assert isinstance(top, Matches) and len(top) == 2 and top.src_index.tolist() == [0, 2]
    rec = m.ranked("feature").to_records()[0]
    assert rec["src_xy"] == [0.5, 0.5] and rec["cycle_score"] == 0.0 and rec["mutual"] is True


def test_feature_and_cycle_rankings_differ():
    desc_a = torch.tensor([[0.0], [1.0], [2.0]])
    desc_b = torch.tensor([[0.5], [1.05]])
    xy = torch.tensor([[0.0, 0.0], [5.0, 0.0], [9.0, 0.0]])
    m = match_descriptors(desc_a, desc_b, xy, xy[:2])
    assert m.order("feature")[0] == 1  # closest descriptor
    assert m.order("cycle")[-1] == 2  # 2 -> b1 -> a1: 4 px away, the only broken cycle


def test_bad_inputs():
    with pytest.raises(ConfigError, match="do not match"):
        nearest_neighbors(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="empty"):
        nearest_neighbors(torch.zeros(0, 4), torch.zeros(3, 4))
    m = match_descriptors(torch.eye(2), torch.eye(2), torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="unknown score"):
        m.score("vibes")
