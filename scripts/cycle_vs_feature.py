"""Why does (or doesn't) the cycle score rank a model's matches better than its feature score?

Runs the crop benchmark (built-in photos, one crop per photo and scenario, the benchmark's defaults otherwise)
keeping every crop's matches, then prints five markdown tables:

1. mean error of the top half of each crop's matches by feature distance and by cycle distance;
2. the matches split by cycle distance (0 = mutual nearest neighbours): share, share wrong, mean error;
3. the crop patches split into thirds by local texture (grey-level std in a 2-patch window): mutual share and the
   mean error of mutual / other matches;
4. per photo (first scenario): median error, mutual share, top-half mean error by feature and by cycle;
5. the first scenario's crops matched against only their own footprint in the source (its bounding box grown by
   ``--grow``), so both sides show about the same context: does the cycle score win then?

"Wrong" means an error above ``--wrong`` source pixels (default 60, i.e. 7.5 patches of 8 px at 448 px).

    .venv/bin/python scripts/cycle_vs_feature.py                      # builtin:dino-tiny
    .venv/bin/python scripts/cycle_vs_feature.py --model pixels:8     # a baseline
"""

from __future__ import annotations

import argparse
import dataclasses

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


def main() -> None:
    from vlens.data.image_sets import image_set
    from vlens.match.crops import run_crop_benchmark
    from vlens.match.features import load_backbone
    from vlens.tables import markdown_table as table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:dino-tiny")
    ap.add_argument("--wrong", type=float, default=60.0, help="error (source px) above which a match is wrong")
    ap.add_argument("--grow", type=float, nargs="+", default=[1.1, 1.5],
                    help="footprint growth factors for table 5 (the whole source is the last row)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = image_set("photos:matching")
    # the card's analysis of the training photos (a study of the cycle score, not a held-out claim)
    res = run_crop_benchmark(args.model, paths, crops_per_image=1, keep_examples=len(paths), allow_train_images=True)
    patch = load_backbone(args.model).patch_size
    by_scenario: dict[str, list] = {}
    for ex in res.examples:  # one crop per photo, in photo order, for every scenario
        by_scenario.setdefault(ex.scenario, []).append(ex)

    print(f"## {res.model}: top-half mean error (px), {len(paths)} photos x 1 crop\n")
    rows = [[s.scenario, f"{s.scores['feature'].mean_top50:.1f}", f"{s.scores['cycle'].mean_top50:.1f}"]
            for s in res.scenarios]
    print(table(["scenario", "feature score", "cycle score"], rows))

    print("## Matches by cycle distance (crop px)\n")
    rows = []
    for name, exs in by_scenario.items():
        err = torch.cat([ex.errors for ex in exs])
        cyc = torch.cat([ex.matches.cycle_distance for ex in exs])
        for label, sel in (("0 (mutual)", cyc == 0), ("(0, 30)", (cyc > 0) & (cyc < 30)), (">= 30", cyc >= 30)):
            rows.append([name, label, f"{sel.float().mean():.0%}", f"{(err[sel] > args.wrong).float().mean():.0%}",
                         f"{err[sel].mean():.1f}"])
    print(table(["scenario", "cycle distance", "share", "wrong", "mean error"], rows))

    print("## Crop patches by texture (thirds of the grey-level std)\n")
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
    print(f"## Per photo ({first} crops)\n")
    rows = []
    for path, ex in zip(paths, by_scenario[first]):
        m, err = ex.matches, ex.errors
        f, c = top_half(err, m.order("feature")), top_half(err, m.order("cycle"))
        rows.append([path.stem, f"{err.median():.1f}", f"{m.mutual.float().mean():.0%}", f"{f:.1f}", f"{c:.1f}",
                     "cycle" if c < f else "feature" if f < c else "tie"])
    print(table(["photo", "median error", "mutual", "top half, feature", "top half, cycle", "better"], rows))

    print(f"## {first} crops matched against their footprint only\n")
    rows = []
    for grow in args.grow:
        err, mutual, f, c = footprint_matches(by_scenario[first], args.model, grow, res.config)
        rows.append([f"{grow:g}x footprint", f"{err.median():.1f}", f"{mutual.float().mean():.0%}",
                     f"{err[mutual].mean():.1f}", f"{err[~mutual].mean():.1f}", f"{f:.1f}", f"{c:.1f}"])
    s0 = res.scenarios[0]
    err = torch.cat([ex.errors for ex in by_scenario[first]])
    mutual = torch.cat([ex.matches.mutual for ex in by_scenario[first]])
    rows.append(["whole source", f"{err.median():.1f}", f"{mutual.float().mean():.0%}", f"{err[mutual].mean():.1f}",
                 f"{err[~mutual].mean():.1f}", f"{s0.scores['feature'].mean_top50:.1f}",
                 f"{s0.scores['cycle'].mean_top50:.1f}"])
    print(table(["source side", "median error", "mutual", "error if mutual", "error if not", "top half, feature",
                 "top half, cycle"], rows))


def footprint_matches(examples, model: str, grow: float, cfg):
    """Match each crop against the source cut to its footprint's bounding box grown by ``grow`` (same working
    resolution): errors and mutual flags of all matches, and the mean over crops of the top-half mean error by
    feature and by cycle score. The crops' own features are recomputed the benchmark's way."""
    from vlens.match.crops import Crop, crop_errors
    from vlens.match.features import extract_features
    from vlens.match.matching import match_features

    errs, mutuals, f50, c50 = [], [], [], []
    crop_feats = extract_features([ex.crop for ex in examples], model, layer=cfg.layer, facet=cfg.facet,
                                  size=cfg.crop_side)
    for ex, cf in zip(examples, crop_feats):
        w, h = ex.crop.size
        corners = np.array([ex.affine @ np.array([u, v, 1.0]) for u, v in ((0, 0), (w, 0), (w, h), (0, h))])
        (cx, cy), (hw, hh) = corners.mean(0), (corners.max(0) - corners.min(0)) / 2 * grow
        box = (max(0, int(cx - hw)), max(0, int(cy - hh)), min(ex.source.width, int(cx + hw)),
               min(ex.source.height, int(cy + hh)))
        window = ex.source.crop(box)
        wf = extract_features([window], model, layer=cfg.layer, facet=cfg.facet, size=max(window.size))[0]
        m = match_features(cf, wf, pca=cfg.pca, normalize=cfg.normalize)
        m = dataclasses.replace(m, dst_xy=m.dst_xy + torch.tensor(box[:2], dtype=torch.float32))
        err = crop_errors(Crop(ex.crop, 0, ex.affine), m)
        errs.append(err)
        mutuals.append(m.mutual)
        f50.append(top_half(err, m.order("feature")))
        c50.append(top_half(err, m.order("cycle")))
    return torch.cat(errs), torch.cat(mutuals), float(np.mean(f50)), float(np.mean(c50))


if __name__ == "__main__":
    main()
