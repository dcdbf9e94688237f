"""Speed of dense SIFT and of `vlens bench pairs`, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_pairs.py            # needs `vlens data fetch opencv-samples`
    .venv/bin/python benchmarks/bench_pairs.py --json out.json

1. sift: dense SIFT for a real 640 x 480 pair (opencv-doc's aero1 / aero3) at its own size (longer side 640) plus
   nearest-neighbour matching with cycle distances (no PCA), for 8 px and 16 px patches; median of --repeat
   runs; target < 1 s. Baseline: the same with builtin:dino-tiny's features (8 px patches) on the same pair.
2. pairs: `run_pairs_benchmark` on the two real pairs (graffiti, aloe) with all four descriptors (dino-tiny, dense
   SIFT, pixels, random weights) and the sparse SIFT reference, models already loaded; target < 60 s. Baseline:
   the backbone alone on the same pairs.
3. refine / fuse: on the same pair at 640 px, matching dense SIFT (`sift:8`) with the quadratic and the soft
   sub-patch refinement against plain nearest-neighbour matching (features extracted once; target: refinement
   adds < 50% to the matching), and extracting the offline default's fusion (builtin:dino-tiny*0.2+sift:8*0.8)
   against extracting its two parts one after the other (target: within 10%).
The machine's load average is printed with the numbers (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn`` (CPU time is what a shared, overloaded machine cannot inflate)."""
    fn()  # warm-up (model load, OpenCV init)
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default="builtin:dino-tiny")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from vlens.data.opencv_samples import sample_path
    from vlens.images import load_image
    from vlens.match import extract_features, match_features
    from vlens.match.crops import baseline_specs
    from vlens.match.pairs import PairsConfig, opencv_pairs, run_pairs_benchmark

    out = {"threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    a, b = load_image(sample_path("aero1.jpg")), load_image(sample_path("aero3.jpg"))
    assert a.size == (640, 480), a.size

    def pair_fn(spec):
        return lambda: match_features(*extract_features([a, b], spec, size=640), pca=None)

    out["sift"] = {}
    for spec in ("sift:8", "sift:16", args.model):
        fa = extract_features([a], spec, size=640)[0]
        t, c = timed(pair_fn(spec), args.repeat)
        out["sift"][spec] = {"seconds": round(t, 3), "cpu_seconds": round(c, 3), "grid": list(fa.grid)}
        print(f"{spec:>20}: extract + match a 640x480 pair ({fa.grid[1]}x{fa.grid[0]} patches each): {t:.3f} s "
              f"wall, {c:.3f} s CPU", flush=True)
    base = out["sift"][args.model]["seconds"]
    for spec in ("sift:8", "sift:16"):
        print(f"{spec} vs {args.model}: x{base / out['sift'][spec]['seconds']:.1f} faster")

    fa8, fb8 = extract_features([a, b], "sift:8", size=640)
    out["refine"] = {}
    for method in ("none", "quadratic", "soft"):
        t, c = timed(lambda m=method: match_features(fa8, fb8, pca=None, refine=m), args.repeat)
        out["refine"][method] = {"seconds": round(t, 3), "cpu_seconds": round(c, 3)}
    base = out["refine"]["none"]["seconds"]
    print("match sift:8 640x480 (80x60 patches): " + ", ".join(
        f"{k} {v['seconds']:.3f} s (x{v['seconds'] / base:.2f})" for k, v in out["refine"].items()), flush=True)
    fused = "builtin:dino-tiny*0.2+sift:8*0.8"
    t_f, _ = timed(lambda: extract_features([a, b], fused, size=640), args.repeat)
    t_p, _ = timed(lambda: [extract_features([a, b], s, size=640) for s in ("builtin:dino-tiny", "sift:8")],
                   args.repeat)
    out["fuse"] = {"fused_s": round(t_f, 3), "parts_s": round(t_p, 3)}
    print(f"extract {fused} on the pair: {t_f:.3f} s; its parts one after the other: {t_p:.3f} s "
          f"(x{t_f / t_p:.2f})", flush=True)

    pairs = opencv_pairs()
    specs = [args.model, *baseline_specs(args.model)]
    run_pairs_benchmark(specs, pairs[:1], PairsConfig(size=128))  # load every model once
    t0, c0 = time.perf_counter(), time.process_time()
    run_pairs_benchmark(specs, pairs, PairsConfig())
    t_all, c_all = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    run_pairs_benchmark([args.model], pairs, PairsConfig())
    t_one = time.perf_counter() - t0
    out["pairs"] = {"all_four_s": round(t_all, 2), "all_four_cpu_s": round(c_all, 2),
                    "backbone_only_s": round(t_one, 2)}
    out["load_after"] = os.getloadavg()
    print(f"bench pairs, 2 real pairs, 4 descriptors + sparse SIFT: {t_all:.1f} s wall, {c_all:.1f} s CPU (the "
          f"backbone alone "
          f"{t_one:.1f} s, x{t_all / max(t_one, 1e-9):.1f}); load average {out['load_before'][0]:.1f} -> "
          f"{out['load_after'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
