"""Why does (or doesn't) the cycle score rank a model's matches better than its feature score?

Runs the crop benchmark (built-in photos, one crop per photo and scenario, the benchmark's defaults otherwise)
keeping every crop's matches, then prints four markdown tables:

1. mean error of the top half of each crop's matches by feature distance and by cycle distance;
2. the matches split by cycle distance (0 = mutual nearest neighbours): share, share wrong, mean error;
3. the crop patches split into thirds by local texture (grey-level std in a 2-patch window): mutual share and the
   mean error of mutual / other matches;
4. per photo (first scenario): median error, mutual share, top-half mean error by feature and by cycle.

"Wrong" means an error above ``--wrong`` source pixels (default 60, i.e. 7.5 patches of 8 px at 448 px).

    .venv/bin/python scripts/cycle_vs_feature.py                      # builtin:dino-tiny
    .venv/bin/python scripts/cycle_vs_feature.py --model pixels:8     # a baseline
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def texture(img, xy: torch.Tensor, patch: int) -> torch.Tensor:
    """Grey-level std over the (2 * patch)-pixel square centred on each point ``xy`` (n, 2) of ``img``: (n,)."""
    a = torch.tensor(np.asarray(img.convert("L"), dtype=np.float32))[None, None]  # (1, 1, H, W)
    a = torch.nn.functional.pad(a, [patch] * 4, mode="replicate")
    mean = torch.nn.functional.avg_pool2d(a, 2 * patch, stride=1)[0, 0]  # window starting at each pixel
    sq = torch.nn.functional.avg_pool2d(a * a, 2 * patch, stride=1)[0, 0]
    std = (sq - mean * mean).clamp_min(0).sqrt()  # (H + 1, W + 1); index [y, x] = window centred on (x, y)
    x = xy[:, 0].round().long().clamp(0, std.shape[1] - 1)
    y = xy[:, 1].round().long().clamp(0, std.shape[0] - 1)
    return std[y, x]


def top_half(errors: torch.Tensor, order: torch.Tensor) -> float:
    return float(errors[order][: len(errors) // 2].mean())


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    from vlens.data.photos import image_set
    from vlens.match.crops import run_crop_benchmark
    from vlens.match.features import load_backbone

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:dino-tiny")
    ap.add_argument("--wrong", type=float, default=60.0, help="error (source px) above which a match is wrong")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = image_set("photos:matching")
    res = run_crop_benchmark(args.model, paths, crops_per_image=1, keep_examples=len(paths))
    patch = load_backbone(args.model).patch_size
    by_scenario: dict[str, list] = {}
    for ex in res.examples:  # one crop per photo, in photo order, for every scenario
        by_scenario.setdefault(ex.scenario, []).append(ex)

    print(f"## {res.model}: top-half mean error (px), {len(paths)} photos x 1 crop\n")
    rows = [[s.scenario, f"{s.scores['feature'].mean_top50:.1f}", f"{s.scores['cycle'].mean_top50:.1f}"]
            for s in res.scenarios]
    print(table(["scenario", "feature score", "cycle score"], rows))

    print("\n## Matches by cycle distance (crop px)\n")
    rows = []
    for name, exs in by_scenario.items():
        err = torch.cat([ex.errors for ex in exs])
        cyc = torch.cat([ex.matches.cycle_distance for ex in exs])
        for label, sel in (("0 (mutual)", cyc == 0), ("(0, 30)", (cyc > 0) & (cyc < 30)), (">= 30", cyc >= 30)):
            rows.append([name, label, f"{sel.float().mean():.0%}", f"{(err[sel] > args.wrong).float().mean():.0%}",
                         f"{err[sel].mean():.1f}"])
    print(table(["scenario", "cycle distance", "share", "wrong", "mean error"], rows))

    print("\n## Crop patches by texture (thirds of the grey-level std)\n")
    rows = []
    for name, exs in by_scenario.items():
        err = torch.cat([ex.errors for ex in exs])
        mutual = torch.cat([ex.matches.mutual for ex in exs])
        tex = torch.cat([texture(ex.crop, ex.matches.src_xy, patch) for ex in exs])
        lo, hi = torch.quantile(tex, torch.tensor([1 / 3, 2 / 3])).tolist()
        for label, sel in (("flat", tex < lo), ("middle", (tex >= lo) & (tex < hi)), ("textured", tex >= hi)):
            rows.append([name, label, f"{err[sel].mean():.1f}", f"{mutual[sel].float().mean():.0%}",
                         f"{err[sel & mutual].mean():.1f}", f"{err[sel & ~mutual].mean():.1f}"])
    print(table(["scenario", "patches", "mean error", "mutual", "error if mutual", "error if not"], rows))

    first = next(iter(by_scenario))
    print(f"\n## Per photo ({first} crops)\n")
    rows = []
    for path, ex in zip(paths, by_scenario[first]):
        m, err = ex.matches, ex.errors
        f, c = top_half(err, m.order("feature")), top_half(err, m.order("cycle"))
        rows.append([path.stem, f"{err.median():.1f}", f"{m.mutual.float().mean():.0%}", f"{f:.1f}", f"{c:.1f}",
                     "cycle" if c < f else "feature" if f < c else "tie"])
    print(table(["photo", "median error", "mutual", "top half, feature", "top half, cycle", "better"], rows))


if __name__ == "__main__":
    main()
