"""Pair geometry and conventions, shared by the pair loaders (:mod:`vlens.match.pairs`), OpenCV's SIFT
(:mod:`vlens.match.sift`), the crop benchmark and the figures.

Coordinates. vlens puts pixel centres at +0.5 (pixel ``(col, row)`` covers ``[col, col+1)``, see
:mod:`vlens.match.features`); OpenCV, the Oxford / HPatches homography files and Middlebury disparities put them at
integer coordinates. A point moves by -0.5 / +0.5 between the two (:func:`to_opencv_xy`, :func:`from_opencv_xy`); a
homography ``H`` written in OpenCV's convention becomes ``T(+0.5) H T(-0.5)`` in vlens coordinates
(:func:`homography_from_opencv`); a disparity is a horizontal offset, the same in both (disparity files are read
by :func:`vlens.match.pairs.read_disparity`).

Working resolution: an image is resized so that its longer side is ``side`` pixels (:func:`working_image`); in
vlens coordinates a resize is an exact scaling. Error thresholds (:data:`MMA_THRESHOLDS`, :data:`PCK_THRESHOLDS`)
are in target pixels at that resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vlens.errors import DatasetError

MMA_THRESHOLDS = tuple(range(1, 11))  # px, as in HPatches papers
PCK_THRESHOLDS = (1, 3, 5, 10, 20)  # px


def to_opencv_xy(xy: np.ndarray) -> np.ndarray:
    """vlens (centre at +0.5) -> OpenCV (centre at integer) pixel coordinates: (n, 2)."""
    return np.asarray(xy, dtype=np.float64) - 0.5


def from_opencv_xy(xy: np.ndarray) -> np.ndarray:
    """OpenCV -> vlens pixel coordinates: (n, 2)."""
    return np.asarray(xy, dtype=np.float64) + 0.5


def _translate(t: float) -> np.ndarray:
    return np.array([[1.0, 0.0, t], [0.0, 1.0, t], [0.0, 0.0, 1.0]])


def homography_from_opencv(h: np.ndarray) -> np.ndarray:
    """A homography between OpenCV pixel coordinates (centres at integers) in vlens coordinates (centres at
    +0.5): ``T(+0.5) @ H @ T(-0.5)``, normalised so that ``H[2, 2] = 1``."""
    hv = _translate(0.5) @ np.asarray(h, dtype=np.float64) @ _translate(-0.5)
    return hv / hv[2, 2]


def homography_to_opencv(h: np.ndarray) -> np.ndarray:
    ho = _translate(-0.5) @ np.asarray(h, dtype=np.float64) @ _translate(0.5)
    return ho / ho[2, 2]


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map (n, 2) points by a 3x3 homography: (n, 2); points sent to infinity become nan."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    p = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ np.asarray(h, dtype=np.float64).T  # (n, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p[:, :2] / p[:, 2:3]
    out[np.abs(p[:, 2]) < 1e-12] = np.nan
    return out


def check_homography(h, where: str) -> np.ndarray:
    """A 3x3, finite, non-singular matrix normalised to ``H[2, 2] = 1``; one-line errors otherwise."""
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (3, 3):
        raise DatasetError(f"{where}: a homography must be 3x3, got shape {tuple(h.shape)}")
    if not np.isfinite(h).all():
        raise DatasetError(f"{where}: the homography has non-finite entries")
    s = np.linalg.svd(h, compute_uv=False)
    if s[-1] <= 1e-9 * s[0]:
        raise DatasetError(f"{where}: the homography is singular (singular values {s[0]:.3g} ... {s[-1]:.3g})")
    if abs(h[2, 2]) < 1e-12:
        raise DatasetError(f"{where}: the homography has H[2,2] = 0 (it sends the origin to infinity)")
    return h / h[2, 2]


def read_homography(path: Path) -> np.ndarray:
    """A homography file: 9 numbers as text (HPatches ``H_1_k``, Oxford ``H1to3p``) or an OpenCV
    FileStorage XML/YAML with one matrix (``H1to3p.xml``). Returned as written (no convention change)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"homography file {path}: no such file")
    text = path.read_text(errors="replace")
    if path.suffix.lower() in (".xml", ".yml", ".yaml") or text.lstrip().startswith(("<?xml", "%YAML")):
        import cv2

        try:
            fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
            node = fs.getFirstTopLevelNode()
            mat = None if node.empty() else node.mat()
            fs.release()
        except cv2.error as exc:
            raise DatasetError(f"homography file {path}: OpenCV cannot read it ({str(exc).strip()[:80]})") from None
        if mat is None:
            raise DatasetError(f"homography file {path}: no matrix in it")
        return check_homography(mat, f"homography file {path}")
    try:
        vals = np.array([float(v) for v in text.split()])
    except ValueError:
        raise DatasetError(f"homography file {path}: expected 9 numbers (3 rows of 3)") from None
    if vals.size != 9:
        raise DatasetError(f"homography file {path}: a homography must be 3x3, got {vals.size} numbers")
    return check_homography(vals.reshape(3, 3), f"homography file {path}")


def working_image(img: Image.Image, side: int) -> Image.Image:
    """The source at the working resolution (longer side ``side``)."""
    from vlens.images import to_rgb

    w, h = img.size
    s = side / max(w, h)
    return to_rgb(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
