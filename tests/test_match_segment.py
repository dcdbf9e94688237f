"""Label transfer, k-means parts and the segmentation benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.errors import DatasetError
from vlens.match.segment import (
    confusion,
    iou_from_confusion,
    kmeans,
    knn_vote,
    label_distribution,
    run_segment_benchmark,
    segment,
)


def test_label_distribution_by_hand():
    mask = np.array([[0, 0, 1, 1],
                     [0, 2, 1, 1],
                     [3, 3, 0, 0],
                     [3, 3, 0, 1]])
    d = label_distribution(mask, (2, 2), 4)  # (4, 4): patches row-major, classes 0..3
    want = [[0.75, 0, 0.25, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0.75, 0.25, 0, 0]]
    np.testing.assert_allclose(d.numpy(), want)


def test_knn_vote_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(7, 5, generator=g), torch.randn(30, 5, generator=g)
    values = torch.softmax(torch.randn(30, 3, generator=g), 1)
    got = knn_vote(q, keys, values, k=4, temperature=0.1, chunk=3)
    for i in range(7):
        sims = torch.stack([torch.nn.functional.cosine_similarity(q[i], keys[j], dim=0) for j in range(30)])
        top = torch.argsort(sims, descending=True)[:4]
        w = torch.exp(sims[top] / 0.1)
        want = (w[:, None] * values[top]).sum(0) / w.sum()
        assert torch.allclose(got[i], want, atol=1e-5)


def test_iou_by_hand():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    iou, miou, acc = iou_from_confusion(confusion(pred, true, 4))
    # class 0: tp 1, union 3; class 1: tp 2, union 3; class 2: tp 0, union 1; class 3 absent -> NaN
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and np.isnan(iou[3])
    assert miou == pytest.approx(1 / 3) and acc == pytest.approx(3 / 5)


def test_kmeans_finds_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(40, 2, generator=g) for c in centres])
    labels, _ = kmeans(x, 3, seed=1)
    groups = [set(labels[i * 40:(i + 1) * 40].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in groups) and len(set.union(*groups)) == 3
    again, _ = kmeans(x, 3, seed=1)
    assert torch.equal(labels, again)


def _pair(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.int64)
    mask[: size // 2, : size // 2] = 1
    mask[size // 2:, size // 2:] = 2
    return img, mask


def test_reference_as_target_is_recovered():
    img, mask = _pair()
    from vlens.match.segment import SegmentConfig

    seg = segment(img, [(img, mask)], "pixels", SegmentConfig(k=1, size=64))
    assert seg.labels.shape == (64, 64) and seg.notes == []
    _, miou, acc = iou_from_confusion(confusion(seg.labels, mask, 3))
    assert miou > 0.95 and acc > 0.97  # bilinear upsampling ties exactly on the patch borders


def test_bad_masks_and_missing_classes():
    img, mask = _pair()
    with pytest.raises(DatasetError, match="is 32x64 but its image is 64x64"):
        segment(img, [(img, mask[:, :32])], "pixels")
    from vlens.match.segment import SegmentConfig

    with pytest.raises(DatasetError, match="only 2 classes"):
        segment(img, [(img, mask)], "pixels", SegmentConfig(n_classes=2))
    only01 = np.where(mask == 2, 0, mask)
    seg = segment(img, [(img, only01)], "pixels", target_mask=mask)
    assert seg.notes and "[2]" in seg.notes[0] and 2 not in np.unique(seg.labels)
    with pytest.raises(DatasetError, match="target mask is 64x32"):
        segment(img, [(img, mask)], "pixels", target_mask=mask[:32])


@pytest.mark.slow
def test_label_transfer_beats_majority_baseline_on_shapes(shapes_dir):
    base = run_segment_benchmark("majority", shapes_dir, refs=20, targets=12)
    pix = run_segment_benchmark("pixels", shapes_dir, refs=20, targets=12)
    assert pix.targets == 12 and pix.refs == 20
    assert pix.miou > base.miou + 0.05
    assert base.per_class_iou["circle"] == 0.0


@pytest.mark.slow
def test_segment_cli(cli, shapes_dir, tiny_vit, tmp_path):
    from vlens.data import load_dataset

    train = load_dataset(shapes_dir).split("train").samples
    a, b, t = train[0], train[1], train[2]
    code, out, err = cli("segment", "--ref", a.image_path, "--ref-mask", a.mask_path, "--ref", b.image_path,
                         "--ref-mask", b.mask_path, "--target", t.image_path, "--target-mask", t.mask_path,
                         "--model", tiny_vit, "--size", "64", "--classes", "6", "--out", tmp_path / "seg", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert 0 <= info["miou"] <= 1 and info["classes"] == 6
    assert Image.open(tmp_path / "seg" / "labels.png").size == Image.open(t.image_path).size
    code, _, err = cli("segment", "--ref", a.image_path, "--target", t.image_path, "--ref-mask", a.mask_path,
                       "--ref-mask", b.mask_path)
    assert code == 1 and "one mask per reference" in err
    code, out, err = cli("segment", "parts", a.image_path, b.image_path, "--k", "3", "--model", tiny_vit,
                         "--size", "64", "--out", tmp_path / "parts.png")
    assert code == 0 and (tmp_path / "parts.png").exists(), err


@pytest.mark.slow
def test_bench_segment_cli(cli, shapes_dir, tiny_vit, tmp_path):
    code, out, err = cli("bench", "segment", "--model", tiny_vit, "--data", shapes_dir, "--refs", "8",
                         "--targets", "4", "--size", "64", "--out", tmp_path / "b", "--json")
    assert code == 0, err
    res = json.loads(out)["results"]
    assert [r["model"] for r in res] == [str(tiny_vit), "sift:8", "pixels:8", f"random:{tiny_vit}", "majority"]
    assert (tmp_path / "b" / "examples.png").exists() and (tmp_path / "b" / "table.md").exists()
