"""``vlens match``, ``vlens segment`` and ``vlens bench``: dense correspondences, label transfer, benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import JSON_OPTION, DefaultCommandGroup, echo_json

MODEL_HELP = ("Backbone: builtin:dino-tiny (default), a hub id (facebook/dinov2-small) or a save_pretrained "
              "folder; also 'pixels' (raw pixel patches) or 'random:SPEC' (SPEC's architecture, random weights).")
LAYER_HELP = "Transformer block to read, counted from 1; -1 = the last. Middle-to-late blocks match best."
FACET_HELP = "token (block output) or the attention's key / query / value. DINO papers find 'key' best."
PCA_HELP = ("Reduce descriptors to K components with a PCA fitted jointly on both images (0 = keep all). "
            "10 removes noise and speeds up matching; the lab report used 10.")
SIZE_HELP = "Longer side of the model input in pixels (rounded to whole patches); bigger = finer, slower."

bench_app = typer.Typer(help="Benchmarks with tables and figures: the crop benchmark and label-transfer "
                        "segmentation.", no_args_is_help=True)


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
    image_a: Path = typer.Argument(..., help="Source image: every one of its patches gets a match."),
    image_b: Path = typer.Argument(..., help="Destination image."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    score: str = typer.Option("cycle", help="Rank matches by 'cycle' (negative cycle distance: A->B->A lands "
                              "near where it started; robust) or 'feature' (negative descriptor distance)."),
    pca: int = typer.Option(10, help=PCA_HELP),
    top: int = typer.Option(50, help="How many of the best matches to draw and list (0 = all)."),
    layer: int = typer.Option(-1, help=LAYER_HELP),
    facet: str = typer.Option("token", help=FACET_HELP),
    size: int = typer.Option(448, help=SIZE_HELP),
    out: Path = typer.Option(Path("matches.png"), "--out", "-o", help="Picture: A left, B right, lines "
                             "coloured by rank (yellow = best)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the matches (coordinates in each image's "
                                   "pixels, both distances and scores) to this JSON file."),
):
    """Match two images patch by patch and draw the best matches.

    Example: vlens match a.jpg b.jpg --score cycle --pca 10 --top 50 --out m.png --json m.json
    """
    import time

    from vlens.errors import ConfigError
    from vlens.images import load_image
    from vlens.match import draw_matches, extract_features, match_features
    from vlens.runs import atomic_path, write_json

    if score not in ("cycle", "feature"):
        raise ConfigError(f"--score must be 'cycle' or 'feature', not '{score}'")
    t0 = time.time()
    a, b = load_image(image_a), load_image(image_b)
    fa, fb = extract_features([a, b], model, layer=layer, facet=facet, size=size)
    for f, p in ((fa, image_a), (fb, image_b)):
        if f.note:
            typer.echo(f"note: {p.name}: {f.note}", err=True)
    m = match_features(fa, fb, pca=_pca(pca))
    ranked = m.top(top, score) if top > 0 else m.ranked(score)
    with atomic_path(out) as tmp:
        draw_matches(a, b, ranked, top=None, by=score).save(tmp, format="PNG")
    info = {"image_a": str(image_a), "image_b": str(image_b), "model": fa.model, "score": score, "pca": pca,
            "layer": layer, "facet": facet, "grid_a": list(fa.grid), "grid_b": list(fb.grid),
            "patches": len(m), "mutual": int(m.mutual.sum()), "seconds": round(time.time() - t0, 3),
            "matches": ranked.to_records()}
    if json_path:
        write_json(json_path, info)
    typer.echo(f"{len(m)} patches of {image_a.name} matched into {image_b.name} ({int(m.mutual.sum())} mutual "
               f"nearest neighbours); top {len(ranked)} by {score} drawn to {out}"
               + (f", JSON in {json_path}" if json_path else "") + f" ({info['seconds']:.1f} s)")


@bench_app.command("crops")
def bench_crops_cmd(
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    images: str = typer.Option("photos", help="'photos' (the built-in scikit-image photos that have objects), "
                               "'shapes', or a folder of images."),
    out: Path = typer.Option(Path("bench-crops"), "--out", "-o", help="Run folder: config.json, results.json, "
                             "table.md, table.csv, curves.png, best_worst.png."),
    baselines: bool = typer.Option(True, help="Also run the raw-pixel and random-weight baselines on the same "
                                   "crops, so you see what the features buy."),
    crops: int = typer.Option(2, help="Crops per image and scenario."),
    scenario: list[str] = typer.Option(None, "--scenario", help="Run only these (repeatable): large, small, "
                                       "photometric, geometric."),
    pca: int = typer.Option(10, help=PCA_HELP),
    layer: int = typer.Option(-1, help=LAYER_HELP),
    facet: str = typer.Option("token", help=FACET_HELP),
    source_side: int = typer.Option(448, help="Working resolution: the source's longer side in pixels. Crop "
                                    "errors are in these pixels."),
    crop_side: int = typer.Option(224, help="Longer side of each crop as fed to the model."),
    seed: int = typer.Option(0, help="Same seed -> same crops, for every model."),
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
    from vlens.models import DEFAULTS
    from vlens.runs import RunDir

    model = model or DEFAULTS["backbone"]
    cfg = make_config(scenarios=tuple(scenario) if scenario else SCENARIO_NAMES, crops_per_image=crops,
                      seed=seed, pca=_pca(pca), layer=layer, facet=facet, source_side=source_side,
                      crop_side=crop_side)
    run = RunDir(out, {"model": model, "images": images, "baselines": baselines, **cfg.__dict__})
    results = []
    for spec in [model, *(baseline_specs(model) if baselines else [])]:
        typer.echo(f"[bench crops] {spec} ...", err=True)
        r = run_crop_benchmark(spec, images, cfg, keep_examples=1 if spec == model else 0)
        typer.echo(f"[bench crops] {spec}: {r.seconds:.1f} s", err=True)
        results.append(r)
    paths = write_crop_outputs(results, run.path)
    run.write_metrics({r.model: r.to_dict()["overall"] for r in results})
    if json_out:
        echo_json({"results": [r.to_dict() for r in results], "files": {k: str(v) for k, v in paths.items()}})
        return
    from vlens.match.crops import TABLE_HEADERS, markdown_table

    typer.echo(markdown_table(TABLE_HEADERS, table_rows(results, per_scenario=False)))
    typer.echo(f"wrote {', '.join(Path(p).name for p in paths.values())} to {run.path}")
