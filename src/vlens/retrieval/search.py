"""Query an image index with text or an image: ranked :class:`SearchHit` s, and a contact sheet of the results.

>>> from vlens.retrieval.search import Searcher
>>> s = Searcher("my-index")                      # loads the model named in the index manifest
>>> for hit in s.text("a red circle", k=5):
...     print(f"{hit.score:.3f} {hit.path}")
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlens.errors import ConfigError, IndexError_


@dataclass(frozen=True)
class SearchHit:
    id: int
    path: str
    """Relative to the indexed folder."""
    score: float
    """Cosine similarity between the query and the image embedding, in [-1, 1]."""
    caption: str | None = None


class Searcher:
    """An opened index plus the dual encoder that made it; thread-safe (one model call at a time).

    ``engine`` (torch | onnx | auto, :mod:`vlens.engines`): what encodes the queries. With an ONNX export of the
    index model's towers in the cache, onnx and auto (when the export measured faster) never import torch."""

    def __init__(self, index, encoder=None, cache_size: int = 1024, engine: str = "auto"):
        from vlens.engines import check_engine
        from vlens.retrieval.index_reader import ImageIndex

        self.index = index if isinstance(index, ImageIndex) else ImageIndex(index)
        self.engine = check_engine(engine)
        self._encoder = encoder
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    @property
    def encoder(self):
        """The index's dual encoder, loaded on first use."""
        with self._lock:
            if self._encoder is None:
                from vlens.retrieval.query_encoder import query_encoder

                self._encoder = query_encoder(self.index.model, self.engine)
            if self._encoder.dim != self.index.dim:
                raise IndexError_(f"model {self._encoder.spec} gives {self._encoder.dim}-d vectors but the index "
                                  f"holds {self.index.dim}-d (built with {self.index.model})")
            return self._encoder

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, d) unit vectors, one model call for those not cached (recent texts are cached)."""
        clean = []
        for t in texts:
            t = (t or "").strip()
            if not t:
                raise ConfigError("the text query is empty; type what you are looking for, e.g. \"a red circle\"")
            if len(t) > 1000:
                raise ConfigError("the text query is longer than 1000 characters; shorten it")
            clean.append(t)
        enc = self.encoder
        with self._lock:
            todo = list(dict.fromkeys(t for t in clean if t not in self._text_cache))
            if todo:
                for t, v in zip(todo, enc.encode_texts(todo)):
                    self._text_cache[t] = v
            out = np.stack([self._text_cache[t] for t in clean])           # (n, d)
            for t in clean:
                self._text_cache.move_to_end(t)
            while len(self._text_cache) > self._cache_size:
                self._text_cache.popitem(last=False)
        return out

    def embed_text(self, query: str) -> np.ndarray:
        """Text -> (d,) unit vector (recent queries are cached)."""
        return self.embed_texts([query])[0]

    def embed_image(self, image) -> np.ndarray:
        """A PIL image, path or bytes -> (d,) unit vector."""
        from PIL import Image

        from vlens.images import load_image

        if not isinstance(image, Image.Image):
            image = load_image(image)
        enc = self.encoder
        with self._lock:
            return enc.encode_images([image])[0]

    def allowed(self, filters) -> np.ndarray | None:
        """The ids that pass ``filters`` (a :class:`vlens.retrieval.filters.Filters`), None when none is set."""
        if filters is None or not filters.active:
            return None
        from vlens.retrieval.filters import matching_ids

        self.index.refresh()
        with self.index.lock:
            return matching_ids(self.index.con, filters)

    def vectors(self, queries: np.ndarray, k: int = 10, filters=None,
                allowed: np.ndarray | None = None) -> list[list[SearchHit]]:
        """(Q, d) unit vectors -> the top ``k`` hits for each, best first, among the images that pass
        ``filters`` (a :class:`vlens.retrieval.filters.Filters`; None = all), or among ``allowed`` ids."""
        if k < 1:
            raise ConfigError("k must be at least 1")
        self.index.refresh()
        if allowed is None:
            allowed = self.allowed(filters)
        scores, ids = self.index.search(queries, k, allowed=allowed)  # (Q, k) each
        rows = self.index.rows(ids.ravel())
        out = []
        for srow, irow in zip(scores, ids):
            # A row can vanish between the FAISS search and the lookup when another process deletes it.
            out.append([SearchHit(int(i), rows[int(i)]["path"], float(s), rows[int(i)]["caption"])
                        for s, i in zip(srow, irow) if int(i) in rows])
        return out

    def term_vectors(self, terms) -> np.ndarray:
        """Terms (:func:`vlens.retrieval.query.parse_query`) -> their (T, d) unit vectors."""
        from vlens.retrieval.query import term_vectors

        return term_vectors(terms, self.embed_texts, self.embed_image, self.index.vector)

    def query_vector(self, terms, extra_images=()) -> np.ndarray:
        """Terms, plus images given as pictures (PIL or bytes, each one more + term of weight 1, as an upload
        is) -> the (d,) unit query vector."""
        from vlens.retrieval.query import Term, combine

        terms = list(terms)
        vecs = [self.term_vectors(terms)] if terms else []
        if extra_images:
            vecs.append(np.stack([self.embed_image(im) for im in extra_images]))
            terms += [Term("image", "<upload>")] * len(extra_images)
        return combine(terms, np.concatenate(vecs))

    def query(self, query, k: int = 10, filters=None) -> list[SearchHit]:
        """A combined query (a string or shell words in rclip's form, or parsed terms): the top ``k`` hits.
        ``"2:golden retriever + ./pool.jpg - fruit"``: see :mod:`vlens.retrieval.query` for the grammar."""
        from vlens.retrieval.query import Term, parse_query

        terms = query if query and all(isinstance(t, Term) for t in query) else parse_query(query)
        return self.vectors(self.query_vector(terms)[None], k, filters)[0]

    def text(self, query: str, k: int = 10, filters=None) -> list[SearchHit]:
        return self.vectors(self.embed_text(query)[None], k, filters)[0]

    def image(self, image, k: int = 10, filters=None) -> list[SearchHit]:
        return self.vectors(self.embed_image(image)[None], k, filters)[0]

    def similar(self, image_id: int, k: int = 10) -> list[SearchHit]:
        """Images like an indexed one (by id), using its stored vector."""
        v = self.index.vector(image_id)
        if v is None:
            raise IndexError_(f"no image with id {image_id} in {self.index.folder}")
        return self.vectors(v[None], k)[0]


def search(index, query=None, image=None, k: int = 10, encoder=None, filters=None,
           engine: str = "auto") -> list[SearchHit]:
    """One-shot search: ``query`` (a combined query: a string or words, see :mod:`vlens.retrieval.query`), or
    ``image`` (path, bytes or PIL), or both (the image is one more term, weight 1); ``filters``: a
    :class:`vlens.retrieval.filters.Filters`; ``engine``: what encodes the query (torch | onnx | auto)."""
    if query is None and image is None:
        raise ConfigError("give a query (text, ./image paths, weights and - terms) or an image")
    s = Searcher(index, encoder=encoder, engine=engine)
    try:
        from vlens.retrieval.query import parse_query

        terms = parse_query(query) if query is not None else []
        return s.vectors(s.query_vector(terms, [image] if image is not None else ())[None], k, filters)[0]
    finally:
        s.index.close()


def contact_sheet(hits: list[SearchHit], root, out, title: str = "", query_image=None, cell: int = 160,
                  cols: int = 5) -> Path:
    """A PNG grid of the hits with rank, score and file name under each (and the query image first, if any)."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    from vlens.images import load_image
    from vlens.retrieval.index_store import safe_join
    from vlens.runs import atomic_path

    root = Path(root)
    tiles = []
    if query_image is not None:
        q = query_image if isinstance(query_image, Image.Image) else load_image(query_image)
        tiles.append((q, "query"))
    for rank, h in enumerate(hits, 1):
        p = safe_join(root, h.path)
        img = load_image(p) if p is not None else Image.new("RGB", (cell, cell), (200, 200, 200))
        name = h.path if len(h.path) <= 22 else "…" + h.path[-21:]
        tiles.append((img, f"#{rank}  {h.score:.3f}\n{name}"))
    cols = max(1, min(cols, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // cols))
    head, label = (28 if title else 0), 34
    sheet = Image.new("RGB", (cols * (cell + 8) + 8, head + rows * (cell + label + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((8, 8), title[:120], fill="black", font=font)
    for n, (img, text) in enumerate(tiles):
        x = 8 + (n % cols) * (cell + 8)
        y = head + 8 + (n // cols) * (cell + label + 8)
        thumb = ImageOps.contain(img, (cell, cell))
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=(180, 180, 180))
        draw.multiline_text((x, y + cell + 3), text, fill="black", font=font, spacing=2)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return out
