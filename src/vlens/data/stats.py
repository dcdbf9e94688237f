"""Dataset statistics for ``vlens data inspect`` and the lab report."""

from __future__ import annotations

import statistics
from collections import Counter

from vlens.data.dataset import CaptionDataset
from vlens.errors import ImageLoadError
from vlens.images import SkipLog, load_image


def dataset_stats(ds: CaptionDataset, verify_images: bool = True, progress: bool | None = None) -> dict:
    """Counts, splits, caption length statistics (in words) and unreadable / missing image files."""
    from vlens.runs import progress as bar

    lengths = [len(c.split()) for s in ds for c in s.captions]
    vocab = Counter(w.lower().strip(".,") for s in ds for c in s.captions for w in c.split())
    per_image = [len(s.captions) for s in ds]
    skips = SkipLog()
    missing = 0
    for s in bar(ds.samples, desc="checking images", disable=None if progress is None else not progress):
        if not s.image_path.is_file():
            missing += 1
            skips.skipped.append((str(s.image_path), "no such file"))
            continue
        if verify_images:
            try:
                load_image(s.image_path)
            except ImageLoadError as err:
                skips.add(err)
    return {
        "format": ds.format,
        "source": str(ds.source),
        "images": len(ds),
        "captions": len(lengths),
        "splits": dict(sorted(ds.splits.items())),
        "captions_per_image": {"min": min(per_image, default=0), "max": max(per_image, default=0),
                               "mean": round(statistics.fmean(per_image), 2) if per_image else 0},
        "caption_words": {
            "min": min(lengths, default=0), "max": max(lengths, default=0),
            "mean": round(statistics.fmean(lengths), 2) if lengths else 0,
            "median": statistics.median(lengths) if lengths else 0,
        },
        "vocabulary": len(vocab),
        "with_masks": sum(1 for s in ds if s.mask_path is not None),
        "missing": missing,
        "unreadable": [{"path": p, "reason": r} for p, r in skips.skipped],
        "images_verified": verify_images,
        "notes": ds.notes,
        "problems": list(ds.problems),
        "uncaptioned": [{"path": str(s.image_path), "id": s.id, "split": s.split} for s in ds.uncaptioned],
    }
