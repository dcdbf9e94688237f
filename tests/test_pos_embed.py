"""Position-embedding interpolation conventions (``vlens.models.pos_embed``): each checked against a bicubic
resampling computed by hand (Keys' cubic convolution, PyTorch's half-pixel source coordinates, written here in
numpy), and transformers' own ViT / DINOv2 classes reproduced exactly once :func:`install` replaced their method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlens.models import pos_embed


def _keys(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel at distance ``t`` (PyTorch's bicubic uses a = -0.75)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _resample_1d(n_in: int, n_out: int, step: float) -> np.ndarray:
    """(n_out, n_in) weights: output i samples the input at (i + 0.5) * step - 0.5, four taps, edges clamped."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * step - 0.5
        x0 = math.floor(src)
        for k in range(-1, 3):
            w[i, min(max(x0 + k, 0), n_in - 1)] += _keys(src - (x0 + k))
    return w


def _by_hand(grid: np.ndarray, rows: int, cols: int, convention: str) -> np.ndarray:
    """(side, side, D) -> (rows, cols, D). exact: step side/rows; offset: step side/(rows + 0.1), the reciprocal of
    the scale factor the original DINO code passes."""
    side = grid.shape[0]
    off = 0.1 if convention == "offset" else 0.0
    wr = _resample_1d(side, rows, side / (rows + off))
    wc = _resample_1d(side, cols, side / (cols + off))
    return np.einsum("ri,cj,ijd->rcd", wr, wc, grid)


def test_keys_kernel_by_hand():
    # a hand check of the helper itself: a sample halfway between pixels takes -0.09375, 0.59375 of the neighbours
    assert _keys(0.5) == pytest.approx(0.59375) and _keys(1.5) == pytest.approx(-0.09375) and _keys(0) == 1


@pytest.mark.parametrize("convention", ["exact", "offset"])
@pytest.mark.parametrize("rows,cols", [(5, 5), (4, 7), (2, 3), (8, 6)])
def test_conventions_match_a_hand_computation(convention, rows, cols):
    side, d = 4, 3
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(1, side * side, d, generator=g)
    got = pos_embed.resize_grid(grid, rows, cols, convention).reshape(rows, cols, d).numpy()
    want = _by_hand(grid.reshape(side, side, d).numpy().astype(np.float64), rows, cols, convention)
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 rounding; conventions differ by >1e-2


def test_offset_differs_from_exact_and_antialias_from_both():
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(1, 37 * 37, 8, generator=g)
    out = {c: pos_embed.resize_grid(grid, 23, 31, c) for c in pos_embed.CONVENTIONS}
    assert (out["offset"] - out["exact"]).abs().max() > 1e-2
    assert (out["exact-antialias"] - out["exact"]).abs().max() > 1e-2


def test_shortcut_keeps_the_table_and_offset_resamples_a_non_square_input():
    pos = torch.randn(1, 1 + 16, 4)
    for c in pos_embed.CONVENTIONS:
        assert pos_embed.interpolate(pos, 4, 4, c) is pos
    # the original code resamples a non-square input whose grid is the trained one (by its +0.1 offset)
    moved = pos_embed.interpolate(pos, 4, 4, "offset", square_input=False)
    assert moved.shape == pos.shape and not torch.equal(moved, pos) and torch.equal(moved[:, 0], pos[:, 0])
    assert torch.allclose(pos_embed.interpolate(pos, 4, 4, "exact", square_input=False), pos)


def test_grid_of_a_strided_patch_embedding():
    assert pos_embed.grid_of(224, 224, 8) == (28, 28)
    assert pos_embed.grid_of(230, 100, 8) == (28, 12)
    assert pos_embed.grid_of(224, 112, 8, stride=4) == (1 + (224 - 8) // 4, 1 + (112 - 8) // 4)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="one of exact, exact-antialias, offset"):
        pos_embed.resize_grid(torch.zeros(1, 4, 2), 3, 3, "nearest")


def _tiny(model_type: str):
    import transformers

    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8)
    cfg = {"vit": transformers.ViTConfig, "dinov2": transformers.Dinov2Config,
           "dinov2_with_registers": transformers.Dinov2WithRegistersConfig}[model_type](**kw)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(cfg).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_()
    return model


@pytest.mark.parametrize("model_type", ["vit", "dinov2", "dinov2_with_registers"])
def test_installed_transformers_convention_reproduces_transformers(model_type):
    model = _tiny(model_type)
    kw = {"interpolate_pos_encoding": True} if model_type == "vit" else {}
    x = torch.randn(1, 3, 48, 72)
    with torch.no_grad():
        want = model(pixel_values=x, **kw).last_hidden_state
        assert pos_embed.install(model) == pos_embed.transformers_convention(model_type)
        got = model(pixel_values=x, **kw).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6)


def test_installed_offset_convention_adds_the_offset_table():
    model = _tiny("vit")
    assert pos_embed.install(model, "offset") == "offset" and model.config.pos_embed_interpolation == "offset"
    emb = model.embeddings
    x = torch.randn(1, 3, 40, 56)  # a 5 x 7 grid from the trained 4 x 4
    with torch.no_grad():
        got = emb(x, interpolate_pos_encoding=True)
        tokens = torch.cat([emb.cls_token, emb.patch_embeddings.projection(x).flatten(2).transpose(1, 2)], dim=1)
        table = _by_hand(emb.position_embeddings[0, 1:].reshape(4, 4, 32).double().numpy(), 5, 7, "offset")
    want = tokens + torch.cat([emb.position_embeddings[:, :1], torch.from_numpy(table).float().reshape(1, 35, 32)], 1)
    assert torch.allclose(got, want, atol=1e-5)
