"""SIFT, the classical anchor: dense SIFT descriptors on the patch grid, and the sparse SIFT pipeline
(keypoints, Lowe's ratio test, RANSAC homography) that a practitioner would use. Both are OpenCV's.

Coordinates. OpenCV puts pixel centres at integer coordinates; vlens puts them at +0.5 (pixel ``(col, row)``
covers ``[col, col+1)``). Everything this module returns is in vlens coordinates: OpenCV coordinates get +0.5
on the way out and -0.5 on the way in (:func:`vlens.match.geometry.to_opencv_xy`, ``from_opencv_xy``).

Dense SIFT. For a grid of ``p x p`` patches, each patch gets the 128-d SIFT descriptor of an upright keypoint at
its centre whose support (OpenCV: 4 x 4 cells of ``1.5 * size`` pixels) is ``support`` pixels wide (default 48,
measured: on the graffiti and aloe pairs at 448 px with 8 px patches, 16 / 32 / 48 / 64 / 96 px gave a median error
of 159 / 86 / 35 / 16 / 16 px and PCK@10 of 9 / 29 / 42 / 44 / 37% on graffiti, 24 / 4.3 / 4.0 / 5.7 / 9.0 px and
45 / 59 / 65 / 63 / 55% on aloe). No orientation, no scale selection: the descriptor of a patch depends only on
the pixels around it, and the result is deterministic.
"""

from __future__ import annotations

import numpy as np

from vlens.errors import ConfigError
from vlens.match.geometry import from_opencv_xy, homography_from_opencv, to_opencv_xy

SIFT_SUPPORT = 48.0  # descriptor support in pixels of the model input (see the module docstring)
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 3.0  # RANSAC inlier threshold (pixels of the images given)


def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency, but say what to do if it is missing
        raise ConfigError("SIFT needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def gray_uint8(img) -> np.ndarray:
    """A PIL image as an (H, W) uint8 grey array (ITU-R 601 luma, as PIL's ``L`` mode)."""
    return np.asarray(img.convert("L"), dtype=np.uint8)


def dense_sift(gray: np.ndarray, patch: int, support: float = SIFT_SUPPORT, step: int | None = None
               ) -> np.ndarray:
    """SIFT descriptors at the centres of the ``patch``-pixel grid of an (H, W) uint8 image: (H//p, W//p, 128).

    Row-major grid like :func:`vlens.match.features.patch_centers`: patch ``(i, j)`` is centred at vlens
    ``((j + 0.5) p, (i + 0.5) p)``, i.e. OpenCV ``((j + 0.5) p - 0.5, (i + 0.5) p - 0.5)``. With ``step`` (a
    stride, :mod:`vlens.match.strided`) the centres are ``step`` px apart from ``p / 2``: (1 + (H - p) // step,
    1 + (W - p) // step, 128).
    """
    cv2 = _cv2()
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ConfigError(f"dense_sift wants an (H, W) uint8 image, got {gray.dtype} {gray.shape}")
    gh, gw = gray.shape[0] // patch, gray.shape[1] // patch
    if gh < 1 or gw < 1:
        raise ConfigError(f"a {gray.shape[1]}x{gray.shape[0]} image has no whole {patch} px patch")
    side = max(gray.shape)
    if support > 2 * side:  # every keypoint would see the whole (zero-padded) image: near-identical descriptors
        raise ConfigError(f"a SIFT support of {support:g} px is far larger than the {gray.shape[1]}x{gray.shape[0]} "
                          f"px image it describes (every patch would get nearly the same descriptor); use "
                          f"sift:{patch}:S with S at most {2 * side} (the default is {SIFT_SUPPORT:g}), or a larger "
                          "--size")
    size = support / 6.0  # OpenCV's support is 4 cells of 1.5 * size pixels = 6 * size
    if step is None or step == patch:
        ys = (np.arange(gh) + 0.5) * patch - 0.5
        xs = (np.arange(gw) + 0.5) * patch - 0.5
    else:
        gh, gw = 1 + (gray.shape[0] - patch) // step, 1 + (gray.shape[1] - patch) // step
        ys = np.arange(gh) * step + patch / 2 - 0.5
        xs = np.arange(gw) * step + patch / 2 - 0.5
    kps = [cv2.KeyPoint(float(x), float(y), float(size), 0.0) for y in ys for x in xs]  # row-major
    sift = cv2.SIFT_create()
    out_kps, desc = sift.compute(gray, kps)
    if desc is None or len(out_kps) != len(kps):
        raise ConfigError(f"OpenCV dropped {len(kps) - len(out_kps or [])} of {len(kps)} dense SIFT keypoints")
    return desc.reshape(gh, gw, 128).astype(np.float32)  # (h, w, 128)


def sparse_sift_matches(img_a, img_b, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray, int, int]:
    """SIFT keypoints in both images, brute-force 2-NN matching and Lowe's ratio test.

    Returns ``(xy_a (n, 2), xy_b (n, 2), keypoints_a, keypoints_b)`` in vlens pixel coordinates.
    """
    cv2 = _cv2()
    sift = cv2.SIFT_create()
    ka, da = sift.detectAndCompute(gray_uint8(img_a), None)
    kb, db = sift.detectAndCompute(gray_uint8(img_b), None)
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2)), len(ka), len(kb)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    xa = from_opencv_xy(np.array([ka[m.queryIdx].pt for m in good]).reshape(-1, 2))
    xb = from_opencv_xy(np.array([kb[m.trainIdx].pt for m in good]).reshape(-1, 2))
    return xa, xb, len(ka), len(kb)


def ransac_homography(xy_a: np.ndarray, xy_b: np.ndarray, threshold: float = RANSAC_PX, seed: int = 0
                      ) -> tuple[np.ndarray | None, np.ndarray]:
    """OpenCV's RANSAC homography from matched vlens coordinates; returns ``(H in vlens coordinates or None,
    inlier mask (n,))``. Seeded, so the same matches give the same homography."""
    cv2 = _cv2()
    n = len(xy_a)
    if n < 4:
        return None, np.zeros(n, dtype=bool)
    cv2.setRNGSeed(seed)
    h, mask = cv2.findHomography(to_opencv_xy(xy_a), to_opencv_xy(xy_b), cv2.RANSAC, threshold, maxIters=5000,
                                 confidence=0.999)
    if h is None:
        return None, np.zeros(n, dtype=bool)
    return homography_from_opencv(h), mask.ravel().astype(bool)
