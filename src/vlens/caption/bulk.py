"""Caption a large collection into a JSONL or CSV file that grows as it goes and resumes after any kill.

>>> caption_to_file(["photos/"], "captions.jsonl", Captioner.from_spec(), DecodeSettings(batch_size=32))

One JSONL line per image: ``{"path": ..., "captions": [{"text", "logprob", "mean_logprob", "ended"}, ...]}``,
or ``{"path": ..., "error": reason}`` for a file that could not be read (a rerun skips both; delete an error line
to retry that file); ``ended`` is false for a caption cut at ``max_new_tokens``. CSV: one row per caption with
columns ``path, rank, caption, logprob, mean_logprob, ended, error``.
Lines are in the order of the file list (folders sorted recursively), whatever the number of processes.
Under ``torchrun`` / ``accelerate launch`` each process captions its shard (:mod:`vlens.bulk`) and process 0
writes everything.

``path`` is the file's absolute path, and a rerun recognises a file by its resolved path: the same folder given
as ``photos/``, ``./photos`` or ``/home/me/photos`` (or from another working directory) resumes instead of
captioning everything again. What made the lines (the model and every decoding setting that changes a caption)
is kept beside the file in ``OUT.settings.json``; a rerun with other settings is refused (choose another --out),
and so is a rerun onto captions whose record is missing or damaged (their settings are unknown).
A file whose name cannot be written as text (not valid UTF-8, a newline or tab in it) is skipped and listed on
every run, never written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vlens.bulk import BulkReport, Processes, RecordFile, run_steps
from vlens.errors import ConfigError, DatasetError

CSV_COLUMNS = ("path", "rank", "caption", "logprob", "mean_logprob", "ended", "error")


def _csv_rows(record: dict) -> list[dict]:
    if "error" in record:
        return [{"path": record["path"], "error": record["error"]}]
    return [{"path": record["path"], "rank": k, "caption": c["text"], "logprob": c["logprob"],
             "mean_logprob": c["mean_logprob"], "ended": c.get("ended", True)}
            for k, c in enumerate(record["captions"], 1)]


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


def collect(paths, log=None) -> tuple[list[str], list[tuple[str, str]]]:
    """(absolute paths to caption, each file once; (shown name, reason) of files whose name cannot be written)."""
    from vlens.images import name_problem, shown_name

    files, refused, seen = [], [], set()
    for p in expand_paths(paths, log):
        problem = name_problem(p)
        if problem:
            refused.append((shown_name(p), problem))
            continue
        key = os.path.realpath(p)
        if key not in seen:  # a file named twice (a folder and a file in it, two spellings): captioned once
            seen.add(key)
            files.append(os.path.abspath(p))
    return files, refused


SETTINGS_SUFFIX = ".settings.json"
_ONLY_FOR = {"num_beams": "beam", "length_penalty": "beam", "top_k": "sample", "top_p": "sample",
             "temperature": "sample", "seed": "sample"}


def made_with(captioner, settings) -> dict:
    """What decides the captions in a record file: the model and the decoding settings that apply to its
    strategy (the batch size does not count; neither does --top-k under greedy)."""
    import dataclasses

    spec = captioner.spec
    if Path(spec).exists():
        spec = str(Path(spec).resolve())
    kept = {k: v for k, v in dataclasses.asdict(settings).items()
            if k != "batch_size" and _ONLY_FOR.get(k, settings.strategy) == settings.strategy}
    dtype = str(getattr(captioner, "dtype", "") or "").removeprefix("torch.") or None  # bf16 changes captions too
    return {"model": spec, "dtype": dtype, **kept}


def check_settings(out, made: dict, has_records: bool) -> None:
    """Refuse to append captions made differently from those already in ``out``, or to append to captions whose
    settings are not known (the record is missing or damaged: they may have been sampled, this run greedy);
    record ``made`` when ``out`` is new."""
    from vlens.runs import read_json, write_json

    side = Path(str(out) + SETTINGS_SUFFIX)
    start_over = (f"choose another --out, or delete {out} and {side.name} to caption everything again with this "
                  "run's settings")
    if side.exists():
        try:
            before = read_json(side)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{side} is damaged ({exc}), so the settings of the captions in {out} are unknown; "
                               f"{start_over}") from None
        if not isinstance(before, dict):
            raise DatasetError(f"{side} is not a settings record written by vlens; {start_over}")
        diff = [k for k in sorted(set(before) | set(made)) if before.get(k) != made.get(k)]
        if diff:
            was = ", ".join(f"{k}={before[k]!r}" if k in before else f"{k} unrecorded" for k in diff)
            now = ", ".join(f"{k}={made.get(k)!r}" for k in diff)
            raise ConfigError(f"{out} holds captions made with {was}; this run asks for {now}. Rerun with the "
                              "same settings to continue it, or choose another --out")
        return
    if has_records:  # appending would mix captions made one way with captions made another, unnoticed
        raise DatasetError(f"{out} holds captions but no record of the settings they were made with ({side.name} "
                           f"is missing), so this run cannot tell whether its captions would match; {start_over}")
    write_json(side, made)


def caption_to_file(paths, out, captioner, settings, *, workers: int = 2, progress: bool = True,
                    procs: Processes | None = None) -> BulkReport:
    """Caption ``paths`` (files and folders) into ``out`` (.jsonl or .csv), skipping paths already there."""
    import torch

    procs = procs or Processes()
    settings, _ = captioner.prepare(settings)
    files, refused = collect(paths)
    rf = record_file(out)
    todo, problem = None, None
    if procs.is_main:
        try:
            had = rf.path.exists() and rf.path.stat().st_size > 0
            check_settings(out, made_with(captioner, settings), had)
            done = {os.path.realpath(p) for p in rf.open_for_append()}  # older files hold relative paths too
            todo = [p for p in files if os.path.realpath(p) not in done]
        except (ConfigError, DatasetError) as exc:
            problem = exc  # every process stops with the same message, none waits for the others
    todo, problem = procs.broadcast((todo, problem))
    if problem is not None:
        raise problem
    rep = BulkReport(total=len(files) + len(refused), already=len(files) - len(todo), skipped=list(refused),
                     processes=procs.world, notes=[])

    def infer(batch):
        good = [d for d in batch if d.error is None]
        caps = iter(captioner.caption_pixels(torch.stack([d.value for d in good]), settings) if good else [])
        return [{"error": d.error} if d.error is not None else
                {"captions": [{"text": c.text, "logprob": round(c.logprob, 4),
                               "mean_logprob": round(c.mean_logprob, 4), "ended": c.ended} for c in next(caps)]}
                for d in batch]

    cut = 0

    def commit(pairs):
        nonlocal cut
        records = [{"path": todo[i], **r} for i, r in pairs]
        rf.append(records)
        rep.done += sum("error" not in r for r in records)
        rep.skipped += [(r["path"], r["error"]) for r in records if "error" in r]
        cut += sum(not c["ended"] for r in records for c in r.get("captions", []))

    t0 = time.perf_counter()
    run_steps(procs, todo, settings.batch_size, PixelLoader(captioner.image_processor), infer, commit,
              workers=workers, progress=progress, desc="captioning")
    rep.seconds = time.perf_counter() - t0
    if cut:
        from vlens.caption.captioner import cut_note

        rep.notes.append(cut_note(cut, settings.max_new_tokens))
    procs.barrier()
    return rep
