"""Fused descriptor specs A*wA+B*wB: a hand computation, resampling between patch sizes, spec errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.errors import ConfigError
from vlens.match.features import extract_features, fused_parts, load_backbone


def _red_green(w: int = 32, h: int = 32) -> Image.Image:
    """Left half pure red, right half pure green."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2, 0] = 255
    arr[:, w // 2:, 1] = 255
    return Image.fromarray(arr)


def test_fused_descriptors_by_hand():
    # pixels:P descriptors are (value / 255 - 0.5) / 0.25 per channel, channel-major: red = R +2, G -2, B -2.
    spec = "pixels:8*0.3+pixels:16*0.7"
    f = extract_features(_red_green(), spec, size=32)[0]
    assert f.grid == (4, 4) and f.patch_size == 8 and f.model == spec  # the finest part's grid
    assert f.descriptors.shape[-1] == 3 * 64 + 3 * 256
    d = f.descriptors[0]  # first row of patches, (4, 960)

    def block(r, g, b, n):  # an L2-normalised pixels patch: n values per channel
        v = torch.tensor([r] * n + [g] * n + [b] * n, dtype=torch.float32)
        return v / v.norm()

    red8, green8 = block(2, -2, -2, 64), block(-2, 2, -2, 64)
    # pixels:16 (a 2 x 2 grid, centres at x = 8, 24) sampled at the 8 px centres x = 4, 12, 20, 28, i.e. at
    # u = -0.25 (border: red), 0.25, 0.75, 1.25 (border: green) patches; at u = 0.25: 0.75 red + 0.25 green =
    # (R 1, G -1, B -2), then normalised
    expected16 = [block(2, -2, -2, 256), block(1, -1, -2, 256), block(-1, 1, -2, 256), block(-2, 2, -2, 256)]
    for j, (p8, p16) in enumerate(zip([red8, red8, green8, green8], expected16)):
        # the weights are divided by the largest (0.7): 3/7 and 1
        torch.testing.assert_close(d[j], torch.cat([0.3 / 0.7 * p8, p16]), atol=1e-6, rtol=0)
    assert float(d[1, :192].norm()) == pytest.approx(3 / 7)  # each part keeps its normalised weight as its norm
    assert float(torch.tensor([1.0, 1.0, 4.0]).mul(256).sum().sqrt()) == pytest.approx(math.sqrt(1536))


def test_fused_same_grid_is_a_plain_concatenation_and_matches():
    from vlens.match.matching import match_features

    img = _red_green(48, 32)
    fused = extract_features([img, img], "pixels:8+sift:8", size=48)
    pix, sift = extract_features(img, "pixels:8", size=48)[0], extract_features(img, "sift:8", size=48)[0]
    ref = torch.cat([torch.nn.functional.normalize(pix.descriptors, dim=-1),
                     torch.nn.functional.normalize(sift.descriptors, dim=-1)], dim=-1)
    torch.testing.assert_close(fused[0].descriptors, ref)
    m = match_features(fused[0], fused[1], pca=None, refine="soft")
    assert len(m) == 24 and torch.equal(fused[0].centers, pix.centers)


@pytest.mark.parametrize("spec, match", [
    ("pixels:8+", "write a fusion as A"),
    ("pixels:8*0+sift:8", "must be a positive decimal number"),
    ("pixels:8*x+sift:8", "must be a positive decimal number"),
    ("pixels:8*1_0+sift:8", "weight of 'pixels:8' must be a positive decimal number.*got '1_0'"),
    ("pixels:8*\uff18+sift:8", "must be a positive decimal number"),  # a full-width digit 8
    ("pixels:8*\u0668+sift:8", "must be a positive decimal number"),  # an Arabic-Indic digit 8
    ("pixels:8*1e-300+sift:8*1", "weight of 'pixels:8' is under 1e-06 of the largest"),
    ("sift:\uff18", "write sift or sift:P"),
    ("pixels:8 * + sift:8", "weight of 'pixels:8' must be a positive decimal number.*got ''"),
    (" * 2 + sift:8", "'\\* 2' is not one"),
    ("sift:8*0.5", "a weight needs a fusion"),
    ("pixels:8+sift:8:x", "sift:P:S"),
])
def test_bad_fusions_are_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as exc:
        load_backbone(spec)
    assert "\n" not in str(exc.value)


def test_grids_that_cannot_be_aligned_and_parts():
    with pytest.raises(ConfigError, match="cannot align the 1x2 patch grid") as exc:
        extract_features(_red_green(32, 16), "pixels:8+pixels:16", size=32)  # pixels:16 has one row
    assert "\n" not in str(exc.value)
    assert fused_parts("builtin:dino-tiny*0.3+sift:8*0.7") == [("builtin:dino-tiny", 0.3), ("sift:8", 0.7)]
    assert fused_parts("sift:8") is None
    from vlens.match.crops import baseline_specs
    from vlens.match.draw import short_model

    assert baseline_specs("pixels:16+sift:8") == ["pixels:16", "sift:8", "pixels:8"]  # no random: nothing learnt
    assert short_model("random:builtin:x*0.3+sift:8") == "random builtin:x*0.3+sift:8"


def test_fusion_inherits_training_images_of_its_parts(tiny_vit, tmp_path):
    from vlens.match.heldout import FILENAME, training_images
    from vlens.runs import write_json

    write_json(tiny_vit / FILENAME, {"images": [{"name": "x.png", "sha256": "0", "size": [1, 1], "thumb": []}]})
    try:
        assert [r["name"] for r in training_images(f"{tiny_vit}*0.5+sift:8")] == ["x.png"]
    finally:
        (tiny_vit / FILENAME).unlink()


def test_fusion_weights_are_normalised_so_huge_ones_do_not_overflow():
    """sift:8*1e308+pixels:8*1e308 used to give inf/NaN descriptors (garbage matches with rc 0): the weights are
    divided by the largest, so it is the same fusion as weight 1 each, bit for bit."""
    img = _red_green(48, 32)
    huge = extract_features(img, "sift:8*1e308+pixels:8*1e308", size=48)[0].descriptors
    ones = extract_features(img, "sift:8+pixels:8", size=48)[0].descriptors
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge, ones)
    ratio = extract_features(img, "sift:8*2e307+pixels:8*6e307", size=48)[0].descriptors
    torch.testing.assert_close(ratio, extract_features(img, "sift:8*1+pixels:8*3", size=48)[0].descriptors)


def test_spaces_and_upper_case_in_specs():
    img = _red_green(48, 32)
    ref = extract_features(img, "sift:8*0.5+pixels:8", size=48)[0].descriptors
    for spec in ("sift:8 * 0.5 + pixels:8", "SIFT:8*0.5+Pixels:8", " sift:8*0.5 +PIXELS:8 "):
        torch.testing.assert_close(extract_features(img, spec, size=48)[0].descriptors, ref)
    assert load_backbone("SIFT:8").spec == "sift:8" and load_backbone("Pixels").is_pixels
    from vlens.models.hub import source_of

    assert source_of("SIFT:8") == "computed"


def test_upper_case_sift_is_never_looked_up_on_the_hub(cli, tmp_path, monkeypatch):
    import vlens.models.hub as hub

    def no_hub(*a, **k):
        raise AssertionError("asked the hub")

    monkeypatch.setattr(hub, "download", no_hub)
    monkeypatch.setattr(hub, "cached", no_hub)
    for i in range(2):
        _red_green(48, 32).save(tmp_path / f"{i}.png")
    code, out, err = cli("match", tmp_path / "0.png", tmp_path / "1.png", "--model", "SIFT:8", "--size", "48",
                         "--out", tmp_path / "m.png", "--json")
    assert code == 0, err


def test_a_sift_support_far_larger_than_the_image_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="SIFT support of 100000 px is far larger than the 48x32") as exc:
        extract_features(_red_green(48, 32), "sift:8:100000", size=48)
    assert "\n" not in str(exc.value) and "sift:8:S with S at most 96" in str(exc.value)
    extract_features(_red_green(48, 32), "sift:8:96", size=48)  # the largest accepted
