"""A photo library at scale (issue 32 item 5): index build throughput, peak memory, and `index update` time with
nothing changed and with 10 files changed, on a synthetic folder of small JPEGs in nested folders.

    python benchmarks/bench_library.py --n 100000 --work /tmp/bench-library

What it measures, each command in its own process (wall time, and the peak RSS of the largest process of the run):

1. ``vlens index build`` with ``builtin:clip-tiny`` on the ``--n`` library (the real pipeline: walk, hash, decode
   workers, the model, SQLite, FAISS) -> images/s end to end. ``--stand-in`` replaces the model by an 8x8
   thumbnail's pixels as the vector (what walking, hashing, decoding and committing cost alone, the floor under
   any model; for machines where embedding ``--n`` images takes too long: the update timings do not depend on
   what the vectors are).
3. ``vlens index update`` on the ``--n`` index with nothing changed (3 runs; the CLI as a user runs it, Python
   start included): no file is opened and no model loaded, so this is the walk + one read of the paths table.
4. ``vlens index update`` after rewriting 10 files: loads clip-tiny, embeds the 10, rebuilds the flat FAISS file.

Generation is cheap: each image is a random 8x8 colour grid upscaled to 64x64 (every file distinct, so nothing is
deduplicated by content), encoded once as JPEG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUSAGE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
          "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
          "print(json.dumps({'rc': r.returncode, 'wall': time.perf_counter() - t, 'out': r.stdout[-2000:], "
          "'err': r.stderr[-2000:], 'maxrss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh process; wall seconds and the peak RSS (MB) of its largest process."""
    r = subprocess.run([sys.executable, "-c", RUSAGE, *map(str, cmd)], capture_output=True, text=True, env=env)
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{res['err']}")
    return res


def generate(root: Path, n: int, folders: int, seed: int) -> float:
    """``n`` distinct 64x64 JPEGs in ``folders`` folders two levels deep (year/event); returns seconds."""
    from PIL import Image

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    per = -(-n // folders)
    for f in range(folders):
        d = root / f"{2000 + f // 10}" / f"event-{f:03d}"
        d.mkdir(parents=True, exist_ok=True)
        grids = rng.integers(0, 256, (min(per, n - f * per), 8, 8, 3), dtype=np.uint8)
        for i, g in enumerate(grids):
            Image.fromarray(g).resize((64, 64), Image.Resampling.BILINEAR).save(d / f"IMG_{i:05d}.jpg", quality=85)
    return time.perf_counter() - t


STAND_IN_BUILD = """
import sys, time, numpy as np
from vlens.retrieval.index import IndexConfig, build_index
def embed(images):  # stand-in: an 8x8 thumbnail's pixels (192 values) cut to the model's 128 dims, unit length
    v = np.stack([np.asarray(im.resize((8, 8)), np.float32).ravel()[:128] for im in images]) + 1.0
    return v / np.linalg.norm(v, axis=1, keepdims=True)
rep = build_index(sys.argv[1], sys.argv[2], IndexConfig(model="builtin:clip-tiny", batch_size=256),
                  embedder=(embed, 128), progress=False, workers=int(sys.argv[3]))
print(rep.summary())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the big library")
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--stand-in", action="store_true", help="build the big index without a model (see above)")
    ap.add_argument("--workers", type=int, default=1, help="decode workers (vlens index build --workers)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vlens-bench-library"))
    ap.add_argument("--keep", action="store_true", help="keep the generated library and indexes")
    args = ap.parse_args()
    vlens = [sys.executable, "-m", "vlens"]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f}; cores {os.cpu_count()}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}", flush=True)
    results: dict = {"n": args.n, "folders": args.folders, "workers": args.workers, "stand_in": args.stand_in,
                     "load_start": round(load[0], 2)}

    big = work / "library"
    gen = generate(big, args.n, args.folders, seed=2)
    results["generate_s"] = round(gen, 1)
    print(f"generated {args.n} images in {gen:.1f} s", flush=True)
    if args.stand_in:
        r = measured([sys.executable, "-c", STAND_IN_BUILD, big, work / "idx", args.workers])
        summary = r["out"].strip().splitlines()[0]
    else:
        r = measured([*vlens, "index", "build", big, "--out", work / "idx", "--model", "builtin:clip-tiny",
                      "--workers", args.workers, "--json"])
        rep = json.loads(r["out"])
        assert rep["total"] == args.n, rep
        summary = {k: rep[k] for k in ("total", "seconds", "embed_seconds", "images_per_s")}
    results["build"] = {"images": args.n, "wall_s": round(r["wall"], 1), "images_per_s": round(args.n / r["wall"], 1),
                        "peak_rss_mb": round(r["maxrss_mb"]), "report": summary}
    print("build:", results["build"], flush=True)

    runs = []
    for _ in range(3):
        r = measured([*vlens, "index", "update", work / "idx", "--json"])
        rep = json.loads(r["out"])
        assert rep["unchanged"] == args.n and rep["embedded"] == 0, rep
        runs.append((r["wall"], rep["seconds"], r["maxrss_mb"]))
    walls = sorted(x[0] for x in runs)
    results["update_nothing_changed"] = {"cli_wall_s": [round(w, 2) for w in walls],
                                         "median_cli_wall_s": round(walls[1], 2),
                                         "in_process_s": [round(x[1], 2) for x in runs],
                                         "peak_rss_mb": round(max(x[2] for x in runs))}
    print("update, nothing changed:", results["update_nothing_changed"], flush=True)

    from PIL import Image

    changed = sorted((big / "2000" / "event-000").glob("*.jpg"))[:10]
    for p in changed:
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p, quality=85)
    r = measured([*vlens, "index", "update", work / "idx", "--json", "--workers", "0"])
    rep = json.loads(r["out"])
    assert rep["changed"] == 10 and rep["embedded"] == 10, rep
    results["update_10_changed"] = {"cli_wall_s": round(r["wall"], 2), "in_process_s": round(rep["seconds"], 2),
                                    "peak_rss_mb": round(r["maxrss_mb"])}
    print("update, 10 changed:", results["update_10_changed"], flush=True)

    b = results["build"]["wall_s"]
    results["ratios_vs_build"] = {
        "update_nothing_changed": round(b / results["update_nothing_changed"]["median_cli_wall_s"], 1),
        "update_10_changed": round(b / results["update_10_changed"]["cli_wall_s"], 1)}
    # rclip's published figures (README/issues: a NAS Celeron, a laptop; CLIP ViT-B/32, another model and machine)
    rclip = {"nas_celeron_per_s": 73_000 / 86_400, "laptop_per_s": 50_000 / 420}
    results["rclip_published"] = {k: round(v, 2) for k, v in rclip.items()}
    results["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=1))
    (Path(__file__).with_name("bench_library.json")).write_text(json.dumps(results, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
