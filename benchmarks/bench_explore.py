"""Click latency of the web app's Explore tab: the first click on a pair against the clicks after it.

Through FastAPI's TestClient (in process, no network): upload a photo and a shifted crop of it, then click
``--clicks`` random points of the first. The first click computes both images' features and the joint PCA; the
others reuse them (cache keyed by image content + settings). The baseline measured in the same run is the
uncached path (``match.explore.point_match`` on freshly extracted features), so the ratio says what the cache buys.

    .venv/bin/python benchmarks/bench_explore.py --clicks 20 --size 448
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--model", default="builtin:dino-tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    from fastapi.testclient import TestClient

    from vlens.data.photos import photo_paths
    from vlens.images import load_image
    from vlens.match.explore import point_match
    from vlens.match.features import extract_features
    from vlens.web.app import create_app

    img = load_image(photo_paths(("chelsea",))[0])
    crop = img.crop((40, 24, img.width, img.height))
    rng = np.random.default_rng(args.seed)
    points = [(float(rng.uniform(0, img.width - 1)), float(rng.uniform(0, img.height - 1)))
              for _ in range(args.clicks)]

    def png(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    # baseline: everything from scratch for one click (features of both images, PCA, heatmap numbers)
    extract_features([img], args.model, size=args.size)  # load the model outside the timing
    t0 = time.perf_counter()
    fa, fb = extract_features([img, crop], args.model, size=args.size)
    point_match(fa, fb, points[0])
    uncached_ms = (time.perf_counter() - t0) * 1000

    with TestClient(create_app(backbone=args.model)) as c:
        ids = [c.post("/api/explore/images", files={"file": ("x.png", png(im), "image/png")}).json()["id"]
               for im in (img, crop)]
        lat, cached = [], []
        for x, y in points:
            t0 = time.perf_counter()
            r = c.post("/api/explore/point", json={"image_a": ids[0], "image_b": ids[1], "x": x, "y": y,
                                                   "size": args.size})
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
            cached.append(r.json()["cached"])
    assert not cached[0] and all(cached[1:])
    later = lat[1:]
    med = statistics.median(later)
    print(f"model {args.model}, input {args.size} px, {args.clicks} clicks on {img.width}x{img.height} + its crop")
    print(f"baseline (no cache, library call): {uncached_ms:8.1f} ms")
    print(f"first click (computes features):   {lat[0]:8.1f} ms")
    print(f"later clicks (cached): median      {med:8.1f} ms, max {max(later):.1f} ms "
          f"(p90 {sorted(later)[int(0.9 * (len(later) - 1))]:.1f} ms)")
    print(f"ratio baseline / cached click: {uncached_ms / med:.1f}x")


if __name__ == "__main__":
    main()
