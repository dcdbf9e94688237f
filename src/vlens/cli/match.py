"""``vlens match``, ``vlens segment`` and ``vlens bench``: dense correspondences, label transfer, benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_TORCH_OPTION,
    JSON_OPTION,
    QUANTIZE_OPTION,
    DefaultCommandGroup,
    check,
    echo_json,
)
from vlens.models.hub import source_of

MODEL_HELP = ("Backbone: a hub id (facebook/dinov2-small), a save_pretrained folder, a DINO / timm / DINOv2 "
              "checkpoint file, builtin:dino-tiny (default: facebook/dino-vits8 when cached or downloadable, else "
              "builtin:dino-tiny, with a note; `vlens models list`); also 'sift', 'sift:P' or 'sift:P:S' "
              "(OpenCV SIFT at the centre of every P x P patch over S "
              "px, P=16, S=48 by default: the classical anchor), 'pixels' or 'pixels:P' (raw P x P pixel patches) "
              "or 'random:SPEC' (SPEC's architecture, random weights); or a fusion 'A+B' / 'A*0.3+B*0.7' (each part "
              "L2-normalised per patch, weighted, concatenated on the finest part's grid).")
LAYER_HELP = ("Transformer block to read, counted from 1; -1 = the last (for builtin:dino-tiny the last matches "
              "real pairs best).")
FACET_HELP = ("token (block output) or the attention's key / query / value. DINO papers find 'key' best for "
              "their models; for builtin:dino-tiny 'token' matches real pairs best.")
PCA_HELP = ("Reduce descriptors to K components with a PCA fitted jointly on both images (0 = keep all). "
            "The lab report used 10; on real pairs with ground truth 10 costs every descriptor accuracy (see "
            "benchmarks/RESULTS.md).")
MATCH_PCA_HELP = PCA_HELP + (" Default 0: measured on the graffiti and aloe pairs, PCA 10 drops dino-tiny's PCK@10 "
                             "and dense SIFT's far more; 32 is level with no PCA.")
FACETS = check.choice("token", "key", "query", "value")
REFINE_HELP = ("Sub-patch refinement of each match from the similarities of the 3 x 3 patches around it: 'none' "
               "(patch centres), 'soft' (soft-argmax, T 0.05) or 'quadratic' (parabola vertex per axis). Refined "
               "points go to the picture and the JSON; cycle distances use them.")
REFINES = check.choice("none", "soft", "quadratic")
BIN_HELP = ("Log-binned descriptors (as 'Deep ViT Features as Dense Visual Descriptors'): each patch's descriptor "
            "concatenated with its 8 neighbouring cells at growing scales, cells of 1 and of 3 x 3 patches "
            "(average-pooled) by default: 17 x the dimensions, more context per patch, slower matching. Works on "
            "every descriptor, fusions, SIFT and pixels included (binned after fusion).")
BIN_LEVELS_HELP = ("Hierarchy levels of --bin: 1 = the 3 x 3 neighbours only (9 cells), 2 = also 3 x 3-patch cells "
                   "(17 cells, the reference), 3 = also 9 x 9-patch cells (25 cells).")
PAIRS_HELP = ("Draw and list N well-spread best buddies instead of the top matches (the 'Deep ViT Features' "
              "picture): mutual nearest neighbours, clustered by k-means (fixed seed) on both ends' descriptors "
              "joined, the best of each cluster kept (highest mean saliency of its two ends; the best cycle score "
              "where there is no saliency), one colour per pair. 0 = off.")
SALIENCY_HELP = ("Keep only matches whose source AND target ends are foreground: saliency >= T, the last block's "
                 "[CLS] attention (heads averaged) normalised to 0-1 per image. 0 = off; the reference uses 0.05. "
                 "Needs a [CLS] token (a ViT, or a fusion with one: its ViT part); SIFT and pixels have none.")
SALIENCY_HEADS_HELP = "Attention heads averaged for the saliency, counted from 1, e.g. '1,3,5' (default: all)."
PRESET_HELP = ("A recipe in one word; options you give yourself win. 'dvf' = 'Deep ViT Features as Dense Visual "
               "Descriptors': key facet, layer 9 of 12 (scaled to the model's depth), stride 4, --bin, "
               "--saliency-threshold 0.05, --pairs 10.")
SIZE_HELP = "Longer side of the model input in pixels (rounded to whole patches); bigger = finer, slower."
STRIDE_HELP = ("Overlapping patches: a descriptor every S input pixels instead of every patch (S divides the "
               "patch size; 4 on an 8 px model = the 'Deep ViT Features' recipe, 1 + (H - 8) / 4 rows). Default: the "
               "patch size, no overlap. Time and memory grow ~(patch / S)^4 in the attention; a fusion strides every "
               "part; dense SIFT and pixels put their descriptors S px apart.")

bench_app = typer.Typer(help="Benchmarks with tables and figures: real pairs with ground truth, SPair-style "
                        "keypoint transfer, the crop benchmark and label-transfer segmentation.",
                        no_args_is_help=True)


class _SegmentGroup(DefaultCommandGroup):
    default_command = "transfer"


segment_app = typer.Typer(cls=_SegmentGroup, no_args_is_help=True,
                          help="Segment by label transfer from annotated references (default), or discover parts "
                               "with k-means (`vlens segment parts`).")


def register(root: typer.Typer) -> None:
    root.command("match")(match_cmd)
    root.add_typer(segment_app, name="segment")
    root.add_typer(bench_app, name="bench")


def _pca(k: int) -> int | None:
    return None if k <= 0 else k


def match_cmd(
    ctx: typer.Context,
    image_a: Path = typer.Argument(..., help="Source image: every one of its patches gets a match.",
                                   callback=check.existing("file")),
    image_b: Path = typer.Argument(..., help="Destination image.", callback=check.existing("file")),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    score: str = typer.Option("cycle", help="Rank matches by 'cycle' (negative cycle distance: A->B->A lands "
                              "near where it started; robust) or 'feature' (negative descriptor distance).",
                              callback=check.choice("cycle", "feature")),
    pca: int = typer.Option(0, help=MATCH_PCA_HELP, callback=check.integer(0, 1024)),
    top: int = typer.Option(50, help="How many of the best matches to draw and list (0 = all).",
                            callback=check.count(0)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    size: int = typer.Option(448, help=SIZE_HELP, callback=check.side(16)),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    refine: str = typer.Option(None, help=REFINE_HELP + " Default: quadratic (measured best, see README).",
                               callback=REFINES),
    bin_: bool = typer.Option(None, "--bin/--no-bin", help=BIN_HELP + " Default: on (measured: it lifts every "
                              "descriptor on the real pairs, see README); --no-bin for the plain patch descriptors."),
    bin_levels: int = typer.Option(2, "--bin-levels", help=BIN_LEVELS_HELP, callback=check.integer(1, 5)),
    saliency_threshold: float = typer.Option(0.0, "--saliency-threshold", help=SALIENCY_HELP,
                                             callback=check.number(0, 1)),
    saliency_heads: str = typer.Option(None, "--saliency-heads", help=SALIENCY_HEADS_HELP,
                                       callback=check.numbers(1, 1024, integer=True)),
    pairs: int = typer.Option(0, "--pairs", help=PAIRS_HELP, callback=check.count(0, 1000)),
    preset: str = typer.Option(None, "--preset", help=PRESET_HELP, callback=check.choice("dvf")),
    out: Path = typer.Option(Path("matches.png"), "--out", "-o", help="Picture: A left, B right, lines "
                             "coloured by rank (yellow = best); with --pairs one colour per pair.",
                             callback=check.output("file")),
    json_out: bool = typer.Option(False, "--json", help="Print the matches as JSON on stdout instead of text "
                                  "(coordinates in each image's pixels, both distances and scores; the picture "
                                  "is still written to --out). To keep them in a file: --json > matches.json."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_TORCH_OPTION,
    quantize: str = QUANTIZE_OPTION,
):
    """Match two images patch by patch and draw the best matches.

    Example: vlens match a.jpg b.jpg --score cycle --top 50 --out m.png --json > m.json

    The 'Deep ViT Features' picture (10 well-spread foreground best buddies, one colour each):
    vlens match a.jpg b.jpg --preset dvf --out pairs.png
    """
    import time

    from vlens.errors import ConfigError
    from vlens.images import load_image
    from vlens.match import draw_matches, extract_features, match_features
    from vlens.match.refine import DEFAULT_REFINE
    from vlens.runs import atomic_path

    if score not in ("cycle", "feature"):
        raise ConfigError(f"--score must be 'cycle' or 'feature', not '{score}'")
    t0 = time.time()
    from vlens.devices import resolve_device, resolve_dtype

    notes = []
    if preset:
        from vlens.match.recipes import recipe

        settings, notes = recipe(preset, model)

        def given(name: str) -> bool:  # typer carries its own click: compare the source by name
            src = ctx.get_parameter_source(name)
            return src is not None and src.name != "DEFAULT"

        facet = facet if given("facet") else settings["facet"]
        layer = layer if given("layer") else settings["layer"]
        bin_, bin_levels = (bin_, bin_levels) if given("bin_") else (True, settings["bin_levels"])
        if not given("saliency_threshold"):
            saliency_threshold = settings["saliency_threshold"]
        pairs = pairs if given("pairs") else settings["pairs"]
        stride = stride if given("stride") else settings["stride"]
    bin_ = True if bin_ is None else bin_  # the measured default (vlens.match.binning.MATCH_BIN_LEVELS = 2 levels)
    dev = resolve_device(device)
    run_dtype = resolve_dtype(dtype, dev)
    fa, fb = extract_features([image_a, image_b], model, layer=layer, facet=facet, size=size, device=dev,
                              dtype=run_dtype, bin_levels=bin_levels if bin_ else 0, stride=stride, engine=engine,
                              quantize=quantize)
    a, b = load_image(image_a), load_image(image_b)
    for f, p in ((fa, image_a), (fb, image_b)):
        if f.note:
            typer.echo(f"note: {p.name}: {f.note}", err=True)
    for n in notes:
        typer.echo(f"note: {n}", err=True)
    refine = refine or DEFAULT_REFINE
    m = match_features(fa, fb, pca=_pca(pca), device=dev, refine=refine)
    heads = tuple(int(h) for h in saliency_heads.split(",") if h.strip()) if saliency_heads else None
    sal_a = sal_b = None
    sal_info = None
    if saliency_threshold > 0 or heads:
        from vlens.match.saliency import pair_saliency

        sal_a, sal_b, sa, _ = pair_saliency(a, b, fa, fb, model, heads=heads, size=size, device=dev,
                                            dtype=run_dtype)
        sal_info = {"model": sa.model, "layer": sa.layer, "heads": list(sa.heads), "threshold": saliency_threshold}
    buddies = None
    if pairs > 0:
        from vlens.match.buddies import spread_pairs

        buddies = spread_pairs(m, fa.flat, fb.flat, pairs, sal_a, sal_b, saliency_threshold)
        ranked = buddies.matches
        if len(buddies) < pairs:
            typer.echo(f"note: only {buddies.candidates} best buddies"
                       + (f" with saliency >= {saliency_threshold:g} at both ends" if sal_a is not None else "")
                       + f": {len(buddies)} pair(s) drawn instead of {pairs}", err=True)
    else:
        kept = m
        if sal_a is not None and saliency_threshold > 0:
            from vlens.match.saliency import mask_matches

            kept = mask_matches(m, sal_a, sal_b, saliency_threshold)
        ranked = kept.top(top, score) if top > 0 else kept.ranked(score)
        if sal_info is not None:
            sal_info["foreground_matches"] = len(kept)
    with atomic_path(out) as tmp:
        if buddies is not None:
            from vlens.match.draw import draw_pairs

            draw_pairs(a, b, ranked).save(tmp, format="PNG")
        else:
            draw_matches(a, b, ranked, top=None, by=score).save(tmp, format="PNG")
    info = {"image_a": str(image_a), "image_b": str(image_b), "model": fa.model, "model_source": source_of(fa.model),
            "score": score, "pca": pca, "stride": fa.step,
            "refine": refine, "layer": layer, "facet": facet, "bin_levels": fa.bin_levels,
            "dims": int(fa.descriptors.shape[-1]), "grid_a": list(fa.grid), "grid_b": list(fb.grid),
            "patches": len(m), "mutual": int(m.mutual.sum()), "preset": preset, "saliency": sal_info,
            "selection": "pairs" if buddies is not None else "top", "seconds": round(time.time() - t0, 3),
            "notes": notes, "matches": buddies.to_records() if buddies is not None else ranked.to_records()}
    if buddies is not None:
        info["pairs"] = {"asked": pairs, "drawn": len(buddies), "best_buddies": buddies.buddies,
                         "clustered": buddies.candidates, "ranked_by": buddies.ranked_by, "seed": 0}
    if json_out:
        echo_json(info)
        return
    head = (f"{len(m)} patches of {image_a.name} matched into {image_b.name} ({int(m.mutual.sum())} mutual "
            "nearest neighbours)")
    if buddies is not None:
        typer.echo(f"{head}; {len(buddies)} well-spread best buddies (k-means on {buddies.candidates} "
                   f"{'foreground ' if sal_a is not None else ''}buddies, ranked by {buddies.ranked_by}) drawn to "
                   f"{out} ({info['seconds']:.1f} s)")
        for i, r in enumerate(info["matches"]):
            extra = (f", saliency {r['saliency_src']:.2f} / {r['saliency_dst']:.2f}" if "saliency_src" in r else "")
            typer.echo(f"  {i + 1:2d}. ({r['src_xy'][0]:.0f}, {r['src_xy'][1]:.0f}) -> ({r['dst_xy'][0]:.0f}, "
                       f"{r['dst_xy'][1]:.0f})  cluster {r['cluster']}{extra}")
        return
    fg = (f", {sal_info['foreground_matches']} with saliency >= {saliency_threshold:g} at both ends"
          if sal_info and "foreground_matches" in sal_info and saliency_threshold > 0 else "")
    typer.echo(f"{head}{fg}; top {len(ranked)} by {score} drawn to {out} ({info['seconds']:.1f} s)")


@bench_app.command("crops")
def bench_crops_cmd(
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    images: str = typer.Option("opencv:heldout", help="'opencv:heldout' (12 real photos no vlens backbone was "
                               "trained on; `vlens data fetch opencv-samples` first), 'photos' (scikit-image's: "
                               "builtin:dino-tiny's training images), 'shapes', or a folder of images.",
                               callback=check.text()),
    out: Path = typer.Option(Path("bench-crops"), "--out", "-o", help="Run folder: config.json, results.json, "
                             "table.md, table.csv, curves.png, best_worst.png.", callback=check.output("dir")),
    baselines: bool = typer.Option(True, help="Also run the raw-pixel and random-weight baselines on the same "
                                   "crops, so you see what the features buy."),
    crops: int = typer.Option(2, help="Crops per image and scenario.", callback=check.count(1, 1000)),
    scenario: list[str] = typer.Option(None, "--scenario", help="Run only these (repeatable): large, small, "
                                       "photometric, geometric.",
                                       callback=check.choice("large", "small", "photometric", "geometric")),
    pca: int = typer.Option(0, help=PCA_HELP + " Default 0, as `vlens match`: on the held-out photos PCA 10 makes "
                            "the crop errors of dino-tiny and dense SIFT larger.",
                            callback=check.integer(0, 1024)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    source_side: int = typer.Option(448, help="Working resolution: the source's longer side in pixels. Crop "
                                    "errors are in these pixels.", callback=check.side(32)),
    crop_side: int = typer.Option(224, help="Longer side of each crop as fed to the model.", callback=check.side(16)),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    refine: str = typer.Option("none", help=REFINE_HELP, callback=REFINES),
    seed: int = typer.Option(0, help="Same seed -> same crops, for every model.", callback=check.seed()),
    allow_train_images: bool = typer.Option(False, "--allow-train-images", help="Run even on images the model "
                                            "lists as training images (refused by default); the table flags it."),
    json_out: bool = JSON_OPTION,
):
    """Crop benchmark: match random crops back to their source and measure the error in pixels.

    Four scenarios of rising difficulty (large crops, small crops, photometric change, aspect change +
    rotation). For each and for both scores (feature, cycle): mean/median error over all matches and the top
    10%/50% by score, and the error-vs-rank curve with its area (lower = the score ranks good matches first).
    """
    from vlens.match.crops import (
        SCENARIO_NAMES,
        baseline_specs,
        make_config,
        run_crop_benchmark,
        table_rows,
        write_crop_outputs,
    )
    from vlens.models import default_spec
    from vlens.runs import RunDir

    model = model or default_spec("backbone")
    cfg = make_config(scenarios=tuple(scenario) if scenario else SCENARIO_NAMES, crops_per_image=crops,
                      seed=seed, pca=_pca(pca), layer=layer, facet=facet, source_side=source_side,
                      crop_side=crop_side, refine=refine, stride=stride)
    run = RunDir(out, {"model": model, "model_source": source_of(model),
                       "images": images, "baselines": baselines, **cfg.__dict__})
    results = []
    for spec in [model, *(baseline_specs(model) if baselines else [])]:
        typer.echo(f"[bench crops] {spec} ...", err=True)
        r = run_crop_benchmark(spec, images, cfg, keep_examples=1 if spec == model else 0,
                               allow_train_images=allow_train_images)
        if r.train_overlap:
            typer.echo(f"WARNING: {len(r.train_overlap)} of {r.images} images are training images of {spec}; its "
                       "results measure memory, not generalisation", err=True)
        typer.echo(f"[bench crops] {spec}: {r.seconds:.1f} s", err=True)
        results.append(r)
    paths = write_crop_outputs(results, run.path)
    run.write_metrics({r.model: r.to_dict()["overall"] for r in results})
    if results[0].skipped:
        from vlens.images import SkipLog

        typer.echo(SkipLog(results[0].skipped).summary(limit=20), err=True)
    if json_out:
        echo_json({"results": [r.to_dict() for r in results], "files": {k: str(v) for k, v in paths.items()},
                   "skipped": [{"path": p, "reason": r} for p, r in results[0].skipped]})
        return
    from vlens.match.crops import TABLE_HEADERS
    from vlens.tables import markdown_table

    typer.echo(markdown_table(TABLE_HEADERS, table_rows(results, per_scenario=False, digits=None)))
    typer.echo(f"wrote {', '.join(Path(p).name for p in paths.values())} to {run.path}")


@bench_app.command("pairs")
def bench_pairs_cmd(
    data: list[str] = typer.Option(["opencv", "opencv:heldout"], "--data", help="Repeatable. 'opencv' (the "
                                   "graffiti homography pair and the aloe stereo pair from `vlens data fetch "
                                   "opencv-samples`), 'opencv:heldout' (the 12 held-out photos under seeded "
                                   "synthetic homographies), a JSON manifest of pairs (homography or disparity, see "
                                   "vlens.match.pairs.load_manifest) or an HPatches folder (one sequence or a "
                                   "folder of them: 1.ppm..6.ppm, H_1_2..H_1_6).", callback=check.text()),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    baselines: bool = typer.Option(True, help="Also run dense SIFT, raw pixels and random weights on the same "
                                   "pairs (the sparse SIFT + ratio + RANSAC reference always runs)."),
    size: int = typer.Option(448, help="Working resolution: both images' longer side in pixels. Errors are in "
                             "target pixels at this resolution.", callback=check.side(32)),
    pca: int = typer.Option(0, help="Joint PCA components (0 = keep all). On real pairs PCA 10 costs accuracy "
                            "for every descriptor (see benchmarks/RESULTS.md).", callback=check.integer(0, 1024)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    ransac_px: float = typer.Option(3.0, "--ransac-px", help="RANSAC inlier threshold in working pixels.",
                                    callback=check.number(0, 1000, lo_open=True)),
    refine: list[str] = typer.Option(None, "--refine", help="Repeatable: " + REFINE_HELP + " Each descriptor gets "
                                     "one row per refinement; default: none and quadratic.", callback=REFINES),
    bin_: bool = typer.Option(False, "--bin/--no-bin", help=BIN_HELP + " Applies to every descriptor of the run."),
    bin_levels: int = typer.Option(2, "--bin-levels", help=BIN_LEVELS_HELP, callback=check.integer(1, 5)),
    stride: list[int] = typer.Option(None, "--stride", help="Repeatable: " + STRIDE_HELP + " Each descriptor gets "
                                     "one row per stride (with its time and peak memory); default: the patch size.",
                                     callback=check.integer(1, 64)),
    allow_train_images: bool = typer.Option(False, "--allow-train-images", help="Run even on pairs whose images "
                                            "the model lists as training images (refused by default; flagged)."),
    out: Path = typer.Option(Path("bench-pairs"), "--out", "-o", help="Run folder: config.json, results.json, "
                             "table.md, table.csv, mma.png.", callback=check.output("dir")),
    json_out: bool = JSON_OPTION,
):
    """Real pairs with ground truth: the error of every source patch's match in target pixels.

    Reports the mean matching accuracy (fraction within t px, t = 1..10), PCK@1/3/5/10/20 over all matches and the
    top 10%/50% by feature and cycle score, and for homography pairs the RANSAC homography's mean corner error,
    beside the sparse SIFT + ratio test + RANSAC pipeline; with and without sub-patch refinement; tables
    per set of pairs (means over its pairs) and per pair. Example: vlens bench pairs --data hpatches/v_graffiti
    """
    from vlens.match.crops import baseline_specs
    from vlens.match.pairs import (
        PairsConfig,
        describe,
        load_pairs,
        run_pairs_benchmark,
        write_pairs_outputs,
    )
    from vlens.models import default_spec
    from vlens.runs import RunDir
    from vlens.tables import markdown_table

    pairs = [p for d in dict.fromkeys(data) for p in load_pairs(d)]  # bad data fails before any model notice
    model = model or default_spec("backbone")
    from vlens.match.refine import DEFAULT_REFINE

    methods = tuple(dict.fromkeys(refine or ("none", DEFAULT_REFINE)))
    cfg = PairsConfig(size=size, pca=_pca(pca), layer=layer, facet=facet, ransac_px=ransac_px, refine=methods,
                      bin_levels=bin_levels if bin_ else 0,
                      strides=tuple(dict.fromkeys(stride)) if stride else (None,))
    from vlens.match.heldout import check_heldout

    specs = [model, *(baseline_specs(model) if baselines else [])]
    overlap = check_heldout(model, [p for pr in pairs for p in (pr.source, pr.target)], allow_train_images,
                            "these pairs")
    if overlap:
        typer.echo(f"WARNING: {len(overlap)} pair image(s) are training images of {model}", err=True)
    run = RunDir(out, {"model": model, "model_source": source_of(model),
                       "data": data, "baselines": baselines, **cfg.__dict__})
    results = run_pairs_benchmark(specs, pairs, cfg, progress=lambda msg: typer.echo(f"[bench pairs] {msg}",
                                                                                      err=True))
    paths = write_pairs_outputs(results, cfg, run.path)
    run.write_metrics({r.pair: r.to_dict() for r in results})
    if json_out:
        echo_json({"config": cfg.__dict__, "pairs": [r.to_dict() for r in results],
                   "files": {k: str(v) for k, v in paths.items()}})
        return
    from vlens.match.pairs import SUMMARY_HEADERS, summarize, summary_rows

    typer.echo(describe(cfg) + "\n")
    typer.echo(markdown_table(SUMMARY_HEADERS, summary_rows(summarize(results))))
    typer.echo("(per-pair rows: table.md / table.csv)")
    typer.echo(f"wrote {', '.join(Path(p).name for p in paths.values())} to {run.path}")


@bench_app.command("keypoints")
def bench_keypoints_cmd(
    data: Path = typer.Option(..., "--data", help="Your SPair-71k folder (the one with JPEGImages/, "
                              "PairAnnotation/{trn,val,test}/ and Layout/large/), as the authors distribute it.",
                              callback=check.path()),
    split: str = typer.Option("test", help="trn (train), val or test.",
                              callback=check.choice("trn", "train", "val", "test")),
    category: list[str] = typer.Option(None, "--category", help="Only these categories (repeatable), e.g. cat.",
                                       callback=check.text()),
    limit: int = typer.Option(0, help="At most this many pairs per category (0 = all; the test split has 12,234).",
                              callback=check.count(0)),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    baselines: bool = typer.Option(True, help="Also run dense SIFT, raw pixels and random weights on the same "
                                   "pairs."),
    size: int = typer.Option(224, help="Longer side of both images fed to the model, pixels.",
                             callback=check.side(16)),
    pca: int = typer.Option(0, help="Joint PCA components per pair (0 = keep all).", callback=check.integer(0, 1024)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    alpha: float = typer.Option(0.1, help="PCK threshold as a fraction of max(target box width, height).",
                                callback=check.number(0, 1, lo_open=True)),
    refine: str = typer.Option("none", help=REFINE_HELP, callback=REFINES),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    out: Path = typer.Option(Path("bench-keypoints"), "--out", "-o", help="Run folder: config.json, "
                             "results.json, table.md.", callback=check.output("dir")),
    json_out: bool = JSON_OPTION,
):
    """Semantic keypoint transfer (SPair-71k layout): PCK@alpha of the target's bounding box.

    Each source keypoint's patch is matched to its nearest target patch. A published ViT-S/8 DINO reaches about 33
    PCK@0.1 on SPair-71k. Example: vlens bench keypoints --data ~/data/SPair-71k --limit 20 --category cat
    """
    from vlens.images import SkipLog
    from vlens.match.crops import baseline_specs
    from vlens.match.draw import short_model
    from vlens.match.keypoints import load_spair, run_keypoint_benchmark
    from vlens.models import default_spec
    from vlens.runs import RunDir, atomic_write_text, write_json
    from vlens.tables import markdown_table

    skips = SkipLog()
    pairs = load_spair(data, split, list(category) if category else None, limit, skips=skips)  # before any notice
    model = model or default_spec("backbone")
    run = RunDir(out, {"model": model, "model_source": source_of(model),
                       "data": str(data), "split": split, "categories": category, "limit": limit,
                       "size": size, "pca": pca, "layer": layer, "facet": facet, "alpha": alpha,
                       "refine": refine, "stride": stride})
    results = []
    for spec in [model, *(baseline_specs(model) if baselines else [])]:
        typer.echo(f"[bench keypoints] {spec}: {len(pairs)} pairs ...", err=True)
        results.append(run_keypoint_benchmark(spec, pairs, size=size, pca=_pca(pca), layer=layer, facet=facet,
                                              alpha=alpha, refine=refine, stride=stride))
    skips.skipped += [s for s in results[0].skipped if s not in skips.skipped]
    if len(skips):
        typer.echo(skips.summary(limit=20) + "\n(the pairs of these images are left out)", err=True)
    cats = sorted({c for r in results for c in r.per_category})
    headers = ["descriptor", "pairs", "keypoints", f"PCK@{alpha:g} (per keypoint)", f"PCK@{alpha:g} (per pair)",
               *cats]
    rows = [[short_model(r.descriptor), r.pairs, r.keypoints, f"{100 * r.pck_point:.1f}", f"{100 * r.pck_pair:.1f}",
             *[f"{100 * r.per_category[c]['pck_point']:.1f}" for c in cats]] for r in results]
    table = markdown_table(headers, rows)
    write_json(run.file("results.json"), {"results": [r.to_dict() for r in results]})
    atomic_write_text(run.file("table.md"), table)
    run.write_metrics({r.descriptor: {"pck_point": r.pck_point, "pck_pair": r.pck_pair} for r in results})
    if json_out:
        echo_json({"results": [r.to_dict() for r in results],
                   "skipped": [{"path": p, "reason": r} for p, r in skips.skipped]})
        return
    typer.echo(table)
    typer.echo(f"wrote results.json, table.md to {run.path}")


def _save(img, path: Path) -> None:
    from vlens.runs import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


@segment_app.command("transfer")
def segment_cmd(
    ref: list[Path] = typer.Option(..., "--ref", help="Reference image (repeatable; pair each with --ref-mask).",
                                   callback=check.existing("file")),
    ref_mask: list[Path] = typer.Option(..., "--ref-mask", help="Class-id mask of the matching --ref: a PNG whose "
                                        "pixel values are class ids (0 = background), same size as the image.",
                                        callback=check.existing("file")),
    target: Path = typer.Option(..., "--target", help="Image to segment.", callback=check.existing("file")),
    out: Path = typer.Option(Path("segment"), "--out", "-o", help="Folder: labels.png (class ids), "
                             "overlay.png (colours over the target), segment.json.", callback=check.output("dir")),
    target_mask: Path = typer.Option(None, "--target-mask", help="Ground truth for the target: adds IoU per class.",
                                     callback=check.existing("file")),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    k: int = typer.Option(10, help="Reference patches that vote for each target patch.",
                          callback=check.count(1, 10000)),
    temperature: float = typer.Option(0.07, help="Vote weight exp(similarity / T): lower = nearest dominate.",
                                      callback=check.number(0, 100, lo_open=True)),
    size: int = typer.Option(224, help=SIZE_HELP, callback=check.side(16)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    classes: int = typer.Option(0, "--classes", help="Number of classes (0 = 1 + the largest reference label).",
                                callback=check.integer(0, 255)),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    json_out: bool = JSON_OPTION,
):
    """Segment an image by label transfer: each patch takes a similarity-weighted vote of its k nearest
    reference patches; the class probabilities are upsampled to pixels.

    Example: vlens segment --ref a.png --ref-mask a_mask.png --target b.png --out seg/
    """
    import numpy as np
    from PIL import Image

    from vlens.data.shapes import MASK_PALETTE
    from vlens.errors import ConfigError
    from vlens.images import load_image
    from vlens.match.draw import overlay_labels
    from vlens.match.segment import SegmentConfig, confusion, iou_from_confusion, segment
    from vlens.runs import write_json

    if len(ref) != len(ref_mask):
        raise ConfigError(f"got {len(ref)} --ref image(s) but {len(ref_mask)} --ref-mask file(s); give one mask "
                          "per reference, in the same order")
    refs = [(load_image(r), _read_mask(m)) for r, m in zip(ref, ref_mask)]
    img = load_image(target)
    gt = _read_mask(target_mask) if target_mask else None
    cfg = SegmentConfig(k=k, temperature=temperature, size=size, layer=layer, facet=facet, n_classes=classes or None,
                        stride=stride)
    from vlens.models import default_spec

    model = model or default_spec("backbone")  # named in the JSON
    seg = segment(img, refs, model, cfg, target_mask=gt)
    out.mkdir(parents=True, exist_ok=True)
    lab = Image.fromarray(seg.labels.astype(np.uint8), "P")
    lab.putpalette(MASK_PALETTE)
    _save(lab, out / "labels.png")
    palette = np.array(MASK_PALETTE[:3 * 256], dtype=np.uint8).reshape(-1, 3)
    _save(overlay_labels(img, seg.labels, palette), out / "overlay.png")
    info = {"target": str(target), "refs": [str(r) for r in ref], "model": model, "model_source": source_of(model),
            "classes": seg.probs.shape[-1],
            "predicted": {int(c): int(n) for c, n in zip(*np.unique(seg.labels, return_counts=True))},
            "notes": seg.notes}
    if gt is not None:
        iou, miou, acc = iou_from_confusion(confusion(seg.labels, gt, max(seg.probs.shape[-1], int(gt.max()) + 1)))
        info.update(miou=round(miou, 4), pixel_accuracy=round(acc, 4),
                    iou=[None if np.isnan(v) else round(float(v), 4) for v in iou])
    write_json(out / "segment.json", info)
    for n in seg.notes:
        typer.echo(f"note: {n}", err=True)
    if json_out:
        echo_json(info)
        return
    typer.echo(f"segmented {target.name} from {len(ref)} reference(s): labels.png, overlay.png, segment.json in "
               f"{out}" + (f"; mIoU {info['miou']:.3f}" if gt is not None else ""))


def _read_mask(path: Path):
    from vlens.data.shapes import load_mask
    from vlens.errors import DatasetError

    if not path.is_file():
        raise DatasetError(f"mask {path}: no such file")
    try:
        return load_mask(path)
    except OSError as exc:
        raise DatasetError(f"mask {path}: cannot read it ({exc})") from None


@segment_app.command("parts")
def parts_cmd(
    images: list[Path] = typer.Argument(..., help="One or more images; parts are clustered jointly, so a colour "
                                        "means the same part in every image.", callback=check.existing("file")),
    k: int = typer.Option(5, "--k", help="Number of parts (k-means clusters).", callback=check.count(1, 256)),
    out: Path = typer.Option(Path("parts.png"), "--out", "-o", help="Picture: each image, its parts overlay and "
                             "the PCA-to-RGB view of its features.", callback=check.output("file")),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    size: int = typer.Option(224, help=SIZE_HELP, callback=check.side(16)),
    pca: int = typer.Option(10, help="PCA components before clustering (0 = all).", callback=check.integer(0, 1024)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    seed: int = typer.Option(0, help="k-means++ seed.", callback=check.seed()),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    json_out: bool = JSON_OPTION,
):
    """Unsupervised part discovery: k-means on the features of one or more images, drawn as a colour overlay,
    next to the features' first three PCA components as RGB."""
    from PIL import Image

    from vlens.images import load_image
    from vlens.match.draw import overlay_labels, pca_rgb
    from vlens.match.segment import PART_PALETTE, discover_parts
    from vlens.plots import image_grid

    imgs = [load_image(p) for p in images]
    labels, feats = discover_parts(imgs, model, k=k, size=size, pca=_pca(pca), layer=layer, facet=facet, seed=seed,
                                   stride=stride)
    rgb = pca_rgb(feats[0].descriptors, [f.descriptors for f in feats[1:]])
    cells, titles = [], []
    for p, im, lab, col in zip(images, imgs, labels, rgb):
        pc = Image.fromarray((col * 255).astype("uint8")).resize(im.size, Image.NEAREST)
        cells += [im, overlay_labels(im, lab, PART_PALETTE), pc]
        titles += [p.name, f"{k} parts (k-means)", "features: PCA -> RGB"]
    image_grid(cells, titles, out, cols=3)
    if json_out:  # per image, how many patches each part holds (parts are shared across the images)
        echo_json({"picture": str(out), "k": k, "model": feats[0].model,
                   "images": [{"path": str(p), "grid": list(lab.shape),
                               "part_sizes": [int((lab == j).sum()) for j in range(k)]}
                              for p, lab in zip(images, labels)]})
        return
    typer.echo(f"{k} parts over {len(imgs)} image(s) drawn to {out}")


@bench_app.command("segment")
def bench_segment_cmd(
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    data: Path = typer.Option(None, "--data", help="A dataset with masks (e.g. from `vlens data make-shapes`); "
                              "default: a small generated shapes set.", callback=check.existing("any")),
    refs: int = typer.Option(20, help="Annotated reference images (from the train split).",
                             callback=check.count(1, 100000)),
    targets: int = typer.Option(40, help="Images to segment and score (from the test split).",
                                callback=check.count(1, 100000)),
    k: int = typer.Option(10, help="Neighbours that vote.", callback=check.count(1, 10000)),
    size: int = typer.Option(224, help=SIZE_HELP, callback=check.side(16)),
    baselines: bool = typer.Option(True, help="Also score raw pixels, random weights and the majority class."),
    out: Path = typer.Option(Path("bench-segment"), "--out", "-o", help="Run folder: results.json, table.md, "
                             "examples.png.", callback=check.output("dir")),
    json_out: bool = JSON_OPTION,
):
    """Label-transfer segmentation benchmark: mIoU and pixel accuracy on masks, against baselines."""
    from vlens.match.draw import short_model
    from vlens.match.segment import SegmentConfig, run_segment_benchmark, segment_examples_figure
    from vlens.models import default_spec
    from vlens.runs import RunDir, atomic_write_text, write_json
    from vlens.tables import markdown_table

    model = model or default_spec("backbone")
    cfg = SegmentConfig(k=k, size=size)
    run = RunDir(out, {"model": model, "model_source": source_of(model),
                       "data": data, "refs": refs, "targets": targets, **cfg.__dict__})
    from vlens.match.crops import baseline_specs

    specs = [model] + ([*baseline_specs(model), "majority"] if baselines else [])
    results = []
    for spec in specs:
        typer.echo(f"[bench segment] {spec} ...", err=True)
        results.append(run_segment_benchmark(spec, data, refs=refs, targets=targets, config=cfg,
                                             keep_examples=4 if spec == model else 0))
    classes = list(results[0].per_class_iou)
    headers = ["model", "mIoU", "pixel acc", *classes]
    rows = [[short_model(r.model), f"{r.miou:.3f}", f"{r.pixel_accuracy:.3f}",
             *[("-" if r.per_class_iou[c] is None else f"{r.per_class_iou[c]:.3f}") for c in classes]]
            for r in results]
    table = markdown_table(headers, rows)
    write_json(run.file("results.json"), {"results": [r.to_dict() for r in results]})
    atomic_write_text(run.file("table.md"), table)
    segment_examples_figure(results[0], run.file("examples.png"))
    run.write_metrics({r.model: {"miou": r.miou, "pixel_accuracy": r.pixel_accuracy} for r in results})
    if json_out:
        echo_json({"results": [r.to_dict() for r in results]})
        return
    typer.echo(table)
    for n in sorted({n for r in results for n in r.notes}):
        typer.echo(f"note: {n}", err=True)
    typer.echo(f"wrote results.json, table.md, examples.png to {run.path}")
