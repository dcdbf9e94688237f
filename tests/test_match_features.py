"""Dense features: shapes at any aspect, the patch-centre convention, facets against a manual computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.errors import ConfigError, ImageLoadError, ModelLoadError
from vlens.match.features import extract_features, input_size_for, load_backbone, patch_centers


def _img(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def test_patch_centres_convention():
    c = patch_centers(2, 3, 8, sx=2.0, sy=0.5)  # (6, 2), row-major
    assert c.tolist() == [[8, 2], [24, 2], [40, 2], [8, 6], [24, 6], [40, 6]]
    assert input_size_for((100, 50), 8, 64) == (64, 32)
    assert input_size_for((50, 100), 16, 448) == (224, 448)


@pytest.mark.parametrize("family", ["tiny_vit", "tiny_dinov2"])
def test_any_aspect_ratio_and_batching(family, request):
    spec = str(request.getfixturevalue(family))
    imgs = [_img(96, 48, 0), _img(40, 80, 1), _img(96, 48, 2)]
    feats = extract_features(imgs, spec, size=64, batch_size=2)
    assert [f.grid for f in feats] == [(4, 8), (8, 4), (4, 8)]
    f = feats[0]
    assert f.descriptors.shape == (4, 8, 32) and f.centers.shape == (32, 2)
    assert f.input_size == (64, 32) and f.image_size == (96, 48)
    # patch (row 1, col 2) of an 8 px grid on a 64x32 input, mapped back to the 96x48 original (x1.5)
    assert f.centers[1 * 8 + 2].tolist() == [2.5 * 8 * 1.5, 1.5 * 8 * 1.5]
    # batching does not change the result
    alone = extract_features([imgs[2]], spec, size=64)[0]
    assert torch.allclose(alone.descriptors, feats[2].descriptors, atol=1e-5)


def test_token_facet_is_the_normed_last_hidden_state(tiny_dinov2):
    bb = load_backbone(str(tiny_dinov2))
    img = _img(48, 32)
    f = extract_features([img], bb, size=48)[0]
    from vlens.match.features import _to_tensor

    x = _to_tensor(img, *f.input_size, bb.mean, bb.std)[None]
    with torch.no_grad():
        ref = bb.model(pixel_values=x).last_hidden_state[0, 1:]  # drop CLS
    assert torch.allclose(f.flat, ref, atol=1e-5)


@pytest.mark.parametrize("facet", ["key", "query", "value"])
def test_attention_facets_match_manual_projection(tiny_vit, facet):
    bb = load_backbone(str(tiny_vit))
    img = _img(40, 24)
    f = extract_features([img], bb, layer=2, facet=facet, size=40)[0]
    from vlens.match.features import _to_tensor

    x = _to_tensor(img, *f.input_size, bb.mean, bb.std)[None]
    block = bb.model.layers[1]
    proj = {"key": block.attention.k_proj, "query": block.attention.q_proj, "value": block.attention.v_proj}
    with torch.no_grad():
        hidden = bb.model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        ref = proj[facet](block.layernorm_before(hidden[1]))[0, 1:]  # input of block 2 -> its q/k/v
    assert f.grid == (3, 5) and torch.allclose(f.flat, ref, atol=1e-5)
    token = extract_features([img], bb, layer=2, facet="token", size=40)[0]
    assert not torch.allclose(token.flat, f.flat)


def test_pixels_baseline_is_raw_patches():
    img = _img(32, 16)
    f = extract_features([img], "pixels", size=32)[0]
    arr = (np.asarray(img, dtype=np.float32) / 255 - 0.5) / 0.25  # (16, 32, 3)
    patch = arr[:16, 16:32].transpose(2, 0, 1).reshape(-1)  # patch (0, 1) in (c, y, x) order
    assert f.grid == (1, 2)
    np.testing.assert_allclose(f.descriptors[0, 1].numpy(), patch, atol=1e-5)


def test_random_weights_differ_from_the_checkpoint(tiny_vit):
    trained = extract_features([_img(32, 32)], str(tiny_vit), size=32)[0]
    rand = extract_features([_img(32, 32)], f"random:{tiny_vit}", size=32)[0]
    assert trained.grid == rand.grid and not torch.allclose(trained.flat, rand.flat)


def test_bad_inputs(tiny_vit):
    with pytest.raises(ImageLoadError, match="smaller than one 8 px patch"):
        extract_features([_img(5, 40)], str(tiny_vit))
    with pytest.raises(ConfigError, match="unknown facet"):
        extract_features([_img(32, 32)], str(tiny_vit), facet="attention")
    with pytest.raises(ConfigError, match="has 2 layers"):
        extract_features([_img(32, 32)], str(tiny_vit), layer=7)
    with pytest.raises(ConfigError, match="no attention facets"):
        extract_features([_img(32, 32)], "pixels", facet="key")
    with pytest.raises(ConfigError, match="pixels:P"):
        load_backbone("pixels:x")
    assert load_backbone("pixels:4").patch_size == 4
    with pytest.raises(ModelLoadError, match="no embedded model"):
        load_backbone("builtin:no-such-model")


def test_grayscale_and_huge_images(tiny_vit):
    gray = _img(64, 48).convert("L")
    f = extract_features([gray], str(tiny_vit), size=32)[0]
    assert f.descriptors.shape[-1] == 32 and f.note == ""
    big = _img(400, 300)
    f = extract_features([big], str(tiny_vit), size=32)[0]
    assert "resized from 400x300 to 32x24" in f.note
    assert f.centers[:, 0].max() < 400 and f.centers[:, 1].max() < 300


def test_device_dtype_leave_the_cached_backbone_alone(tiny_vit):
    # --dtype bf16 used to convert the process-wide cached model in place: every later call (web app, notebook)
    # silently ran in bf16.
    from vlens.match.attention import cls_attention, eager_backbone
    from vlens.match.features import load_backbone

    spec, img = str(tiny_vit), _img(40, 24)
    before = extract_features(img, spec)[0].descriptors
    half = extract_features(img, spec, dtype="bf16")[0].descriptors
    assert half.dtype == torch.float32 and not torch.equal(half, before)  # it did run in bf16
    assert next(load_backbone(spec).model.parameters()).dtype == torch.float32
    torch.testing.assert_close(extract_features(img, spec)[0].descriptors, before, rtol=0, atol=0)
    cls_attention(img, spec, dtype="bf16")
    assert next(eager_backbone(spec).model.parameters()).dtype == torch.float32


def test_layers_are_counted_from_one_and_named_as_given(tiny_vit):
    """Layer 0 used to silently mean the last block (0 - 1 = -1), and a layer past the end was named by its 0-based
    index ('layer 2 does not exist' for --layer 3 of a 2-block model)."""
    img, spec = _img(32, 32), str(tiny_vit)
    with pytest.raises(ConfigError, match="^layer 0 does not exist: layers are counted from 1"):
        extract_features([img], spec, size=32, layer=0)
    for layer in (3, -3):
        with pytest.raises(ConfigError, match=rf"^layer {layer} does not exist: .* has 2 layers \(use 1..2 or -1"):
            extract_features([img], spec, size=32, layer=layer)
    last = extract_features([img], spec, size=32, layer=-1)[0].descriptors
    assert torch.equal(torch.as_tensor(extract_features([img], spec, size=32, layer=2)[0].descriptors),
                       torch.as_tensor(last))
    with pytest.raises(ConfigError, match="^layer 0 does not exist"):  # a fusion checks its learnt parts
        extract_features([img], f"{spec}*0.5+pixels:8*0.5", size=32, layer=0)
