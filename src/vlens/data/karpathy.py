"""Karpathy split JSON: ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``.

``restval`` (COCO's extra training images) joins ``train``; every entry names its split (an entry without one is
malformed: counting it as train could train on a test image). Image paths are ``root/filepath/filename`` where
root defaults to the JSON file's folder (for ``dataset_coco.json`` pass the folder holding ``train2014/``).
"""

from __future__ import annotations

from pathlib import Path

from vlens.data.dataset import CaptionDataset, Sample, _read_json, duplicate_ids, id_problem
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
            problems.append(f"images[{i}] is {'null' if im is None else 'a ' + type(im).__name__}, not an object")
            continue
        filename = im.get("filename")
        if not isinstance(filename, str) or not filename.strip() or "\x00" in filename:
            problems.append(f"images[{i}]: no 'filename'" if filename is None else
                            f"images[{i}]: 'filename' {filename!r} is not a file name")
            continue
        if "split" not in im:  # counting it as train would put a test image into training
            problems.append(f"images[{i}] ({filename}): no 'split' (train, restval, val or test)")
            continue
        split = im["split"]
        if not isinstance(split, str) or not split.strip():
            problems.append(f"images[{i}] ({filename}): 'split' {split!r} is not a split name")
            continue
        split = "train" if split == "restval" else split
        filepath = im.get("filepath", "")
        if filepath is None:
            filepath = ""
        if not isinstance(filepath, str) or "\x00" in filepath:
            problems.append(f"images[{i}] ({filename}): 'filepath' {filepath!r} is not a folder name")
            continue
        mask = im.get("mask")
        if mask is not None and (not isinstance(mask, str) or "\x00" in mask):
            problems.append(f"images[{i}] ({filename}): 'mask' {mask!r} is not a file name")
            continue
        key = next((k for k in ("cocoid", "imgid", "id") if k in im), None)
        if key is not None and id_problem(im[key]):
            problems.append(f"images[{i}] ({filename}): '{key}' {im[key]!r} is not a number or a non-empty text")
            continue
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
        samples.append(Sample(
            image_path=root / filepath / filename,
            captions=tuple(caps),
            split=split,
            id=str(im[key] if key is not None else i),
            mask_path=(root / mask) if mask else None,
        ))
    problems += [f"images: {p}" for p in duplicate_ids(samples)]
    return CaptionDataset(samples, "karpathy", json_path, problems=problems)
