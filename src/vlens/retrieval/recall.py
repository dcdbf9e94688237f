"""Recall@K for image-text retrieval, the COCO 5-captions protocol, exact and chunked.

``text_to_image[j]`` is the index of the image caption ``j`` describes (5 per image on COCO, any number here).

- image -> text: the rank of an image is the number of *other images'* captions that score at least as high
  as its best-scoring own caption. A hit at K if rank < K, i.e. any of its captions is in the top K.
- text -> image: the rank of a caption is the number of other images that score at least as high as its
  own image.

Ties count against the query (``>=``): a model that gives every pair the same score gets recall 0, not 100.
The similarity matrix is never held whole: it is computed one block of rows at a time, so 5,000 images x
25,000 captions needs ~100 MB, not 500 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def _as_tensor(x):
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.float() if t.is_floating_point() else t


def i2t_ranks_block(sim, image_ids, text_to_image):
    """sim (b, M): block of images vs all captions; image_ids (b,); text_to_image (M,) -> ranks (b,) int64."""
    import torch

    own = text_to_image[None, :] == image_ids[:, None]  # (b, M): caption j belongs to image i
    best = sim.masked_fill(~own, float("-inf")).amax(dim=1)  # (b,): best own caption
    return ((sim >= best[:, None]) & ~own).sum(dim=1).to(torch.int64)  # (b,)


def t2i_ranks_block(sim, own_image):
    """sim (b, N): block of captions vs all images; own_image (b,) -> ranks (b,) int64."""
    import torch

    pos = sim.gather(1, own_image[:, None])  # (b, 1): score of the caption's own image
    other = torch.arange(sim.shape[1], device=sim.device)[None, :] != own_image[:, None]  # (b, N)
    return ((sim >= pos) & other).sum(dim=1).to(torch.int64)  # (b,)


def ranks_from_similarity(sim, text_to_image) -> tuple[np.ndarray, np.ndarray]:
    """Full (N images, M captions) similarity matrix -> (i2t ranks (N,), t2i ranks (M,))."""
    import torch

    sim, t2i = _as_tensor(sim), _as_tensor(text_to_image).long()
    i2t = i2t_ranks_block(sim, torch.arange(sim.shape[0]), t2i)
    t2i_r = t2i_ranks_block(sim.t(), t2i)
    return i2t.numpy(), t2i_r.numpy()


def ranks_from_embeddings(image_emb, text_emb, text_to_image, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Image (N, d) and caption (M, d) embeddings -> (i2t ranks (N,), t2i ranks (M,)), ``chunk`` rows at a time.

    Similarity is the dot product (cosine for unit-norm embeddings).
    """
    import torch

    img, txt = _as_tensor(image_emb), _as_tensor(text_emb)
    t2i = _as_tensor(text_to_image).long()
    n, m = img.shape[0], txt.shape[0]
    if t2i.shape[0] != m:
        raise ValueError(f"text_to_image has {t2i.shape[0]} entries for {m} captions")
    i2t_out = torch.empty(n, dtype=torch.int64)
    t2i_out = torch.empty(m, dtype=torch.int64)
    with torch.inference_mode():
        for s in range(0, n, chunk):
            sim = img[s:s + chunk] @ txt.t()  # (b, M)
            i2t_out[s:s + chunk] = i2t_ranks_block(sim, torch.arange(s, s + sim.shape[0]), t2i)
        txt_chunk = chunk * max(1, m // max(n, 1))  # blocks of about the same size
        for s in range(0, m, txt_chunk):
            sim = txt[s:s + txt_chunk] @ img.t()  # (b, N)
            t2i_out[s:s + txt_chunk] = t2i_ranks_block(sim, t2i[s:s + txt_chunk])
    return i2t_out.numpy(), t2i_out.numpy()


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose rank is below ``k`` (0-based ranks)."""
    ranks = np.asarray(ranks)
    return float(100.0 * np.mean(ranks < k)) if ranks.size else float("nan")


def recall_curve(ranks: np.ndarray, ks: Sequence[int]) -> list[float]:
    return [recall_at(ranks, k) for k in ks]


def naive_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-query reference: one query at a time, sort all candidates, find the first positive.

    Ties are broken against the query, as in :func:`ranks_from_embeddings` (a stable sort with the positives
    placed after equal-scoring negatives). ``queries`` limits both directions to the first ``queries`` queries.
    Used by tests and by the benchmark as the slow baseline.
    """
    t2i = np.asarray(text_to_image)
    n = image_emb.shape[0] if queries is None else min(queries, image_emb.shape[0])
    m = text_emb.shape[0] if queries is None else min(queries, text_emb.shape[0])
    i2t = np.empty(n, np.int64)
    for i in range(n):
        s = text_emb @ image_emb[i]  # (M,)
        own = t2i == i
        order = np.lexsort((own, -s))  # by score descending; among equal scores, negatives first
        i2t[i] = int(np.flatnonzero(own[order])[0]) if own.any() else len(s)
    t2i_r = np.empty(m, np.int64)
    for j in range(m):
        s = image_emb @ text_emb[j]  # (N,)
        own = np.arange(len(s)) == t2i[j]
        order = np.lexsort((own, -s))
        t2i_r[j] = int(np.flatnonzero(own[order])[0])
    return i2t, t2i_r
