"""Hand-written data files (issue 23, items 7-9): pair manifests, SPair annotations, Karpathy / COCO / folder
caption datasets. Fuzzed field by field: whatever a file holds, loading either refuses it with one DatasetError
line naming the file, or returns data that is what vlens computes with (finite numbers, right shapes, points
inside their images, at least one caption per image, unique ids). Never another exception, never a silently
wrong number."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlens.errors import DatasetError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=6),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2.5, -1, 1e300]))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=5), kids, max_size=3)),
                           max_leaves=12)


def _one_line(exc: DatasetError, name: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and name in msg, msg


# ------------------------------------------------------------------------------------------ pair manifests


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairfiles")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    img.save(d / "L.png")
    img.save(d / "R.png")
    Image.fromarray(np.full((48, 64), 8, np.uint8)).save(d / "D.png")
    Image.fromarray(np.full((48, 64, 3), 8, np.uint8)).save(d / "RGB.png")
    (d / "H.txt").write_text("1 0 2\n0 1 3\n0 0 1\n")
    return d


matrix_like = st.one_of(
    st.lists(st.lists(st.one_of(st.floats(-5, 5), scalars), min_size=2, max_size=4), min_size=2, max_size=4),
    st.just([[1, 0, 2], [0, 1, 3], [0, 0, 1]]), st.just("H.txt"), json_values)
manifest_entry = st.fixed_dictionaries(
    {"source": st.sampled_from(["L.png", "R.png"])},
    optional={"target": st.one_of(st.sampled_from(["L.png", "R.png", "nope.png", ""]), scalars),
              "name": st.one_of(st.text(max_size=5), scalars),
              "homography": matrix_like,
              "convention": st.one_of(st.sampled_from(["opencv", "vlens", "x"]), scalars),
              "disparity": st.one_of(st.sampled_from(["D.png", "RGB.png", "H.txt"]), scalars),
              "disparity_scale": st.one_of(st.floats(allow_nan=True, allow_infinity=True), scalars),
              "disparity_unknown": scalars,
              "extra": scalars})


@FUZZ
@given(entry=manifest_entry)
def test_fuzzed_manifests_are_refused_in_one_line_or_load_valid_pairs(pair_files, entry):
    from vlens.match import pairs as P

    path = pair_files / "m.json"
    path.write_text(json.dumps({"pairs": [entry]}))
    try:
        (pair,) = P.load_manifest(path)
    except DatasetError as exc:
        _one_line(exc, str(path))
        return
    if pair.homography is not None:
        assert pair.homography.shape == (3, 3) and np.isfinite(pair.homography).all()
    else:
        d = pair.disparity
        assert d.shape == (48, 64) and not np.isinf(d).any()
        assert isinstance(entry.get("disparity_scale", 1), int | float) and math.isfinite(entry.get(
            "disparity_scale", 1))


def test_the_reported_manifest_cases(pair_files):
    from vlens.match import pairs as P

    base = {"source": "L.png", "target": "R.png"}
    cases = {"homography": ({"homography": [[1, 0, "2"], [0, 1, 0], [0, 0, 1]]}, "row 1 value 3"),
             "ragged": ({"homography": [[1, 0, 2], [0, 1], [0, 0, 1]]}, "row 2"),
             "scale": ({"disparity": "D.png", "disparity_scale": "abc"}, "disparity_scale"),
             "nan scale": ({"disparity": "D.png", "disparity_scale": float("nan")}, "NaN and infinity"),
             "unknown": ({"disparity": "D.png", "disparity_unknown": "x"}, "disparity_unknown"),
             "rgb": ({"disparity": "RGB.png"}, "one channel")}
    for what, (change, expect) in cases.items():
        path = pair_files / "case.json"
        path.write_text(json.dumps({"pairs": [{**base, **change}]}))
        with pytest.raises(DatasetError) as exc:
            P.load_manifest(path)
        assert expect in str(exc.value) and str(path) in str(exc.value), (what, str(exc.value))


# ------------------------------------------------------------------------------------------ SPair annotations


@pytest.fixture(scope="module")
def spair(tmp_path_factory):
    root = tmp_path_factory.mktemp("spair") / "SPair-71k"
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    Image.new("RGB", (160, 128), (120, 90, 60)).save(root / "JPEGImages" / "cat" / "a.jpg")
    Image.new("RGB", (160, 128), (60, 90, 120)).save(root / "JPEGImages" / "cat" / "b.jpg")
    return root


GOOD_SPAIR = {"src_imname": "a.jpg", "trg_imname": "b.jpg", "category": "cat", "src_kps": [[10, 20], [30, 40]],
              "trg_kps": [[12, 22], [33, 44]], "trg_bndbox": [5, 6, 100, 90]}
kps_like = st.one_of(st.lists(st.lists(st.one_of(st.floats(-50, 300), scalars), min_size=1, max_size=3),
                              max_size=3), json_values, st.just([[10, 20], [30, 40]]))
spair_entry = st.fixed_dictionaries({}, optional={
    "src_imname": st.one_of(st.just("a.jpg"), scalars), "trg_imname": st.one_of(st.just("b.jpg"), scalars),
    "category": st.one_of(st.just("cat"), scalars), "src_kps": kps_like, "trg_kps": kps_like,
    "trg_bndbox": st.one_of(st.lists(st.one_of(st.floats(-50, 300), scalars), max_size=5),
                            st.just([5, 6, 100, 90]))})


@FUZZ
@given(change=spair_entry)
def test_fuzzed_spair_annotations_are_refused_in_one_line_or_load_valid_keypoints(spair, change):
    from vlens.match import keypoints as K

    path = spair / "PairAnnotation" / "test" / "000001-a-b:cat.json"
    path.write_text(json.dumps({**GOOD_SPAIR, **change}))
    try:
        (pair,) = K.load_spair(spair, "test")
    except DatasetError as exc:
        _one_line(exc, path.name)
        return
    for kps in (pair.src_kps, pair.trg_kps):
        assert kps.ndim == 2 and kps.shape[1] == 2 and len(kps) and np.isfinite(kps).all()
        assert (kps >= -1).all() and (kps[:, 0] <= 161).all() and (kps[:, 1] <= 129).all()
    assert np.isfinite(pair.trg_bbox).all() and 0 < pair.threshold_unit < 300


@pytest.mark.parametrize("change,expect", [
    ({"trg_bndbox": [5, 6, float("inf"), 90]}, "trg_bndbox"), ({"trg_bndbox": [5, float("nan"), 100, 90]}, "NaN"),
    ({"src_kps": [[float("nan"), 3], [4, 5]]}, "src_kps"), ({"src_kps": [10, 20, 30]}, "src_kps"),
    ({"src_kps": None}, "src_kps"), ({"src_kps": [[10, 20], [30]]}, "row 2"),
    ({"trg_kps": [["10", 20], [30, 40]]}, "trg_kps"), ({"trg_kps": [[10, 20], [3000, 40]]}, "outside"),
    ({"trg_bndbox": [5, 6, 1000, 90]}, "outside")])
def test_the_reported_spair_cases(spair, change, expect):
    from vlens.match import keypoints as K

    (spair / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text(json.dumps({**GOOD_SPAIR, **change}))
    with pytest.raises(DatasetError, match=expect):
        K.load_spair(spair, "test")


# ------------------------------------------------------------------------------- Karpathy / COCO / folders

karpathy_image = st.fixed_dictionaries({}, optional={
    "filename": st.one_of(st.just("a.png"), st.just("b.png"), scalars), "filepath": st.one_of(st.just("x"), scalars),
    "split": st.one_of(st.sampled_from(["train", "test", "restval"]), scalars),
    "sentences": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({"raw": st.one_of(st.text(max_size=8),
                                                                                       scalars)}), scalars),
                                    max_size=3), scalars),
    "cocoid": st.one_of(st.integers(0, 3), scalars), "mask": scalars})
karpathy_doc = st.one_of(st.fixed_dictionaries({"images": st.lists(st.one_of(karpathy_image, json_values),
                                                                   max_size=4)}), json_values)
coco_doc = st.fixed_dictionaries({
    "images": st.one_of(st.lists(st.one_of(st.fixed_dictionaries(
        {"id": st.one_of(st.integers(0, 3), scalars), "file_name": st.one_of(st.just("a.png"), scalars)}),
        json_values), max_size=4), json_values),
    "annotations": st.one_of(st.lists(st.one_of(st.fixed_dictionaries(
        {"image_id": st.one_of(st.integers(0, 3), scalars), "caption": st.one_of(st.text(max_size=8), scalars)}),
        json_values), max_size=5), json_values)})
folder_row = st.one_of(st.fixed_dictionaries({}, optional={
    "file_name": st.one_of(st.just("a.png"), scalars), "text": st.one_of(st.text(max_size=8), scalars),
    "captions": st.one_of(st.lists(st.one_of(st.text(max_size=5), scalars), max_size=3), scalars),
    "split": scalars, "mask": scalars, "id": scalars}), json_values)


def _check_loaded(path):
    from vlens.data import load_dataset

    try:
        lenient = load_dataset(path, strict=False)
    except DatasetError as exc:
        _one_line(exc, path.name)
        return
    try:
        ds = load_dataset(path)
    except DatasetError as exc:
        _one_line(exc, path.name)
        assert lenient.problems
        return
    assert not ds.problems
    ids = [s.id for s in ds]
    assert len(ids) == len(set(ids))
    bare = {id(s) for s in ds.uncaptioned}  # loaded (retrieval training skips them), refused by evaluation
    for s in ds:
        assert isinstance(s.split, str) and s.split and (any(c.strip() for c in s.captions) != (id(s) in bare))
        assert all(isinstance(c, str) for c in s.captions) and s.image_path.name


@FUZZ
@given(doc=karpathy_doc)
def test_fuzzed_karpathy_json(tmp_path, doc):
    path = tmp_path / "dataset_k.json"
    path.write_text(json.dumps(doc))
    _check_loaded(path)


@FUZZ
@given(doc=coco_doc)
def test_fuzzed_coco_json(tmp_path, doc):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(doc))
    _check_loaded(path)


@FUZZ
@given(rows=st.lists(folder_row, max_size=4))
def test_fuzzed_folder_metadata(tmp_path, rows):
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _check_loaded(tmp_path)


def test_the_reported_dataset_cases(tmp_path, cli):
    from vlens.data import load_dataset

    (tmp_path / "k.json").write_text(json.dumps({"images": [None]}))
    with pytest.raises(DatasetError, match=r"images\[0\] is null"):
        load_dataset(tmp_path / "k.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_dataset(tmp_path / "deep.json")
    # Item 9: an image without captions is listed by `data inspect` and refused by `caption eval` up front.
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "e.json").write_text(json.dumps({"images": [{"filename": "a.png", "split": "test",
                                                             "sentences": []}]}))
    code, out, err = cli("data", "inspect", tmp_path / "e.json")
    assert code == 1 and "a.png (id 0, test) has no caption" in out  # listed; training would skip it
    code, _, err = cli("caption", "eval", "--data", tmp_path / "e.json", "--model", "builtin:does-not-exist",
                       "--fast")
    assert code == 1 and "has no caption" in err and err.count("\n") == 1
