"""Backbone probe: its pieces against brute force / hand cases, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlens.ssl.probe import ProbeConfig, confusion, knn_predict, miou, patch_labels, run_probe


def test_patch_labels_majority():
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[:2, :2] = 3  # top-left patch fully class 3
    mask[2:, 2:] = 1
    mask[3, 3] = 2  # one pixel of 2 inside the class-1 patch: majority stays 1
    assert patch_labels(mask, (2, 2), 6).tolist() == [[3, 0], [0, 1]]


def test_miou_by_hand():
    true = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    conf = confusion(pred, true, 4)
    # class 0: tp 1, union 3; class 1: tp 2, union 3; class 2: tp 0, union 1; class 3 absent -> ignored
    m, acc = miou(conf)
    assert m == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert acc == pytest.approx(3 / 5)


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)
    q = torch.randn(20, 8, generator=g)
    got = knn_predict(x, y, q, k=5, n_classes=3, chunk=7)
    xn, qn = x / x.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True)
    for i in range(20):
        sims = [(float(qn[i] @ xn[j]), j) for j in range(50)]
        top = sorted(sims, reverse=True)[:5]
        votes = np.zeros(3)
        for s, j in top:
            votes[int(y[j])] += max(s, 0) + 1e-6
        assert int(got[i]) == int(votes.argmax())


def test_probe_end_to_end(shapes_dir, tiny_vit):
    cfg = ProbeConfig(models=[str(tiny_vit), "pixels"], hub=["facebook/dinov2-small"], data=str(shapes_dir),
                      size=64, train_images=10, test_images=4, k=3)
    notes = []
    res = run_probe(cfg, log=notes.append)
    assert [r["model"] for r in res["rows"]] == [str(tiny_vit), "pixels"]
    for r in res["rows"]:
        assert 0 <= r["linear_miou"] <= 1 and 0 <= r["knn_miou"] <= 1
    assert any("skipped facebook/dinov2-small" in n for n in notes)  # not cached: one line, no download
