"""Crop benchmark: exact crop geometry, zero error where the answer is known, statistics by hand, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.errors import ConfigError
from vlens.match.crops import (
    SCENARIOS,
    Crop,
    CropBenchmarkConfig,
    CropScenario,
    crop_affine,
    crop_errors,
    make_crops,
    render_crop,
    run_crop_benchmark,
    score_stats,
    write_crop_outputs,
)
from vlens.match.draw import short_model
from vlens.match.features import extract_features
from vlens.match.matching import match_features


def _noise(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_affine_maps_crop_pixels_to_source_pixels():
    a = crop_affine(center=(50, 40), box=(20, 10), out=(40, 20), angle_deg=0)
    crop = Crop(Image.new("RGB", (40, 20)), 0, a)
    # the crop's corners and centre land on the box's corners and centre
    pts = crop.to_source(torch.tensor([[0.0, 0.0], [40.0, 20.0], [20.0, 10.0]]))
    assert pts.tolist() == [[40.0, 35.0], [60.0, 45.0], [50.0, 40.0]]
    r = crop_affine(center=(0, 0), box=(10, 10), out=(10, 10), angle_deg=90)
    p = Crop(Image.new("RGB", (10, 10)), 0, r).to_source(torch.tensor([[10.0, 5.0]]))  # right-middle
    assert torch.allclose(p, torch.tensor([[0.0, 5.0]]), atol=1e-6)  # rotated onto the bottom-middle


def test_rendered_crop_is_the_source_region():
    src = _noise(64, 48)
    a = crop_affine(center=(32 + 8, 24 + 8), box=(32, 32), out=(32, 32))  # integer shift, no scaling
    crop = np.asarray(render_crop(src, a, (32, 32))).astype(int)
    want = np.asarray(src)[24 - 8:24 + 24, 32 - 8:32 + 24].astype(int)
    assert np.abs(crop - want).max() <= 1


def test_identity_and_grid_aligned_crops_have_zero_error():
    src = _noise(64, 64, 1)
    for center in ((32, 32), (32 + 16, 32 - 16)):  # the whole image / a shift by whole 16 px patches
        box = 64 if center == (32, 32) else 32
        a = crop_affine(center, (box, box), (box, box))
        crop = Crop(render_crop(src, a, (box, box)), 0, a)
        fc = extract_features([crop.image], "pixels", size=box)[0]
        fs = extract_features([src], "pixels", size=64)[0]
        m = match_features(fc, fs, pca=None)  # pixel patches are a perfect descriptor here
        err = crop_errors(crop, m)
        assert err.abs().max() < 1e-4, center


def test_score_stats_by_hand():
    # two crops, errors listed best score first
    e1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    e2 = torch.tensor([0.0, 100.0])
    s = score_stats([e1, e2], points=10)
    allv = torch.cat([e1, e2])
    assert s.mean == pytest.approx(float(allv.mean()))
    assert s.median == pytest.approx(float(allv.median()))
    assert s.mean_top10 == pytest.approx((1.0 + 0.0) / 2)  # ceil(10% of 10) = 1, ceil(10% of 2) = 1
    assert s.mean_top50 == pytest.approx((1 + 2 + 3 + 4 + 10 + 0) / 6)
    assert s.curve[-1] == pytest.approx(s.mean) and s.curve[0] == pytest.approx(s.mean_top10)
    assert s.auc == pytest.approx(float(np.mean(s.curve)))


def test_crops_are_fixed_by_seed_and_stay_inside():
    src = [_noise(80, 60, 0), _noise(60, 60, 1)]
    cfg = CropBenchmarkConfig(crops_per_image=3, crop_side=32)
    geo = SCENARIOS[3]
    one, two = make_crops(src, geo, cfg), make_crops(src, geo, cfg)
    assert len(one) == 6 and all(np.array_equal(a.affine, b.affine) for a, b in zip(one, two))
    for c in one:
        w, h = c.image.size
        corners = c.to_source(torch.tensor([[0.0, 0], [w, 0], [0, h], [w, h]], dtype=torch.float32))
        size = src[c.source].size
        assert (corners >= -1e-3).all() and (corners[:, 0] <= size[0] + 1e-3).all()
        assert (corners[:, 1] <= size[1] + 1e-3).all()


@pytest.mark.slow
def test_benchmark_with_tiny_model_and_outputs(tiny_vit, tmp_path):
    imgs = [_noise(96, 64, 0), _noise(64, 64, 1)]
    res = run_crop_benchmark(str(tiny_vit), imgs, crops_per_image=1, source_side=64, crop_side=32)
    assert [s.scenario for s in res.scenarios] == ["large", "small", "photometric", "geometric"]
    for s in res.scenarios:
        assert s.crops == 2 and s.matches >= 2
        for st in s.scores.values():
            assert len(st.curve) == 100 and 0 <= st.median and st.mean_top10 >= 0
    # the scores rank the same matches, so their "all" numbers agree
    assert res.get("large", "cycle").mean == pytest.approx(res.get("large", "feature").mean)
    base = run_crop_benchmark("pixels", imgs, res.config, keep_examples=0)
    paths = write_crop_outputs([res, base], tmp_path)
    for key in ("results", "csv", "markdown", "curves", "best_worst"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert "| pixels | cycle | all (average) |" in table
    assert f"{res.overall('cycle').mean:.1f}" in table
    assert "no PCA" in table.splitlines()[0]  # the default, as vlens match
    # one rounding only: each cell is the exact value to 1 decimal (the CSV keeps 2), never a rounded rounding
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith(f"| {short_model(res.model)} |")]
    exact = [res.overall("feature"), res.overall("cycle")] + [st.scores["feature"] for st in res.scenarios]
    assert [r[4] for r in rows[:2] + rows[3:7]] == [f"{st.median:.1f}" for st in exact]


def test_identity_scenario_with_pixels_is_exact():
    sc = CropScenario("identity", (1.0, 1.0))
    res = run_crop_benchmark("pixels", [_noise(64, 64, 3)], custom_scenarios=(sc,), source_side=64, crop_side=64,
                             pca=None)
    st = res.get("identity", "cycle")
    assert st.mean < 1e-4 and st.median < 1e-4


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown crop scenario"):
        run_crop_benchmark("pixels", [_noise(64, 64)], scenarios=("tiny",))
    with pytest.raises(ConfigError, match="at least 1"):
        run_crop_benchmark("pixels", [_noise(64, 64)], CropBenchmarkConfig(crops_per_image=0))


def test_refinement_reaches_the_crop_benchmark():
    """--refine of `vlens bench crops`: the config carries it and the matches move off the patch centres."""
    from vlens.match.crops import run_crop_benchmark

    src = Image.fromarray(np.asarray(_noise(64, 64, 3)))
    kw = {"scenarios": ("geometric",), "crops_per_image": 1, "source_side": 64, "crop_side": 32, "keep_examples": 1}
    plain = run_crop_benchmark("pixels:8", [src], **kw)
    soft = run_crop_benchmark("pixels:8", [src], refine="soft", **kw)
    assert plain.config.refine == "none" and soft.config.refine == "soft"
    m0, m1 = plain.examples[0].matches, soft.examples[0].matches
    assert torch.equal(m0.dst_index, m1.dst_index) and not torch.equal(m0.dst_xy, m1.dst_xy)
