"""Point correspondence heatmaps, [CLS] attention maps and the `vlens explore` commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.match.explore import correspond, patch_at, point_match, project_pair, similarity_at_image_size
from vlens.match.features import extract_features


def _texture(seed: int = 0, size: int = 128) -> np.ndarray:
    """A smooth random colour texture (every 8 px patch different), (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 4, size // 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def _shifted_pair(dx: int = 16, dy: int = 8, side: int = 64):
    """A = a window of a texture, B = the same-size window shifted by (dx, dy): A's pixel p is B's p - (dx, dy)."""
    tex = _texture()
    a = Image.fromarray(tex[:side, :side])
    b = Image.fromarray(tex[dy:dy + side, dx:dx + side])
    return a, b


@pytest.mark.parametrize("xy", [(30.0, 20.0), (45.5, 60.2), (17.0, 9.0)])
def test_heatmap_peak_is_at_the_known_location_of_a_shifted_pair(xy):
    dx, dy = 16, 8
    a, b = _shifted_pair(dx, dy)
    fa, fb = extract_features([a, b], "pixels:8", size=64)
    pm = point_match(fa, fb, xy, pca=None, top_k=3)
    # the patch under the point, moved by the shift, is B's patch with identical pixels
    col, row = int(xy[0] // 8), int(xy[1] // 8)
    truth = ((col + 0.5) * 8 - dx, (row + 0.5) * 8 - dy)
    assert pm.src_xy == ((col + 0.5) * 8, (row + 0.5) * 8)
    assert pm.best.xy == truth
    assert pm.best.feature_distance == pytest.approx(0.0, abs=1e-5)
    peak = int(pm.similarity.argmax())
    gw = fb.grid[1]
    assert ((peak % gw + 0.5) * 8, (peak // gw + 0.5) * 8) == truth  # the heatmap's peak, not only the NN
    assert pm.cycle_distance == 0.0 and pm.cycle_xy == pm.src_xy
    assert [c.similarity for c in pm.candidates] == sorted((c.similarity for c in pm.candidates), reverse=True)
    # drawn at B's size, the peak stays at the true location (within one patch)
    heat = similarity_at_image_size(pm, b.size)
    assert heat.shape == (b.height, b.width)
    py, px = np.unravel_index(int(heat.argmax()), heat.shape)
    assert abs(px + 0.5 - truth[0]) <= 8 and abs(py + 0.5 - truth[1]) <= 8


def test_point_match_agrees_with_the_matcher(tiny_vit):
    """Same PCA, same nearest neighbour and cycle distance as `vlens match` for every patch of A."""
    from vlens.match import match_features

    a, b = _shifted_pair(8, 8)
    fa, fb = extract_features([a, b], str(tiny_vit), size=64)
    m = match_features(fa, fb, pca=5)
    pa, pb = project_pair(fa, fb, 5)
    for i, (x, y) in enumerate(fa.centers.tolist()):
        pm = correspond(pa, pb, fa, fb, (x, y), top_k=2)
        assert pm.src_index == i and pm.best.index == int(m.dst_index[i])
        assert pm.cycle_distance == pytest.approx(float(m.cycle_distance[i]), abs=1e-4)
        assert pm.best.feature_distance == pytest.approx(float(m.feature_distance[i]), abs=1e-4)


def test_points_outside_the_image_are_refused():
    from vlens.errors import ConfigError

    a, b = _shifted_pair()
    fa, _ = extract_features([a, b], "pixels:8", size=64)
    assert patch_at(fa, (63.9, 0)) == 7
    for xy in [(64, 3), (-1, 3), (3, 64)]:
        with pytest.raises(ConfigError, match="outside the image"):
            patch_at(fa, xy)


def test_real_photo_and_its_shifted_crop_with_the_builtin_backbone():
    from vlens.data.photos import photo_paths
    from vlens.images import load_image

    img = load_image(photo_paths(("chelsea",))[0])  # 451 x 300
    dx, dy = 40, 24
    b = img.crop((dx, dy, dx + 400, dy + 276))
    fa, fb = extract_features([img, b], "builtin:dino-tiny", size=224)
    for xy in [(300, 120), (190, 240)]:  # the cat's left eye, its nose
        pm = point_match(fa, fb, xy)
        err = np.hypot(pm.best.xy[0] - (xy[0] - dx), pm.best.xy[1] - (xy[1] - dy))
        assert err < 1.5 * 8 * 451 / 224, (xy, pm.best.xy)  # within ~1.5 patches


# ---------------------------------------------------------------------------------------------- attention


def _hand_cls_attention(bb, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax(q k^T / sqrt(d)) of the last ViT block's [CLS] row, from its weights: (heads, tokens)."""
    with torch.no_grad():
        hs = bb.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        block = bb.blocks()[-1]
        h = block.layernorm_before(hs[-2])[0]  # (T, D) input of the last block, normalised
        d = h.shape[-1] // heads
        q = block.attention.q_proj(h).reshape(-1, heads, d).transpose(0, 1)  # (heads, T, d)
        k = block.attention.k_proj(h).reshape(-1, heads, d).transpose(0, 1)
        return torch.softmax(q[:, 0:1] @ k.transpose(1, 2) / d**0.5, dim=-1)[:, 0]  # (heads, T)


def test_attention_maps_sum_to_one_and_match_a_hand_computation(tiny_vit):
    from vlens.match.attention import cls_attention
    from vlens.match.features import _to_tensor, load_backbone

    img = Image.fromarray(_texture(1, 96)[:, :80])  # 80 x 96
    att = cls_attention(img, str(tiny_vit), size=48)
    bb = load_backbone(str(tiny_vit))
    assert att.heads == 2 and tuple(att.maps.shape[1:]) == (6, 5)  # 48 x 40 input, 8 px patches
    assert torch.allclose(att.maps.sum((1, 2)), torch.ones(2), atol=1e-5)
    assert torch.allclose(att.mean.sum(), torch.tensor(1.0), atol=1e-5)
    x = _to_tensor(img, 40, 48, bb.mean, bb.std)[None]
    ref = _hand_cls_attention(bb, x, 2)  # (2, 1 + 30)
    assert torch.allclose(ref.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(att.prefix_mass, ref[:, 0], atol=1e-5)
    assert torch.allclose(att.maps.reshape(2, -1), ref[:, 1:] / ref[:, 1:].sum(-1, keepdim=True), atol=1e-5)
    # the shared model keeps its fast attention kernel; the copy is eager
    assert bb.model.config._attn_implementation != "eager"


def test_attention_is_drawn_at_image_size(tiny_dinov2, tmp_path):
    from vlens.match.attention import cls_attention
    from vlens.match.explore_figures import attention_figure, attention_overlays

    img = Image.fromarray(_texture(2, 64)[:, :50])  # 50 x 64
    att = cls_attention(img, str(tiny_dinov2), size=64)
    assert torch.allclose(att.maps.sum((1, 2)), torch.ones(att.heads), atol=1e-5)
    up = att.at_image_size()
    assert tuple(up.shape) == (att.heads + 1, 64, 50)
    overlays = attention_overlays(img, att)
    assert len(overlays) == att.heads + 1 and all(o.size == img.size for o in overlays)
    attention_figure(img, att, None, tmp_path / "att.png")
    assert Image.open(tmp_path / "att.png").size[0] > 300


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_point_end_to_end(cli, tiny_vit, tmp_path):
    a, b = _shifted_pair()
    a.save(tmp_path / "a.png")
    b.save(tmp_path / "b.png")
    code, out, err = cli("explore", "point", tmp_path / "a.png", tmp_path / "b.png", "--xy", "30,20",
                         "--model", tiny_vit, "--size", "64", "--top-k", "3", "--out", tmp_path / "heat.png",
                         "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["query_xy"] == [30.0, 20.0] and len(info["candidates"]) == 3
    assert info["candidates"][0] == info["best"] and info["grid_b"] == [8, 8]
    assert {"feature_distance", "similarity", "xy"} <= info["best"].keys() and "cycle_distance" in info
    assert info["refine"] == "quadratic" and len(info["match_xy"]) == 2  # the default refines
    with Image.open(tmp_path / "heat.png") as im:
        assert im.size[0] > 400
    code, out, _ = cli("explore", "point", tmp_path / "a.png", tmp_path / "b.png", "--xy", "30,20", "--model",
                       "pixels:8", "--pca", "0", "--size", "64", "--refine", "none", "--out", tmp_path / "h2.png")
    assert code == 0 and "best match (12.0, 12.0)" in out and "(mutual)" in out
    code, _, err = cli("explore", "point", tmp_path / "a.png", tmp_path / "b.png", "--xy", "30")
    assert code != 0 and err.startswith("error: invalid value for --xy: '30' is not two numbers")


def test_cli_attention_end_to_end(cli, tiny_dinov2, tmp_path):
    Image.fromarray(_texture(3, 64)).save(tmp_path / "p.png")
    code, out, err = cli("explore", "attention", tmp_path / "p.png", "--model", tiny_dinov2, "--size", "64",
                         "--out", tmp_path / "att.png", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["heads"] == 2 and info["grid"] == [8, 8] and len(info["per_head"]) == 2
    assert (tmp_path / "att.png").exists()
    # bf16 moves the (cached) model in place: use a copy of the folder so other tests keep their fp32 model
    shutil.copytree(tiny_dinov2, tmp_path / "dinov2-copy")
    code, out, err = cli("explore", "attention", tmp_path / "p.png", "--model", tmp_path / "dinov2-copy", "--size",
                         "64", "--device", "cpu", "--dtype", "bf16", "--out", tmp_path / "att16.png", "--json")
    assert code == 0, err
    peaks16 = [h["peak"] for h in json.loads(out)["per_head"]]
    assert peaks16 == pytest.approx([h["peak"] for h in info["per_head"]], abs=0.05)  # bf16 ~ fp32
    for spec in ("pixels", "sift"):
        code, _, err = cli("explore", "attention", tmp_path / "p.png", "--model", spec)
        assert code != 0 and "has no attention" in err
