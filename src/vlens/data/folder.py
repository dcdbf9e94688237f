"""An image folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face imagefolder convention).

Each row has ``file_name`` (relative to the folder) and either ``text`` (one caption) or ``captions``
(a list in JSONL; in CSV a JSON list or captions separated by ``|``). Optional ``split``, ``mask`` and ``id``
columns. A malformed row is listed (file, line, field) in ``problems``, as the JSON loaders do.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vlens.data.dataset import CaptionDataset, Sample, duplicate_ids, id_problem
from vlens.errors import DatasetError


def _captions(row: dict) -> tuple[str, ...]:
    """The row's captions; ValueError naming the field when they are not text."""
    if "captions" in row and row["captions"] not in (None, ""):
        caps = row["captions"]
        if isinstance(caps, str):
            s = caps.strip()
            if s.startswith("["):
                try:
                    caps = json.loads(s)
                except (json.JSONDecodeError, RecursionError):
                    raise ValueError("'captions' starts with '[' but is not a JSON list") from None
            else:
                caps = s.split("|")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError("'captions' is not a list of texts")
        return tuple(c.strip() for c in caps)
    if "text" in row and row["text"] is not None:
        if not isinstance(row["text"], str):
            raise ValueError(f"'text' {row['text']!r} is not text")
        return (row["text"].strip(),)
    raise ValueError("row has neither 'text' nor 'captions'")


def _rows(root: Path) -> tuple[Path, list[tuple[object, str]]]:
    if (root / "metadata.jsonl").is_file():
        meta = root / "metadata.jsonl"
        rows = []
        try:
            lines = meta.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"cannot read {meta}: not UTF-8 text ({exc.reason})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{meta.name}:{n}"))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise DatasetError(f"{meta}:{n} is not valid JSON: {getattr(exc, 'msg', 'nested too deeply')}") \
                    from None
        return meta, rows
    meta = root / "metadata.csv"
    try:
        with open(meta, newline="", encoding="utf-8") as fh:
            return meta, [(row, f"{meta.name}:{n}") for n, row in enumerate(csv.DictReader(fh), 2)]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"cannot read {meta}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"cannot read {meta}: not a CSV file ({exc})") from None


def load_folder(path) -> CaptionDataset:
    root = Path(path)
    meta, rows = _rows(root)
    samples, problems = [], []
    for i, (row, where) in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"{where}: the row is {json.dumps(row)[:40]}, not an object")
            continue
        name = row.get("file_name")
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            problems.append(f"{where}: no 'file_name'" if name is None else
                            f"{where}: 'file_name' {name!r} is not a file name")
            continue
        try:
            caps = _captions(row)
        except ValueError as exc:
            problems.append(f"{where} ({name}): {exc}")
            continue
        split, mask, ident = row.get("split") or "train", row.get("mask") or None, row.get("id", i)
        if not isinstance(split, str) or not split.strip():
            problems.append(f"{where} ({name}): 'split' {split!r} is not a split name")
            continue
        if mask is not None and (not isinstance(mask, str) or "\x00" in mask):
            problems.append(f"{where} ({name}): 'mask' {mask!r} is not a file name")
            continue
        if id_problem(ident):
            problems.append(f"{where} ({name}): 'id' {ident!r} is not a number or a non-empty text")
            continue
        samples.append(Sample(image_path=root / name, captions=caps, split=split, id=str(ident),
                              mask_path=(root / mask) if mask else None))
    problems += duplicate_ids(samples)
    return CaptionDataset(samples, "folder", meta, problems=problems)
