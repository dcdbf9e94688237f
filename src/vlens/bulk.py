"""Bulk inference over many image files: the one streaming pipeline behind ``vlens caption DIR --out`` and
``vlens index build``.

Three pieces, each small:

- **Decoding in workers.** A torch ``DataLoader`` over file paths: ``workers`` processes read, decode and
  preprocess images while the model runs on the previous batch. An unreadable file becomes a ``(position, None,
  reason)`` entry in its batch, never an exception.
- **Sharding.** Under ``torchrun`` / ``accelerate launch`` every process runs the same command. The work list is
  cut into *steps* of ``batch_size * world`` consecutive items; in each step process ``r`` takes every
  ``world``-th item from position ``r``. Shards are disjoint and depend only on the list, the batch size and the
  number of processes (never on timing). After each step the results are gathered on process 0 and written there
  in list order, so the output of N processes is the output of one, and a kill loses at most the step in flight.
- **An append-only record file** (JSONL or CSV) that resumes: reopened, it reports which paths it already holds,
  cuts off a torn last line (a kill in the middle of a write), and appends each batch with one ``write`` + fsync.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlens.errors import ConfigError, DatasetError, ImageLoadError
from vlens.faults import fault_point

# ----------------------------------------------------------------------------------------------- processes


class Processes:
    """This run's place among the processes of ``torchrun`` / ``accelerate launch`` (one process: rank 0 of 1).

    With more than one process the process group comes from accelerate (gloo on CPUs, NCCL on GPUs);
    ``gather`` and ``broadcast`` move small Python objects (paths, captions, vectors of a batch) to and from rank 0.
    """

    def __init__(self):
        self.state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            import torch
            from accelerate import PartialState

            from vlens.devices import release_process_group_at_exit

            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes
            release_process_group_at_exit()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list | None:
        """Every process's ``obj`` in rank order on rank 0; None on the others."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def schedule(n: int, batch_size: int, world: int = 1, rank: int = 0) -> list[list[int]]:
    """Positions ``0..n-1`` this process handles, one list per step (a list may be empty on the last step).

    Every process gets the same number of steps, so they meet at each step's gather.
    """
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    chunk = batch_size * world
    return [list(range(start + rank, min(start + chunk, n), world)) for start in range(0, n, chunk)]


# ----------------------------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """One item of a decoded batch: its position in the work list and the loader's output or why it failed."""

    position: int
    value: object | None
    error: str | None


class _Decode:
    """Map-style dataset: position -> ``Decoded`` (runs in the DataLoader's worker processes)."""

    def __init__(self, items: Sequence, load: Callable):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Decoded:
        try:
            return Decoded(i, self.load(self.items[i]), None)
        except ImageLoadError as exc:
            return Decoded(i, None, exc.reason)


def _as_list(batch):
    return list(batch)


_CLOSE_IN_WORKERS: set[int] = set()


def close_in_workers(fd: int, register: bool = True) -> None:
    """Have decode workers close ``fd`` as they start (or stop doing so).

    Forked workers share the parent's open files. For a ``flock`` (the index's write lock) that means a worker
    would keep the lock held for the seconds it takes to notice its parent was killed, and a rerun would be told
    the index is busy.
    """
    (_CLOSE_IN_WORKERS.add if register else _CLOSE_IN_WORKERS.discard)(fd)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the process that started it dies.

    A DataLoader worker only notices a dead parent between items, and one blocked writing a finished batch into
    the result pipe (whose read end it inherited itself) never does: after a ``kill -9`` of ``vlens index build``
    such workers lived on for good, holding hundreds of MB each. Elsewhere this is a no-op.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(_worker_id: int, parent: int) -> None:
    _die_with_parent(parent)
    for fd in list(_CLOSE_IN_WORKERS):
        try:
            os.close(fd)
        except OSError:
            pass


def decoded_batches(items: Sequence, steps: list[list[int]], load: Callable, workers: int = 2
                    ) -> Iterator[list[Decoded]]:
    """For each step, its items passed through ``load`` (e.g. path -> preprocessed tensor), decoded by
    ``workers`` processes ahead of the caller (0 = in this process). ``load`` must be picklable when the
    platform starts workers by spawning (macOS, Windows): a top-level function or a small object."""
    if workers < 0:
        raise ConfigError("--workers must be 0 or more")
    ds = _Decode(items, load)
    if workers == 0 or not any(steps):
        for step in steps:
            yield [ds[i] for i in step]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_sampler=steps, num_workers=workers, collate_fn=_as_list, prefetch_factor=2,
                        worker_init_fn=functools.partial(_worker_init, parent=os.getpid()))
    yield from loader


# ----------------------------------------------------------------------------------------------- output file

FORMATS = (".jsonl", ".csv")


class RecordFile:
    """Records keyed by ``"path"``, appended to a JSONL file (one JSON object a line) or a CSV file.

    ``csv_rows(record) -> list[dict]`` flattens a record into CSV rows with ``columns`` (the first column must be
    ``path``). JSONL keeps records whole. A CSV started by an earlier vlens with fewer of the columns (e.g. before
    captions had ``ended``) resumes in its own layout, so an upgrade never costs a half-done run; a CSV with any
    other header is refused.
    """

    def __init__(self, path, columns: Sequence[str] = (), csv_rows: Callable | None = None):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise ConfigError(f"--out {self.path}: write .jsonl (one JSON object per image) or .csv")
        if self.format == ".csv" and (not columns or columns[0] != "path" or csv_rows is None):
            raise ValueError("a CSV record file needs columns starting with 'path' and a csv_rows function")
        from vlens.runs import is_special

        if is_special(self.path):
            raise ConfigError(f"--out {self.path} is a device or a pipe, but a {self.format} record file is read "
                              "back to resume a killed run; give a regular file")
        self.columns, self.csv_rows = list(columns), csv_rows

    def _complete_text(self) -> tuple[str, int, int]:
        """(text up to the last newline, its byte length, the file's byte length)."""
        data = self.path.read_bytes() if self.path.exists() else b""
        end = data.rfind(b"\n") + 1
        return data[:end].decode("utf-8"), end, len(data)

    def done(self) -> set[str]:
        """Paths already in the file (a torn last line does not count)."""
        text, _, _ = self._complete_text()
        if not text:
            return set()
        if self.format == ".jsonl":
            paths = set()
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    paths.add(json.loads(line)["path"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DatasetError(f"{self.path} line {n} is not a record written by vlens; choose another "
                                       "--out or remove that line") from None
            return paths
        rows = list(csv.reader(io.StringIO(text)))
        if rows and rows[0] != self.columns:
            header = rows[0]
            if not (header[:1] == ["path"] and header == [c for c in self.columns if c in header]):
                raise DatasetError(f"{self.path} has columns {header}, not {self.columns}; choose another --out")
            self.columns = header  # an earlier vlens's layout: keep writing it
        return {r[0] for r in rows[1:] if r}

    def open_for_append(self) -> set[str]:
        """Cut a torn last line, write the CSV header if new; return the paths already there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _, end, size = self._complete_text()
        done = self.done()
        if end < size:  # killed in the middle of a write: the partial line goes, its batch is redone
            with open(self.path, "rb+") as fh:
                fh.truncate(end)
        if self.format == ".csv" and end == 0:
            self._write(self._csv_text([dict(zip(self.columns, self.columns))]))
        elif not self.path.exists():
            self.path.touch()
        return done

    def _csv_text(self, rows: list[dict]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, lineterminator="\n", extrasaction="ignore")
        for r in rows:
            w.writerow({k: (v.replace("\n", " ") if isinstance(v, str) else v) for k, v in r.items()})
        return buf.getvalue()

    def append(self, records: list[dict]) -> None:
        """Append ``records`` with one write and an fsync: after a kill, each is either there or cut off."""
        if not records:
            return
        if self.format == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            text = self._csv_text([row for r in records for row in self.csv_rows(r)])
        self._write(text)

    def _write(self, text: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        """JSONL: every complete record, in file order."""
        text, _, _ = self._complete_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- driver


@dataclass
class BulkReport:
    """What a bulk run did (counted on rank 0 over all processes)."""

    total: int = 0
    already: int = 0
    done: int = 0
    skipped: list[tuple[str, str]] | None = None
    seconds: float = 0.0
    processes: int = 1
    notes: list[str] | None = None

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def run_steps(procs: Processes, items: Sequence, batch_size: int, load: Callable, infer: Callable,
              commit: Callable, *, workers: int = 2, progress: bool = True, desc: str = "images") -> None:
    """The driver loop shared by captioning and embedding.

    Each process decodes its share of every step (:func:`schedule`), calls ``infer(batch of Decoded)`` -> a list
    of picklable results (one per item), and the results of all processes are gathered on rank 0, which calls
    ``commit(pairs)`` with ``(position, result)`` pairs sorted by position: the same calls, in the same order, as a
    single process would make. A progress bar on rank 0 counts images and shows images/s.
    """
    from vlens import cpu
    from vlens.runs import progress as bar

    steps = schedule(len(items), batch_size, procs.world, procs.rank)
    if len(steps) <= 1:
        workers = 0  # nothing to overlap with: starting worker processes would only cost time
    import torch

    before = torch.get_num_threads()  # restored after: the plan is for this run, not for the caller's process
    workers = cpu.apply(workers=workers).workers  # workers + model threads within the usable cores
    pbar = bar(total=len(items), desc=desc, unit="img", disable=None if progress and procs.is_main else True)
    try:
        for batch in decoded_batches(items, steps, load, workers):
            results = infer(batch) if batch else []
            if len(results) != len(batch):
                raise RuntimeError("infer must return one result per item")
            gathered = procs.gather([(d.position, r) for d, r in zip(batch, results)])
            if procs.is_main:
                pairs = sorted((p for part in gathered for p in part), key=lambda p: p[0])
                commit(pairs)
                fault_point("bulk-batch-written")
                pbar.update(len(pairs))
    finally:
        pbar.close()
        if torch.get_num_threads() != before:  # only when the plan changed it (never a needless pool rebuild)
            torch.set_num_threads(before)
