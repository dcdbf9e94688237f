"""Combined queries: text and image terms with weights and signs, parsed from rclip's form and combined into one
query vector. Parsing and combining only; *encoding* a term is the caller's one function (the index's model, torch
or an export: :class:`vlens.retrieval.search.Searcher`).

The grammar (``vlens search IDX "2:golden retriever" + ./pool.jpg - fruit``)::

    query   := term (OP term)*          OP is a word that is exactly "+" or "-"
    term    := [WEIGHT ":"] body        WEIGHT: a positive decimal (2, 0.5, .5, 2.)
    body    := image path | "id:" N | text

- Words are the shell's words (quote a phrase or not: words between two operators join into one term with single
  spaces, so ``red circle + blue`` is the terms "red circle" and "blue"). The first term is added; every later
  term takes the sign of the operator before it. A web query is one string split on whitespace the same way.
- A term is an image path when it starts with ``./``, ``../``, ``/``, ``~/`` or ``file://`` (rclip's rule: write
  ``./cat.jpg``, not ``cat.jpg``), or when it names an existing file with an image suffix. ``id:N`` is the image
  with index id N (its stored vector, nothing is re-encoded). Everything else is text. A text that starts with
  ``N:`` is read as a weight: write ``1:2:1 ratio`` for the text "2:1 ratio".
- Combination: every term's vector is a unit vector e_i (what the encoders return); the query is
  q = sum_i s_i w_i e_i with s_i = +1 or -1, then divided by its length, so a hit's score stays the cosine
  similarity in [-1, 1]. Ranking is the same as rclip's unnormalised sum (dividing by a positive number changes no
  order). Images of a scene are closer to each other than any text is to them (CLIP cosine ~0.8 vs ~0.3), so an
  image term dominates an equally weighted text term: raise the text's weight (``3:at night + ./pool.jpg``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError

WEIGHT_RE = re.compile(r"^(?P<w>\d+(?:\.\d*)?|\.\d+):(?P<rest>.+)$", re.S)
PATH_PREFIXES = ("./", "../", "/", "~/", "file://")
ID_RE = re.compile(r"^id:(\d{1,18})$")
MAX_TERMS = 32


@dataclass(frozen=True)
class Term:
    kind: str
    """"text", "image" (a file path) or "id" (an indexed image, by id)."""
    value: str | int
    weight: float = 1.0
    sign: int = 1
    """+1 added, -1 subtracted."""

    def __str__(self) -> str:
        op = "+" if self.sign > 0 else "-"
        w = "" if self.weight == 1 else f"{self.weight:g}:"
        v = f"id:{self.value}" if self.kind == "id" else str(self.value)
        return f"{op} {w}{v}"


def _is_image_path(body: str) -> bool:
    if body.startswith(PATH_PREFIXES):
        return True
    from vlens.images import is_image_file

    p = Path(body)
    return "\n" not in body and len(body) < 4096 and is_image_file(p) and p.is_file()


def parse_term(word: str, sign: int = 1) -> Term:
    """One term (already joined): weight prefix, then image path, ``id:N`` or text."""
    text = word.strip()
    weight = 1.0
    m = WEIGHT_RE.match(text)
    if m:
        weight = float(m.group("w"))
        text = m.group("rest").strip()
        if not weight > 0:
            raise ConfigError(f"the weight in '{word}' must be above 0 (to subtract a term put '-' before it)")
        if weight > 1000:
            raise ConfigError(f"the weight in '{word}' is above 1000; weights are relative, e.g. 2:cat")
    if not text:
        raise ConfigError(f"the term '{word}' has a weight but nothing to search for")
    mid = ID_RE.match(text)
    if mid:
        return Term("id", int(mid.group(1)), weight, sign)
    if _is_image_path(text):
        path = text[len("file://"):] if text.startswith("file://") else text
        return Term("image", str(Path(path).expanduser()), weight, sign)
    if len(text) > 1000:
        raise ConfigError("a text term is longer than 1000 characters; shorten it")
    return Term("text", text, weight, sign)


def parse_query(words: Sequence[str] | str) -> list[Term]:
    """Shell words (or one string, split on whitespace) -> terms. See the module doc for the grammar."""
    if isinstance(words, str):
        words = words.split()
    terms: list[Term] = []
    sign, current = 1, []

    def close(at: str):
        if not current:
            raise ConfigError(f"'{at}' needs a term on each side, e.g. \"dog + ./beach.jpg - snow\"")
        terms.append(parse_term(" ".join(current), sign))

    for w in words:
        w = str(w)
        if w in ("+", "-"):
            if not terms and not current:
                raise ConfigError(f"a query cannot start with '{w}': begin with what you look for, e.g. "
                                  f"\"dog {w} snow\"")
            close(w)
            sign, current = (1 if w == "+" else -1), []
        elif w.strip():
            current.append(w.strip())
    if current:
        close("")
    elif terms:
        raise ConfigError("the query ends with an operator; put a term after the last '+' or '-'")
    if not terms:
        raise ConfigError("the query is empty; type what you are looking for, e.g. \"a red circle\"")
    if len(terms) > MAX_TERMS:
        raise ConfigError(f"a query has at most {MAX_TERMS} terms (got {len(terms)})")
    return terms


def query_text(terms: Sequence[Term]) -> str:
    """Terms -> the canonical query string (parses back to the same terms)."""
    text = " ".join(str(t) for t in terms)
    return text[2:] if text.startswith("+ ") else text


def combine(terms: Sequence[Term], vectors: np.ndarray) -> np.ndarray:
    """(T,) terms and their (T, d) unit vectors -> the (d,) unit query vector: sum s_i w_i e_i, normalised."""
    v = np.asarray(vectors, np.float64)                                      # (T, d)
    coef = np.array([t.sign * t.weight for t in terms], np.float64)          # (T,)
    q = coef @ v                                                             # (d,)
    norm = float(np.linalg.norm(q))
    if not norm > 1e-6 * max(1.0, float(np.abs(coef).sum())):
        raise ConfigError("the terms cancel out (the query vector is zero); change a weight or drop a term")
    return (q / norm).astype(np.float32)


def term_vectors(terms: Sequence[Term], encode_texts: Callable[[list[str]], np.ndarray],
                 encode_image: Callable[[object], np.ndarray],
                 stored: Callable[[int], np.ndarray | None] | None = None) -> np.ndarray:
    """Each term's (d,) unit vector, stacked (T, d): texts in one ``encode_texts`` call, ``encode_image`` per
    path, ``stored(id)`` for an indexed image (None: no such id)."""
    vecs: list[np.ndarray | None] = [None] * len(terms)
    texts = [(i, t.value) for i, t in enumerate(terms) if t.kind == "text"]
    if texts:
        tv = encode_texts([str(v) for _, v in texts])                       # (n, d)
        for (i, _), v in zip(texts, tv):
            vecs[i] = v
    for i, t in enumerate(terms):
        if t.kind == "image":
            vecs[i] = encode_image(t.value)
        elif t.kind == "id":
            v = stored(int(t.value)) if stored is not None else None
            if v is None:
                raise ConfigError(f"no image with id {t.value} in this index (ids are shown by --json)")
            vecs[i] = v
    return np.stack(vecs)


def query_vector(terms: Sequence[Term], encode_texts: Callable[[list[str]], np.ndarray],
                 encode_image: Callable[[object], np.ndarray],
                 stored: Callable[[int], np.ndarray | None] | None = None) -> np.ndarray:
    """Encode each term and combine them: the (d,) unit query vector."""
    return combine(terms, term_vectors(terms, encode_texts, encode_image, stored))
