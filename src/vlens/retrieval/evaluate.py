"""Evaluate a dual encoder on a captioned dataset split: the COCO 5-captions retrieval protocol.

Images are embedded in batches (never all decoded at once); captions are embedded after counting the ones the
text model must truncate and dropping empty ones; then :mod:`vlens.retrieval.recall` ranks every image against
every caption and vice versa. Works for any number of captions per image (1 is fine: then i2t and t2i ask the
same question from two sides).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vlens.retrieval.recall import KS, ranks_from_embeddings, recall_at


@dataclass(frozen=True)
class RetrievalScores:
    """Recall@K in percent; ``score`` is the mean of the six numbers (the lab report's "score")."""

    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    score: float
    images: int
    captions: int

    @classmethod
    def from_ranks(cls, i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> RetrievalScores:
        i2t = [recall_at(i2t_ranks, k) for k in KS]
        t2i = [recall_at(t2i_ranks, k) for k in KS]
        return cls(*i2t, *t2i, score=float(np.mean(i2t + t2i)), images=len(i2t_ranks), captions=len(t2i_ranks))

    def as_dict(self) -> dict:
        return asdict(self)

    def markdown(self, digits: int = 1) -> str:
        from vlens.tables import markdown_table

        head = ["images", "captions", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "score"]
        vals = [self.i2t_r1, self.i2t_r5, self.i2t_r10, self.t2i_r1, self.t2i_r5, self.t2i_r10, self.score]
        row = [self.images, self.captions, *(f"{v:.{digits}f}" for v in vals)]
        return markdown_table(head, [row], align="r" * len(head)).rstrip("\n")


@dataclass
class EvalPairs:
    """What is evaluated: image paths, captions, caption -> image index, and what was dropped or changed."""

    image_paths: list
    captions: list[str]
    text_to_image: np.ndarray  # (M,) int64
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    empty_captions: int = 0
    images_without_captions: int = 0
    truncated_captions: int = 0


def collect_pairs(dataset) -> EvalPairs:
    """Flatten a :class:`CaptionDataset` into images + captions; empty captions and caption-less images go."""
    paths, captions, t2i = [], [], []
    empty = no_caps = 0
    for s in dataset.samples:
        caps = [c.strip() for c in s.captions]
        good = [c for c in caps if c]
        empty += len(caps) - len(good)
        if not good:
            no_caps += 1
            continue
        captions += good
        t2i += [len(paths)] * len(good)
        paths.append(s.image_path)
    return EvalPairs(paths, captions, np.asarray(t2i, dtype=np.int64), empty_captions=empty,
                     images_without_captions=no_caps)


def count_truncated(tokenizer, captions: list[str], max_tokens: int) -> int:
    """How many captions are longer than the text model's context (special tokens included)."""
    if not captions:
        return 0
    ids = tokenizer(captions, add_special_tokens=True, truncation=False)["input_ids"]
    return int(sum(len(x) > max_tokens for x in ids))


def embed_images(encoder, paths, batch_size: int = 64, desc: str = "images"):
    """Embed the readable images among ``paths`` -> ((n, d) float32, kept indices, SkipLog)."""
    from vlens.images import SkipLog, load_images_safely
    from vlens.runs import progress

    skips = SkipLog()
    index = {str(p): i for i, p in enumerate(paths)}
    chunks, kept, batch = [], [], []
    bar = progress(total=len(paths), desc=desc)

    def flush():
        if batch:
            chunks.append(encoder.encode_images([im for _, im in batch], batch_size=len(batch)))
            kept.extend(index[str(p)] for p, _ in batch)
            bar.update(len(batch))
            batch.clear()

    for p, im in load_images_safely(paths, skips):
        batch.append((p, im))
        if len(batch) == batch_size:
            flush()
    flush()
    bar.close()
    d = encoder.dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, d), np.float32)), np.asarray(kept, np.int64), skips


def evaluate_encoder(encoder, dataset, batch_size: int = 64, chunk: int = 512):
    """Run the protocol for ``encoder`` (a :class:`DualEncoder`) on ``dataset`` (one split).

    Returns ``(RetrievalScores, details)``; details has the ranks (for recall curves) and what was skipped.
    """
    from vlens.errors import DatasetError

    pairs = collect_pairs(dataset)
    if not pairs.image_paths:
        raise DatasetError(f"{dataset.source}: no image with a non-empty caption to evaluate")
    pairs.truncated_captions = count_truncated(encoder.tokenizer, pairs.captions, encoder.max_text_tokens)
    img_emb, kept, skips = embed_images(encoder, pairs.image_paths, batch_size)
    pairs.skipped_images = list(skips.skipped)
    if len(kept) == 0:
        raise DatasetError(f"none of the {len(pairs.image_paths)} images could be read; first: "
                           f"{skips.summary(1)}")
    # Captions of unreadable images leave the protocol with their image.
    new_index = np.full(len(pairs.image_paths), -1, np.int64)
    new_index[kept] = np.arange(len(kept))
    keep_txt = new_index[pairs.text_to_image] >= 0
    captions = [c for c, k in zip(pairs.captions, keep_txt) if k]
    t2i = new_index[pairs.text_to_image[keep_txt]]
    txt_emb = encoder.encode_texts(captions, batch_size=max(batch_size, 256))
    i2t_ranks, t2i_ranks = ranks_from_embeddings(img_emb, txt_emb, t2i, chunk=chunk)
    scores = RetrievalScores.from_ranks(i2t_ranks, t2i_ranks)
    details = {
        "i2t_ranks": i2t_ranks, "t2i_ranks": t2i_ranks,
        "skipped_images": [{"path": p, "reason": r} for p, r in pairs.skipped_images],
        "empty_captions": pairs.empty_captions, "images_without_captions": pairs.images_without_captions,
        "truncated_captions": pairs.truncated_captions, "max_text_tokens": encoder.max_text_tokens,
        "captions_per_image": round(len(captions) / max(len(kept), 1), 3),
    }
    return scores, details


def notes_for(details: dict) -> list[str]:
    """Human-readable lines about what the protocol had to drop or change."""
    notes = []
    if details["truncated_captions"]:
        notes.append(f"{details['truncated_captions']} caption(s) longer than the text model's context of "
                     f"{details['max_text_tokens']} tokens were truncated")
    if details["empty_captions"]:
        notes.append(f"{details['empty_captions']} empty caption(s) were ignored")
    if details["images_without_captions"]:
        notes.append(f"{details['images_without_captions']} image(s) without any caption were left out")
    if details["skipped_images"]:
        from vlens.images import shown_path

        first = details["skipped_images"][:5]
        notes.append(f"{len(details['skipped_images'])} unreadable image(s) were skipped with their captions: "
                     + "; ".join(f"{shown_path(s['path'])} ({s['reason']})" for s in first)
                     + (" ..." if len(details["skipped_images"]) > 5 else ""))
    return notes
