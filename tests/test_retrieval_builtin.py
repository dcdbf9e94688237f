"""The embedded builtin:clip-tiny loads offline, is small, has a card, and retrieves far above chance."""

from __future__ import annotations

import pytest

from vlens.models.hub import BUILTIN_DIR


def test_clip_tiny_is_small_and_documented():
    folder = BUILTIN_DIR / "clip-tiny"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 10 * 2**20
    card = (folder / "MODEL_CARD.md").read_text()
    assert "vlens retrieval train" in card and "pretrain" in card


@pytest.mark.slow
def test_clip_tiny_retrieves_above_a_floor(tmp_path):
    from vlens.data import load_dataset
    from vlens.data.shapes import make_shapes
    from vlens.retrieval.evaluate import evaluate_encoder
    from vlens.retrieval.model import DualEncoder

    # a fresh pretrain-style test set (seed 7: images the model never saw)
    data = make_shapes(tmp_path / "pre", train=0, val=0, test=40, seed=7, style="pretrain", progress=False)
    enc = DualEncoder.from_spec("builtin:clip-tiny")
    assert enc.dim == 128 and enc.loaded.source == "builtin"
    scores, _ = evaluate_encoder(enc, load_dataset(data).split("test"))
    # chance for 40 images and 5 captions each: R@1/5/10 = 2.5/12.5/25 both ways, score 13.3
    assert scores.score > 55, scores
    assert scores.i2t_r10 > 50 and scores.t2i_r10 > 50, scores
