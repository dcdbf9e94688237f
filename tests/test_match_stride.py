"""Overlapping patches (``stride``): grid geometry, position embeddings and strided tokens against hand
computations, the shift test on a real photo, every consumer following the features' step, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_pos_embed import _by_hand  # the hand-written bicubic (Keys kernel, clamped borders), both conventions

from vlens.errors import ConfigError


def test_strided_grid_and_centres_by_hand():
    from vlens.match.features import patch_centers
    from vlens.match.strided import check_stride, grid_centers, strided_grid

    assert strided_grid(64, 48, 8, 4) == (15, 11)  # 1 + (64 - 8) / 4, 1 + (48 - 8) / 4
    assert strided_grid(448, 448, 8, 4) == (111, 111)
    assert strided_grid(32, 32, 8, 8) == (4, 4)
    c = grid_centers(2, 3, 4, 4.0, 2.0, 0.5)  # step 4, first centre at 4 input px, scaled (2, 0.5)
    assert c.tolist() == [[8, 2], [16, 2], [24, 2], [8, 4], [16, 4], [24, 4]]
    assert torch.equal(grid_centers(4, 5, 8, 4.0, 1.25, 0.75), patch_centers(4, 5, 8, 1.25, 0.75))  # stride = patch
    assert check_stride(8, None) == 8 and check_stride(8, 2) == 2
    with pytest.raises(ConfigError, match="does not divide the 8 px patch.*1, 2, 4, 8"):
        check_stride(8, 3)


def test_position_embeddings_match_a_hand_bicubic():
    """The strided grid's position embeddings (exact convention, transformers' ViT / DINO) = cubic convolution
    written out by hand; the offset convention (original DINO code) samples at (i + 0.5) side / (rows + 0.1)."""
    from vlens.match.strided import grid_position_embeddings

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 16, 3, generator=g)  # CLS + a 4 x 4 grid
    out = grid_position_embeddings(pos, 7, 5, "exact")
    assert out.shape == (1, 1 + 35, 3)
    assert torch.equal(out[:, :1], pos[:, :1])  # CLS untouched
    hand = _by_hand(pos[0, 1:].reshape(4, 4, 3).double().numpy(), 7, 5, "exact").reshape(35, 3)
    np.testing.assert_allclose(out[0, 1:].double().numpy(), hand, atol=1e-5)
    same = grid_position_embeddings(pos, 4, 4)  # the model's own grid comes back unchanged
    torch.testing.assert_close(same, pos, atol=1e-6, rtol=0)
    off = grid_position_embeddings(pos, 7, 5, "offset")
    hand = _by_hand(pos[0, 1:].reshape(4, 4, 3).double().numpy(), 7, 5, "offset").reshape(35, 3)
    np.testing.assert_allclose(off[0, 1:].double().numpy(), hand, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "dinov2", "registers"])
def test_strided_tokens_by_hand(family, tiny_vit, tiny_dinov2, tmp_path):
    """Each token of the strided embedding = the patch conv on its own p x p window + its interpolated position
    (registers after CLS, without position), for HF ViT, DINOv2 and DINOv2 with registers."""
    from vlens.match.features import load_backbone
    from vlens.match.strided import grid_position_embeddings, pos_convention, strided_embeddings

    if family == "registers":
        import transformers

        torch.manual_seed(0)
        cfg = transformers.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, image_size=32, patch_size=8,
                                                     num_register_tokens=2)
        transformers.AutoModel.from_config(cfg).save_pretrained(tmp_path / "reg")
        spec = str(tmp_path / "reg")
    else:
        spec = str(tiny_vit if family == "vit" else tiny_dinov2)
    bb = load_backbone(spec)
    emb = bb.model.embeddings
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    conv = pos_convention(bb.model)
    assert conv == ("exact-antialias" if family == "registers" else "exact")
    with torch.no_grad():
        tok = strided_embeddings(emb, x, 4, conv)
    rows, cols = 1 + (24 - 8) // 4, 1 + (40 - 8) // 4  # 5 x 9
    n_reg = bb.num_prefix - 1
    assert tok.shape == (1, 1 + n_reg + rows * cols, emb.cls_token.shape[-1])
    w, b = emb.patch_embeddings.projection.weight, emb.patch_embeddings.projection.bias
    pos = grid_position_embeddings(emb.position_embeddings.detach(), rows, cols, conv, square_input=False)
    for i, j in [(0, 0), (2, 3), (4, 8), (1, 7)]:
        window = x[0, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8]  # (3, 8, 8): this patch's own pixels
        hand = torch.einsum("dchw,chw->d", w.detach(), window) + b.detach() + pos[0, 1 + i * cols + j]
        torch.testing.assert_close(tok[0, bb.num_prefix + i * cols + j], hand, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tok[0, 0], (emb.cls_token + emb.position_embeddings[:, :1])[0, 0].detach())
    if n_reg:
        torch.testing.assert_close(tok[0, 1:1 + n_reg], emb.register_tokens[0].detach())


def test_stride_equal_to_patch_is_bit_identical(tiny_vit):
    from vlens.match.features import extract_features

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    for spec in (str(tiny_vit), "sift:8", "pixels:8"):
        a = extract_features([img], spec, size=48)[0]
        b = extract_features([img], spec, size=48, stride=8)[0]
        assert torch.equal(a.descriptors, b.descriptors) and torch.equal(a.centers, b.centers)
        assert b.stride is None and b.step == 8


def test_features_at_stride_4_carry_their_grid(tiny_vit, tiny_dinov2):
    from vlens.match.features import extract_features

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    for spec in (str(tiny_vit), str(tiny_dinov2), "sift:8", "pixels:8", "builtin:dino-tiny*0.2+sift:8*0.8"):
        f = extract_features([img], spec, size=56, stride=4)[0]  # input 56 x 40
        assert f.grid == (1 + (40 - 8) // 4, 1 + (56 - 8) // 4) and f.step == 4 and f.origin == 4
        assert f.centers[:2].tolist() == [[4.0, 4.0], [8.0, 4.0]] and f.centers[-1].tolist() == [52.0, 36.0]
        assert f.index_at([[8.4, 5.9], [0, 0], [55.9, 39.9]]).tolist() == [1, 0, f.grid[0] * f.grid[1] - 1]


def test_strided_dense_sift_and_pixels_share_the_unstrided_cells():
    """Every other cell of a stride-4 grid of 8 px patches is a cell of the stride-8 grid: same descriptors."""
    from vlens.match.features import _pixel_descriptors
    from vlens.match.sift import dense_sift

    gray = np.random.default_rng(0).integers(0, 256, (40, 64), dtype=np.uint8)
    s8, s4 = dense_sift(gray, 8), dense_sift(gray, 8, step=4)
    assert s4.shape == (9, 15, 128)
    np.testing.assert_array_equal(s4[::2, ::2], s8)
    x = torch.randn(1, 3, 40, 64)
    p8, p4 = _pixel_descriptors(x, 8), _pixel_descriptors(x, 8, 4)
    assert torch.equal(p4[:, ::2, ::2], p8)


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.astronaut()[40:212, 120:320])  # 200 x 172, a real photo (face, suit, flag)


def test_one_stride_shift_is_matched_to_the_shifted_patch(photo):
    """B is A moved left by exactly 4 px (one stride step, no resampling: the input is the image's own size), so
    patch (i, j) of B sees the pixels of patch (i, j + 1) of A; >= 95% of interior patches must find it."""
    from vlens.match.features import extract_features
    from vlens.match.matching import match_features

    a, b = photo.crop((0, 0, 192, 168)), photo.crop((4, 0, 196, 168))
    fa, fb = extract_features([a, b], "builtin:dino-tiny", size=192, stride=4)
    assert fa.input_size == a.size and fa.grid == (1 + (168 - 8) // 4, 1 + (192 - 8) // 4)
    m = match_features(fa, fb, pca=None)
    gh, gw = fa.grid
    row, col = m.src_index // gw, m.src_index % gw
    interior = (row >= 2) & (row < gh - 2) & (col >= 3) & (col < gw - 2)
    expected = row * gw + (col - 1)  # A's patch j is B's patch j - 1
    hit = (m.dst_index == expected)[interior].float().mean().item()
    assert hit >= 0.95, hit
    # and the matched centres are 4 px apart in the images' pixels, as the features' own step says
    assert fa.step_px == (4.0, 4.0)


def test_refinement_and_point_lookup_follow_the_step(tiny_vit):
    """With refine none the refined point is the strided centre; with the origin given, a zero offset lands on
    the centre and the index of a centre is that patch."""
    from vlens.match.explore import patch_at, point_match
    from vlens.match.features import extract_features
    from vlens.match.matching import match_features
    from vlens.match.refine import grid_origin, refine_points

    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    f = extract_features([img], str(tiny_vit), size=56, stride=4)[0]
    assert grid_origin(f) == (4.0, 4.0)
    n = f.grid[0] * f.grid[1]
    pts = refine_points(f.flat, f.flat, torch.arange(n), f.grid, f.step_px, "none", origin=grid_origin(f))
    torch.testing.assert_close(pts, f.centers)
    for k in (0, 17, n - 1):
        assert patch_at(f, tuple(f.centers[k].tolist())) == k
    m = match_features(f, f, refine="quadratic")  # the image with itself: every patch is its own match
    assert torch.equal(m.dst_index, torch.arange(n))
    torch.testing.assert_close(m.dst_xy, f.centers, atol=2.0, rtol=0)  # within half a step
    pm = point_match(f, f, (20.0, 12.0), refine="soft")
    assert pm.src_xy == pytest.approx((20.0, 12.0))  # the centre nearest (20, 12) on a 4 px grid from 4


def test_fusion_resamples_at_the_finest_step(tiny_vit):
    from vlens.match.features import extract_features

    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    f = extract_features([img], "sift:16+pixels:8", size=64, stride=4)[0]
    assert f.step == 4 and f.grid == (15, 15)  # the 8 px part at stride 4; sift:16 (13 x 13) resampled onto it
    sift16 = extract_features([img], "sift:16", size=64, stride=4)[0]
    assert sift16.grid == (13, 13) and sift16.origin == 8
    # the fused sift block at a centre shared with sift:16's grid equals that descriptor (normalised)
    k_f = 2 * 15 + 2  # centre (12, 12)
    k_s = 1 * 13 + 1  # sift:16 centre (4 + 8, 4 + 8)
    assert f.centers[k_f].tolist() == sift16.centers[k_s].tolist() == [12.0, 12.0]
    ref = torch.nn.functional.normalize(sift16.flat[k_s], dim=0)
    torch.testing.assert_close(f.flat[k_f, :128], ref, atol=1e-5, rtol=1e-5)


def test_memory_check_names_the_largest_size_at_that_stride(tiny_vit, monkeypatch):
    from vlens.match.features import extract_features, feature_bytes, load_backbone

    bb = load_backbone(str(tiny_vit))
    img = Image.fromarray(np.zeros((256, 256, 3), dtype=np.uint8))
    need = feature_bytes(bb, 1, 256, 256, 4, 2)
    monkeypatch.setenv("VLENS_MEMORY_LIMIT", str(need))  # 80% of it is usable: 256 px at stride 2 does not fit
    with pytest.raises(ConfigError, match=r"use --size (\d+) or less at --stride 2") as exc:
        extract_features([img], bb, size=256, stride=2)
    fit = int(str(exc.value).split("--size ")[1].split()[0])
    assert feature_bytes(bb, 1, fit, fit, 4, 2) <= 0.8 * need < feature_bytes(bb, 1, fit + 8, fit + 8, 4, 2)
    extract_features([img], bb, size=fit, stride=2)  # and that size runs
    extract_features([img], bb, size=256)  # stride 8 at 256 px fits the same budget


def test_attention_at_stride(tiny_vit):
    from vlens.match.attention import cls_attention

    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    att = cls_attention(img, str(tiny_vit), size=56, stride=4)
    assert att.maps.shape[1:] == (9, 13) and att.stride == 4
    torch.testing.assert_close(att.maps.sum((1, 2)), torch.ones(att.heads))


def test_stride_cli(cli, tiny_vit, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    code, out, _ = cli("match", tmp_path / "a.png", tmp_path / "b.png", "-m", tiny_vit, "--size", "64",
                       "--stride", "4", "--json", "-o", tmp_path / "m.png")
    assert code == 0
    info = json.loads(out)
    assert info["stride"] == 4 and info["grid_a"] == [11, 15] and info["patches"] == 165
    assert info["bin_levels"] == 2  # binned by default (the measured default, vlens.match.binning)
    code, out, _ = cli("match", tmp_path / "a.png", tmp_path / "b.png", "-m", tiny_vit, "--size", "64",
                       "--no-bin", "--json", "-o", tmp_path / "m.png")
    assert code == 0 and json.loads(out)["bin_levels"] == 0 and json.loads(out)["stride"] == 8
    code, out, err = cli("match", tmp_path / "a.png", tmp_path / "b.png", "-m", tiny_vit, "--size", "64",
                         "--stride", "3", "-o", tmp_path / "m.png")
    assert code != 0 and "--stride 3 does not divide the 8 px patch" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = cli("explore", "point", tmp_path / "a.png", tmp_path / "b.png", "--xy", "10,10", "-m", tiny_vit,
                       "--size", "64", "--stride", "2", "--json", "-o", tmp_path / "p.png")
    assert code == 0 and json.loads(out)["grid_a"] == [21, 29]
    code, out, _ = cli("explore", "attention", tmp_path / "a.png", "-m", tiny_vit, "--size", "64", "--stride", "4",
                       "--json", "-o", tmp_path / "att.png")
    assert code == 0 and json.loads(out)["grid"] == [11, 15]


def test_heatmaps_are_sampled_where_the_strided_centres_are():
    """A map equal to its column index, drawn at the input's own size: pixel x gets (x + 0.5 - origin) / step,
    clamped to the outer centres (the plain resize would stretch the grid over the whole image instead)."""
    from vlens.match.strided import grid_to_pixels

    cols = torch.arange(13, dtype=torch.float32).expand(9, 13)[None]  # (1, 9, 13): value = column
    out = grid_to_pixels(cols, 4, 4.0, (56, 40), (56, 40))  # the stride-4 grid of 8 px patches on 56 x 40
    assert out.shape == (1, 40, 56)
    x = torch.arange(56, dtype=torch.float32)
    torch.testing.assert_close(out[0, 7], ((x + 0.5 - 4) / 4).clamp(0, 12))


def test_refinement_reuses_the_matchers_back_search(tiny_vit):
    """The refined cycle's B -> A search is the one matching already ran: same refined points and cycle distances
    as searching again."""
    from vlens.match.features import extract_features
    from vlens.match.matching import match_projected, refine_projected

    rng = np.random.default_rng(5)
    a, b = (Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(2))
    fa, fb = extract_features([a, b], "sift:8", size=56, stride=4, bin_levels=1)
    m, pa, pb, back_of = match_projected(fa, fb, pca=None)
    for method in ("quadratic", "soft"):
        again, reused = refine_projected(m, pa, pb, fa, fb, method), refine_projected(m, pa, pb, fa, fb, method,
                                                                                      back_of=back_of)
        assert torch.equal(again.dst_xy, reused.dst_xy) and torch.equal(again.cycle_distance, reused.cycle_distance)
