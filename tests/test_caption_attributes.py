"""Attribute accuracy: hand-written captions (right, wrong, paraphrased) parsed with the shapes grammar."""

from __future__ import annotations

import pytest

from vlens.caption.attributes import caption_attributes, parse_caption, score_attributes

RED_SQUARE_TOP_LEFT = [{"shape": "square", "colour": "red", "size": "small", "cx": 0.2, "cy": 0.25}]
# blue circle left of a green star (mostly horizontal displacement), plus a yellow triangle
THREE = [
    {"shape": "circle", "colour": "blue", "size": "large", "cx": 0.25, "cy": 0.5},
    {"shape": "star", "colour": "green", "size": "small", "cx": 0.75, "cy": 0.4},
    {"shape": "triangle", "colour": "yellow", "size": "small", "cx": 0.5, "cy": 0.85},
]


@pytest.mark.parametrize(
    "caption",
    [
        "a small red square in the top left corner",
        "a little red box in the top left corner of the image",  # the grammar's synonyms
        "there is a small red square in the top left corner",
        "a red square in the top left corner",  # no size said: size is not counted
        "a single red box in the top left corner",
        "A small red square, in the top left corner.",  # case and punctuation
    ],
)
def test_right_and_paraphrased_single_object(caption):
    got = caption_attributes(caption, RED_SQUARE_TOP_LEFT)
    assert all(v in (True, None) for v in got.values()), got
    assert got["shape_single"] and got["position"] and got["colour"] and got["count"]
    assert got["relation"] is None  # one object: no relation to check


@pytest.mark.parametrize(
    "caption, wrong",
    [
        ("a small red circle in the top left corner", {"shape", "shape_single"}),
        ("a small red square in the top right corner", {"position"}),
        ("a small red square on the left", {"position"}),
        ("a large red square in the top left corner", {"size"}),
        ("a big red square in the top left corner", {"size"}),
        ("a small blue square in the top left corner", {"colour", "shape", "shape_single", "size"}),
        ("a small red square", {"position"}),  # no place said counts as wrong
        ("a red square to the left of a blue circle", {"colour", "count", "shape", "shape_single", "position"}),
    ],
)
def test_wrong_single_object(caption, wrong):
    got = caption_attributes(caption, RED_SQUARE_TOP_LEFT)
    assert {a for a, v in got.items() if v is False} == wrong, got


def test_parse_reads_objects_place_and_relation():
    p = parse_caption("there is a big blue circle to the left of a little green rhombus")
    assert [(o.colour, o.shape, o.size) for o in p.objects] == [
        ("blue", "circle", "large"),
        ("green", "diamond", "small"),
    ]
    assert p.relation == (0, "to the left of", 1) and p.position is None
    p = parse_caption("two shapes : a red box above a white star")
    assert [o.shape for o in p.objects] == ["square", "star"] and p.relation == (0, "above", 1)
    assert parse_caption("a purple triangle in the middle").position == "in the middle"


def test_several_objects_relations_and_counts():
    right = [
        "a blue circle to the left of a green star and a yellow triangle",
        "a green star to the right of a blue circle and a yellow triangle",  # the inverse phrasing
        "three shapes : a blue circle , a green star and a yellow triangle",
        "there are three shapes : a large blue circle , a small green star and a small yellow triangle",
    ]
    for c in right:
        got = caption_attributes(c, THREE)
        assert all(v in (True, None) for v in got.values()), (c, got)
        assert got["position"] is None and got["shape_single"] is None  # single-object attributes only
    got = caption_attributes("a blue circle to the right of a green star and a yellow triangle", THREE)
    assert got["relation"] is False and got["shape"] and got["count"]
    got = caption_attributes("a blue circle to the left of a green star", THREE)
    assert got["count"] is False and got["colour"] is False and got["relation"] is True
    got = caption_attributes("a blue square , a green star and a yellow triangle", THREE)
    assert got["shape"] is False and got["colour"] and got["count"]


def test_score_attributes_counts_only_claims():
    objects = {"a": RED_SQUARE_TOP_LEFT, "b": RED_SQUARE_TOP_LEFT, "c": THREE}
    scores = score_attributes(
        {
            "a": "a small red square in the top left corner",
            "b": "a red circle at the bottom",
            "c": "a blue circle above a green star and a yellow triangle",
            "not-shapes": "a cat on a mat",  # no objects known: ignored
        },
        objects,
    )
    assert scores.counts["position"] == 2 and scores.accuracy["position"] == 50.0
    assert scores.counts["shape_single"] == 2 and scores.accuracy["shape_single"] == 50.0
    assert scores.counts["size"] == 1 and scores.accuracy["size"] == 100.0
    assert scores.counts["relation"] == 1 and scores.accuracy["relation"] == 0.0  # it is to the left
    assert scores.accuracy["colour"] == 100.0 and scores.counts["colour"] == 3
    assert "| position phrase (one-object scenes) | 50.0% | 2 |" in scores.markdown()


def test_every_reference_caption_of_generated_scenes_is_right():
    """The parser against the generator itself: all five references of 60 scenes score 100%."""
    import numpy as np

    from vlens.data.shapes import make_scene

    captions, objects = {}, {}
    for i in range(60):
        _, _, caps, objs = make_scene(3, "target", "val", i, 32)
        rows = [{"shape": o.shape, "colour": o.colour, "size": o.size, "cx": o.cx, "cy": o.cy} for o in objs]
        for k, c in enumerate(caps):
            captions[f"{i}-{k}"], objects[f"{i}-{k}"] = c, rows
    scores = score_attributes(captions, objects)
    assert set(scores.accuracy) >= {"colour", "count", "shape", "shape_single", "size", "position", "relation"}
    assert np.allclose(list(scores.accuracy.values()), 100.0), scores.accuracy
