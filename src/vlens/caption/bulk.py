"""Caption a large collection into a JSONL or CSV file that grows as it goes and resumes after any kill.

>>> caption_to_file(["photos/"], "captions.jsonl", Captioner.from_spec(), DecodeSettings(batch_size=32))

One JSONL line per image: ``{"path": ..., "captions": [{"text", "logprob", "mean_logprob"}, ...]}``, or
``{"path": ..., "error": reason}`` for a file that could not be read (a rerun skips both; delete an error line to
retry that file). CSV: one row per caption with columns ``path, rank, caption, logprob, mean_logprob, error``.
Lines are in the order of the file list (folders sorted recursively), whatever the number of processes.
Under ``torchrun`` / ``accelerate launch`` each process captions its shard (:mod:`vlens.bulk`) and process 0
writes everything.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlens.bulk import BulkReport, Processes, RecordFile, run_steps
from vlens.errors import DatasetError

CSV_COLUMNS = ("path", "rank", "caption", "logprob", "mean_logprob", "error")


def _csv_rows(record: dict) -> list[dict]:
    if "error" in record:
        return [{"path": record["path"], "error": record["error"]}]
    return [{"path": record["path"], "rank": k, "caption": c["text"], "logprob": c["logprob"],
             "mean_logprob": c["mean_logprob"]} for k, c in enumerate(record["captions"], 1)]


def record_file(out) -> RecordFile:
    return RecordFile(out, CSV_COLUMNS, _csv_rows)


class PixelLoader:
    """path -> (3, S, S) float tensor, as the captioner's image processor makes it (runs in decode workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, path):
        from vlens.images import load_image

        img = load_image(path)
        return self.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]


def expand_paths(paths, log=None) -> list[Path]:
    """Files as given and images under folders (sorted, recursive); the same list in every process."""
    from vlens.images import list_images

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found and log:
                log(f"note: no image files in {p}")
            files += found
        else:
            files.append(p)  # missing or unreadable: reported by the loader
    if not files:
        raise DatasetError("no images to caption; give image files or folders that contain images")
    return files


def caption_to_file(paths, out, captioner, settings, *, workers: int = 2, progress: bool = True,
                    procs: Processes | None = None) -> BulkReport:
    """Caption ``paths`` (files and folders) into ``out`` (.jsonl or .csv), skipping paths already there."""
    import torch

    procs = procs or Processes()
    settings, _ = captioner.prepare(settings)
    files = [str(p) for p in expand_paths(paths)]
    rf = record_file(out)
    todo = None
    if procs.is_main:
        done = rf.open_for_append()
        todo = [p for p in files if p not in done]
    todo = procs.broadcast(todo)
    rep = BulkReport(total=len(files), already=len(files) - len(todo), skipped=[], processes=procs.world)

    def infer(batch):
        good = [d for d in batch if d.error is None]
        caps = iter(captioner.caption_pixels(torch.stack([d.value for d in good]), settings) if good else [])
        return [{"error": d.error} if d.error is not None else
                {"captions": [{"text": c.text, "logprob": round(c.logprob, 4),
                               "mean_logprob": round(c.mean_logprob, 4)} for c in next(caps)]}
                for d in batch]

    def commit(pairs):
        records = [{"path": todo[i], **r} for i, r in pairs]
        rf.append(records)
        rep.done += sum("error" not in r for r in records)
        rep.skipped += [(r["path"], r["error"]) for r in records if "error" in r]

    t0 = time.perf_counter()
    run_steps(procs, todo, settings.batch_size, PixelLoader(captioner.image_processor), infer, commit,
              workers=workers, progress=progress, desc="captioning")
    rep.seconds = time.perf_counter() - t0
    procs.barrier()
    return rep
