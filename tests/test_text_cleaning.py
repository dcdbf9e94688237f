"""open_clip's text cleaning (ftfy, HTML unescaped twice, whitespace collapsed) for models converted from open_clip
files; Hugging Face models keep their tokenizer's own normalisation. The reference tier
(tests/test_reference_checkpoints.py) compares the token ids with open_clip's own tokenizer."""

from __future__ import annotations

import pytest

from vlens.models.text_cleaning import clean_texts, open_clip_clean


@pytest.mark.parametrize("raw, clean", [
    ("Don\u2019t   \ufb01x&amp;amp; \uff21\uff22\uff23\n", "Don't fix& ABC"),  # apostrophe, ligature, entity, width
    ("\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d", '"quoted"'),  # mojibake of curly quotes
    ("\u201cbig\u201d  dog\t", '"big" dog'),
    ("a photo of a dog", "a photo of a dog"),
])
def test_open_clip_cleaning(raw, clean):
    assert open_clip_clean(raw) == clean


def test_clean_texts_only_when_declared():
    assert clean_texts(["\ufb01sh  "], None) == ["\ufb01sh  "]
    assert clean_texts(["\ufb01sh  "], "open_clip") == ["fish"]
    with pytest.raises(ValueError, match="one of open_clip"):
        clean_texts(["x"], "nfkc")


def test_a_dual_encoder_cleans_queries_when_its_config_says_open_clip(tiny_clip):
    from vlens.models import load
    from vlens.retrieval.model import DualEncoder

    enc = DualEncoder(load(str(tiny_clip), "dual_encoder"))
    plain = enc.text_inputs(["a red \ufb01sh"])["input_ids"].tolist()
    enc.model.config.text_cleaning = "open_clip"
    assert enc.text_inputs(["a red \ufb01sh"])["input_ids"].tolist() == enc.text_inputs(["a red fish"])[
        "input_ids"].tolist() != plain
