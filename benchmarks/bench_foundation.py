"""Foundation speed: `vlens data make-shapes` of 2,000 images (target < 60 s on 2 cores) and `vlens --help` start-up.

Baselines measured in the same run: make-shapes with one worker (vs the default two processes), and a bare
`python -c pass` start-up (vs `vlens --help`).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(fn, repeat=1):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    from vlens.data.shapes import make_shapes

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as d:
        t2 = timed(lambda: make_shapes(Path(d) / "two", train=n - 200, val=100, test=100, seed=0, workers=2,
                                       progress=False))
        t1 = timed(lambda: make_shapes(Path(d) / "one", train=n - 200, val=100, test=100, seed=0, workers=1,
                                       progress=False))
    print(f"make-shapes {n} images @128px: 2 workers {t2:.1f} s ({n / t2:.0f} img/s), "
          f"1 worker {t1:.1f} s -> speed-up x{t1 / t2:.2f}; target < 60 s: {'PASS' if t2 < 60 else 'FAIL'}")

    vl = Path(sys.executable).with_name("vlens")
    py = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat=5)
    hp = timed(lambda: subprocess.run([str(vl), "--help"], check=True, capture_output=True), repeat=5)
    print(f"vlens --help: {hp * 1000:.0f} ms (bare python start {py * 1000:.0f} ms, x{hp / py:.1f}); "
          f"target < 1 s: {'PASS' if hp < 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
