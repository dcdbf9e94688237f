"""The embedded builtin:dino-tiny: it loads through the normal model path, is small, has a card, matches crops
clearly better than its own architecture with random weights, and its lab section runs."""

from __future__ import annotations

import pytest

from vlens.models.hub import BUILTIN_DIR

FOLDER = BUILTIN_DIR / "dino-tiny"
# median crop error of the shipped model / that of the better baseline (pixels or random weights), on the small
# benchmark below (4 held-out photos, no PCA): 0.70 on the scenario average, 0.60-0.92 per scenario (small crops
# the tightest); floors with slack
FLOOR_AVERAGE = 0.9
FLOOR_SCENARIO = 0.97


def test_builtin_loads_and_is_small():
    import torch

    from vlens.models import load

    lm = load("builtin:dino-tiny", "backbone")
    assert lm.source == "builtin" and lm.config.model_type == "vit"
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    size = sum(f.stat().st_size for f in FOLDER.iterdir())
    assert size < 6_000_000
    card = (FOLDER / "MODEL_CARD.md").read_text()
    assert "vlens ssl train" in card and "seed" in card and "wall time" in card
    assert (FOLDER / "training_log.jsonl").is_file()
    out = lm.model(pixel_values=torch.randn(1, 3, 64, 48), interpolate_pos_encoding=True).last_hidden_state
    assert out.shape == (1, 1 + 8 * 6, lm.config.hidden_size)


@pytest.mark.slow
def test_builtin_beats_pixels_and_random_weights_in_every_crop_scenario(opencv_samples):
    """The issue's bar, on a small crop benchmark of held-out photos (4 photos x 1 crop x 4 scenarios at the
    benchmark's own 448 / 224 px and its default, no PCA): the trained weights put matches closer to the truth
    than raw pixels and than the same architecture with random weights, in every scenario. Measured when
    shipped, medians large / small / photometric / geometric / average: 35.2 / 55.1 / 62.8 / 54.2 / 51.8 px
    (pixels 58.5 / 59.8 / 117.9 / 58.2 / 73.6, random weights 56.7 / 64.9 / 134.3 / 66.8 / 80.7); the tightest
    margin is 8% (small crops), hence the 0.97 floor per scenario."""
    from vlens.data.opencv_samples import HELDOUT_PHOTOS, photo_paths
    from vlens.match.crops import run_crop_benchmark

    images = photo_paths(HELDOUT_PHOTOS[:4])
    kw = {"crops_per_image": 1, "keep_examples": 0}
    ours = run_crop_benchmark("builtin:dino-tiny", images, **kw)
    for spec in ("pixels:8", "random:builtin:dino-tiny"):
        base = run_crop_benchmark(spec, images, **kw)
        assert ours.overall("feature").median < FLOOR_AVERAGE * base.overall("feature").median, spec
        for name in ("large", "small", "photometric", "geometric"):
            assert ours.get(name, "feature").median < FLOOR_SCENARIO * base.get(name, "feature").median, (spec, name)


@pytest.mark.slow
def test_builtin_beats_pixels_and_random_weights_on_the_real_pairs(opencv_samples):
    """The issue's bar on real pairs it never saw (graffiti, aloe; 448 px, no PCA). Measured when shipped, PCK@10
    all / top 50% by feature score: graffiti 20.7 / 27.7% (pixels 9.8 / 14.2, random weights 9.3 / 12.4, dense
    SIFT 41.7 / 56.2), aloe 42.2 / 62.8% (32.7 / 45.5, 31.6 / 42.3, 65.2 / 88.2). Floors: 5 points above the better
    baseline, and at least 0.45 (graffiti) / 0.60 (aloe) of dense SIFT's PCK@10 (measured 0.50 / 0.65)."""
    from vlens.match.pairs import PairsConfig, opencv_pairs, run_pairs_benchmark

    specs = ["builtin:dino-tiny", "pixels:8", "random:builtin:dino-tiny", "sift:8"]
    for res in run_pairs_benchmark(specs, opencv_pairs(), PairsConfig()):
        ours, pix, rand, sift = res.descriptors
        for key in ("all", "top"):
            get = (lambda d: d.all["pck@10"]) if key == "all" else (lambda d: d.top["feature@50%"]["pck@10"])
            assert get(ours) > max(get(pix), get(rand)) + 0.05, (res.pair, key, get(ours), get(pix), get(rand))
        ratio = ours.all["pck@10"] / sift.all["pck@10"]
        assert ratio > {"graffiti": 0.45, "aloe": 0.60}[res.pair], (res.pair, ratio)


@pytest.mark.slow
def test_builtin_beats_pixels_and_random_weights_on_label_transfer():
    """Label transfer on the default shapes set (seed 0; the model saw 40 unlabelled images of seed 7, no masks).
    Measured when shipped: mIoU 0.247 against pixels 0.217 and random weights 0.210 (dense SIFT 0.369): a floor of
    0.015 above the better baseline."""
    from vlens.match.segment import run_segment_benchmark

    ours, pix, rand = (run_segment_benchmark(m, keep_examples=0).miou
                       for m in ("builtin:dino-tiny", "pixels:8", "random:builtin:dino-tiny"))
    assert ours > max(pix, rand) + 0.015, (ours, pix, rand)


@pytest.mark.slow
def test_lab_section(tmp_path):
    from vlens.report.section import LabContext
    from vlens.report.sections.ssl import section

    ctx = LabContext(out=tmp_path, quick=True)
    s = section(ctx)
    assert (tmp_path / "figures" / "ssl_training_curve.png").is_file()
    assert set(s.metrics["probe"]) >= {"builtin:dino-tiny", "random:builtin:dino-tiny", "pixels"}
    kinds = [b[0] for b in s.blocks]
    assert kinds.count("table") >= 2 and "figure" in kinds
