"""DINO multi-crop augmentation written with PIL, NumPy and torch (no torchvision).

Each image gives ``2`` global crops (large area, ``global_size`` px) and ``n_local`` local crops (small area,
``local_size`` px). Every crop is a random resized crop with a horizontal flip, colour jitter, random grayscale,
Gaussian blur and (on the second global crop) solarisation, then normalised with the ImageNet mean/std.

Randomness comes from a ``numpy.random.Generator`` built from ``(seed, epoch, position)``, never from global
state, so the crops of a sample are the same however many workers or processes there are and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MultiCropConfig:
    """Multi-crop settings. Defaults suit small images on a CPU: 96 px global, 48 px local crops."""

    global_size: int = 96
    """Side of the 2 global crops (px). The teacher sees only these."""
    local_size: int = 48
    """Side of the local crops (px); they teach local-to-global correspondence."""
    n_local: int = 6
    """Number of local crops per image (0 disables multi-crop: plain 2-view DINO)."""
    global_scale: tuple[float, float] = (0.25, 1.0)
    """Area fraction range of the source image covered by a global crop."""
    local_scale: tuple[float, float] = (0.05, 0.25)
    """Area fraction range for local crops (should end where global_scale starts)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio range of a crop before it is resized to a square."""
    min_overlap: float = 0.0
    """Least overlap of the two global crops, as a fraction of the smaller box's area: the second one is redrawn
    (up to 20 times) until it overlaps the first this much. Dense terms only learn where the views overlap."""
    rotation: float = 0.0
    """Largest rotation of a crop box in degrees (uniform in +-rotation; 0 = axis-aligned crops). The rotated box
    is shrunk, if needed, to stay inside the image."""
    flip_p: float = 0.5
    """Probability of a horizontal flip. Flips teach mirror invariance: right for [CLS], wrong for dense matching
    (the two sides of an edge become alike), so the builtin:dino-tiny recipe sets 0."""
    jitter_p: float = 0.8
    """Probability of colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue ``hue``)."""
    hue: float = 0.1
    """Largest hue shift of the jitter, in turns of the colour circle (0 keeps hues: colour stays a cue)."""
    gray_p: float = 0.2
    """Probability of turning a crop grey (teaches colour invariance; 0 keeps colour as a matching cue)."""
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    """Blur probability for global crop 1, global crop 2 and local crops (DINO's values)."""
    solarize_p: float = 0.2
    """Solarisation probability for the second global crop."""
    perspective: float = 0.0
    """Projective warp of the global crops: each corner of the crop moves inwards by up to this fraction of the
    crop side (independently in x and y), so the view shows a quadrilateral of its box, i.e. a homography of the
    image (the two global views then differ by a viewpoint-like homography). 0 = no warp. The correspondences
    stay exact: the warp is part of the view geometry."""
    sift_patch: int = 0
    """When > 0, each global crop also gets the L2-normalised dense SIFT descriptor of every ``sift_patch``-pixel
    patch of the crop as shown (vlens.match.sift.dense_sift, 48 px support): the targets of the SIFT distillation
    term. 0 = none."""


def rng_for(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample: independent streams for every (seed, epoch, position)."""
    return np.random.default_rng([int(seed), int(epoch), int(position)])


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) covering a random area fraction in ``scale`` with a random aspect
    ratio in ``ratio`` (log-uniform), like torchvision's RandomResizedCrop; falls back to a central crop."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        w = round(math.sqrt(target * ar))
        h = round(math.sqrt(target / ar))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return x0, y0, x0 + w, y0 + h
    in_ratio = width / height  # fallback: the largest central crop within the ratio range
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return x0, y0, x0 + w, y0 + h


def shift_hue(img: Image.Image, turns: float) -> Image.Image:
    """Rotate the hue of an RGB image by ``turns`` of the colour circle (HSV, hue channel wraps around)."""
    h, s, v = img.convert("HSV").split()
    shift = round(turns * 256) % 256  # PIL stores hue as 0..255 for one full turn
    h = h.point(lambda x: (x + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1) -> Image.Image:
    """Brightness, contrast, saturation and hue changes in a random order (torchvision's ColorJitter, in PIL)."""
    for op in rng.permutation(4):
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - brightness, 1 + brightness))
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - contrast, 1 + contrast))
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(rng.uniform(1 - saturation, 1 + saturation))
        elif hue > 0:
            img = shift_hue(img, rng.uniform(-hue, hue))
    return img


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1)
    return (x - m) / s


def rotated_box(box: tuple[int, int, int, int], width: int, height: int, angle_deg: float,
                rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Re-place an axis-aligned box of the same size (shrunk if needed) so that, rotated by ``angle_deg`` about
    its centre, it lies inside the image. Returns the unrotated box ``(x0, y0, x1, y1)`` around the new centre."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    t = math.radians(angle_deg)
    c, s = abs(math.cos(t)), abs(math.sin(t))
    ew, eh = bw * c + bh * s, bw * s + bh * c  # axis-aligned extent of the rotated box
    shrink = min(1.0, width / ew, height / eh)
    bw, bh, ew, eh = bw * shrink, bh * shrink, ew * shrink, eh * shrink
    # a shrunk box fills the image along one side: its centre range is one point, which rounding can invert
    cx = rng.uniform(ew / 2, max(ew / 2, width - ew / 2))
    cy = rng.uniform(eh / 2, max(eh / 2, height - eh / 2))
    return cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2


IDENTITY9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography (H[2, 2] = 1) mapping 4 points ``src`` (4, 2) onto ``dst`` (4, 2) (direct linear solve)."""
    a, b = [], []
    for (x, y), (u, v) in zip(np.asarray(src, float), np.asarray(dst, float)):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.array(a), np.array(b))  # (8,)
    return np.append(h, 1.0).reshape(3, 3)


def random_perspective(strength: float, rng: np.random.Generator) -> np.ndarray:
    """A homography of the unit square (3, 3) that maps its corners to corners moved inwards by up to ``strength``
    (uniform, independently in x and y): the warped square stays inside the unit square."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)  # direction to the inside per corner
    moved = corners + inward * rng.uniform(0, strength, size=(4, 2))
    return homography_from_points(corners, moved)


def view_homography(box, angle_deg: float, size: int, unit_h: np.ndarray) -> np.ndarray:
    """3x3 map from output pixels of a ``size`` px view to image pixels: output -> unit square (/ size) ->
    ``unit_h`` -> box pixels (* size) -> the box's affine (crop_affine: box centre, size, rotation)."""
    from vlens.match.crops import crop_affine

    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    a = np.vstack([crop_affine(centre, (box[2] - box[0], box[3] - box[1]), (size, size), angle_deg), [0, 0, 1]])
    s, si = np.diag([size, size, 1.0]), np.diag([1.0 / size, 1.0 / size, 1.0])
    h = a @ s @ unit_h @ si
    return h / h[2, 2]


def sift_targets(crop: Image.Image, patch: int) -> torch.Tensor:
    """L2-normalised dense SIFT of a crop as shown, one 128-d row per ``patch`` px patch, row-major: (N, 128)."""
    from vlens.match.sift import dense_sift, gray_uint8

    d = torch.from_numpy(dense_sift(gray_uint8(crop), patch)).flatten(0, 1)  # (N, 128)
    return torch.nn.functional.normalize(d, dim=-1)


def view(img: Image.Image, size: int, scale, cfg: MultiCropConfig, blur_p: float, solarize_p: float,
         rng: np.random.Generator, perspective: float = 0.0, sift_patch: int = 0):
    """One augmented, normalised crop (3, size, size) and its geometry ``(x0, y0, x1, y1, flipped, angle)``: the
    crop box in image pixels before rotation, the flip flag and the rotation about the box centre in radians.
    With ``perspective`` > 0 the geometry has 9 more numbers: the unit-square homography of the warp (row-major;
    see :func:`random_perspective`); with ``sift_patch`` > 0 a third item, the crop's SIFT targets (N, 128).
    PIL does the pixel work: on small crops its C loops are ~100x faster than launching torch ops."""
    box = random_resized_box(img.width, img.height, scale, cfg.ratio, rng)
    angle = float(rng.uniform(-cfg.rotation, cfg.rotation)) if cfg.rotation > 0 else 0.0
    unit_h = random_perspective(perspective, rng) if perspective > 0 else None
    if unit_h is not None:
        if angle:
            box = rotated_box(box, img.width, img.height, angle, rng)
        h = view_homography(box, angle, size, unit_h)
        crop = img.transform((size, size), Image.PERSPECTIVE, data=tuple(h.ravel()[:8]), resample=Image.BICUBIC)
    elif angle:
        from vlens.match.crops import crop_affine, render_crop

        box = rotated_box(box, img.width, img.height, angle, rng)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        affine = crop_affine(centre, (box[2] - box[0], box[3] - box[1]), (size, size), angle)
        crop = render_crop(img, affine, (size, size))
    else:
        crop = img.resize((size, size), Image.BICUBIC, box=box)
    flipped = rng.random() < cfg.flip_p
    if flipped:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < cfg.jitter_p:
        crop = color_jitter(crop, rng, hue=cfg.hue)
    if rng.random() < cfg.gray_p:
        crop = crop.convert("L").convert("RGB")
    if rng.random() < blur_p:
        # DINO's sigma range 0.1-2.0 is for 224 px crops; scale it to this crop size
        crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0) * size / 224))
    if rng.random() < solarize_p:
        crop = ImageOps.solarize(crop, 128)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
    geom = (*map(float, box), float(flipped), math.radians(angle))
    if perspective > 0:
        geom += tuple(map(float, unit_h.ravel()))
    if sift_patch > 0:
        return normalize(x).contiguous(), geom, sift_targets(crop, sift_patch)
    return normalize(x).contiguous(), geom


def box_overlap(a, b) -> float:
    """Intersection area of two boxes ``(x0, y0, x1, y1, ...)`` over the smaller one's area (rotation ignored)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def multi_crop(img: Image.Image, cfg: MultiCropConfig, rng: np.random.Generator):
    """2 global crops then ``n_local`` local crops, each (3, S, S), from one RGB image, plus their geometry
    (V, 6): crop box ``x0, y0, x1, y1`` in image pixels, a horizontal-flip flag and the box rotation (radians);
    (V, 15) with ``cfg.perspective`` > 0 (the global views' unit-square homography; identity for local views).
    With ``cfg.sift_patch`` > 0 a third item: the global views' SIFT targets (2, N, 128)."""
    g1, g2, loc = cfg.blur_p
    kw = {"perspective": cfg.perspective, "sift_patch": cfg.sift_patch}
    first = view(img, cfg.global_size, cfg.global_scale, cfg, g1, 0.0, rng, **kw)
    for _ in range(20 if cfg.min_overlap > 0 else 1):
        second = view(img, cfg.global_size, cfg.global_scale, cfg, g2, cfg.solarize_p, rng, **kw)
        if box_overlap(first[1], second[1]) >= cfg.min_overlap:
            break
    views = [first, second]
    views += [view(img, cfg.local_size, cfg.local_scale, cfg, loc, 0.0, rng) for _ in range(cfg.n_local)]
    geoms = [v[1] + (IDENTITY9 if cfg.perspective > 0 and len(v[1]) == 6 else ()) for v in views]
    out = [v[0] for v in views], torch.tensor(geoms, dtype=torch.float32)
    if cfg.sift_patch > 0:
        return (*out, torch.stack([first[2], second[2]]))
    return out


def collate_crops(samples: list[tuple]) -> tuple:
    """B samples of (V crops, geometry[, SIFT targets]) -> (V tensors of (B, 3, S_v, S_v), geometry (B, V, G)
    [, SIFT targets (B, 2, N, 128)])."""
    crops = [torch.stack([s[0][v] for s in samples]) for v in range(len(samples[0][0]))]
    rest = tuple(torch.stack([s[k] for s in samples]) for k in range(1, len(samples[0])))
    return (crops, *rest)
