"""COCO caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100), SPICE skipped.

Text is tokenised the COCO way first: Stanford's PTB tokenizer (Java), lower-cased, punctuation removed.
Without Java we say so once, tokenise in Python the same way for plain text (lower-case, split off and drop
the same punctuation) and report only the pure-Python metrics (BLEU, ROUGE-L, CIDEr); METEOR needs Java.

Numbers are corpus-level like the COCO server: BLEU-n is pycocoevalcap's corpus BLEU (closest reference
length, no smoothing), CIDEr is CIDEr-D with document frequencies from the references being scored.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
PURE_PYTHON = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")
SPICE_REASON = (
    "SPICE skipped: it needs the Stanford CoreNLP models, which pycocoevalcap downloads on first "
    "use (not possible offline)"
)
NO_JAVA_REASON = (
    "Java not found: METEOR skipped and text tokenised in Python instead of the PTB tokenizer "
    "(install a JRE, e.g. openjdk-17-jre-headless, for the COCO-standard numbers)"
)
# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, as the PTB tokenizer writes them
PUNCTUATIONS = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_SPLIT = re.compile(r"\.\.\.|--|[.?!,:;\-'`\"()\[\]{}]|[^\s.?!,:;\-'`\"()\[\]{}]+")


def java_available() -> bool:
    return shutil.which("java") is not None


@dataclass
class CaptionScores:
    """Metric name -> score x100, plus what was skipped and why."""

    scores: dict[str, float]
    notes: list[str] = field(default_factory=list)
    tokenizer: str = "ptb"
    n_images: int = 0

    def __getitem__(self, key: str) -> float:
        return self.scores[key]

    def as_dict(self) -> dict:
        return {**self.scores, "tokenizer": self.tokenizer, "images": self.n_images, "notes": self.notes}


def simple_tokenize(text: str) -> str:
    """Python stand-in for the PTB tokenizer on plain caption text: lower-case, punctuation split and
    dropped."""
    words = _SPLIT.findall(text.lower().replace("\n", " "))
    return " ".join(w for w in words if w not in PUNCTUATIONS and w.strip("'\"()[]{}`"))


@contextlib.contextmanager
def _java_stderr_silenced():
    """Point file descriptor 2 at /dev/null while a child process inherits it (its chatter only)."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _TokenCache:
    """PTB tokenisation memoised by string: sweeps score the same references (and often captions) many
    times."""

    def __init__(self):
        self.cache: dict[str, str] = {}

    def tokenize(self, texts: Sequence[str], use_java: bool) -> list[str]:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            if use_java:
                from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

                with _java_stderr_silenced():  # the JVM prints "PTBTokenizer tokenized N tokens ..."
                    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(todo)})
                for i, t in enumerate(todo):
                    self.cache[t] = out[i][0]
            else:
                for t in todo:
                    self.cache[t] = simple_tokenize(t)
        return [self.cache[t] for t in texts]


_CACHES = {True: _TokenCache(), False: _TokenCache()}


def tokenize(texts: Sequence[str], use_java: bool | None = None) -> list[str]:
    """COCO tokenisation of ``texts`` (PTB via Java when available)."""
    use_java = java_available() if use_java is None else use_java
    return _CACHES[use_java].tokenize(list(texts), use_java)


MAX_REFERENCE_WORDS = 200
"""A reference caption longer than this (in tokens) is refused by :func:`score_captions`: COCO's and Flickr30k's
longest are under 100 words, and corpus BLEU's brevity penalty sums reference lengths over the corpus, so one
pasted paragraph as a reference zeroes BLEU-4 for every image."""


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = METRIC_NAMES,
    use_java: bool | None = None,
    tokenizer: str = "ptb",
) -> CaptionScores:
    """Score one predicted caption per image id against that image's references; every score x100.

    ``metrics`` picks a subset (METEOR costs ~5 s of JVM start-up: sweeps leave it out).
    ``tokenizer="python"``
    skips the PTB tokenizer's JVM (~1 s per call): identical output on plain lower-case text such as the
    shapes captions, which is what the sweeps score hundreds of times.
    """
    from vlens.errors import ConfigError

    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown caption metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}"
        )
    ids = [k for k in predictions]
    missing = [k for k in ids if not references.get(k)]
    if not ids:
        raise ConfigError("no predictions to score")
    if missing:
        raise ConfigError(f"{len(missing)} prediction(s) have no reference captions (first: {missing[0]!r})")
    if tokenizer not in ("ptb", "python"):
        raise ConfigError(f"unknown tokenizer '{tokenizer}'; use ptb (COCO standard, Java) or python")
    use_java = java_available() if use_java is None else use_java
    notes = [SPICE_REASON]
    if not use_java:
        notes.append(NO_JAVA_REASON)
    flat = [predictions[k] for k in ids] + [r for k in ids for r in references[k]]
    toks = iter(tokenize(flat, use_java and tokenizer == "ptb"))
    res = {k: [next(toks)] for k in ids}
    gts = {k: [next(toks) for _ in references[k]] for k in ids}
    long = [(k, i, len(r.split())) for k in ids for i, r in enumerate(gts[k]) if len(r.split()) > MAX_REFERENCE_WORDS]
    if long:
        k, i, n = long[0]
        raise ConfigError(f"reference caption {i + 1} of image {k!r} has {n} words, more than the "
                          f"{MAX_REFERENCE_WORDS} a caption can have (one such reference alone drives corpus BLEU "
                          f"to 0){f'; {len(long)} references do' if len(long) > 1 else ''}: fix or drop it in the "
                          "dataset (`vlens data inspect` lists caption lengths)")

    scores: dict[str, float] = {}
    want = set(metrics)
    if want & {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            if f"BLEU-{n + 1}" in want:
                scores[f"BLEU-{n + 1}"] = 100.0 * float(bleu[n])
    if "METEOR" in want and use_java:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            scores["METEOR"] = 100.0 * float(meteor.compute_score(gts, res)[0])
        finally:
            _close_meteor(meteor)
    if "ROUGE-L" in want:
        from pycocoevalcap.rouge.rouge import Rouge

        scores["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in want:
        from pycocoevalcap.cider.cider import Cider

        scores["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    ordered = {m: scores[m] for m in METRIC_NAMES if m in scores}
    return CaptionScores(ordered, notes, "ptb" if use_java and tokenizer == "ptb" else "python", len(ids))


def _close_meteor(meteor) -> None:
    """Stop METEOR's JVM now instead of at interpreter exit (its __del__ is unreliable)."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    try:
        with meteor.lock:
            proc.stdin.close()
            proc.kill()
            proc.wait()
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass
