"""An image folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face imagefolder convention).

Each row has ``file_name`` (relative to the folder) and either ``text`` (one caption) or ``captions``
(a list in JSONL; in CSV a JSON list or captions separated by ``|``). Optional ``split`` and ``mask`` columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vlens.data import CaptionDataset, Sample
from vlens.errors import DatasetError


def _captions(row: dict, where: str) -> tuple[str, ...]:
    if "captions" in row and row["captions"] not in (None, ""):
        caps = row["captions"]
        if isinstance(caps, str):
            s = caps.strip()
            caps = json.loads(s) if s.startswith("[") else s.split("|")
        return tuple(str(c).strip() for c in caps)
    if "text" in row and row["text"] is not None:
        return (str(row["text"]).strip(),)
    raise DatasetError(f"{where}: row has neither 'text' nor 'captions'")


def load_folder(path) -> CaptionDataset:
    root = Path(path)
    rows: list[tuple[dict, str]] = []
    if (root / "metadata.jsonl").is_file():
        meta = root / "metadata.jsonl"
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{meta}:{n}"))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{meta}:{n} is not valid JSON: {exc.msg}") from None
    else:
        meta = root / "metadata.csv"
        with open(meta, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):
                rows.append((row, f"{meta}:{n}"))
    samples = []
    for i, (row, where) in enumerate(rows):
        if "file_name" not in row:
            raise DatasetError(f"{where}: missing 'file_name' column")
        mask = row.get("mask")
        samples.append(Sample(image_path=root / row["file_name"], captions=_captions(row, where),
                              split=row.get("split") or "train", id=str(row.get("id", i)),
                              mask_path=(root / mask) if mask else None))
    return CaptionDataset(samples, "folder", meta)
