"""Dense correspondences from ViT features: features, joint PCA, nearest-neighbour matching with feature and
cycle distances, the crop benchmark, and label-transfer segmentation.

The simple entry points:

>>> from vlens.match import match_images, draw_matches
>>> m = match_images("a.jpg", "b.jpg", model="builtin:dino-tiny", score="cycle", top=50)
>>> draw_matches(load_image("a.jpg"), load_image("b.jpg"), m).save("matches.png")

Coordinates are pixels of the images as given (origin at the top-left corner, pixel centres at +0.5); see
:mod:`vlens.match.features`. Models are loaded once per spec and cached.
"""

from __future__ import annotations

from vlens.match.draw import draw_matches
from vlens.match.features import DenseFeatures, extract_features, load_backbone
from vlens.match.matching import Matches, match_descriptors, match_features, nearest_neighbors

__all__ = ["DenseFeatures", "Matches", "draw_matches", "extract_features", "load_backbone", "match_descriptors",
           "match_features", "match_images", "nearest_neighbors", "run_crop_benchmark"]


def match_images(img_a, img_b, model: str | None = None, score: str = "cycle", pca: int | None = None,
                 top: int | None = 50, *, layer: int = -1, facet: str = "token", size: int = 448,
                 normalize: bool = True, refine: str = "none", bin_levels: int = 0,
                 stride: int | None = None) -> Matches:
    """Match every patch of ``img_a`` to its nearest neighbour in ``img_b``; return the ``top`` best by
    ``score`` (``cycle`` or ``feature``), best first (``top=None``: all of them, ranked).

    ``img_a`` / ``img_b``: PIL images or paths. ``model``: any backbone spec (default: the match default, see
    :mod:`vlens.models.defaults`), ``sift[:P]``, ``pixels[:P]``, ``random:SPEC`` or a fusion ``A*0.2+B*0.8``.
    ``pca``: joint PCA components (None, the default, keeps the full dimension: on real pairs with ground truth
    PCA 10 costs accuracy, see ``vlens bench pairs``).
    ``refine``: ``none`` (patch centres), ``soft`` or ``quadratic`` (sub-patch points, :mod:`vlens.match.refine`).
    ``bin_levels``: log-binned descriptors with that many levels (0 = off, 2 = the reference's 17 cells; see
    :mod:`vlens.match.binning`).
    ``stride``: overlapping patches, a descriptor every ``stride`` input px (:mod:`vlens.match.strided`).
    """
    from vlens.images import load_image, to_rgb

    a, b = (to_rgb(x) if hasattr(x, "mode") else load_image(x) for x in (img_a, img_b))
    fa, fb = extract_features([a, b], model, layer=layer, facet=facet, size=size, bin_levels=bin_levels,
                              stride=stride)
    m = match_features(fa, fb, pca=pca, normalize=normalize, refine=refine)
    return m.top(top, score) if top else m.ranked(score)


def run_crop_benchmark(model, images=None, config=None, **kw):
    """See :func:`vlens.match.crops.run_crop_benchmark`."""
    from vlens.match.crops import run_crop_benchmark as run

    return run(model, images, config, **kw)
