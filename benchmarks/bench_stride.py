"""Stride x binning x refinement: the table that chose the match defaults, and their cost against today's default.

    # 1. the accuracy table, from `vlens bench pairs` run folders (each run: one descriptor, its --stride and
    #    --refine rows, with or without --bin; graffiti, aloe and opencv:heldout)
    .venv/bin/python benchmarks/bench_stride.py table RUN_DIR [RUN_DIR ...] [--markdown out.md]
    # 2. the time of candidate configurations against the baseline, measured in the same run (both CPU slots:
    #    /work/bin/cpu -2 on the shared machine)
    .venv/bin/python benchmarks/bench_stride.py time --config "builtin:dino-tiny*0.2+sift:8*0.8" \\
        --config "builtin:dino-tiny*0.2+sift:4*0.8" --config "builtin:dino-tiny*0.2+sift:8*0.8@4"

``table`` prints one row per configuration (descriptor, stride, binning, refinement): PCK@5 on graffiti, aloe and
the 12 opencv:heldout warps, their mean (the sets weigh the same: a default is never chosen on one set), PCK@1 /
PCK@10 on the warps, seconds per pair and peak memory (means over the warps), best mean first, and how far each row
is from the best. ``time`` runs each ``--config`` (``SPEC``, ``SPEC@STRIDE``, ``SPEC@STRIDE+bin``) on the
opencv:heldout pairs at 448 px with quadratic refinement, models loaded and warmed up first, and prints the wall
and CPU seconds per pair and the ratio to the first config (the baseline), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SETS = ("graffiti", "aloe", "opencv:heldout")


def load_rows(run_dirs: list[str]) -> list[dict]:
    """One dict per (descriptor, stride, binning, refinement) with its per-set means from ``results.json``."""
    rows: dict[tuple, dict] = {}
    for d in run_dirs:
        res = json.loads((Path(d) / "results.json").read_text())
        bins = res["config"].get("bin_levels", 0)
        for sm in res["summary"]:
            for r in sm["descriptors"]:
                key = (r["descriptor"], r.get("stride"), bins, r["refine"])
                row = rows.setdefault(key, {"descriptor": r["descriptor"], "stride": r.get("stride"), "bin": bins,
                                            "refine": r["refine"], "sets": {}})
                row["sets"][sm["set"]] = r
    return list(rows.values())


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    from vlens.match.draw import short_model

    full = [r for r in rows if all(s in r["sets"] for s in SETS)]
    for r in full:
        r["mean5"] = sum(100 * r["sets"][s]["pck@5"] for s in SETS) / len(SETS)
    full.sort(key=lambda r: -r["mean5"])
    best = full[0]["mean5"] if full else 0.0
    headers = ["descriptor", "stride", "bin", "refine", "graffiti PCK@5", "aloe PCK@5", "heldout PCK@5",
               "mean PCK@5", "vs best", "heldout PCK@1", "heldout PCK@10", "s / pair (heldout)",
               "peak MB (heldout)"]
    body = []
    for r in full:
        h = r["sets"]["opencv:heldout"]
        body.append([short_model(r["descriptor"]), r["stride"] or "patch", r["bin"] or "off", r["refine"],
                     *[round(100 * r["sets"][s]["pck@5"], 1) for s in SETS], round(r["mean5"], 1),
                     round(r["mean5"] - best, 1), round(100 * h["pck@1"], 1), round(100 * h["pck@10"], 1),
                     round(h.get("seconds", float("nan")), 2), round(h.get("peak_mb", float("nan")))])
    partial = [r for r in rows if r not in full]
    for r in partial:  # rows measured on some sets only (e.g. stride 2 on graffiti): listed, not ranked
        cells = [round(100 * r["sets"][s]["pck@5"], 1) if s in r["sets"] else "-" for s in SETS]
        any_set = next(iter(r["sets"].values()))
        body.append([short_model(r["descriptor"]), r["stride"] or "patch", r["bin"] or "off", r["refine"], *cells,
                     "-", "-", "-", "-", round(any_set.get("seconds", float("nan")), 2),
                     round(any_set.get("peak_mb", float("nan")))])
    return headers, body


def parse_config(text: str) -> tuple[str, int | None, int]:
    spec, stride, bins = text, None, 0
    if text.endswith("+bin"):
        spec, bins = text[:-4], 2
    if "@" in spec:
        spec, s = spec.rsplit("@", 1)
        stride = int(s)
    return spec, stride, bins


def time_configs(configs: list[str], repeat: int) -> list[dict]:
    from vlens.match.features import extract_features
    from vlens.match.matching import match_features
    from vlens.match.pairs import load_pairs, working_pair

    pairs = [working_pair(p, 448)[:2] for p in load_pairs("opencv:heldout")]
    out = []
    for text in configs:
        spec, stride, bins = parse_config(text)

        def run(spec=spec, stride=stride, bins=bins):
            for a, b in pairs:
                fa, fb = extract_features([a, b], spec, size=448, stride=stride, bin_levels=bins)
                match_features(fa, fb, pca=None, refine="quadratic")

        run_one = pairs[:1]
        fa, fb = extract_features(list(run_one[0]), spec, size=448, stride=stride, bin_levels=bins)  # warm-up
        walls, cpus = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            walls.append((time.perf_counter() - t0) / len(pairs))
            cpus.append((time.process_time() - c0) / len(pairs))
        out.append({"config": text, "wall_s_per_pair": min(walls), "cpu_s_per_pair": min(cpus)})
    base = out[0]
    for r in out:
        r["wall_ratio"] = r["wall_s_per_pair"] / base["wall_s_per_pair"]
        r["cpu_ratio"] = r["cpu_s_per_pair"] / base["cpu_s_per_pair"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("runs", nargs="+")
    t.add_argument("--markdown", default=None)
    s = sub.add_parser("time")
    s.add_argument("--config", action="append", required=True)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--json", default=None)
    args = ap.parse_args()
    from vlens.tables import markdown_table

    if args.cmd == "table":
        headers, body = table(load_rows(args.runs))
        text = markdown_table(headers, body)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        return
    load = os.getloadavg()
    res = time_configs(args.config, args.repeat)
    for r in res:
        print(f"{r['config']}: {r['wall_s_per_pair']:.2f} s wall / {r['cpu_s_per_pair']:.2f} s CPU per pair "
              f"(x{r['wall_ratio']:.2f} wall, x{r['cpu_ratio']:.2f} CPU vs {res[0]['config']})")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "results": res}, indent=1))


if __name__ == "__main__":
    main()
