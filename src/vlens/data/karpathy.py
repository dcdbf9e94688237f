"""Karpathy split JSON: ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``.

``restval`` (COCO's extra training images) joins ``train``. Image paths are ``root/filepath/filename`` where
root defaults to the JSON file's folder (for ``dataset_coco.json`` pass the folder holding ``train2014/``).
"""

from __future__ import annotations

from pathlib import Path

from vlens.data import CaptionDataset, Sample, _read_json
from vlens.errors import DatasetError


def load_karpathy(path, images_root=None) -> CaptionDataset:
    p = Path(path)
    json_path = p / "dataset.json" if p.is_dir() else p
    root = Path(images_root) if images_root else json_path.parent
    data = _read_json(json_path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{json_path}: expected a top-level 'images' list (Karpathy split format)")
    samples, problems = [], []
    for i, im in enumerate(images):
        if not isinstance(im, dict):
            problems.append(f"images[{i}] is a {type(im).__name__}, not an object")
            continue
        filename = im.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            problems.append(f"images[{i}]: no 'filename'")
            continue
        split = im.get("split", "train")
        if not isinstance(split, str):
            problems.append(f"images[{i}] ({filename}): 'split' is not a string")
            continue
        split = "train" if split == "restval" else split
        sentences = im.get("sentences", [])
        if not isinstance(sentences, list):
            problems.append(f"images[{i}] ({filename}): 'sentences' is not a list")
            continue
        caps = []
        for j, sent in enumerate(sentences):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if not isinstance(raw, str):  # an empty caption is data (counted and skipped by the users)
                what = "is not an object" if not isinstance(sent, dict) else \
                    "has no 'raw' text" if "raw" not in sent else f"has a non-text 'raw' ({type(raw).__name__})"
                problems.append(f"images[{i}].sentences[{j}] ({filename}) {what}")
                continue
            caps.append(raw.strip())
        mask = im.get("mask")
        samples.append(Sample(
            image_path=root / str(im.get("filepath", "")) / filename,
            captions=tuple(caps),
            split=split,
            id=str(im.get("cocoid", im.get("imgid", im.get("id", i)))),
            mask_path=(root / mask) if isinstance(mask, str) and mask else None,
        ))
    return CaptionDataset(samples, "karpathy", json_path, problems=problems)
