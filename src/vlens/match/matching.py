"""Nearest-neighbour matching between two sets of patch descriptors, with feature and cycle distances.

Everything is blocked: distances are computed for a tile of ``rows x cols`` pairs at a time (via
``|a|^2 - 2 a.b + |b|^2``, one matmul per tile, shared by both directions) and reduced to running minima, so the
extra memory is one tile of at most ``tile_bytes`` (default 32 MiB)
plus O(n + m) vectors, whatever the number of patches, instead of the full ``N x M`` matrix (1.6 GB at 20k x 20k).
There is no Python loop over patches:
the loops run over tiles.

Cycle distance of a patch ``c`` in image A: ``c -> NN in B -> NN back in A`` lands on a patch ``c'``; the cycle
distance is ``|xy(c) - xy(c')|`` in A's pixels (0 for mutual nearest neighbours). Scores are negated distances:
higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from vlens.errors import ConfigError

SCORES = ("cycle", "feature")
TILE_BYTES = 32 * 2**20
_BAND = 256  # rows per column-minimum band (see nearest_neighbors_both)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"descriptor shapes do not match: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ConfigError("cannot match an empty set of descriptors")


def _tiles(n: int, m: int, elem: int, tile_bytes: int) -> tuple[int, int]:
    """Tile shape (rows, cols) whose distance block takes at most ``tile_bytes``."""
    cols = min(m, max(1, tile_bytes // (elem * 256)))  # column blocks keep the tile bounded even for huge m
    rows = min(n, max(1, tile_bytes // (elem * cols)))
    return rows, cols


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms without an (n, d) temporary: (n,)."""
    return torch.linalg.vector_norm(x, dim=1).square()


def _exact(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, rows: int) -> torch.Tensor:
    """|a_i - b_idx[i]| computed directly (the expanded form loses precision near zero): (n,)."""
    return torch.cat([(a[r:r + rows] - b[idx[r:r + rows]]).norm(dim=1) for r in range(0, a.shape[0], rows)])


LONG_PAIRS = 100_000_000
"""Patch pairs (n x m) from which matching reports its progress (:func:`vlens.runs.stage_progress`; off a terminal
it says nothing for the first 3 s): 448 px at patch 8 compares 3,136 x 3,136 (no report), `--size 4096` 262,144 x
262,144 and `pixels:1` at 448 px 200,704 x 200,704 (minutes on a CPU)."""


def nearest_neighbors_both(a: torch.Tensor, b: torch.Tensor, tile_bytes: int = TILE_BYTES
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest neighbours both ways from ONE pass over the distance matrix.

    Returns ``(nn_ab (n,), dist_ab (n,), nn_ba (m,), dist_ba (m,))`` for a (n, d) and b (m, d). Each tile of
    squared distances ``|a|^2 + |b|^2 - 2 a.b`` (one matmul) is reduced along its rows (A -> B) and its
    columns (B -> A), so the matmul is shared by both directions. Ties go to the lowest index.
    """
    _check(a, b)
    n, m = a.shape[0], b.shape[0]
    rows, cols = _tiles(n, m, a.element_size(), tile_bytes)
    a_sq, b_sq = _sq_norms(a), _sq_norms(b)  # (n,), (m,)
    inf, dev = float("inf"), a.device
    ab_d, ab_i = torch.full((n,), inf, dtype=a.dtype, device=dev), torch.zeros(n, dtype=torch.long, device=dev)
    ba_d, ba_i = torch.full((m,), inf, dtype=a.dtype, device=dev), torch.zeros(m, dtype=torch.long, device=dev)
    bar = None
    if n * m >= LONG_PAIRS:
        from vlens.runs import stage_progress

        bar = stage_progress(n, f"matching ({n:,} x {m:,} patches)", unit="patch")
    try:
        _both_tiles(a, b, a_sq, b_sq, rows, cols, ab_d, ab_i, ba_d, ba_i, bar)
    finally:
        if bar is not None:
            bar.close()
    return ab_i, _exact(a, b, ab_i, rows), ba_i, _exact(b, a, ba_i, rows)


def _both_tiles(a, b, a_sq, b_sq, rows: int, cols: int, ab_d, ab_i, ba_d, ba_i, bar) -> None:
    """The tile loop of :func:`nearest_neighbors_both`: running minima updated in place, ``bar`` ticked per
    block of rows of ``a``."""
    n, m = a.shape[0], b.shape[0]
    for r0 in range(0, n, rows):
        ar = a[r0:r0 + rows]  # (r, d)
        for c0 in range(0, m, cols):
            d2 = torch.addmm(b_sq[c0:c0 + cols], ar, b[c0:c0 + cols].T, alpha=-2.0)  # (r, c) = |b|^2 - 2ab
            d2.add_(a_sq[r0:r0 + rows, None])  # (r, c) squared distances
            rv, ri = d2.min(1)  # (r,) best column of each row in this tile
            better = rv < ab_d[r0:r0 + rows]  # strict: earlier tiles win ties
            ab_d[r0:r0 + rows] = torch.where(better, rv, ab_d[r0:r0 + rows])
            ab_i[r0:r0 + rows] = torch.where(better, ri + c0, ab_i[r0:r0 + rows])
            # best row of each column, in bands of rows: a column reduction over a whole row-major tile (or
            # a transposed copy) is 2x slower than over short bands that stay in cache
            for b0 in range(0, d2.shape[0], _BAND):
                cv, ci = d2[b0:b0 + _BAND].min(0)  # (c,)
                better = cv < ba_d[c0:c0 + cols]  # strict: earlier rows win ties
                ba_d[c0:c0 + cols] = torch.where(better, cv, ba_d[c0:c0 + cols])
                ba_i[c0:c0 + cols] = torch.where(better, ci + (r0 + b0), ba_i[c0:c0 + cols])
        if bar is not None:
            bar.update(ar.shape[0])


def nearest_neighbors(a: torch.Tensor, b: torch.Tensor, tile_bytes: int = TILE_BYTES
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``a`` (n, d), the index of its nearest row of ``b`` (m, d) and the Euclidean distance.

    Returns ``(index (n,) int64, distance (n,))``. Ties go to the lowest index. Memory: one tile of at most
    ``tile_bytes`` of distances at a time. (Matching uses :func:`nearest_neighbors_both`.)
    """
    _check(a, b)
    n, m = a.shape[0], b.shape[0]
    rows, cols = _tiles(n, m, a.element_size(), tile_bytes)
    b_sq = _sq_norms(b)  # (m,); |a|^2 is constant along a row, so it does not change the arg-min
    best_i = torch.empty(n, dtype=torch.long, device=a.device)
    for r0 in range(0, n, rows):
        ar = a[r0:r0 + rows]  # (r, d)
        run_d = torch.full((ar.shape[0],), float("inf"), dtype=a.dtype, device=a.device)
        run_i = torch.zeros(ar.shape[0], dtype=torch.long, device=a.device)
        for c0 in range(0, m, cols):
            d2 = torch.addmm(b_sq[c0:c0 + cols], ar, b[c0:c0 + cols].T, alpha=-2.0)  # (r, c) = |b|^2 - 2ab
            tile_d, tile_i = d2.min(1)  # (r,), (r,)
            better = tile_d < run_d
            run_d = torch.where(better, tile_d, run_d)
            run_i = torch.where(better, tile_i + c0, run_i)
        best_i[r0:r0 + rows] = run_i
    return best_i, _exact(a, b, best_i, rows)


@dataclass(frozen=True)
class Matches:
    """One match per source patch: where it is, where its nearest neighbour is, and both distances.

    Pixel coordinates follow :mod:`vlens.match.features` (origin at the top-left corner, centres at +0.5).
    """

    src_xy: torch.Tensor  # (N, 2) source patch centres (x, y) in source pixels
    dst_xy: torch.Tensor  # (N, 2) centre of each one's nearest neighbour, in destination pixels
    src_index: torch.Tensor  # (N,) row-major patch index in the source grid
    dst_index: torch.Tensor  # (N,) row-major patch index in the destination grid
    feature_distance: torch.Tensor  # (N,) descriptor distance to the nearest neighbour
    cycle_distance: torch.Tensor  # (N,) pixels between a patch and where src -> dst -> src lands
    mutual: torch.Tensor  # (N,) bool, True where the two patches are each other's nearest neighbour

    def __len__(self) -> int:
        return int(self.src_xy.shape[0])

    def score(self, by: str = "cycle") -> torch.Tensor:
        """Higher is better: negative cycle distance or negative feature distance. (N,)"""
        if by not in SCORES:
            raise ConfigError(f"unknown score '{by}'; one of {', '.join(SCORES)}")
        return -(self.cycle_distance if by == "cycle" else self.feature_distance)

    def order(self, by: str = "cycle") -> torch.Tensor:
        """Indices from best to worst. By cycle: mutual nearest neighbours first (cycle distance 0 without
        refinement; with sub-patch refinement their cycle distance is sub-patch noise, not evidence, so it does not
        reorder them), then the others by cycle distance; ties broken by feature distance, so the order is total
        and deterministic."""
        if by == "cycle":
            o = torch.argsort(self.feature_distance, stable=True)
            key = torch.where(self.mutual, torch.zeros_like(self.cycle_distance), self.cycle_distance)
            return o[torch.argsort(key[o], stable=True)]
        return torch.argsort(self.feature_distance, stable=True)

    def select(self, idx: torch.Tensor) -> Matches:
        return Matches(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def ranked(self, by: str = "cycle") -> Matches:
        """The same matches sorted best first by ``by``."""
        return self.select(self.order(by))

    def top(self, n: int, by: str = "cycle") -> Matches:
        return self.select(self.order(by)[:n])

    def to_records(self) -> list[dict]:
        """JSON-friendly rows: coordinates, both distances and both scores."""
        rows = []
        for i in range(len(self)):
            rows.append({
                "src_xy": [round(float(v), 2) for v in self.src_xy[i]],
                "dst_xy": [round(float(v), 2) for v in self.dst_xy[i]],
                "feature_distance": round(float(self.feature_distance[i]), 5),
                "cycle_distance": round(float(self.cycle_distance[i]), 3),
                "feature_score": round(-float(self.feature_distance[i]), 5) + 0.0,  # + 0.0: no "-0.0"
                "cycle_score": round(-float(self.cycle_distance[i]), 3) + 0.0,
                "mutual": bool(self.mutual[i]),
            })
        return rows


def match_descriptors(desc_a: torch.Tensor, desc_b: torch.Tensor, xy_a: torch.Tensor, xy_b: torch.Tensor,
                      tile_bytes: int = TILE_BYTES) -> Matches:
    """Match every row of ``desc_a`` (n, d) to ``desc_b`` (m, d); patch centres ``xy_a`` (n, 2), ``xy_b`` (m, 2).

    Both directions are computed (A->B for the matches, B->A for the cycle); memory stays within one tile.
    """
    return _match_both(desc_a, desc_b, xy_a, xy_b, tile_bytes)[0]


def _match_both(desc_a, desc_b, xy_a, xy_b, tile_bytes: int = TILE_BYTES) -> tuple[Matches, torch.Tensor]:
    """:func:`match_descriptors` and the nearest A row of every B row, (m,) (what the refined cycle reuses)."""
    nn_ab, dist_ab, nn_ba, _ = nearest_neighbors_both(desc_a, desc_b, tile_bytes)  # (n,), (n,), (m,)
    back = nn_ba[nn_ab]  # (n,) where each A patch lands after A -> B -> A
    cycle = (xy_a - xy_a[back]).norm(dim=1)  # (n,) in A's pixels
    src_index = torch.arange(desc_a.shape[0], device=desc_a.device)
    return Matches(xy_a.float(), xy_b[nn_ab].float(), src_index, nn_ab, dist_ab.float(), cycle.float(),
                   back == src_index), nn_ba


def match_features(fa, fb, pca: int | None = 10, normalize: bool = True, tile_bytes: int = TILE_BYTES,
                   device=None, refine: str = "none", temperature: float | None = None) -> Matches:
    """Match two :class:`~vlens.match.features.DenseFeatures` after a joint PCA to ``pca`` components.

    ``refine``: ``none`` (patch centres), ``soft`` or ``quadratic`` (sub-patch target points and refined cycle
    distances from the 3 x 3 window around each match, see :mod:`vlens.match.refine`; ``temperature`` of the
    soft-argmax, default 0.05). ``device``: compute there (e.g. ``cuda``; see :mod:`vlens.devices`); the matches
    come back on the CPU.
    """
    from vlens.match.refine import check_method

    check_method(refine)
    m, a, b, back_of = match_projected(fa, fb, pca, normalize, tile_bytes, device)
    return refine_projected(m, a, b, fa, fb, refine, temperature, back_of)


def match_projected(fa, fb, pca: int | None = 10, normalize: bool = True, tile_bytes: int = TILE_BYTES,
                    device=None) -> tuple[Matches, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`match_features` without refinement, plus the projected descriptors it matched, (n, k) and (m, k),
    and the nearest A patch of every B patch, (m,): several refinements share one nearest-neighbour search
    (:func:`refine_projected`), and the refined cycle reuses the B -> A search instead of running it again."""
    from vlens.match.pca import joint_pca

    fa_flat, fb_flat, ca, cb = fa.flat, fb.flat, fa.centers, fb.centers
    if device is not None:
        from vlens.devices import resolve_device

        dev = device if isinstance(device, torch.device) else resolve_device(device)
        fa_flat, fb_flat, ca, cb = (t.to(dev) for t in (fa_flat, fb_flat, ca, cb))
    a, b = joint_pca(fa_flat, fb_flat, k=pca, normalize=normalize)
    m, back_of = _match_both(a, b, ca, cb, tile_bytes)
    if m.src_xy.device.type != "cpu":
        m = Matches(**{f.name: getattr(m, f.name).cpu() for f in fields(m)})
    return m, a, b, back_of.cpu()


def refine_projected(m: Matches, a: torch.Tensor, b: torch.Tensor, fa, fb, refine: str = "none",
                     temperature: float | None = None, back_of: torch.Tensor | None = None) -> Matches:
    """The matches ``m`` of :func:`match_projected` refined with ``refine`` (see :func:`match_features`);
    ``back_of`` (m,): the nearest A patch of every B patch when known (else searched again)."""
    from vlens.match.refine import TEMPERATURE, check_method, grid_origin, grid_step, refine_matches

    check_method(refine)
    if refine == "none":
        return m
    return refine_matches(m, a, b, fa.grid, fb.grid, grid_step(fa), grid_step(fb), refine,
                          TEMPERATURE if temperature is None else temperature, nearest=nearest_neighbors,
                          origin_a=grid_origin(fa), origin_b=grid_origin(fb), back_of=back_of)


def loop_nearest_neighbors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward reference: one Python iteration per row of ``a``. For tests and benchmarks only."""
    idx = torch.empty(a.shape[0], dtype=torch.long)
    dist = torch.empty(a.shape[0], dtype=a.dtype)
    for i in range(a.shape[0]):
        d = (b - a[i]).norm(dim=1)  # (m,)
        j = int(torch.argmin(d))
        idx[i], dist[i] = j, d[j]
    return idx, dist
