"""Malformed dataset files: `data inspect` lists every problem; training and evaluation refuse the file, naming the
file, the entry and the field (they used to crash mid-way, or train on empty captions)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlens.data import load_dataset
from vlens.errors import DatasetError


@pytest.fixture()
def broken_karpathy(tmp_path):
    (tmp_path / "img").mkdir()
    images = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 20)).save(tmp_path / "img" / f"{i}.png")
        images.append({"filepath": "img", "filename": f"{i}.png", "split": "train" if i < 3 else "val",
                       "sentences": [{"raw": f"a red square number {i}"}, {"raw": "a shape"}]})
    images[1]["sentences"][1] = {"tokens": ["a", "shape"]}  # no 'raw'
    images[2]["sentences"] = [{"raw": 5}]  # not text (an empty caption is data: counted and skipped later)
    images.append({"filepath": "img", "split": "train", "sentences": []})  # no file name
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_loader_names_file_entry_and_field(broken_karpathy):
    with pytest.raises(DatasetError) as exc:
        load_dataset(broken_karpathy)
    msg = str(exc.value)
    assert msg.startswith(f"{broken_karpathy}: images[1].sentences[1] (1.png) has no 'raw' text (and 2 more")
    ds = load_dataset(broken_karpathy, strict=False)
    assert ds.problems == ["images[1].sentences[1] (1.png) has no 'raw' text",
                           "images[2].sentences[0] (2.png) has a non-text 'raw' (int)",
                           "images[4]: no 'filename'"]
    assert len(ds) == 4 and ds.samples[1].captions == ("a red square number 1",)


def test_inspect_reports_the_problems_and_fails(cli, broken_karpathy):
    code, out, err = cli("data", "inspect", broken_karpathy)
    assert code == 1 and "malformed   3" in out and "images[1].sentences[1] (1.png) has no 'raw' text" in out
    assert err == f"error: {broken_karpathy} has 3 malformed entries (listed above)\n"
    code, out, _ = cli("data", "inspect", broken_karpathy, "--json")
    assert code == 1 and len(json.loads(out)["problems"]) == 3


@pytest.mark.parametrize("argv", [
    ("caption", "train", "--preset", "test-blip", "--epochs", "1"),
    ("caption", "eval", "--split", "train", "--fast"),
    ("retrieval", "train", "--preset", "test-clip", "--epochs", "1"),
    ("retrieval", "eval", "--split", "train"),
])
def test_training_and_evaluation_refuse_a_malformed_file(cli, broken_karpathy, tmp_path, argv):
    code, out, err = cli(*argv, "--data", broken_karpathy, "--out", tmp_path / "run")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {broken_karpathy}: images[1].sentences[1] (1.png) has no 'raw' text")


def test_coco_annotations_without_image_id_or_caption(tmp_path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"file_name": "b.png"}],
                                "annotations": [{"image_id": 1, "caption": "a cat"}, {"caption": "a dog"},
                                                {"image_id": 1}]}))
    ds = load_dataset(path, strict=False)
    assert ds.problems == ["images[1]: needs 'id' and 'file_name'", "annotations[1]: no 'image_id'",
                           "annotations[2] (image_id 1): no 'caption' text"]
    with pytest.raises(DatasetError, match=r"images\[1\]: needs 'id' and 'file_name'"):
        load_dataset(path)
