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
    # measured 89.7 and 575.8 (the previous model 47.7 and 305.3 on these 24; on 200 images BLEU-4 went from 50.4
    # to 81.1, see MODEL_CARD.md)
    assert scores["BLEU-4"] > 70 and scores["CIDEr"] > 420, scores.scores


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
    # measured: colour and count 98.8, shape 86.2 (80 scenes), shape_single 93.9 and position 93.9 (33 one-object
    # scenes); the previous blip-tiny scored 53.8, 72.7 and 9.1 here (the one before it 20.0 and 39.4 on shapes)
    assert acc["colour"] >= 90 and acc["count"] >= 90, acc
    assert acc["shape"] >= 70 and acc["shape_single"] >= 80, acc
    assert acc["position"] >= 75, acc


@pytest.mark.slow
def test_builtin_vision_tower_sees_shape_and_position():
    """The check that would have caught the old blip-tiny: the patch token under the object said nothing about
    its shape (21.6% on held-out scenes, chance 19%), so no decoder could read it there; and the one that would have
    caught the next: its object token held the place only 34% of the time here, and the decoder named it at chance."""
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
    # measured: object token shape 88.2%, position 94.7%; all tokens position 92.1% (the previous model: 56.6%,
    # 34.2%, 80.3%; the one before it: object-token shape ~22%)
    assert acc[("object token", "shape")] > 0.7 and acc[("object token", "position")] > 0.75, acc
    assert acc[("all tokens", "position")] > 0.7, acc
