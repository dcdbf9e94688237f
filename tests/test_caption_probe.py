"""The linear probe of position and shape on a captioner's vision tower."""

from __future__ import annotations

import numpy as np
import torch

from vlens.caption.probe import POSITION_PHRASES, linear_probe, pixel_features, position_class


def test_position_class_follows_the_grammar():
    assert POSITION_PHRASES[position_class(0.1, 0.1)] == "in the top left corner"
    assert POSITION_PHRASES[position_class(0.9, 0.5)] == "on the right"
    assert POSITION_PHRASES[position_class(0.5, 0.9)] == "at the bottom"
    assert POSITION_PHRASES[position_class(0.5, 0.5)] == "in the middle"
    assert POSITION_PHRASES[position_class(0.7, 0.65)] == "in the bottom right corner"


def test_linear_probe_finds_a_planted_signal_and_not_noise():
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 9, 300), rng.integers(0, 9, 100)

    def feats(y):  # 40 noise dims, one-hot class code in 9 of them
        x = rng.normal(size=(len(y), 40)).astype(np.float32)
        x[np.arange(len(y)), y] += 6.0
        return torch.from_numpy(x)

    _, acc = linear_probe(feats(y_train), y_train, feats(y_test), y_test, c=1.0)
    assert acc > 0.9
    noise = torch.from_numpy(rng.normal(size=(300, 40)).astype(np.float32))
    _, acc = linear_probe(noise, y_train, noise[:100], y_test, c=1.0)
    assert acc < 0.3  # chance is 1/9


def test_pixel_features_pool_to_the_patch_grid():
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, :8, :8] = 1.0  # top-left 8x8 block
    f = pixel_features(x, 4).reshape(1, 3, 4, 4)
    assert f[0, 0, 0, 0] == 1.0 and f[0, 0].sum() == 1.0


def test_probe_runs_on_a_captioner(shapes_dir, tiny_blip):
    from vlens.caption.probe import probe_captioner
    from vlens.data import load_dataset
    from vlens.data.shapes import scene_objects
    from vlens.models import load

    ds = load_dataset(shapes_dir)
    res = probe_captioner(
        load(str(tiny_blip), "captioner"),
        ds.split("train").samples,
        ds.split("test").samples + ds.split("val").samples,
        scene_objects(shapes_dir),
    )
    assert [(r.features, r.target) for r in res] == [
        ("object token", "position"), ("object token", "shape"), ("all tokens", "position"), ("all tokens", "shape"),
        ("pixels", "position"), ("pixels", "shape"),
    ]
    assert all(0 <= r.test_accuracy <= 1 and r.n_train >= 10 for r in res)
