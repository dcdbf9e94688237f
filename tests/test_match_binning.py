"""Log-binned descriptors against a hand computation, an independent loop, and on every kind of backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.errors import ConfigError
from vlens.match.binning import box_mean, cells, log_bin
from vlens.match.features import extract_features

# a 4 x 4 grid holding 0..15 row-major:
#  0  1  2  3
#  4  5  6  7
#  8  9 10 11
# 12 13 14 15
GRID = torch.arange(16, dtype=torch.float32).reshape(4, 4, 1)


def test_log_bin_equals_hand_computation_at_a_corner_and_inside():
    out = log_bin(GRID, 2)  # (4, 4, 17)
    assert out.shape == (4, 4, 17)
    # patch (0, 0). Level 0: the 3 x 3 neighbours, rows/cols clamped into the grid (-1 -> 0).
    # Level 1: 3 x 3 cells centred 3 patches away, clamped, each the mean of the patches inside its window:
    # (0,0): {0,1,4,5} = 2.5; (0,3): {2,3,6,7} = 4.5; (3,0): {8,9,12,13} = 10.5; (3,3): {10,11,14,15} = 12.5
    assert out[0, 0].tolist() == [0, 0, 1, 0, 0, 1, 4, 4, 5,
                                  2.5, 2.5, 4.5, 2.5, 4.5, 10.5, 10.5, 12.5]
    # patch (1, 1): level 0 is its plain 3 x 3 neighbourhood. Level 1 cells (centre -> clamped centre: mean):
    # (-2,-2)->(0,0): 2.5; (-2,1)->(0,1): {0,1,2,4,5,6} = 3; (-2,4)->(0,3): 4.5; (1,-2)->(1,0): {0,1,4,5,8,9} = 4.5;
    # (1,4)->(1,3): {2,3,6,7,10,11} = 6.5; (4,-2)->(3,0): 10.5; (4,1)->(3,1): {8,9,10,12,13,14} = 11; (3,3): 12.5
    assert out[1, 1].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10,
                                  2.5, 3, 4.5, 4.5, 6.5, 10.5, 11, 12.5]
    # one level: the 3 x 3 neighbourhood only, 9 cells
    assert log_bin(GRID, 1)[1, 1].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]


def test_cells_hold_whole_descriptors_in_order():
    grid = torch.cat([GRID, GRID + 100], dim=-1)  # (4, 4, 2): channel 1 = channel 0 + 100
    out = log_bin(grid, 2).reshape(4, 4, 17, 2)  # cell-major: [cell 0 (d), cell 1 (d), ...]
    assert torch.equal(out[..., 1], out[..., 0] + 100)
    assert torch.equal(out[..., 4, :], grid)  # the middle cell of level 0 is the patch itself
    assert cells(2) == 17 and cells(3) == 25


def _loop_log_bin(desc: np.ndarray, levels: int) -> np.ndarray:
    """Independent reference: explicit loops over patches, cells and window members."""
    h, w, d = desc.shape
    out = np.zeros((h, w, cells(levels) * d))
    for y in range(h):
        for x in range(w):
            parts = []
            for k in range(levels):
                s = 3 ** k
                for i in (y - s, y, y + s):
                    for j in (x - s, x, x + s):
                        if k > 0 and i == y and j == x:
                            continue
                        ci, cj = min(max(i, 0), h - 1), min(max(j, 0), w - 1)
                        members = [desc[a, b] for a in range(ci - s // 2, ci + s // 2 + 1)
                                   for b in range(cj - s // 2, cj + s // 2 + 1) if 0 <= a < h and 0 <= b < w]
                        parts.append(np.mean(members, axis=0))
            out[y, x] = np.concatenate(parts)
    return out


@pytest.mark.parametrize(("h", "w", "levels"), [(5, 7, 2), (3, 11, 3), (1, 4, 2), (9, 9, 3)])
def test_log_bin_equals_a_loop_reference(h, w, levels):
    desc = torch.from_numpy(np.random.default_rng(h * w).normal(size=(h, w, 3)).astype(np.float32))
    ref = _loop_log_bin(desc.double().numpy(), levels)
    assert np.allclose(log_bin(desc, levels).numpy(), ref, atol=1e-5)


def test_box_mean_counts_only_patches_inside():
    assert box_mean(GRID, 3)[0, 0, 0] == 2.5 and box_mean(GRID, 3)[1, 1, 0] == 5
    assert box_mean(GRID, 81)[2, 1, 0] == 7.5  # a window larger than the grid: the grid's mean


def test_bad_levels_and_shapes_say_what_to_do():
    with pytest.raises(ConfigError, match="levels must be 1"):
        log_bin(GRID, 0)
    with pytest.raises(ConfigError, match="rows, cols, dim"):
        log_bin(GRID[..., 0], 2)


def _img(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_binning_on_any_backbone(tiny_vit):
    img = _img(64, 48)
    for spec in ("pixels:8", "sift:8", str(tiny_vit), f"{tiny_vit}*0.3+sift:8*0.7"):
        plain = extract_features([img], spec, size=64)[0]
        binned = extract_features([img], spec, size=64, bin_levels=2)[0]
        h, w, d = plain.descriptors.shape
        assert binned.descriptors.shape == (h, w, 17 * d) and binned.bin_levels == 2
        assert torch.equal(binned.descriptors.reshape(h, w, 17, d)[:, :, 4], plain.descriptors)
        assert torch.equal(binned.centers, plain.centers)
