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
    samples = []
    for i, im in enumerate(images):
        try:
            filename = im["filename"]
        except (KeyError, TypeError):
            raise DatasetError(f"{json_path}: images[{i}] has no 'filename'") from None
        split = im.get("split", "train")
        split = "train" if split == "restval" else split
        caps = tuple(str(s.get("raw", "")).strip() for s in im.get("sentences", []) if isinstance(s, dict))
        mask = im.get("mask")
        samples.append(Sample(
            image_path=root / im.get("filepath", "") / filename,
            captions=caps,
            split=split,
            id=str(im.get("cocoid", im.get("imgid", im.get("id", i)))),
            mask_path=(root / mask) if mask else None,
        ))
    return CaptionDataset(samples, "karpathy", json_path)
