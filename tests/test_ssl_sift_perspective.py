"""The dense-SIFT distillation term and the projective (homography) crops of the DINO trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlens.ssl import dino
from vlens.ssl.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropConfig,
    collate_crops,
    homography_from_points,
    multi_crop,
    random_perspective,
    rng_for,
    sift_targets,
)


def _coded(w=256, h=200):
    """An image whose red / green channels encode x / y."""
    ys, xs = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xs * 255 / (w - 1), ys * 255 / (h - 1), np.zeros_like(xs)], -1).astype(np.uint8))


def test_homography_from_points_by_hand():
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    # a scale by 2 and a shift by (3, -1) is the homography [[2, 0, 3], [0, 2, -1], [0, 0, 1]]
    h = homography_from_points(src, src * 2 + [3, -1])
    assert np.allclose(h, [[2, 0, 3], [0, 2, -1], [0, 0, 1]])
    # a projective one maps its 4 points exactly
    dst = np.array([[0.1, 0.05], [0.8, 0.2], [0.9, 0.95], [0.0, 0.7]])
    h = homography_from_points(src, dst)
    p = np.c_[src, np.ones(4)] @ h.T
    assert np.allclose(p[:, :2] / p[:, 2:], dst)


def test_random_perspective_stays_inside_the_unit_square():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9)), -1).reshape(-1, 2)
    for _ in range(200):
        h = random_perspective(0.3, rng)
        p = np.c_[grid, np.ones(len(grid))] @ h.T
        q = p[:, :2] / p[:, 2:]
        assert q.min() >= -1e-9 and q.max() <= 1 + 1e-9
        # every corner moves inwards by at most 0.3 along each axis
        c = np.c_[[[0, 0], [1, 0], [1, 1], [0, 1]], np.ones(4)] @ h.T
        moved = c[:, :2] / c[:, 2:]
        assert np.abs(moved - [[0, 0], [1, 0], [1, 1], [0, 1]]).max() <= 0.3 + 1e-9


def test_patch_correspondence_through_a_homography_by_hand():
    # teacher view: the box (0,0)-(8,8) warped by P = diag(0.5, 0.5, 1): it shows the box's top-left quarter.
    # student view: the plain box on a 2x2 grid, centres at (2,2) (6,2) (2,6) (6,6) px.
    # (2,2) is u = 0.25 of the box = 0.5 of the teacher view -> teacher patch (row 1, col 1) = index 3;
    # the other three fall outside the teacher view.
    p = torch.tensor([0.5, 0, 0, 0, 0.5, 0, 0, 0, 1])
    gs = torch.cat([torch.tensor([0.0, 0.0, 8.0, 8.0, 0.0, 0.0]), torch.eye(3).flatten()])[None]
    gt = torch.cat([torch.tensor([0.0, 0.0, 8.0, 8.0, 0.0, 0.0]), p])[None]
    idx, valid = dino.patch_correspondence(gs, gt, 2, 2)
    assert valid.tolist() == [[True, False, False, False]] and idx[0, 0] == 3
    # and back: every teacher patch centre lies in the student view's top-left patch
    idx, valid = dino.patch_correspondence(gt, gs, 2, 2)
    assert valid.all() and idx[0].tolist() == [0, 0, 0, 0]
    # round trip view -> image -> view with flip, rotation and a random warp
    g = torch.cat([torch.tensor([10.0, 20.0, 50.0, 44.0, 1.0, 0.3]),
                   torch.from_numpy(random_perspective(0.25, np.random.default_rng(3))).float().flatten()])[None]
    u, v = torch.rand(1, 50), torch.rand(1, 50)
    u2, v2 = dino.image_to_view(g, *dino.view_to_image(g, u, v))
    assert torch.allclose(u, u2, atol=1e-4) and torch.allclose(v, v2, atol=1e-4)


def test_perspective_crops_show_the_points_their_geometry_names():
    # every pixel of a warped (and rotated, flipped) crop must carry the image coordinates view_to_image gives
    w, h = 256, 200
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=1, jitter_p=0, gray_p=0, blur_p=(0, 0, 0),
                          solarize_p=0, rotation=20.0, perspective=0.25, flip_p=0.5, global_scale=(0.2, 0.5))
    worst, warped = 0.0, 0
    for pos in range(6):
        crops, geom = multi_crop(_coded(w, h), cfg, rng_for(2, 0, pos))
        assert geom.shape == (3, 15) and torch.equal(geom[2, 6:], torch.eye(3).flatten())  # local views: identity
        warped += int(not torch.allclose(geom[0, 6:], torch.eye(3).flatten()))
        for crop, g in zip(crops, geom):
            s = crop.shape[-1]
            std, mean = torch.tensor(IMAGENET_STD[:2]).view(2, 1, 1), torch.tensor(IMAGENET_MEAN[:2]).view(2, 1, 1)
            pix = crop[:2] * std + mean
            c = (torch.arange(s, dtype=torch.float32) + 0.5) / s
            v, u = torch.meshgrid(c, c, indexing="ij")
            x, y = dino.view_to_image(g[None], u.reshape(1, -1), v.reshape(1, -1))
            assert x.min() >= -1 and x.max() <= w + 1 and y.min() >= -1 and y.max() <= h + 1
            inner = (slice(2, -2), slice(2, -2))
            ex = (pix[0] * (w - 1) - x.view(s, s))[inner].abs().mean()
            ey = (pix[1] * (h - 1) - y.view(s, s))[inner].abs().mean()
            worst = max(worst, float(ex), float(ey))
    assert warped == 6 and worst < 2.0


def test_perspective_zero_keeps_the_old_crops():
    # the option off draws nothing extra: same crops and the 6-number geometry as before it existed
    img = _coded(120, 90)
    a = multi_crop(img, MultiCropConfig(global_size=32, n_local=1), rng_for(0, 0, 0))
    b = multi_crop(img, MultiCropConfig(global_size=32, n_local=1, perspective=0.0), rng_for(0, 0, 0))
    assert a[1].shape == (3, 6) and torch.equal(a[1], b[1]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))


def test_sift_targets_are_the_dense_sift_of_the_crop_as_shown():
    from vlens.match.sift import dense_sift, gray_uint8

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).resize((256, 192))
    cfg = MultiCropConfig(global_size=32, n_local=2, sift_patch=8, perspective=0.1, flip_p=0.5)
    crops, geom, sift = multi_crop(img, cfg, rng_for(0, 0, 0))
    assert sift.shape == (2, 16, 128) and torch.allclose(sift.norm(dim=-1), torch.ones(2, 16))
    again = multi_crop(img, cfg, rng_for(0, 0, 0))[2]
    assert torch.equal(sift, again)  # deterministic
    one = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    d = torch.from_numpy(dense_sift(gray_uint8(one), 8)).reshape(16, 128)
    assert torch.allclose(sift_targets(one, 8), d / d.norm(dim=-1, keepdim=True))
    crops_b, geom_b, sift_b = collate_crops([(crops, geom, sift), (crops, geom, sift)])
    assert len(crops_b) == 4 and geom_b.shape == (2, 4, 15) and sift_b.shape == (2, 2, 16, 128)


def test_sift_distill_loss_by_hand():
    t = torch.nn.functional.normalize(torch.randn(2, 3, 5), dim=-1)
    assert dino.sift_distill_loss(t, t).item() == pytest.approx(0, abs=1e-6)
    assert dino.sift_distill_loss(3 * t, t).item() == pytest.approx(0, abs=1e-6)  # scale does not matter
    assert dino.sift_distill_loss(-t, t).item() == pytest.approx(2, abs=1e-6)
    e = torch.eye(2)[None]  # (1, 2, 2): orthogonal predictions cost 1, a 60-degree error costs 1 - cos 60 = 0.5
    assert dino.sift_distill_loss(e.flip(-1), e).item() == pytest.approx(1, abs=1e-6)
    p = torch.tensor([[[0.5, 3 ** 0.5 / 2]]])
    assert dino.sift_distill_loss(p, torch.tensor([[[1.0, 0.0]]])).item() == pytest.approx(0.5, abs=1e-6)


def test_multicrop_net_sift_head_outputs(tiny_vit):
    from vlens.models import load

    vit = load(str(tiny_vit), "backbone").model
    head = dino.DINOHead(vit.config.hidden_size, 16, 16, 8)
    net = dino.MultiCropNet(vit, head, sift_head=torch.nn.Linear(vit.config.hidden_size, 128))
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    logits, patches, tokens, sift = net(crops)
    n = (32 // vit.config.patch_size) ** 2
    assert logits.shape == (6, 16) and patches == [] and sift.shape == (2, 2, n, 128)
    assert torch.allclose(sift[:, 1], net.sift_head(tokens[1]))


def test_train_with_sift_and_perspective_resumes_exactly(tmp_path, shapes_dir):
    """Both new options in the trainer: the SIFT term is logged, resume is exact, and the export is a plain
    backbone (the training-only SIFT head is not saved)."""
    import json

    from test_ssl_train import tiny_config

    from vlens.models import load
    from vlens.ssl.train import train

    images = shapes_dir / "images"
    crops = MultiCropConfig(global_size=32, local_size=16, n_local=1, rotation=15, min_overlap=0.2, flip_p=0,
                            perspective=0.2)
    kw = {"contrast_weight": 0.5, "sift_weight": 1.0, "crops": crops}
    train(tiny_config(tmp_path / "full", images, **kw), log=lambda _m: None)
    train(tiny_config(tmp_path / "part", images, stop_after=3, checkpoint_every=1, **kw), log=lambda _m: None)
    cfg = tiny_config(tmp_path / "part", images, resume=True, **kw)
    train(cfg, log=lambda _m: None)
    full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    part = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert all("loss_sift" in h and 0 < h["loss_sift"] < 2 for h in full)
    assert [h["loss"] for h in full] == [h["loss"] for h in part]
    saved = json.loads((tmp_path / "full" / "config.json").read_text())["config"]
    assert saved["sift_weight"] == 1.0 and saved["crops"]["perspective"] == 0.2
    model = load(str(tmp_path / "full" / "backbone"), "backbone").model
    assert type(model).__name__ == "ViTModel" and not any("sift" in k for k in model.state_dict())


def test_cli_rejects_bad_sift_and_perspective(tmp_path, cli):
    code, _, err = cli("ssl", "train", "--out", tmp_path / "r", "--perspective", "0.5")
    assert code != 0 and "--perspective" in err
    code, _, err = cli("ssl", "train", "--out", tmp_path / "r", "--sift-weight", "-1")
    assert code != 0 and "--sift-weight" in err


def test_sift_head_none_needs_128_wide_tokens(tmp_path, shapes_dir):
    from test_ssl_train import tiny_config

    from vlens.errors import ConfigError
    from vlens.ssl.train import train

    cfg = tiny_config(tmp_path / "r", shapes_dir / "images", sift_weight=1.0, sift_head="none")  # test-vit: 32 wide
    with pytest.raises(ConfigError, match="128-wide"):
        train(cfg, log=lambda _m: None)
    with pytest.raises(ConfigError, match="--sift-head"):
        train(tiny_config(tmp_path / "s", shapes_dir / "images", sift_head="mlp"), log=lambda _m: None)
