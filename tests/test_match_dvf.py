"""The 'Deep ViT Features' recipe in vlens match: --bin, saliency, well-spread best-buddy pairs, --preset dvf."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("dvf-images")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(base).save(d / "a.png")
    Image.fromarray(base[8:40, 16:64]).save(d / "b.png")
    return d


def test_match_bin_json_reports_levels_and_dims(cli, tiny_vit, two_images, tmp_path):
    args = ("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit, "--size", "64",
            "--out", tmp_path / "m.png", "--json")
    code, stdout, err = cli(*args)
    assert code == 0, err
    plain = json.loads(stdout)
    assert plain["bin_levels"] == 0 and plain["dims"] == 32
    code, stdout, err = cli(*args, "--bin")
    assert code == 0, err
    binned = json.loads(stdout)
    assert binned["bin_levels"] == 2 and binned["dims"] == 17 * 32
    code, stdout, err = cli(*args, "--bin", "--bin-levels", "1")
    assert code == 0, err
    assert json.loads(stdout)["dims"] == 9 * 32
    code, stdout, err = cli(*args, "--bin", "--bin-levels", "9")
    assert code != 0 and "--bin-levels" in err and len(err.strip().splitlines()) == 1, err
