"""The embedded builtin:blip-tiny loads offline, has a model card, and captions unseen shapes above a
floor."""

from __future__ import annotations

import pytest


def test_builtin_is_small_and_documented():
    from vlens.models.hub import resolve

    folder, source = resolve("builtin:blip-tiny")
    assert source == "builtin"
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    assert size < 10, f"{size:.1f} MiB is too big to embed"
    card = (folder / "MODEL_CARD.md").read_text()
    assert all(w in card for w in ("vlens caption train", "seed", "BLEU-4", "CIDEr"))


@pytest.mark.slow
def test_builtin_captions_unseen_test_images_above_floor(tmp_path):
    """Greedy captions of 24 test-split scenes (never trained on): floors well below the card's numbers."""
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.metrics import score_captions
    from vlens.data.shapes import make_scene

    scenes = [make_scene(0, "target", "test", i, 128) for i in range(24)]
    cap = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    preds = cap.caption([sc[0] for sc in scenes], DecodeSettings(batch_size=24))
    scores = score_captions(
        {str(i): p[0].text for i, p in enumerate(preds)},
        {str(i): sc[2] for i, sc in enumerate(scenes)},
        metrics=("BLEU-4", "CIDEr"),
        tokenizer="python",
    )
    # measured 47.7 and 305.3 (the previous model 53.5 and 309.7 on these 24: a small sample; on 200 images BLEU-4
    # went from 39.2 to 50.4, see MODEL_CARD.md)
    assert scores["BLEU-4"] > 35 and scores["CIDEr"] > 200, scores.scores


def test_builtin_was_trained_behind_a_prompt_and_uses_it_by_default():
    from vlens.caption.captioner import Captioner, DecodeSettings

    cap = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    assert cap.model.config.caption_prompt == "a picture of"
    assert cap.prepare(DecodeSettings())[0].prompt == "a picture of"
    assert cap.prepare(DecodeSettings(prompt=""))[0].prompt == ""


@pytest.mark.slow
def test_builtin_attribute_accuracy_on_unseen_scenes():
    """Greedy captions of 80 scenes from another seed (never trained on) parsed with the shapes grammar:
    floors well below what the card measures and above what the previous blip-tiny scored here."""
    from vlens.caption.attributes import score_attributes
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.data.shapes import make_scene

    scenes = [make_scene(1, "target", "test", i, 128) for i in range(80)]
    cap = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    preds = cap.caption([sc[0] for sc in scenes], DecodeSettings(batch_size=40))
    objects = {
        str(i): [{"shape": o.shape, "colour": o.colour, "size": o.size, "cx": o.cx, "cy": o.cy} for o in sc[3]]
        for i, sc in enumerate(scenes)
    }
    acc = score_attributes({str(i): p[0].text for i, p in enumerate(preds)}, objects).accuracy
    # measured: colour and count 100, shape 53.8 (80 scenes), shape_single 72.7 (33 one-object scenes); the
    # previous blip-tiny scored 20.0 and 39.4 here
    assert acc["colour"] >= 90 and acc["count"] >= 90, acc
    assert acc["shape"] >= 35 and acc["shape_single"] >= 50, acc


@pytest.mark.slow
def test_builtin_vision_tower_sees_shape_and_position():
    """The check that would have caught the old blip-tiny: the patch token under the object said nothing about
    its shape (21.6% on held-out scenes, chance 19%), so no decoder could read it there."""
    import tempfile

    from vlens.caption.probe import probe_captioner
    from vlens.data import load_dataset
    from vlens.data.shapes import make_shapes, scene_objects
    from vlens.models import load

    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes(tmp, train=500, val=0, test=150, seed=11, size=128, progress=False)
        ds = load_dataset(data)
        res = probe_captioner(
            load("builtin:blip-tiny", "captioner"), ds.split("train").samples, ds.split("test").samples,
            scene_objects(data), with_pixels=False,
        )
    acc = {(r.features, r.target): r.test_accuracy for r in res}
    # measured: object-token shape 56.6%, all-tokens position 80.3% (the previous model: shape ~22%)
    assert acc[("object token", "shape")] > 0.4 and acc[("all tokens", "position")] > 0.6, acc
