"""Data that would change the numbers if taken at face value (issue 29, item 8): an unknown-disparity mark that
never occurs, SPair's invisible keypoints, a pasted paragraph as a reference caption, a Karpathy entry with no
split, an empty image list. Each is refused in one line or handled so the number stays right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlens.errors import ConfigError, DatasetError


@pytest.fixture
def stereo(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    img.save(tmp_path / "L.png")
    img.save(tmp_path / "R.png")
    d = np.full((24, 32), 9, np.uint8)
    d[:, :8] = 0  # Middlebury: 0 = no ground truth
    Image.fromarray(d).save(tmp_path / "D.png")
    return tmp_path


def _manifest(root, **fields):
    path = root / "m.json"
    path.write_text(json.dumps({"pairs": [{"source": "L.png", "target": "R.png", "disparity": "D.png", **fields}]}))
    return path


@pytest.mark.parametrize("value,expect", [(None, "null"), (-5, "never occurs"), (0.5, "never occurs"),
                                          (256, "never occurs")])
def test_an_unknown_disparity_mark_that_counts_unknown_pixels_as_known_is_refused(stereo, value, expect):
    from vlens.match.pairs import load_manifest

    path = _manifest(stereo, disparity_unknown=value)
    with pytest.raises(DatasetError, match=expect) as exc:
        load_manifest(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_the_default_unknown_mark_leaves_unmeasured_pixels_out(stereo):
    from vlens.match.pairs import load_manifest

    for fields in ({}, {"disparity_unknown": 0}):
        (pair,) = load_manifest(_manifest(stereo, **fields))
        assert np.isnan(pair.disparity[:, :8]).all() and (pair.disparity[:, 8:] == 9).all()
    (pair,) = load_manifest(_manifest(stereo, disparity_unknown=9))  # a mark that occurs: those are unknown
    assert np.isnan(pair.disparity[:, 8:]).all() and (pair.disparity[:, :8] == 0).all()


@pytest.fixture
def spair(tmp_path):
    root = tmp_path / "SPair-71k"
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    Image.new("RGB", (160, 128), (120, 90, 60)).save(root / "JPEGImages" / "cat" / "a.jpg")
    Image.new("RGB", (160, 128), (60, 90, 120)).save(root / "JPEGImages" / "cat" / "b.jpg")
    return root


def _spair_pair(root, name, src, trg):
    ann = {"src_imname": "a.jpg", "trg_imname": "b.jpg", "category": "cat", "src_kps": src, "trg_kps": trg,
           "trg_bndbox": [5, 6, 100, 90]}
    (root / "PairAnnotation" / "test" / f"{name}-a-b:cat.json").write_text(json.dumps(ann))


def test_spair_keypoints_marked_invisible_are_not_scored(spair):
    from vlens.images import SkipLog
    from vlens.match.keypoints import load_spair

    _spair_pair(spair, "000001", [[10, 20], [-1, -1], [30, 40], [50, 60]], [[12, 22], [33, 44], [-1, -1], [52, 62]])
    _spair_pair(spair, "000002", [[-1, -1], [30, 40]], [[12, 22], [-1, -1]])  # nothing visible in both
    skips = SkipLog()
    (pair,) = load_spair(spair, "test", skips=skips)
    np.testing.assert_array_equal(pair.src_kps, [[10.5, 20.5], [50.5, 60.5]])
    np.testing.assert_array_equal(pair.trg_kps, [[12.5, 22.5], [52.5, 62.5]])
    assert len(skips) == 1 and "000002" in skips.skipped[0][0] and "visible" in skips.skipped[0][1]


def test_an_over_long_reference_caption_is_refused_in_one_line():
    from vlens.caption.metrics import MAX_REFERENCE_WORDS, score_captions

    preds = {str(i): "a red circle on a white background" for i in range(4)}
    refs = {str(i): ["a red circle on a white background", "a red circle"] for i in range(4)}
    ok = score_captions(preds, refs, metrics=["BLEU-4"], use_java=False, tokenizer="python")
    assert ok.scores["BLEU-4"] > 50
    refs["2"] = ["a red circle", " ".join(["word"] * 20_000)]
    with pytest.raises(ConfigError, match=f"reference caption 2 of image '2' has 20000 words.*{MAX_REFERENCE_WORDS}"
                       ) as exc:
        score_captions(preds, refs, metrics=["BLEU-4"], use_java=False, tokenizer="python")
    assert "\n" not in str(exc.value)
    refs["2"] = ["a red circle", " ".join(["word"] * MAX_REFERENCE_WORDS)]  # at the limit: scored
    assert score_captions(preds, refs, metrics=["BLEU-4"], use_java=False, tokenizer="python").scores["BLEU-4"] > 0


def test_a_karpathy_entry_without_a_split_is_not_counted_as_train(tmp_path, cli):
    from vlens.data import load_dataset

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": "a"}]},
                                           {"filename": "a.png", "imgid": 2, "sentences": [{"raw": "b"}]}]}))
    with pytest.raises(DatasetError, match=r"images\[1\] \(a.png\): no 'split'"):
        load_dataset(path)
    code, out, err = cli("data", "inspect", path)
    assert code != 0 and "no 'split'" in out


def test_an_empty_image_list_does_not_pass_inspect(tmp_path, cli):
    from vlens.data import load_dataset

    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(path)
    code, out, err = cli("data", "inspect", path)
    assert code != 0 and "no images" in out + err
    assert len(err.strip().splitlines()) == 1
