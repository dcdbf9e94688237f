"""The metric wrapper equals pycocoevalcap called directly; BLEU by hand on a trivial case; no-Java path."""

from __future__ import annotations

import pytest

from vlens.caption import metrics as M

REFS = {
    "1": ["A red circle on the left.", "there is a red circle on the left", "a big red circle, left side"],
    "2": ["two shapes: a blue square above a green star", "a blue box above a green star."],
    "3": ["A little yellow triangle in the middle", "a small yellow triangle in the middle of the image"],
}
PREDS = {
    "1": "a red circle on the left",
    "2": "a blue square above a star",
    "3": "a yellow diamond in the middle",
}


def direct_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f"BLEU-{i + 1}": 100 * b for i, b in enumerate(bleu)}
    out["METEOR"] = 100 * Meteor().compute_score(gts, res)[0]
    out["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = 100 * Cider().compute_score(gts, res)[0]
    return out


@pytest.mark.slow
def test_equals_pycocoevalcap_directly():
    """Java is part of the test environment (ENVIRONMENT.md): PTB tokenizer and METEOR run for real."""
    ours = M.score_captions(PREDS, REFS)
    ref = direct_pycocoevalcap()
    assert set(ours.scores) == set(M.METRIC_NAMES)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    assert ours.tokenizer == "ptb" and any("SPICE skipped" in n for n in ours.notes)


def test_python_tokenizer_matches_ptb_on_plain_captions():
    texts = [c for v in REFS.values() for c in v] + list(PREDS.values()) + ["Two shapes : a big box , a star"]
    py = M.tokenize(texts, use_java=False)
    if M.java_available():
        assert py == M.tokenize(texts, use_java=True)
    assert py[0] == "a red circle on the left"
    assert M.simple_tokenize("a big red circle, left side") == "a big red circle left side"


def test_exact_match_scores_100_and_bleu1_by_hand():
    refs = {"a": ["a red circle on the left"], "b": ["a blue box at the top"]}
    perfect = M.score_captions(
        {"a": "a red circle on the left", "b": "a blue box at the top"},
        refs,
        metrics=("BLEU-4", "ROUGE-L"),
        tokenizer="python",
    )
    assert perfect["BLEU-4"] == pytest.approx(100.0, abs=1e-4) and perfect["ROUGE-L"] == pytest.approx(100.0)
    # 5 of 6 unigrams match in "a red circle on the right" (same length: brevity penalty 1) -> BLEU-1 = 5/6
    one = M.score_captions(
        {"a": "a red circle on the right"},
        {"a": ["a red circle on the left"]},
        metrics=("BLEU-1",),
        tokenizer="python",
    )
    assert one["BLEU-1"] == pytest.approx(100 * 5 / 6, abs=1e-4)


def test_without_java_pure_python_metrics_and_a_note(monkeypatch):
    monkeypatch.setattr(M, "java_available", lambda: False)
    s = M.score_captions(PREDS, REFS)
    assert set(s.scores) == set(M.PURE_PYTHON)
    assert s.tokenizer == "python" and any("Java not found" in n for n in s.notes)


def test_bad_inputs():
    from vlens.errors import ConfigError

    with pytest.raises(ConfigError, match="no reference"):
        M.score_captions({"x": "a cat"}, {"y": ["a dog"]}, tokenizer="python")
    with pytest.raises(ConfigError, match="unknown caption metric"):
        M.score_captions(PREDS, REFS, metrics=("SPICY",))
    with pytest.raises(ConfigError, match="no predictions"):
        M.score_captions({}, REFS)
