"""Captioned image datasets behind one small interface.

Every loader returns a :class:`CaptionDataset`: a list of :class:`Sample` (image path, captions, split,
optional mask path). Formats (``load_dataset`` recognises them by content):

- Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``; ``restval`` joins ``train``),
  also what ``vlens data make-shapes`` writes (``OUT/dataset.json``);
- COCO captions JSON (``captions_*.json``: ``images`` + ``annotations``);
- an image folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face imagefolder convention).

Named image sets for the correspondence work (``photos``, ``shapes``, ``opencv:...``): :mod:`vlens.data.image_sets`.
"""

from __future__ import annotations

from pathlib import Path

from vlens.data.dataset import SPLITS, CaptionDataset, Sample, _read_json
from vlens.errors import DatasetError

__all__ = ["SPLITS", "CaptionDataset", "Sample", "detect_format", "load_dataset"]


def detect_format(path) -> str:
    """'karpathy', 'coco' or 'folder' from what is at ``path`` (a JSON file or a folder)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p} does not exist. Give a dataset JSON, a folder with metadata.jsonl/csv, or "
                           "a folder written by `vlens data make-shapes`.")
    if p.is_dir():
        if (p / "dataset.json").is_file():
            return "karpathy"
        if (p / "metadata.jsonl").is_file() or (p / "metadata.csv").is_file():
            return "folder"
        raise DatasetError(f"{p} is a folder without dataset.json, metadata.jsonl or metadata.csv; "
                           "add a metadata file (columns file_name and text) or point at the JSON file.")
    if p.suffix.lower() != ".json":
        raise DatasetError(f"{p}: expected a .json file or a folder, got '{p.suffix or 'no suffix'}'")
    head = _read_json(p)
    if isinstance(head, dict) and isinstance(head.get("images"), list):
        if "annotations" in head:
            return "coco"
        first = next((im for im in head["images"] if isinstance(im, dict)), {})
        if "sentences" in first or "filename" in first or not first:  # entries are checked by the loader
            return "karpathy"
    raise DatasetError(f"{p}: JSON is neither Karpathy split format (images[].sentences) nor COCO captions "
                       "(images + annotations)")


def load_dataset(path, images_root=None, strict: bool = True) -> CaptionDataset:
    """Load any supported dataset; ``images_root`` overrides where image files are looked for.

    ``strict`` (the default, for training and evaluation): a malformed entry (a caption without text, an entry
    without a file name, ...) raises a DatasetError naming the file, the entry and the field. ``strict=False``
    (``vlens data inspect``) loads what it can and lists the problems in ``.problems``."""
    fmt = detect_format(path)
    if fmt == "karpathy":
        from vlens.data.karpathy import load_karpathy

        ds = load_karpathy(path, images_root=images_root)
    elif fmt == "coco":
        from vlens.data.coco import load_coco

        ds = load_coco(path, images_root=images_root)
    else:
        from vlens.data.folder import load_folder

        ds = load_folder(path)
    if not ds.samples and not ds.problems:
        ds.problems.append("no images: the dataset lists none (add entries, or point at another file)")
    return ds.check() if strict else ds
