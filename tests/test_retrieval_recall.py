"""Recall@K against hand-worked ranks and a brute-force per-query loop, with ties and 5 captions per image."""

from __future__ import annotations

import numpy as np
import pytest

from vlens.retrieval.evaluate import RetrievalScores
from vlens.retrieval.recall import naive_ranks, ranks_from_embeddings, ranks_from_similarity, recall_at


def test_hand_made_matrix_with_ties():
    # 3 images, 2 captions each: captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
    t2i = np.array([0, 0, 1, 1, 2, 2])
    sim = np.array([
        # c0   c1   c2   c3   c4   c5
        [0.9, 0.1, 0.5, 0.2, 0.0, 0.0],  # image 0: best own 0.9, nothing else >= 0.9      -> rank 0
        [0.7, 0.1, 0.3, 0.7, 0.8, 0.2],  # image 1: best own 0.7; c0 ties (0.7), c4 beats -> rank 2
        [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],  # image 2: everything ties: 4 negatives >= 0.2    -> rank 4
    ], dtype=np.float32)
    i2t, t2i_r = ranks_from_similarity(sim, t2i)
    assert i2t.tolist() == [0, 2, 4]
    # text -> image, column by column: c0 own 0.9 (img1 0.7, img2 0.2) -> 0; c1 own 0.1 (0.1 tie, 0.2) -> 2;
    # c2 own 0.3 (0.5 beats, 0.2) -> 1; c3 own 0.7 (0.2, 0.2) -> 0; c4 own 0.2 (0.0, 0.8) -> 1;
    # c5 own 0.2 (0.0, 0.2 tie) -> 1
    assert t2i_r.tolist() == [0, 2, 1, 0, 1, 1]
    s = RetrievalScores.from_ranks(i2t, t2i_r)
    assert s.i2t_r1 == pytest.approx(100 / 3) and s.i2t_r5 == 100.0
    assert s.t2i_r1 == pytest.approx(200 / 6) and s.t2i_r5 == 100.0
    assert s.score == pytest.approx(np.mean([100 / 3, 100, 100, 200 / 6, 100, 100]))


def definition_ranks(sim, t2i):
    """The protocol written as loops: count the competitors that score at least as high as the positive."""
    n, m = len(sim), len(sim[0])
    i2t = []
    for i in range(n):
        best = max(sim[i][j] for j in range(m) if t2i[j] == i)
        i2t.append(sum(1 for j in range(m) if t2i[j] != i and sim[i][j] >= best))
    t2i_r = [sum(1 for i in range(n) if i != t2i[j] and sim[i][j] >= sim[t2i[j]][j]) for j in range(m)]
    return i2t, t2i_r


def test_random_tied_matrix_matches_the_definition():
    rng = np.random.default_rng(3)
    n, caps = 9, 5
    sim = rng.integers(0, 4, (n, n * caps)).astype(np.float32) / 4  # few distinct values: many ties
    t2i = rng.permutation(np.repeat(np.arange(n), caps))  # captions in any order
    i2t, t2i_r = ranks_from_similarity(sim, t2i)
    want_i2t, want_t2i = definition_ranks(sim.tolist(), t2i.tolist())
    assert i2t.tolist() == want_i2t and t2i_r.tolist() == want_t2i


def test_constant_model_scores_zero_at_r1():
    sim = np.zeros((4, 20), np.float32)
    i2t, t2i_r = ranks_from_similarity(sim, np.repeat(np.arange(4), 5))
    assert recall_at(i2t, 1) == 0.0 and recall_at(t2i_r, 1) == 0.0


@pytest.mark.parametrize("caps_per_image", [5, 1])
def test_chunked_embeddings_match_brute_force_with_ties(caps_per_image):
    rng = np.random.default_rng(0)
    n, d = 37, 8
    # coarse values make many exact ties; duplicated captions make identical rows
    img = rng.integers(-2, 3, (n, d)).astype(np.float32)
    t2i = np.repeat(np.arange(n), caps_per_image)
    txt = img[t2i] + rng.integers(-2, 3, (len(t2i), d)).astype(np.float32)
    txt[3] = txt[4]
    i2t_fast, t2i_fast = ranks_from_embeddings(img, txt, t2i, chunk=5)
    i2t_ref, t2i_ref = naive_ranks(img, txt, t2i)
    np.testing.assert_array_equal(i2t_fast, i2t_ref)
    np.testing.assert_array_equal(t2i_fast, t2i_ref)
    # and against the full-matrix path
    i2t_full, t2i_full = ranks_from_similarity(img @ txt.T, t2i)
    np.testing.assert_array_equal(i2t_fast, i2t_full)
    np.testing.assert_array_equal(t2i_fast, t2i_full)


def test_one_caption_per_image_protocol():
    # with one caption each, image->text and text->image ask the same question on the transposed matrix
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(10, 10)).astype(np.float32)
    i2t, t2i_r = ranks_from_similarity(sim, np.arange(10))
    i2t_t, t2i_t = ranks_from_similarity(sim.T.copy(), np.arange(10))
    np.testing.assert_array_equal(i2t, t2i_t)
    np.testing.assert_array_equal(t2i_r, i2t_t)


def test_any_caption_in_top_k_is_a_hit():
    # image 0 has 5 captions; only its weakest-but-one is in the top 1 -> still a hit at R@1
    sim = np.array([[0.1, 0.1, 0.95, 0.1, 0.1, 0.9, 0.2]], np.float32)
    t2i = np.array([0, 0, 0, 0, 0, 1, 1])
    sim = np.vstack([sim, np.full((1, 7), 0.0, np.float32)])
    i2t, _ = ranks_from_similarity(sim, t2i)
    assert i2t[0] == 0
