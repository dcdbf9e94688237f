"""Recall@K for image-text retrieval, the COCO 5-captions protocol, exact and chunked.

``text_to_image[j]`` is the index of the image caption ``j`` describes (5 per image on COCO, any number here).

- image -> text: the rank of an image is the number of *other images'* captions that score at least as high
  as its best-scoring own caption. A hit at K if rank < K, i.e. any of its captions is in the top K.
- text -> image: the rank of a caption is the number of other images that score at least as high as its
  own image.

Ties count against the query (``>=``, with a tolerance of 1e-6 so that duplicate embeddings tie even when
two matrix products round them differently): a model that gives every pair the same score gets recall 0, not
100. The similarity matrix is never held whole: one block of image rows at a time gives both directions (the
image->text ranks of those rows, and each caption's count of images at or above its own), so 5,000 images x
25,000 captions needs one matrix product and ~60 MB, not 500 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)
TIE_TOL = 1e-6  # scores within this of the positive count as ties (against the query)


def _as_tensor(x):
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.float() if t.is_floating_point() else t


def own_captions(text_to_image, n: int):
    """(N, c_max) caption indices of each image, padded with -1 (c_max = most captions of any image)."""
    import torch

    t2i = text_to_image.long()
    counts = torch.bincount(t2i, minlength=n)  # (N,)
    order = torch.argsort(t2i, stable=True)  # captions grouped by image
    starts = torch.cumsum(counts, 0) - counts  # (N,) first slot of each image in `order`
    slot = torch.arange(len(t2i)) - starts[t2i[order]]  # position of each caption within its image
    own = torch.full((n, max(int(counts.max()) if n else 0, 1)), -1, dtype=torch.long)
    own[t2i[order], slot] = order
    return own


def _rank_pass(rows, n: int, m: int, text_to_image, pos, chunk: int, tol: float):
    """One pass over blocks of image rows, ranking both ways.

    rows(s, e) -> (b, M) similarities of images s..e against all captions; pos (M,): each caption's score with
    its own image. i2t rank = captions of other images scoring >= best own caption - tol; t2i rank = other
    images scoring >= pos - tol, accumulated block by block, so the (N, M) matrix never exists whole.
    """
    import torch

    own = own_captions(text_to_image, n)  # (N, c)
    i2t = torch.empty(n, dtype=torch.long)
    t2i_count = torch.zeros(m, dtype=torch.long)
    thr_t = pos - tol  # (M,)
    # Counting: comparing straight into a float buffer and summing with a matrix-vector product is ~6x faster
    # on CPU than summing a bool tensor; counts stay exact in float32 (each is at most M < 2**24).
    buf = torch.empty(min(chunk, max(n, 1)), m)
    ones_m, ones_b = torch.ones(m), torch.ones(buf.shape[0])
    for s in range(0, n, chunk):
        sim = rows(s, min(s + chunk, n))  # (b, M)
        b = sim.shape[0]
        idx = own[s:s + b]  # (b, c)
        valid = idx >= 0
        idx0 = idx.clamp(min=0)
        s_own = sim.gather(1, idx0)  # (b, c): scores of each image's own captions
        thr_i = s_own.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True) - tol  # (b, 1)
        ge = torch.ge(sim, thr_i, out=buf[:b])  # (b, M) 1.0 where a caption reaches the image's best own one
        i2t[s:s + b] = (ge @ ones_m).long() - ((s_own >= thr_i) & valid).sum(dim=1)
        ge = torch.ge(sim, thr_t[None, :], out=buf[:b])  # (b, M) 1.0 where an image reaches the caption's own
        t2i_count += (ones_b[:b] @ ge).long()  # (M,)
        own_hit = (s_own >= thr_t[idx0]) & valid  # (b, c): a caption's own image is not a competitor
        t2i_count.index_add_(0, idx0[valid], -own_hit[valid].long())
    return i2t.numpy(), t2i_count.numpy()


def ranks_from_similarity(sim, text_to_image, tol: float = TIE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Full (N images, M captions) similarity matrix -> (i2t ranks (N,), t2i ranks (M,))."""
    import torch

    sim, t2i = _as_tensor(sim), _as_tensor(text_to_image).long()
    n, m = sim.shape
    pos = sim[t2i, torch.arange(m)]  # (M,)
    return _rank_pass(lambda s, e: sim[s:e], n, m, t2i, pos, max(n, 1), tol)


def ranks_from_embeddings(image_emb, text_emb, text_to_image, chunk: int = 512,
                          tol: float = TIE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Image (N, d) and caption (M, d) embeddings -> (i2t ranks (N,), t2i ranks (M,)), ``chunk`` images at a
    time (one matrix product in all). Similarity is the dot product (cosine for unit-norm embeddings)."""
    import torch

    img, txt = _as_tensor(image_emb), _as_tensor(text_emb)
    t2i = _as_tensor(text_to_image).long()
    n, m = img.shape[0], txt.shape[0]
    if t2i.shape[0] != m:
        raise ValueError(f"text_to_image has {t2i.shape[0]} entries for {m} captions")
    with torch.inference_mode():
        pos = (img[t2i] * txt).sum(dim=1)  # (M,): each caption with its own image
        return _rank_pass(lambda s, e: img[s:e] @ txt.t(), n, m, t2i, pos, chunk, tol)


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose rank is below ``k`` (0-based ranks)."""
    ranks = np.asarray(ranks)
    return float(100.0 * np.mean(ranks < k)) if ranks.size else float("nan")


def recall_curve(ranks: np.ndarray, ks: Sequence[int]) -> list[float]:
    return [recall_at(ranks, k) for k in ks]


def naive_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                queries: int | None = None, tol: float = TIE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """The per-query reference: one query at a time, score and sort all candidates, count the competitors
    sorted at or above the positive (same tie rule as :func:`ranks_from_embeddings`).

    ``queries`` limits both directions to the first ``queries`` queries. Used by tests and by the benchmark as
    the slow baseline.
    """
    t2i = np.asarray(text_to_image)
    n = image_emb.shape[0] if queries is None else min(queries, image_emb.shape[0])
    m = text_emb.shape[0] if queries is None else min(queries, text_emb.shape[0])

    def rank(scores: np.ndarray, own: np.ndarray) -> int:
        order = np.argsort(-scores, kind="stable")  # best first
        ahead = np.searchsorted(-scores[order], -(scores[own].max() - tol), side="right")  # >= best - tol
        return int(ahead - own[order[:ahead]].sum())

    i2t = np.array([rank(text_emb @ image_emb[i], t2i == i) if (t2i == i).any() else len(t2i)
                    for i in range(n)], dtype=np.int64)
    all_images = np.arange(image_emb.shape[0])
    t2i_r = np.array([rank(image_emb @ text_emb[j], all_images == t2i[j]) for j in range(m)], dtype=np.int64)
    return i2t, t2i_r
