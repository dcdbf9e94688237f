"""SPair-71k layout keypoint transfer: the loader on a fixture built in the same layout, PCK@0.1 of the box by
hand, transfer with an identity-like descriptor, bad inputs, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlens.errors import DatasetError
from vlens.match import keypoints as K


def make_spair(root, pairs_per_cat: int = 2, categories=("cat", "bus")):
    """A tiny SPair-71k folder: an "object" (a photo patch) pasted at different grid-aligned places on a plain
    background; keypoints at fixed points of the object, the target box around the pasted object."""
    from vlens.data.photos import load_photo

    rng = np.random.default_rng(0)
    for split in ("test", "trn"):
        (root / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
    (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    names = []
    for ci, cat in enumerate(categories):
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        obj = load_photo("astronaut" if ci == 0 else "coffee").resize((64, 64), Image.BICUBIC)
        kps_obj = np.array([[8, 8], [40, 12], [20, 50], [56, 56], [32, 32]])  # pixel indices inside the object
        for k in range(pairs_per_cat + 1):
            img = Image.new("RGB", (160, 128), (120, 120, 120))
            x, y = 8 * int(rng.integers(0, 12)), 8 * int(rng.integers(0, 8))  # on the 8 px grid
            img.paste(obj, (x, y))
            img.save(root / "JPEGImages" / cat / f"{cat}{k}.jpg", quality=95)
            np.save(root / f"{cat}{k}.npy", np.array([x, y]))
        for k in range(pairs_per_cat):
            (sx, sy), (tx, ty) = np.load(root / f"{cat}{k}.npy"), np.load(root / f"{cat}{k + 1}.npy")
            name = f"{len(names):06d}-{cat}{k}-{cat}{k + 1}:{cat}"
            ann = {"src_imname": f"{cat}{k}.jpg", "trg_imname": f"{cat}{k + 1}.jpg", "category": cat,
                   "src_kps": (kps_obj + [sx, sy]).tolist(), "trg_kps": (kps_obj + [tx, ty]).tolist(),
                   "src_bndbox": [int(sx), int(sy), int(sx) + 63, int(sy) + 63],
                   "trg_bndbox": [int(tx), int(ty), int(tx) + 63, int(ty) + 63], "kps_ids": list(range(5))}
            (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(ann))
            names.append(name)
    (root / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")
    return root


def test_pck_by_hand():
    pred = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.1], [3.0, 4.0]])
    truth = np.zeros((4, 2))
    assert list(K.pck_correct(pred, truth, unit=100.0)) == [True, True, False, True]  # within 0.1 x 100 = 10 px
    p = K.KeypointPair("x", "c", None, None, np.zeros((1, 2)), np.zeros((1, 2)), np.array([5, 10, 45, 30.0]))
    assert p.threshold_unit == 40.0
    assert list(K.patch_index(np.array([[0.5, 0.5], [15.9, 8.0], [31.9, 31.9]]), (4, 4), (32, 32))) == [0, 5, 15]


def test_spair_loader_and_transfer(tmp_path):
    root = make_spair(tmp_path / "SPair-71k")
    pairs = K.load_spair(root, "test")
    assert [p.category for p in pairs] == ["cat", "cat", "bus", "bus"]
    assert pairs[0].src_kps.shape == (5, 2) and pairs[0].threshold_unit == 63.0
    assert np.allclose(pairs[0].src_kps[0] % 1, 0.5)  # pixel indices -> vlens centres
    assert len(K.load_spair(root, "test", categories=["bus"], limit=1)) == 1
    # an exact copy of the object, moved: raw pixels (identity-like) transfer nearly every keypoint
    res = K.run_keypoint_benchmark("pixels:8", pairs, size=160)
    assert res.keypoints == 20 and res.pck_point >= 0.9 and set(res.per_category) == {"bus", "cat"}
    assert res.pck_pair == pytest.approx(np.mean([c / n for _, c, n in res.per_pair]))


def test_spair_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="not an SPair-71k folder"):
        K.load_spair(tmp_path)
    root = make_spair(tmp_path / "s", pairs_per_cat=1, categories=("cat",))
    with pytest.raises(DatasetError, match="unknown SPair split"):
        K.load_spair(root, "dev")
    ann = next((root / "PairAnnotation" / "test").glob("*.json"))
    (root / "JPEGImages" / "cat" / "cat1.jpg").unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        K.load_spair(root)
    bad = json.loads(ann.read_text())
    bad["trg_kps"] = bad["trg_kps"][:2]
    ann.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="5 source but 2 target"):
        K.load_spair(root)


@pytest.mark.slow
def test_bench_keypoints_cli(cli, tmp_path, tiny_vit):
    root = make_spair(tmp_path / "SPair-71k", pairs_per_cat=1)
    code, out, err = cli("bench", "keypoints", "--data", root, "--model", tiny_vit, "--size", "96",
                         "--out", tmp_path / "run", "--json")
    assert code == 0, err
    res = json.loads(out)["results"]
    assert [r["descriptor"] for r in res] == [str(tiny_vit), "sift:8", "pixels:8", f"random:{tiny_vit}"]
    assert all(0 <= r["pck_point"] <= 1 and r["keypoints"] == 10 for r in res)
    assert (tmp_path / "run" / "table.md").is_file()
    code, out, err = cli("bench", "keypoints", "--data", root, "--model", "sift:8", "--no-baselines", "--size", "96",
                         "--refine", "soft", "--out", tmp_path / "run-soft", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "run-soft" / "config.json").read_text())["config"]["refine"] == "soft"
    code, _, err = cli("bench", "keypoints", "--data", tmp_path, "--out", tmp_path / "r2")
    assert code != 0 and err.strip().startswith("error:") and "SPair-71k" in err
