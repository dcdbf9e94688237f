"""Dataset loaders (fixtures written here), format detection, shapes determinism, photos, stats."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from vlens.data import detect_format, load_dataset
from vlens.data.shapes import CLASSES, load_mask, make_scene, make_shapes
from vlens.data.stats import dataset_stats
from vlens.errors import DatasetError


def _img(path, colour=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_karpathy_restval_joins_train(tmp_path):
    _img(tmp_path / "train2014" / "a.jpg")
    _img(tmp_path / "val2014" / "b.jpg")
    data = {"images": [
        {"filepath": "train2014", "filename": "a.jpg", "split": "restval", "cocoid": 7,
         "sentences": [{"raw": "A dog."}, {"raw": " a cat "}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "test", "imgid": 3, "sentences": [{"raw": "x"}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path / "dataset_coco.json")
    assert ds.format == "karpathy" and ds.splits == {"train": 1, "test": 1}
    a = ds.samples[0]
    assert a.image_path == tmp_path / "train2014" / "a.jpg" and a.captions == ("A dog.", "a cat") and a.id == "7"
    assert ds.split("test").samples[0].image_path.is_file()
    with pytest.raises(DatasetError, match="no 'val' split; splits present: test \\(1\\), train \\(1\\)"):
        ds.split("val")


def test_coco_captions_grouped_and_images_found(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    _img(tmp_path / "val2017" / "000001.jpg")
    data = {"images": [{"id": 1, "file_name": "000001.jpg"}, {"id": 2, "file_name": "000002.jpg"}],
            "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": "two"},
                            {"image_id": 1, "caption": "uno"}]}
    (ann / "captions_val2017.json").write_text(json.dumps(data))
    ds = load_dataset(ann / "captions_val2017.json")
    assert ds.format == "coco" and ds.splits == {"val": 2}
    assert ds.samples[0].captions == ("one", "uno") and ds.samples[0].image_path.is_file()
    st = dataset_stats(ds)
    assert st["missing"] == 1 and st["unreadable"][0]["path"].endswith("000002.jpg")


def test_folder_jsonl_and_csv(tmp_path):
    _img(tmp_path / "x.png")
    _img(tmp_path / "sub" / "y.png")
    rows = [{"file_name": "x.png", "text": "a red thing"},
            {"file_name": "sub/y.png", "captions": ["first", "second"], "split": "test"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "folder" and [s.captions for s in ds] == [("a red thing",), ("first", "second")]
    assert ds.samples[1].split == "test" and ds.samples[0].split == "train"

    d2 = tmp_path / "csvset"
    _img(d2 / "z.png")
    (d2 / "metadata.csv").write_text('file_name,captions\nz.png,"one|two"\n')
    ds2 = load_dataset(d2)
    assert ds2.samples[0].captions == ("one", "two")


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "without dataset.json"),
    (lambda p: (p / "bad.json").write_text("{oops") and p / "bad.json", "not valid JSON"),
    (lambda p: (p / "other.json").write_text('{"a": 1}') and p / "other.json", "neither Karpathy"),
    (lambda p: (p / "data.txt").write_text("x") and p / "data.txt", "expected a .json"),
])
def test_detect_format_errors(tmp_path, setup, message):
    with pytest.raises(DatasetError, match=message):
        detect_format(setup(tmp_path))


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_make_shapes_is_deterministic(tmp_path):
    a = make_shapes(tmp_path / "a", train=6, val=2, test=2, seed=3, size=48, workers=1, progress=False)
    b = make_shapes(tmp_path / "b", train=6, val=2, test=2, seed=3, size=48, workers=2, progress=False)
    c = make_shapes(tmp_path / "c", train=6, val=2, test=2, seed=4, size=48, workers=1, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_shapes_content_is_consistent(shapes_dir):
    ds = load_dataset(shapes_dir)
    assert ds.splits == {"train": 40, "val": 8, "test": 12}
    meta = json.loads((shapes_dir / "dataset.json").read_text())
    for s, row in zip(ds.samples, meta["images"]):
        assert len(s.captions) == 5 and len(set(s.captions)) >= 4
        mask = load_mask(s.mask_path)
        assert mask.shape == (64, 64)
        present = {CLASSES[i] for i in np.unique(mask) if i}
        assert present <= {o["shape"] for o in row["objects"]}
        for o in row["objects"]:
            assert o["colour"] in s.captions[0] and o["shape"] in " ".join(s.captions)


def test_shapes_styles_differ():
    t, _, _, _ = make_scene(0, "target", "train", 0, 64)
    p, _, _, _ = make_scene(0, "pretrain", "train", 0, 64)
    assert np.abs(np.asarray(t, float) - np.asarray(p, float)).mean() > 10


def test_photos_image_set():
    from vlens.data.image_sets import image_set
    from vlens.images import load_image

    paths = image_set("photos:matching")
    assert len(paths) >= 10 and all(p.suffix == ".png" for p in paths)
    assert load_image(paths[0]).mode == "RGB"
    with pytest.raises(DatasetError):
        from vlens.data.photos import load_photo

        load_photo("eagle")
