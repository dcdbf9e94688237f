"""vlens's CPU policy (src/vlens/cpu.py) against torch's defaults and against one thread, idle and beside a busy
process: the wall time of one small fine-tuning run, the same command each time.

    .venv/bin/python benchmarks/bench_cpu_policy.py                 # 3 alternating repeats
    .venv/bin/python benchmarks/bench_cpu_policy.py --repeats 1 --limit 96

The run is `vlens retrieval train --finetune builtin:clip-tiny` on a shapes set for two epochs. Variants:
- torch:   VLENS_CPU_POLICY=off (torch's defaults: all cores, libgomp's spinning barriers), what vlens did before;
- 1thread: OMP_NUM_THREADS=1 (always safe beside other work, gives up the second core when idle);
- vlens:   the policy (OMP_WAIT_POLICY=PASSIVE, threads = usable cores).
"Busy" is one other process spinning on a core (a pure-Python loop), started before and stopped after each run.
Each repeat runs every variant once, in turn, so drifts in machine load hit all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "torch": {"VLENS_CPU_POLICY": "off"},
    "1thread": {"OMP_NUM_THREADS": "1"},
    "vlens": {},
    # candidates weighed against PASSIVE when the policy was chosen (--variants): a bounded spin before sleeping
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
}
DEFAULT_VARIANTS = "torch,1thread,vlens"
CLEAR = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "VLENS_THREADS",
         "VLENS_CPU_POLICY", "VLENS_AUTO_OMP_NUM_THREADS")


def run_once(data: Path, out: Path, variant: str, limit: int, busy: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CLEAR}
    env.update(VARIANTS[variant], HF_HUB_OFFLINE="1", VLENS_PROGRESS="0")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.3 if busy else 0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vlens", "retrieval", "train", "--data", str(data), "--out", str(out),
                        "--finetune", "builtin:clip-tiny", "--epochs", "2", "--limit", str(limit),
                        "--batch-size", "32", "--lr", "1e-4", "--warmup", "2", "--json"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=512, help="training images (two epochs)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    from vlens import cpu
    from vlens.data.shapes import make_shapes

    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    data = make_shapes(tmp / "shapes", train=a.limit, val=16, test=0, seed=3, size=64, progress=False)
    times: dict[tuple[str, bool], list[float]] = {}
    for r in range(a.repeats):
        for busy in (False, True):
            for v in variants:
                t = run_once(data, tmp / f"run-{v}-{busy}-{r}", v, a.limit, busy)
                times.setdefault((v, busy), []).append(t)
                print(f"  repeat {r + 1}: {v:8s} {'busy' if busy else 'idle'} {t:6.1f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()
    rows = []
    for busy in (False, True):
        for v in variants:
            rows.append({"variant": v, "busy": busy, "median_s": round(med[(v, busy)], 2),
                         "runs_s": [round(t, 2) for t in times[(v, busy)]]})
    for v in variants:
        if v not in ("torch", "1thread", "vlens"):
            print(f"{v}: idle x{med[(v, False)] / med[('torch', False)]:.2f} of torch defaults, busy "
                  f"x{med[(v, True)] / med[('1thread', True)]:.2f} of 1 thread", file=sys.stderr)
    ratios = {
        "idle vlens / idle torch defaults (goal <= 1.05)": med[("vlens", False)] / med[("torch", False)],
        "idle vlens / idle 1 thread (goal <= 0.95)": med[("vlens", False)] / med[("1thread", False)],
        "busy vlens / busy 1 thread (goal <= 1.15)": med[("vlens", True)] / med[("1thread", True)],
        "busy torch defaults / busy vlens": med[("torch", True)] / med[("vlens", True)],
    }
    result = {"cores": cpu.usable_cores(), "limit": a.limit, "repeats": a.repeats,
              "loadavg_at_end": [round(x, 2) for x in load], "rows": rows,
              "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(f"two epochs of `retrieval train --finetune builtin:clip-tiny` on {a.limit} images, {cpu.usable_cores()} "
          f"usable cores, median of {a.repeats} (load average at end {load[0]:.2f})")
    print("| variant | idle (s) | beside one busy process (s) |")
    print("|---|---:|---:|")
    for v in variants:
        print(f"| {v} | {med[(v, False)]:.1f} | {med[(v, True)]:.1f} |")
    for k, v in ratios.items():
        print(f"{k}: x{v:.2f}")


if __name__ == "__main__":
    main()
