"""Hyperparameter sweeps: declare a grid, run one point per call, one CSV row each, tables from the CSV.

>>> points = expand_grid({"top_k": [10, 50], "temperature": [0.3, 1.0]})
>>> rows = run_sweep(points, run_fn, "runs/sweep", seeds=[0, 1, 2])     # run_fn(point, seed) -> metrics
>>> print(summary_table(summarize(rows, by=["top_k", "temperature"], metrics=["BLEU-4"]), ...))

``results.csv`` is rewritten atomically after every run, so an interrupted sweep resumes where it stopped:
points whose (settings, seed) already have a row are skipped.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from vlens.runs import atomic_write_text


def expand_grid(grid: dict[str, Sequence]) -> list[dict]:
    """Cartesian product of the value lists, in the order given (last key varies fastest)."""
    keys = list(grid)
    values = [list(v) if isinstance(v, list | tuple) else [v] for v in grid.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _key(point: dict, seed) -> str:
    return json.dumps({**{k: _parse(str(v)) for k, v in point.items()}, "seed": int(seed)}, sort_keys=True)


def _parse(value: str):
    """CSV cell -> int, float, bool, None or str."""
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_rows(path) -> list[dict]:
    """Rows of a sweep CSV with numbers parsed back."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_rows(path, rows: list[dict]) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def run_sweep(points: list[dict], run_fn: Callable[[dict, int], dict], out_dir, seeds: Sequence[int] = (0,),
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``run_fn(point, seed)`` for every point and seed not yet in ``out_dir/results.csv``; return all rows."""
    from vlens.runs import progress

    out = Path(out_dir)
    csv_path = out / "results.csv"
    rows = read_rows(csv_path)
    point_keys = set(points[0]) if points else set()
    done = {_key({k: r[k] for k in point_keys if k in r}, r["seed"]) for r in rows if "seed" in r}
    todo = [(p, s) for p in points for s in seeds if _key(p, s) not in done]
    if log and len(todo) < len(points) * len(seeds):
        log(f"resuming sweep: {len(points) * len(seeds) - len(todo)} run(s) already in {csv_path}")
    for point, seed in progress(todo, desc="sweep"):
        metrics = run_fn(point, seed)
        rows.append({**point, "seed": seed, **metrics})
        write_rows(csv_path, rows)
        if log:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            log(f"[sweep] {shown} seed={seed}: " + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return rows


def summarize(rows: list[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group rows by the ``by`` settings: mean, sample std (0 for one run) and n of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, grp in groups.items():
        entry = dict(zip(by, key))
        entry["n"] = len(grp)
        for m in metrics:
            vals = [float(r[m]) for r in grp if r.get(m) is not None and not math.isnan(float(r[m]))]
            entry[m] = statistics.fmean(vals) if vals else None
            entry[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def summary_table(summary: list[dict], by: Sequence[str], metrics: Sequence[str], digits: int = 1) -> str:
    """A Markdown table with one row per group and ``mean ± std`` cells (n runs per row)."""
    from vlens.tables import markdown_table

    rows = []
    for e in summary:
        cells = [str(e[k]) for k in by]
        for m in metrics:
            mean, std = e.get(m), e.get(f"{m}_std", 0.0)
            cells.append("-" if mean is None else (f"{mean:.{digits}f} ± {std:.{digits}f}" if e["n"] > 1
                                                   else f"{mean:.{digits}f}"))
        cells.append(str(e["n"]))
        rows.append(cells)
    return markdown_table([*by, *metrics, "n"], rows, align="l" * len(by) + "r" * (len(metrics) + 1))


def pivot(summary: list[dict], rows_key: str, cols_key: str, metric: str, digits: int = 1) -> tuple[list, list]:
    """A 2-D view (e.g. top-k x temperature) of one metric: (headers, rows) with ``mean ± std`` cells."""
    row_vals = list(dict.fromkeys(e[rows_key] for e in summary))
    col_vals = list(dict.fromkeys(e[cols_key] for e in summary))
    cell = {(e[rows_key], e[cols_key]): e for e in summary}
    headers = [f"{rows_key} \\ {cols_key}", *[str(c) for c in col_vals]]
    table = []
    for rv in row_vals:
        line = [str(rv)]
        for cv in col_vals:
            e = cell.get((rv, cv))
            if e is None or e.get(metric) is None:
                line.append("-")
            else:
                std = e.get(f"{metric}_std", 0.0)
                line.append(f"{e[metric]:.{digits}f} ± {std:.{digits}f}" if e["n"] > 1 else f"{e[metric]:.{digits}f}")
        table.append(line)
    return headers, table
