"""Held-out checks: benchmarks refuse (or, when allowed, flag) images a backbone lists as training images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlens.errors import DatasetError
from vlens.match import heldout


def test_fingerprint_catches_copies_not_other_images(tmp_path):
    from vlens.data.photos import load_photo

    a, b = load_photo("astronaut"), load_photo("coffee")
    rows = []
    for name, img in (("a.png", a), ("b.png", b)):
        img.save(tmp_path / name)
        rows.append({"name": name, **heldout.fingerprint(img)})
    folder = tmp_path / "model"
    folder.mkdir()
    heldout.write_training_images(folder, [tmp_path / "a.png"], "test")
    a.resize((256, 256), Image.BICUBIC).save(tmp_path / "a_small.jpg", quality=85)  # resized, re-encoded
    Image.fromarray(255 - np.asarray(a)).save(tmp_path / "a_neg.png")  # same size, different picture
    hits = heldout.find_overlap(str(folder), [tmp_path / n for n in ("a.png", "a_small.jpg", "a_neg.png", "b.png")])
    assert hits == [("a.png", "a.png"), ("a_small.jpg", "a.png")]
    assert heldout.find_overlap("random:" + str(folder), [tmp_path / "a.png"]) == []
    assert heldout.find_overlap("sift:8", [tmp_path / "a.png"]) == []


def test_builtin_lists_its_training_images_and_benchmarks_refuse_them(cli, tmp_path):
    from vlens.data.photos import PHOTO_NAMES, photo_paths
    from vlens.match.crops import run_crop_benchmark

    listed = heldout.training_images("builtin:dino-tiny")
    assert len(listed) >= len(PHOTO_NAMES)
    with pytest.raises(DatasetError, match="training images") as e:
        run_crop_benchmark("builtin:dino-tiny", photo_paths(("astronaut", "coffee")))
    assert "\n" not in str(e.value) and "--allow-train-images" in str(e.value)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "mine.png").write_bytes(photo_paths(("coffee",))[0].read_bytes())
    code, _, err = cli("bench", "crops", "--images", tmp_path / "imgs", "--out", tmp_path / "r")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "mine.png (= coffee.png)" in errors[0]


@pytest.mark.slow
def test_allowed_overlap_is_flagged(tmp_path):
    from vlens.data.photos import photo_paths
    from vlens.match.crops import run_crop_benchmark, write_crop_outputs

    r = run_crop_benchmark("builtin:dino-tiny", photo_paths(("coffee",)), scenarios=("large",), crops_per_image=1,
                           source_side=128, crop_side=64, allow_train_images=True)
    assert r.train_overlap == [("coffee.png", "coffee.png")]
    write_crop_outputs([r], tmp_path)
    assert "WARNING: 1 of the 1 images are training images" in (tmp_path / "table.md").read_text()


def test_default_images_are_held_out(opencv_samples):
    """The default benchmark images (opencv:heldout) and the real pairs are not training images of the shipped
    backbone."""
    from vlens.data.image_sets import image_set
    from vlens.match.crops import DEFAULT_IMAGES
    from vlens.match.pairs import opencv_pairs

    imgs = image_set(DEFAULT_IMAGES)
    assert len(imgs) == 12
    pair_imgs = [p for pr in opencv_pairs() for p in (pr.source, pr.target)]
    assert heldout.find_overlap("builtin:dino-tiny", imgs + pair_imgs) == []
