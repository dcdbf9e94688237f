"""COCO captions JSON (``captions_train2017.json``): ``images[{id, file_name}]`` + ``annotations[{image_id, caption}]``.

COCO files carry no split; it is taken from the file name (``captions_val2017.json`` -> ``val``). Images are
looked for in ``images_root``, else a sibling folder named like the file (``val2017/``), else the JSON's folder.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from vlens.data.dataset import CaptionDataset, Sample, _read_json, duplicate_ids, id_problem
from vlens.errors import DatasetError


def _guess_split(name: str) -> str:
    for split in ("train", "val", "test"):
        if split in name.lower():
            return split
    return "train"


def load_coco(path, images_root=None) -> CaptionDataset:
    p = Path(path)
    data = _read_json(p)
    try:
        images, anns = data["images"], data["annotations"]
    except (KeyError, TypeError):
        raise DatasetError(f"{p}: COCO captions need 'images' and 'annotations'") from None
    if images_root:
        root = Path(images_root)
    else:
        m = re.search(r"(train|val|test)\d{4}", p.stem)
        candidates = [p.parent / m.group(0), p.parent.parent / m.group(0)] if m else []
        root = next((c for c in candidates if c.is_dir()), p.parent)
    if not isinstance(images, list) or not isinstance(anns, list):
        raise DatasetError(f"{p}: COCO 'images' and 'annotations' must be lists")
    problems, ids = [], {}
    for i, im in enumerate(images):
        name = im.get("file_name") if isinstance(im, dict) else None
        if not isinstance(im, dict) or "id" not in im or not isinstance(name, str) or not name.strip() \
                or "\x00" in name:
            problems.append(f"images[{i}]: needs 'id' and 'file_name'")
        elif id_problem(im["id"]):
            problems.append(f"images[{i}] ({name}): 'id' {im['id']!r} is not a number or a non-empty text")
        elif im["id"] in ids:
            problems.append(f"images[{i}] ({name}): 'id' {im['id']!r} is also images[{ids[im['id']][0]}]'s")
        else:
            ids[im["id"]] = (i, name)
    caps = defaultdict(list)
    for j, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a:
            problems.append(f"annotations[{j}]: no 'image_id'")
        elif id_problem(a["image_id"]) or a["image_id"] not in ids:
            problems.append(f"annotations[{j}]: 'image_id' {a['image_id']!r} is not the id of an image")
        elif not isinstance(a.get("caption"), str):
            problems.append(f"annotations[{j}] (image_id {a['image_id']}): no 'caption' text")
        else:
            caps[a["image_id"]].append(a["caption"].strip())
    split = _guess_split(p.stem)
    samples = []
    for key, (_i, name) in ids.items():
        samples.append(Sample(image_path=root / name, captions=tuple(caps.get(key, ())), split=split, id=str(key)))
    problems += [f"images: {p}" for p in duplicate_ids(samples)]
    return CaptionDataset(samples, "coco", p, problems=problems)
