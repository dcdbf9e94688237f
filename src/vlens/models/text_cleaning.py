"""Text cleaning before tokenization, as the code that trained a text tower did it.

``open_clip``: open_clip's tokenizer cleans every text with ftfy (mojibake, curly quotes and apostrophes, ligatures,
full-width letters), unescapes HTML twice and collapses whitespace; the Hugging Face CLIP tokenizer does none of
that (it normalises to NFC, collapses whitespace and lower-cases, which open_clip also does). A model converted from
an open_clip file declares ``text_cleaning: "open_clip"`` in its config, so its queries give open_clip's token ids.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

CLEANINGS = ("open_clip",)
_SPACE = re.compile(r"\s+")


def open_clip_clean(text: str) -> str:
    """open_clip's ``basic_clean`` then ``whitespace_clean`` (the tokenizer lower-cases afterwards)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACE.sub(" ", text).strip()


def clean_texts(texts: Sequence[str], cleaning: str | None) -> list[str]:
    """``texts`` cleaned as ``cleaning`` says (None: unchanged)."""
    if not cleaning:
        return list(texts)
    if cleaning != "open_clip":
        raise ValueError(f"unknown text cleaning '{cleaning}'; one of {', '.join(CLEANINGS)}")
    return [open_clip_clean(t) for t in texts]


def cleaning_of(config) -> str | None:
    """The cleaning a (CLIP) model's config declares (``config.text_cleaning``), None for Hugging Face models."""
    return getattr(config, "text_cleaning", None) or None
