"""The types every caption-dataset loader returns (:class:`CaptionDataset` of :class:`Sample`) and the checks the
loaders share. Their own module, so that the loaders (karpathy, coco, folder) and the package's ``load_dataset``,
which picks one of them, never import each other in a circle; ``vlens.data`` re-exports the types."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vlens.errors import DatasetError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    image_path: Path
    captions: tuple[str, ...]
    split: str
    id: str
    mask_path: Path | None = None


@dataclass
class CaptionDataset:
    samples: list[Sample]
    format: str
    source: Path
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Malformed entries, each naming the entry and the field (``images[3].sentences[1]: no 'raw' text``)."""

    def check(self) -> CaptionDataset:
        """Raise a DatasetError naming the file, the first malformed entry and its field; else return self."""
        if self.problems:
            more = len(self.problems) - 1
            raise DatasetError(f"{self.source}: {self.problems[0]}" + (f" (and {more} more malformed entr"
                               f"{'y' if more == 1 else 'ies'})" if more else "")
                               + f"; `vlens data inspect {self.source}` lists them; fix the file")
        return self

    @property
    def uncaptioned(self) -> list[Sample]:
        """Images without any non-empty caption: data for retrieval training (skipped and counted there), but
        evaluation refuses them (a prediction needs references), and ``vlens data inspect`` lists them."""
        return [s for s in self.samples if not has_caption(s)]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    @property
    def splits(self) -> dict[str, int]:
        return dict(Counter(s.split for s in self.samples))

    def split(self, name: str | None) -> CaptionDataset:
        """The samples of one split (``None`` or ``"all"``: everything). Unknown split -> DatasetError."""
        if name in (None, "all"):
            return self
        picked = [s for s in self.samples if s.split == name]
        if not picked:
            have = ", ".join(f"{k} ({v})" for k, v in sorted(self.splits.items())) or "none"
            raise DatasetError(f"{self.source} has no '{name}' split; splits present: {have}. "
                               "Pick one with --split.")
        return CaptionDataset(picked, self.format, self.source, list(self.notes), list(self.problems))

    def limit(self, n: int | None) -> CaptionDataset:
        if n is None or n >= len(self.samples):
            return self
        return CaptionDataset(self.samples[:n], self.format, self.source, list(self.notes), list(self.problems))


def id_problem(value) -> str | None:
    """Why ``value`` cannot identify an image (ids key predictions to references), or None."""
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, str) and not value.strip()):
        return f"its id {value!r} is not a number or a non-empty text"
    return None


def duplicate_ids(samples: list[Sample]) -> list[str]:
    """One problem per id used by more than one image (their captions would be scored against each other's)."""
    seen: dict[str, int] = Counter(s.id for s in samples)
    return [f"id {k!r} is used by {n} images; ids must be unique" for k, n in seen.items() if n > 1]


def has_caption(sample: Sample) -> bool:
    return any(c.strip() for c in sample.captions)


def _read_json(p: Path):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {p}: {exc}") from None
    except RecursionError:
        raise DatasetError(f"{p} is nested too deeply to be a dataset file") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
