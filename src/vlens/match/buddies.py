"""Well-spread best-buddy pairs: the "Deep ViT Features as Dense Visual Descriptors" correspondence picture.

From all matches A -> B, keep the best buddies (mutual nearest neighbours), optionally only those whose two ends
are both foreground (saliency >= ``threshold`` in A and in B: the reference tool also asks both ends to be
foreground). Join each buddy's two descriptors ``[a / |a|, b / |b|]``, L2-normalise the pair and cluster the pairs
with k-means (scikit-learn, k-means++ with a fixed seed) into ``n`` clusters, so the pairs cover different parts
of the object instead of piling up on its most distinctive patch. From each cluster keep its best pair: the
highest mean saliency of the two ends, or, without saliency, the best cycle score (mutual first, then the
smallest feature distance: :meth:`Matches.order`). The chosen pairs come back best first, at most one per
cluster; with fewer buddies than ``n``, all of them (one cluster each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlens.errors import ConfigError
from vlens.match.matching import Matches

SEED = 0


@dataclass(frozen=True)
class BuddyPairs:
    matches: Matches  # (k,) the chosen best buddies, best first
    cluster: torch.Tensor  # (k,) k-means cluster of each, 0..k-1 (distinct)
    rank: torch.Tensor  # (k,) place among all candidates, 1 = the best by ``ranked_by``
    ranked_by: str  # "saliency" (mean of both ends) or "cycle" (Matches.order)
    buddies: int  # best buddies before the saliency mask
    candidates: int  # best buddies that passed it (clustered)
    saliency_src: torch.Tensor | None = None  # (k,) saliency of each pair's source end, when known
    saliency_dst: torch.Tensor | None = None  # (k,)

    def __len__(self) -> int:
        return len(self.matches)

    def to_records(self) -> list[dict]:
        rows = self.matches.to_records()
        for i, r in enumerate(rows):
            r["cluster"] = int(self.cluster[i])
            r["candidate_rank"] = int(self.rank[i])
            if self.saliency_src is not None:
                r["saliency_src"] = round(float(self.saliency_src[i]), 4)
                r["saliency_dst"] = round(float(self.saliency_dst[i]), 4)
        return rows


def joined_descriptors(desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
    """Each pair's two descriptors, each L2-normalised, concatenated and normalised again: (k, da), (k, db) ->
    (k, da + db)."""
    n = torch.nn.functional.normalize
    return n(torch.cat([n(desc_a.float(), dim=-1), n(desc_b.float(), dim=-1)], dim=-1), dim=-1)


def spread_pairs(m: Matches, desc_a: torch.Tensor, desc_b: torch.Tensor, n: int = 10,
                 saliency_a: torch.Tensor | None = None, saliency_b: torch.Tensor | None = None,
                 threshold: float = 0.0, seed: int = SEED) -> BuddyPairs:
    """``n`` well-spread best buddies of ``m`` (module docstring). ``desc_a`` (N_a, d) / ``desc_b`` (N_b, d): the
    flat descriptors the matches index (``src_index`` / ``dst_index``); ``saliency_a`` (N_a,) / ``saliency_b``
    (N_b,): per-patch saliency on the same grids, or None (rank by cycle score, no mask)."""
    from sklearn.cluster import KMeans

    if n < 1:
        raise ConfigError(f"--pairs must be at least 1, got {n}")
    if (saliency_a is None) != (saliency_b is None):
        raise ConfigError("give the saliency of both images or of neither")
    keep = m.mutual.clone()  # (N,)
    buddies = int(keep.sum())
    sal_s = sal_d = None
    if saliency_a is not None:
        sal_s, sal_d = saliency_a[m.src_index].float(), saliency_b[m.dst_index].float()  # (N,), (N,)
        keep &= (sal_s >= threshold) & (sal_d >= threshold)
    idx = torch.nonzero(keep).flatten()  # (c,) candidate matches
    c = int(idx.numel())
    if c == 0:
        empty = m.select(idx)
        none = torch.zeros(0)
        by = "saliency" if sal_s is not None else "cycle"
        sal = none if sal_s is not None else None
        return BuddyPairs(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), by, buddies,
                          0, sal, sal)
    joined = joined_descriptors(desc_a[m.src_index[idx]], desc_b[m.dst_index[idx]])  # (c, da + db)
    k = min(n, c)
    labels = torch.from_numpy(KMeans(n_clusters=k, random_state=seed, n_init=1).fit(
        joined.numpy()).labels_.astype("int64"))  # (c,)
    if sal_s is not None:
        rank, by = (sal_s[idx] + sal_d[idx]) / 2, "saliency"  # (c,) higher is better
    else:  # the cycle order's position, turned into a score: the best-ordered candidate scores highest
        pos = torch.empty(c, dtype=torch.float32)
        pos[m.select(idx).order("cycle")] = torch.arange(c, dtype=torch.float32)
        rank, by = -pos, "cycle"
    order = torch.argsort(rank, descending=True, stable=True)  # (c,) candidates best first
    place = torch.empty(c, dtype=torch.long)
    place[order] = torch.arange(c)  # (c,) each candidate's rank, 0 = best
    first: dict[int, int] = {}
    lab = labels.tolist()
    for j in order.tolist():  # the best candidate of each cluster, clusters in the order their best appears
        first.setdefault(lab[j], j)
    best = torch.tensor(list(first.values()), dtype=torch.long)  # (k,) best first
    chosen = idx[best]
    return BuddyPairs(m.select(chosen), labels[best], place[best] + 1, by, buddies, c,
                      None if sal_s is None else sal_s[chosen], None if sal_d is None else sal_d[chosen])
