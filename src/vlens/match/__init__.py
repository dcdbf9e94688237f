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

from vlens.match.draw import draw_matches, draw_pairs
from vlens.match.features import DenseFeatures, extract_features, load_backbone
from vlens.match.matching import Matches, match_descriptors, match_features, nearest_neighbors

__all__ = ["DenseFeatures", "Matches", "draw_matches", "draw_pairs", "extract_features", "find_pairs", "load_backbone",
           "match_descriptors", "match_features", "match_images", "nearest_neighbors", "run_crop_benchmark"]


def match_images(img_a, img_b, model: str | None = None, score: str = "cycle", pca: int | None = None,
                 top: int | None = 50, *, layer: int = -1, facet: str = "token", size: int = 448,
                 normalize: bool = True, refine: str = "none", bin_levels: int = 0,
                 stride: int | None = None, saliency_threshold: float = 0.0, engine: str = "torch") -> Matches:
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
    ``saliency_threshold`` > 0: only matches whose two ends have saliency >= it (the last block's [CLS]
    attention, 0-1; :mod:`vlens.match.saliency`; needs a ViT or a fusion with one).
    ``engine``: what runs the token facet (torch | onnx | auto, :mod:`vlens.engines`).
    """
    from vlens.images import load_image, to_rgb

    a, b = (to_rgb(x) if hasattr(x, "mode") else load_image(x) for x in (img_a, img_b))
    fa, fb = extract_features([a, b], model, layer=layer, facet=facet, size=size, bin_levels=bin_levels,
                              stride=stride, engine=engine)
    m = match_features(fa, fb, pca=pca, normalize=normalize, refine=refine)
    if saliency_threshold > 0:
        from vlens.match.saliency import mask_matches, pair_saliency

        sal_a, sal_b, _, _ = pair_saliency(a, b, fa, fb, model, size=size)
        m = mask_matches(m, sal_a, sal_b, saliency_threshold)
    return m.top(top, score) if top else m.ranked(score)


def find_pairs(img_a, img_b, model: str | None = None, n: int | None = None, *, preset: str | None = None,
               layer: int | None = None, facet: str | None = None, stride: int | None = None,
               bin_levels: int | None = None, saliency_threshold: float | None = None,
               heads: tuple[int, ...] | None = None, size: int = 448, refine: str = "none", pca: int | None = None,
               device=None, dtype=None, engine: str = "torch"):
    """``n`` well-spread best-buddy pairs between two images (:mod:`vlens.match.buddies`): the "Deep ViT
    Features" picture, returned as a :class:`~vlens.match.buddies.BuddyPairs` (``.matches``, ``.cluster``).

    ``preset="dvf"`` fills every setting left as None with the reference recipe (key facet, layer 9 of 12 scaled
    to the model, stride 4, 2 binning levels, saliency threshold 0.05, 10 pairs; :mod:`vlens.match.recipes`);
    without a preset: the last block's token, no stride, no binning, no saliency (ranked by cycle), 10 pairs.
    Saliency (``saliency_threshold`` > 0, or ``heads`` given) ranks the pairs by the mean saliency of their ends.

    >>> p = find_pairs("a.jpg", "b.jpg", "builtin:dino-tiny", preset="dvf")
    >>> draw_pairs(load_image("a.jpg"), load_image("b.jpg"), p.matches).save("pairs.png")
    """
    from vlens.images import load_image, to_rgb
    from vlens.match.buddies import spread_pairs

    settings = {"layer": -1, "facet": "token", "stride": None, "bin_levels": 0, "saliency_threshold": 0.0,
                "pairs": 10}
    if preset:
        from vlens.match.recipes import recipe

        settings.update(recipe(preset, model)[0])
    layer = settings["layer"] if layer is None else layer
    facet = settings["facet"] if facet is None else facet
    stride = settings["stride"] if stride is None else stride
    bin_levels = settings["bin_levels"] if bin_levels is None else bin_levels
    threshold = settings["saliency_threshold"] if saliency_threshold is None else saliency_threshold
    n = settings["pairs"] if n is None else n
    a, b = (to_rgb(x) if hasattr(x, "mode") else load_image(x) for x in (img_a, img_b))
    fa, fb = extract_features([a, b], model, layer=layer, facet=facet, size=size, bin_levels=bin_levels,
                              stride=stride, device=device, dtype=dtype, engine=engine)
    m = match_features(fa, fb, pca=pca, refine=refine, device=device)
    sal_a = sal_b = None
    if threshold > 0 or heads:
        from vlens.match.saliency import pair_saliency

        sal_a, sal_b, _, _ = pair_saliency(a, b, fa, fb, model, heads=heads, size=size, device=device, dtype=dtype)
    return spread_pairs(m, fa.flat, fb.flat, n, sal_a, sal_b, threshold)


def run_crop_benchmark(model, images=None, config=None, **kw):
    """See :func:`vlens.match.crops.run_crop_benchmark`."""
    from vlens.match.crops import run_crop_benchmark as run

    return run(model, images, config, **kw)
