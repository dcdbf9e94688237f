"""``vlens explore``: see what a backbone sees — where a point lands in another image, where attention looks.

The computations live in :mod:`vlens.match.explore` and :mod:`vlens.match.attention`; this module parses
options, calls them and draws.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_TORCH_OPTION,
    JSON_OPTION,
    QUANTIZE_OPTION,
    check,
    echo_json,
    parse_pair,
)
from vlens.cli.match import (
    BIN_HELP,
    BIN_LEVELS_HELP,
    FACET_HELP,
    FACETS,
    LAYER_HELP,
    MATCH_PCA_HELP,
    MODEL_HELP,
    REFINE_HELP,
    REFINES,
    SIZE_HELP,
    STRIDE_HELP,
)
from vlens.models.hub import source_of

app = typer.Typer(
    no_args_is_help=True,
    help="See what a backbone sees.\n\n\b\n"
         "  vlens explore point a.jpg b.jpg --xy 120,80 --out heat.png     where a point of A lands in B\n"
         "  vlens explore attention photo.jpg --out att.png                [CLS] attention per head + PCA-RGB\n\n"
         "The decoding inspector (which words a captioner could have picked) is `vlens caption IMG --explain`.",
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="explore")


@app.command("point")
def point_cmd(
    image_a: Path = typer.Argument(..., help="Image A: the point is on this one.", callback=check.existing("file")),
    image_b: Path = typer.Argument(..., help="Image B: where does the point land here?",
                                   callback=check.existing("file")),
    xy: str = typer.Option(..., "--xy", help="The point in A's pixels, X,Y from the top-left corner, e.g. 120,80.",
                           callback=check.pair(0, 1e6)),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP, callback=check.text()),
    pca: int = typer.Option(0, help=MATCH_PCA_HELP, callback=check.integer(0, 1024)),
    layer: int = typer.Option(-1, help=LAYER_HELP, callback=check.layer()),
    facet: str = typer.Option("token", help=FACET_HELP, callback=FACETS),
    size: int = typer.Option(448, help=SIZE_HELP, callback=check.side(16)),
    stride: int = typer.Option(None, help=STRIDE_HELP, callback=check.integer(1, 64)),
    refine: str = typer.Option(None, help=REFINE_HELP + " Default: as `vlens match`.", callback=REFINES),
    bin_: bool = typer.Option(True, "--bin/--no-bin", help=BIN_HELP + " Default: on, as `vlens match`."),
    bin_levels: int = typer.Option(2, "--bin-levels", help=BIN_LEVELS_HELP, callback=check.integer(1, 5)),
    top_k: int = typer.Option(5, "--top-k", help="How many of B's most similar patches to list (and number "
                              "on the picture).", callback=check.count(1, 100)),
    out: Path = typer.Option(Path("point.png"), "--out", "-o", help="Picture: A with the point and where its "
                             "cycle A -> B -> A lands, B with the similarity heatmap and the best match.",
                             callback=check.output("file")),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_TORCH_OPTION,
    quantize: str = QUANTIZE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Where a point of A lands in B: the similarity of every B patch to the A patch under the point.

    Same features as `vlens match` (model, layer, facet, joint PCA, L2 normalisation): the best match is the
    patch `vlens match` would pair it with; the cycle goes back from that match to its own nearest neighbour
    in A (0 px = mutual nearest neighbours, the matches `--score cycle` trusts most).

    Example: vlens explore point a.jpg b.jpg --xy 120,80 --out heat.png --json
    """
    import time

    from vlens.devices import resolve_device, resolve_dtype
    from vlens.images import load_image
    from vlens.match.explore import point_match
    from vlens.match.explore_figures import point_figure
    from vlens.match.features import extract_features

    point = parse_pair(xy)
    dev = resolve_device(device)
    t0 = time.time()
    a, b = load_image(image_a), load_image(image_b)
    fa, fb = extract_features([a, b], model, layer=layer, facet=facet, size=size, device=dev,
                              dtype=resolve_dtype(dtype, dev), stride=stride, engine=engine,
                              quantize=quantize, bin_levels=bin_levels if bin_ else 0)
    from vlens.match.refine import DEFAULT_REFINE

    refine = refine or DEFAULT_REFINE
    pm = point_match(fa, fb, point, pca=None if pca <= 0 else pca, top_k=top_k, refine=refine)
    point_figure(a, b, pm, out, title=f"{image_a.name} -> {image_b.name} · {fa.model}, layer {layer}, {facet}, "
                                     f"PCA {pca if pca > 0 else 'off'}, refine {refine}")
    info = {"image_a": str(image_a), "image_b": str(image_b), "model": fa.model, "model_source": source_of(fa.model),
            "layer": layer, "facet": facet, "pca": pca, "size": size, "stride": fa.step, "bin_levels": fa.bin_levels,
            "grid_a": list(fa.grid), "grid_b": list(fb.grid), **pm.to_dict(),
            "picture": str(out), "seconds": round(time.time() - t0, 3)}
    if json_out:
        echo_json(info)
        return
    bx, by = pm.match_xy
    typer.echo(f"({point[0]:g}, {point[1]:g}) in {image_a.name} -> best match ({bx:.1f}, {by:.1f}) in "
               f"{image_b.name}: similarity {pm.best.similarity:.3f}, feature distance "
               f"{pm.best.feature_distance:.3f}, cycle distance {pm.cycle_distance:.1f} px"
               + (" (mutual)" if pm.cycle_index == pm.src_index else ""))
    for rank, c in enumerate(pm.candidates, start=1):
        typer.echo(f"  {rank}. ({c.xy[0]:.1f}, {c.xy[1]:.1f})  similarity {c.similarity:.3f}")
    typer.echo(f"picture: {out} ({info['seconds']:.1f} s)")


@app.command("attention")
def attention_cmd(
    image: Path = typer.Argument(..., help="The image to look at.", callback=check.existing("file")),
    model: str = typer.Option(None, "--model", "-m", help="Backbone: a ViT / DINO / DINOv2 hub id, "
                              "folder or checkpoint file (default: facebook/dino-vits8 when cached or "
                              "downloadable, else builtin:dino-tiny). Raw pixels "
                              "and SIFT have no attention.", callback=check.text()),
    layer: int = typer.Option(-1, help="Block whose [CLS] attention is shown, counted from 1; -1 = the last "
                              "(where DINO's heads look at objects).", callback=check.layer()),
    size: int = typer.Option(448, help=SIZE_HELP, callback=check.side(16)),
    stride: int = typer.Option(None, help=STRIDE_HELP + " Attention memory grows with the 4th power of "
                               "patch / S.", callback=check.integer(1, 64)),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o", help="Picture: the photo, its features' PCA "
                             "as RGB, the heads' mean attention and one panel per head.",
                             callback=check.output("file")),
    saliency: bool = typer.Option(False, "--saliency", help="Also draw the saliency map `vlens match "
                                  "--saliency-threshold` masks with: the last block's [CLS] attention, heads "
                                  "averaged (raw attention, [CLS] share included), normalised to 0-1 over the image."),
    saliency_heads: str = typer.Option(None, "--saliency-heads", help="Heads averaged for --saliency, counted "
                                       "from 1, e.g. '1,3' (default: all).",
                                       callback=check.numbers(1, 1024, integer=True)),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Where each attention head of the [CLS] token looks, and the features' first three PCA components as RGB.

    Each head's map is the share of its patch attention on each patch (sums to 1); the title of each panel
    says how much it put on [CLS] itself (and registers) instead. Attention weights need the eager kernel:
    vlens switches a copy of the model to it.

    Example: vlens explore attention cat.jpg --model facebook/dinov2-small --out att.png
    """
    import time

    from vlens.devices import resolve_device, resolve_dtype
    from vlens.images import load_image
    from vlens.match.attention import cls_attention, pca_features
    from vlens.match.explore_figures import attention_figure

    dev = resolve_device(device)
    run_dtype = resolve_dtype(dtype, dev)
    t0 = time.time()
    img = load_image(image)
    att = cls_attention(img, model, layer=layer, size=size, device=dev, dtype=run_dtype, stride=stride)
    rgb = pca_features(img, model, layer=layer, size=size, device=dev, dtype=run_dtype, stride=stride)
    sal = None
    if saliency or saliency_heads:
        from vlens.match.saliency import saliency as saliency_map

        heads = tuple(int(h) for h in saliency_heads.split(",") if h.strip()) if saliency_heads else None
        sal = saliency_map(img, model, heads=heads, size=size, device=dev, dtype=run_dtype, stride=stride)
    attention_figure(img, att, rgb, out, saliency=sal)
    grid = list(att.maps.shape[1:])
    info = {"image": str(image), "model": att.model, "model_source": source_of(att.model),
            "layer": att.layer, "heads": att.heads, "grid": grid, "stride": att.stride or att.patch_size,
            "input_size": list(att.input_size),
            "per_head": [{"head": h + 1, "peak": round(float(att.maps[h].max()), 5),
                          "peak_xy": _peak_xy(att, att.maps[h]),
                          "on_prefix": round(float(att.prefix_mass[h]), 5)} for h in range(att.heads)],
            "mean_peak_xy": _peak_xy(att, att.mean), "picture": str(out), "seconds": round(time.time() - t0, 3)}
    if sal is not None:
        info["saliency"] = {"model": sal.model, "layer": sal.layer, "heads": list(sal.heads),
                            "grid": list(sal.map.shape), "min": round(float(sal.map.min()), 5),
                            "max": round(float(sal.map.max()), 5), "mean": round(float(sal.map.mean()), 5),
                            "above_0.05": round(float((sal.map >= 0.05).float().mean()), 4),
                            "peak_xy": _peak_xy(att, sal.map)}
    if json_out:
        echo_json(info)
        return
    typer.echo(f"{att.heads} heads of block {att.layer} of {att.model} on a {grid[0]}x{grid[1]} patch grid:")
    for h in info["per_head"]:
        typer.echo(f"  head {h['head']}: peak {100 * h['peak']:.1f}% of its patch attention at "
                   f"({h['peak_xy'][0]:.0f}, {h['peak_xy'][1]:.0f}); {100 * h['on_prefix']:.0f}% on [CLS]")
    if sal is not None:
        s = info["saliency"]
        typer.echo(f"  saliency (heads {','.join(map(str, s['heads']))} of block {s['layer']}, 0-1): mean "
                   f"{s['mean']:.2f}, {100 * s['above_0.05']:.0f}% of patches >= 0.05 (kept by the dvf threshold)")
    typer.echo(f"picture: {out} ({info['seconds']:.1f} s)")


def _peak_xy(att, m) -> list[float]:
    """Centre (x, y), in image pixels, of the patch where map ``m`` (h, w) peaks."""
    gh, gw = m.shape
    i = int(m.argmax())
    sx, sy = att.image_size[0] / att.input_size[0], att.image_size[1] / att.input_size[1]
    step, origin = att.stride or att.patch_size, att.patch_size / 2  # the grid's step and first centre, input px
    return [round((i % gw * step + origin) * sx, 2), round((i // gw * step + origin) * sy, 2)]


def explain_images(captioner, files, settings, figure: Path, json_out: bool, notes: list[str],
                   show: int = 7) -> None:
    """`vlens caption IMG --explain`: per image, each generated token with its competitors, as text or JSON,
    and the same as a figure (one row per step; with several images, one figure each)."""
    from vlens.caption.explain_figure import explain_figure
    from vlens.errors import DatasetError
    from vlens.images import SkipLog, load_images_safely

    skips = SkipLog()
    results = []
    outs = dict(zip(map(str, files), figure_paths(figure, files)))
    for path, img in load_images_safely(files, skips):
        e = captioner.explain(img, settings, show=show)
        out = outs[str(path)]
        explain_figure([e], out, columns=show, max_steps=max(1, len(e.steps)))
        results.append({"path": str(path), **e.to_dict(), "figure": str(out)})
        if not json_out:
            _print_explanation(path, e, out)
    if json_out:
        echo_json({"model": captioner.spec, "model_source": source_of(captioner.spec),
                   "settings": settings, "notes": notes, "results": results,
                   "skipped": [{"path": p, "reason": r} for p, r in skips.skipped]})
    if len(skips):
        typer.echo(skips.summary(limit=20), err=True)
    if not results:
        raise DatasetError("none of the given images could be read")


def figure_paths(figure: Path, files) -> list[Path]:
    """One figure per image: ``figure`` itself for one image, else ``STEM-NAME.png`` with NAME the image's stem
    made safe for a file name; images with the same stem (``a/x.png``, ``b/x.png``) get ``-2``, ``-3``, ... so no
    figure overwrites another."""
    import re

    if len(files) == 1:
        return [figure]
    taken: set[str] = set()
    out = []
    for f in files:
        base = re.sub(r"[^\w.-]+", "_", Path(f).stem, flags=re.ASCII).strip("._") or "image"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        out.append(figure.with_name(f"{figure.stem}-{name}{figure.suffix}"))
    return out


def _print_explanation(path, e, figure: Path) -> None:
    from vlens.images import shown_name

    s = e.summary()
    typer.echo(f"{shown_name(path)}\t{e.caption.text}")
    for note in e.notes:
        typer.echo(f"  note: {note}")
    typer.echo("  step  chosen        p(set)  p(model)  rank  eligible  ~choices  candidates: p under these settings "
               "(× = removed by the filters; its model p in brackets)")
    for t, (tok, st, cts) in enumerate(zip(e.tokens, e.steps, e.candidate_tokens), start=1):
        cands = "  ".join(f"{ct} {c.p_sample:.2f}" if c.kept else f"×{ct} ({c.p_model:.2f})"
                          for ct, c in zip(cts, st.candidates))
        typer.echo(f"  {t:>4}  {tok[:12]:<12}  {st.p_sample:6.3f}  {st.p_model:8.3f}  {st.rank:>4}  {st.eligible:>8}  "
                   f"{st.effective:8.1f}  {cands}")
    typer.echo(f"  the model's top token at {s['top_choice_steps']} of {s['steps']} steps; median p(model) of the "
               f"chosen tokens {s['median_p_model_of_chosen']:.3f}, lowest {s['min_p_model_of_chosen']:.4f}; "
               f"~{s['mean_effective_choices']:.1f} effective choices per step; "
               + ("same caption as greedy" if s["same_as_greedy"] else f"greedy says: {e.greedy_text}"))
    typer.echo(f"  figure: {figure}")
