"""Multi-crop augmentation: shapes, value ranges, determinism, crop boxes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlens.ssl.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropConfig,
    collate_crops,
    multi_crop,
    random_resized_box,
    rng_for,
    rotated_box,
    shift_hue,
)


def _image(w=120, h=80):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_multi_crop_shapes_and_ranges():
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=3)
    img = _image()
    crops, geom = multi_crop(img, cfg, rng_for(0, 0, 0))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert geom.shape == (5, 6)
    assert torch.all(geom[:, 5] == 0)  # no rotation by default
    assert torch.all(geom[:, 0] >= 0) and torch.all(geom[:, 2] <= img.width) and torch.all(geom[:, 3] <= img.height)
    assert set(geom[:, 4].tolist()) <= {0.0, 1.0}
    lo = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
    for c in crops:
        assert c.dtype == torch.float32
        assert torch.all(c >= lo - 1e-5) and torch.all(c <= hi + 1e-5)
    batch, bgeom = collate_crops([(crops, geom), (crops, geom)])
    assert [tuple(b.shape) for b in batch] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 3
    assert bgeom.shape == (2, 5, 6)


def test_crops_are_keyed_by_seed_epoch_position():
    cfg = MultiCropConfig(global_size=24, local_size=12, n_local=2)
    img = _image()
    a, ga = multi_crop(img, cfg, rng_for(3, 1, 5))
    b, gb = multi_crop(img, cfg, rng_for(3, 1, 5))
    c, _ = multi_crop(img, cfg, rng_for(3, 1, 6))
    assert torch.equal(ga, gb)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_random_resized_box_area_and_bounds():
    scale, ratio = (0.1, 0.3), (3 / 4, 4 / 3)
    for i in range(200):
        rng = np.random.default_rng(i)
        x0, y0, x1, y1 = random_resized_box(200, 100, scale, ratio, rng)
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100
        area = (x1 - x0) * (y1 - y0) / (200 * 100)
        assert 0.09 <= area <= 0.31  # rounding to whole pixels
        assert 0.7 <= (x1 - x0) / (y1 - y0) <= 1.4


def test_random_resized_box_fallback_is_central():
    # a 1000x10 strip cannot hold a 3/4..4/3 box covering 90% of it: the fallback is the central crop
    box = random_resized_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0))
    x0, y0, x1, y1 = box
    assert (y0, y1) == (0, 10) and abs((x0 + x1) / 2 - 500) <= 1 and (x1 - x0) == 13


def test_geometry_describes_the_crop():
    # crop of a horizontal gradient: the crop's left/right pixel values must come from x0 / x1 (or mirrored)
    w, h = 200, 100
    grad = np.tile(np.linspace(0, 255, w, dtype=np.float64)[None, :, None], (h, 1, 3)).astype(np.uint8)
    cfg = MultiCropConfig(global_size=40, local_size=16, n_local=0, jitter_p=0, gray_p=0, blur_p=(0, 0, 0),
                          solarize_p=0)
    for pos in range(10):
        crops, geom = multi_crop(Image.fromarray(grad), cfg, rng_for(0, 0, pos))
        x0, _, x1, _, fl, _ = geom[0].tolist()
        pix = crops[0][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (S, S) red channel back in [0, 1]
        left, right = float(pix[:, 0].mean()) * 255, float(pix[:, -1].mean()) * 255
        if fl:
            left, right = right, left
        step = 255 / (w - 1)
        assert abs(left - x0 * step) < 8 and abs(right - x1 * step) < 8


def test_rotated_crops_show_the_points_their_geometry_names():
    # an image whose red/green channels encode x/y: every pixel of a rotated crop must carry the image coordinates
    # that view_to_image gives for it, and the rotated box must stay inside the image
    from vlens.ssl.dino import view_to_image

    w, h = 256, 200
    ys, xs = np.mgrid[0:h, 0:w]
    coded = np.stack([xs * 255 / (w - 1), ys * 255 / (h - 1), np.zeros_like(xs)], -1).astype(np.uint8)
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=2, jitter_p=0, gray_p=0, blur_p=(0, 0, 0),
                          solarize_p=0, rotation=30.0, global_scale=(0.2, 0.5), local_scale=(0.05, 0.1))
    worst = 0.0
    for pos in range(6):
        crops, geom = multi_crop(Image.fromarray(coded), cfg, rng_for(1, 0, pos))
        assert geom[:, 5].abs().max() <= np.radians(30) + 1e-6 and geom[:, 5].abs().max() > 0
        for crop, g in zip(crops, geom):
            s = crop.shape[-1]
            std, mean = torch.tensor(IMAGENET_STD[:2]).view(2, 1, 1), torch.tensor(IMAGENET_MEAN[:2]).view(2, 1, 1)
            pix = crop[:2] * std + mean  # red / green back in [0, 1]
            c = (torch.arange(s, dtype=torch.float32) + 0.5) / s
            v, u = torch.meshgrid(c, c, indexing="ij")
            x, y = view_to_image(g[None], u.reshape(1, -1), v.reshape(1, -1))
            assert x.min() >= -1 and x.max() <= w + 1 and y.min() >= -1 and y.max() <= h + 1
            inner = (slice(2, -2), slice(2, -2))  # skip the border, where bicubic sampling blends
            ex = (pix[0] * (w - 1) - x.view(s, s))[inner].abs().mean()
            ey = (pix[1] * (h - 1) - y.view(s, s))[inner].abs().mean()
            worst = max(worst, float(ex), float(ey))
    assert worst < 2.0  # pixels; the coding itself is quantised to ~1 px


def test_rotated_box_that_must_shrink_to_fit_never_fails():
    # a rotated box as large as the image is shrunk until it fits, which leaves one possible centre along one
    # side; rounding used to make that range negative (numpy: "high - low < 0") for ~2% of such boxes
    rng = np.random.default_rng(0)
    for _ in range(3000):
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        angle = float(rng.uniform(-15, 15))
        x0, y0, x1, y1 = rotated_box((0, 0, w, h), w, h, angle, rng)
        t = np.radians(angle)
        ew = (x1 - x0) * abs(np.cos(t)) + (y1 - y0) * abs(np.sin(t))  # the rotated box's extent
        eh = (x1 - x0) * abs(np.sin(t)) + (y1 - y0) * abs(np.cos(t))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert cx - ew / 2 >= -1e-6 and cx + ew / 2 <= w + 1e-6 and cy - eh / 2 >= -1e-6 and cy + eh / 2 <= h + 1e-6


def test_min_overlap_redraws_the_second_global_crop():
    from vlens.ssl.augment import box_overlap

    img = _image(300, 200)
    loose = MultiCropConfig(global_size=16, n_local=0, global_scale=(0.05, 0.1))
    tight = MultiCropConfig(global_size=16, n_local=0, global_scale=(0.05, 0.1), min_overlap=0.3)
    free = [box_overlap(*multi_crop(img, loose, rng_for(0, 0, p))[1].tolist()) for p in range(40)]
    kept = [box_overlap(*multi_crop(img, tight, rng_for(0, 0, p))[1].tolist()) for p in range(40)]
    assert sum(o < 0.3 for o in free) > 10  # small random boxes often miss each other
    assert sum(o >= 0.3 for o in kept) >= 38  # 20 redraws nearly always find an overlapping one
    assert box_overlap((0, 0, 10, 10), (5, 0, 25, 10)) == 0.5 and box_overlap((0, 0, 1, 1), (2, 2, 3, 3)) == 0


def test_hue_shift_full_turn_is_identity():
    img = Image.new("RGB", (8, 8), (200, 40, 90))
    same = np.asarray(shift_hue(img, 1.0)).astype(int)
    assert np.abs(same - np.asarray(img).astype(int)).max() <= 3
    moved = np.asarray(shift_hue(img, 1 / 3)).astype(int)
    assert np.abs(moved - np.asarray(img).astype(int)).max() > 50
