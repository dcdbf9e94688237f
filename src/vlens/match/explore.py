"""Point correspondence: where does one patch of A land in B, and how sure is the model?

For a pixel ``(x, y)`` of image A, take the patch under it, compare its descriptor with every patch of B (after
the same joint PCA and L2 normalisation as :func:`vlens.match.match_features`) and return:

- the similarity map over B's patch grid (cosine similarity; with normalised descriptors the nearest neighbour
  in Euclidean distance is the most similar patch),
- the best match (B's nearest neighbour), its feature distance, and its cycle: the best match's own nearest
  neighbour back in A and the distance in A's pixels from the clicked patch to where the cycle lands
  (0 = mutual nearest neighbours; the same cycle distance as ``vlens match``),
- the ``top_k`` most similar B patches.

``project_pair`` and ``correspond`` are split so that a caller answering many clicks on the same pair (the web
app) fits the PCA once and pays only O(patches) per click.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlens.errors import ConfigError


@dataclass(frozen=True)
class Candidate:
    index: int  # row-major patch index in B's grid
    xy: tuple[float, float]  # patch centre in B's pixels
    similarity: float  # cosine similarity to the A patch
    feature_distance: float


@dataclass(frozen=True)
class PointMatch:
    """One click's answer. Coordinates follow :mod:`vlens.match.features` (pixels of the images as given)."""

    query_xy: tuple[float, float]  # the clicked point in A
    src_index: int  # patch of A under the point
    src_xy: tuple[float, float]  # its centre in A
    similarity: torch.Tensor  # (h_b, w_b) cosine similarity of every B patch to the A patch
    best: Candidate  # B's nearest neighbour of the A patch
    cycle_index: int  # the best match's nearest neighbour back in A
    cycle_xy: tuple[float, float]  # its centre in A
    cycle_distance: float  # |src_xy - cycle_xy| in A's pixels (0: mutual nearest neighbours)
    candidates: list[Candidate]  # the top-k most similar B patches, best first
    refine: str = "none"  # sub-patch refinement (vlens.match.refine); cycle_xy / cycle_distance use it
    refined_xy: tuple[float, float] | None = None  # the best match refined off its patch centre, in B
    b_grid: tuple | None = None  # overlapping patches in B: (step, origin, input_size); None: the plain grid

    @property
    def match_xy(self) -> tuple[float, float]:
        """Where the point lands in B: the refined point, or the best patch's centre without refinement."""
        return self.refined_xy if self.refined_xy is not None else self.best.xy

    def to_dict(self) -> dict:
        def cand(c: Candidate) -> dict:
            return {"xy": [round(c.xy[0], 2), round(c.xy[1], 2)], "patch": c.index,
                    "similarity": round(c.similarity, 5), "feature_distance": round(c.feature_distance, 5)}

        return {"query_xy": [round(v, 2) for v in self.query_xy], "src_patch": self.src_index,
                "src_xy": [round(v, 2) for v in self.src_xy], "best": cand(self.best),
                "cycle_xy": [round(v, 2) for v in self.cycle_xy], "cycle_distance": round(self.cycle_distance, 3),
                "mutual": self.cycle_index == self.src_index, "refine": self.refine,
                "match_xy": [round(v, 2) for v in self.match_xy], "candidates": [cand(c) for c in self.candidates]}


def patch_at(features, xy: tuple[float, float]) -> int:
    """Row-major index of the patch of ``features`` (a DenseFeatures) that covers pixel ``xy`` of its image."""
    x, y = xy
    w, h = features.image_size
    if not (0 <= x < w and 0 <= y < h):
        raise ConfigError(f"the point ({x:g}, {y:g}) is outside the image ({w}x{h} pixels; x in [0, {w}), "
                          f"y in [0, {h}))")
    if features.stride:  # overlapping patches: the one whose centre is nearest
        return int(features.index_at([[x, y]])[0])
    gh, gw = features.grid
    sx, sy = features.scale
    col = min(gw - 1, int(x / (features.patch_size * sx)))
    row = min(gh - 1, int(y / (features.patch_size * sy)))
    return row * gw + col


def project_pair(fa, fb, pca: int | None = 10, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A's and B's descriptors on one joint PCA basis, as ``vlens match`` uses them: (n, k), (m, k)."""
    from vlens.match.pca import joint_pca

    a, b = joint_pca(fa.flat, fb.flat, k=pca, normalize=normalize)
    return a, b


def correspond(a: torch.Tensor, b: torch.Tensor, fa, fb, xy: tuple[float, float], top_k: int = 5,
               refine: str = "none") -> PointMatch:
    """Answer one click on A at ``xy`` given projected descriptors ``a`` (n, k) and ``b`` (m, k) of ``fa``/``fb``.
    ``refine``: ``none``, ``soft`` or ``quadratic`` (:mod:`vlens.match.refine`): the match and the cycle's
    landing point move off their patch centres."""
    from vlens.match.refine import check_method, grid_origin, grid_step, refine_points

    check_method(refine)
    if top_k < 1:
        raise ConfigError(f"top-k must be >= 1 (got {top_k})")
    i = patch_at(fa, xy)
    q = a[i]  # (k,)
    dist = (b - q).norm(dim=1)  # (m,) feature distance of every B patch
    sim = torch.nn.functional.normalize(b, dim=1) @ torch.nn.functional.normalize(q, dim=0)  # (m,)
    order = torch.argsort(dist, stable=True)  # ties: lowest index first, as the matcher
    j = int(order[0])
    back = int(torch.argmin((a - b[j]).norm(dim=1)))  # (n,) -> the best match's nearest neighbour in A
    src_xy = fa.centers[i]
    cyc_xy = fa.centers[back]
    refined = None
    if refine != "none":
        fwd = refine_points(q[None], b, torch.tensor([j]), fb.grid, grid_step(fb), refine,
                            origin=grid_origin(fb))[0]
        cyc_xy = refine_points(b[j][None], a, torch.tensor([back]), fa.grid, grid_step(fa), refine,
                               origin=grid_origin(fa))[0]
        refined = (float(fwd[0]), float(fwd[1]))

    def cand(idx: int) -> Candidate:
        return Candidate(idx, (float(fb.centers[idx, 0]), float(fb.centers[idx, 1])), float(sim[idx]),
                         float(dist[idx]))

    return PointMatch(
        query_xy=(float(xy[0]), float(xy[1])), src_index=i, src_xy=(float(src_xy[0]), float(src_xy[1])),
        similarity=sim.reshape(fb.grid), best=cand(j), cycle_index=back,
        cycle_xy=(float(cyc_xy[0]), float(cyc_xy[1])), cycle_distance=float((src_xy - cyc_xy).norm()),
        candidates=[cand(int(k)) for k in order[:top_k]], refine=refine, refined_xy=refined,
        b_grid=(fb.step, fb.origin, fb.input_size) if fb.stride else None)


def point_match(fa, fb, xy: tuple[float, float], pca: int | None = 10, normalize: bool = True,
                top_k: int = 5, refine: str = "none") -> PointMatch:
    """The correspondence of pixel ``xy`` of A in B (both :class:`~vlens.match.features.DenseFeatures`)."""
    a, b = project_pair(fa, fb, pca, normalize)
    return correspond(a, b, fa, fb, xy, top_k, refine)


def similarity_at_image_size(pm: PointMatch, image_size: tuple[int, int]) -> torch.Tensor:
    """The similarity map resized (bilinear) to B's pixels (W, H): (H, W). Patch centres map to pixel centres
    the same way as in :mod:`vlens.match.features` (the grid covers the whole image)."""
    w, h = image_size
    if pm.b_grid is not None:  # overlapping patches: centres every step px from half a patch
        from vlens.match.strided import grid_to_pixels

        step, origin, input_size = pm.b_grid
        return grid_to_pixels(pm.similarity[None], step, origin, input_size, (w, h))[0]  # (H, W)
    m = pm.similarity[None, None].float()  # (1, 1, h_b, w_b)
    return torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
