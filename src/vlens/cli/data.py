"""``vlens data``: generate the shapes dataset, inspect any captioned dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import JSON_OPTION, check, echo_json

app = typer.Typer(help="Make and inspect captioned image datasets (Karpathy JSON, COCO JSON, image folders, shapes).",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")


@app.command("make-shapes")
def make_shapes_cmd(
    out: Path = typer.Argument(..., help="Folder to write: dataset.json (Karpathy format), images/, masks/. "
                              "An existing dataset is kept unless --force.", callback=check.output("dir")),
    train: int = typer.Option(1000, help="Number of training images.", callback=check.count(0)),
    val: int = typer.Option(100, help="Number of validation images.", callback=check.count(0)),
    test: int = typer.Option(100, help="Number of test images.", callback=check.count(0)),
    seed: int = typer.Option(0, help="Same seed -> byte-identical dataset.", callback=check.seed()),
    style: str = typer.Option("target", help="'target': photo-textured backgrounds; 'pretrain': gradient "
                              "backgrounds, outlined shapes (a second distribution for fine-tune studies).",
                              callback=check.choice("target", "pretrain")),
    size: int = typer.Option(128, help="Image side in pixels.", callback=check.side(16, 1024)),
    workers: int = typer.Option(0, help="Processes to use (0 = number of cores, at most 2 here).",
                                callback=check.count(0, 256)),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset in OUT."),
    json_out: bool = JSON_OPTION,
):
    """Generate the procedural shapes dataset: 1-3 objects per scene, 5 captions each, class masks."""
    import time

    from vlens.data.shapes import make_shapes

    t0 = time.time()
    make_shapes(out, train=train, val=val, test=test, seed=seed, style=style, size=size, workers=workers or None,
                force=force)
    n, took = train + val + test, time.time() - t0
    if json_out:
        echo_json({"out": str(out), "dataset": str(out / "dataset.json"), "images": n, "train": train, "val": val,
                   "test": test, "style": style, "seed": seed, "size": size, "seconds": round(took, 2)})
        return
    typer.echo(f"wrote {n} images ({train} train / {val} val / {test} test, style {style}) to {out} in {took:.1f} s")


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A dataset JSON (Karpathy or COCO) or a folder (dataset.json / "
                                "metadata.jsonl / metadata.csv).", callback=check.existing("any")),
    images_root: Path = typer.Option(None, "--images", help="Where the image files are, if not next to the JSON.",
                                      callback=check.existing("dir")),
    verify: bool = typer.Option(True, help="Decode every image to find unreadable ones (--no-verify only checks "
                                "that files exist)."),
    json_out: bool = JSON_OPTION,
):
    """Recognise a dataset's format and print images, captions, splits, caption lengths, unreadable files."""
    from vlens.data import load_dataset
    from vlens.data.stats import dataset_stats
    from vlens.images import shown_path

    ds = load_dataset(path, images_root=images_root, strict=False)
    st = dataset_stats(ds, verify_images=verify)
    if json_out:
        echo_json(st)
        _refuse_malformed(ds)
        return
    cw = st["caption_words"]
    lines = [
        f"format      {st['format']}  ({st['source']})",
        f"images      {st['images']}",
        f"captions    {st['captions']}  ({st['captions_per_image']['mean']} per image, "
        f"min {st['captions_per_image']['min']}, max {st['captions_per_image']['max']})",
        "splits      " + ", ".join(f"{k} {v}" for k, v in st["splits"].items()),
        f"caption len {cw['mean']} words on average (median {cw['median']}, min {cw['min']}, max {cw['max']})",
        f"vocabulary  {st['vocabulary']} distinct words",
        f"masks       {st['with_masks']} images have a mask",
    ]
    lines += _listing("unreadable", [f"{shown_path(b['path'])}: {b['reason']}" for b in st["unreadable"]],
                      "" if verify else "existence checked only; use --verify", always=True)
    lines += _listing("malformed", st["problems"], "training and evaluation refuse this file until they are fixed")
    lines += _listing("no caption", [f"{Path(b['path']).name} (id {b['id']}, {b['split']}) has no caption"
                                     for b in st["uncaptioned"]],
                      "evaluation refuses these images; retrieval training skips and counts them")
    typer.echo("\n".join(lines))
    _refuse_malformed(ds)


def _listing(title: str, items: list[str], note: str, always: bool = False, shown: int = 20) -> list[str]:
    """A titled count, the note when there is something to say (or ``always``), then the first ``shown`` items."""
    head = f"{title:<11} {len(items)}" + (f" ({note})" if note and (items or always) else "")
    more = [f"  ... and {len(items) - shown} more (use --json for the full list)"] if len(items) > shown else []
    return [head, *(f"  {x}" for x in items[:shown]), *more]


def _refuse_malformed(ds) -> None:
    """Exit 1 when training or evaluation would refuse the file: malformed entries, or images without a caption
    (retrieval training skips those, but caption evaluation needs references for every image)."""
    from vlens.errors import DatasetError

    if ds.problems:
        raise DatasetError(f"{ds.source} has {len(ds.problems)} malformed entr"
                           f"{'y' if len(ds.problems) == 1 else 'ies'} (listed above)")
    if ds.uncaptioned:
        raise DatasetError(f"{ds.source} has {len(ds.uncaptioned)} image(s) without a caption (listed above): "
                           "retrieval training skips them, caption evaluation refuses them")


@app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="What to fetch: 'opencv-samples' (real photos, the graffiti pair with its "
                               "homography, the aloe stereo pair with its disparities; from Debian's opencv-doc).",
                               callback=check.choice("opencv-samples")),
    deb: Path = typer.Option(None, "--deb", help="Unpack this downloaded opencv-doc_*.deb instead of running "
                             "`apt-get download opencv-doc` (always unpacked: replaces the cached images).",
                             callback=check.existing("file")),
    force: bool = typer.Option(False, "--force", help="Fetch again even if the images are already cached."),
    json_out: bool = JSON_OPTION,
):
    """Fetch real test data into the vlens cache ($VLENS_CACHE, default ~/.cache/vlens), keeping only the images.

    Example: vlens data fetch opencv-samples
    """
    import time

    from vlens.data import opencv_samples
    from vlens.errors import ConfigError

    if name != "opencv-samples":
        raise ConfigError(f"unknown data '{name}'; what can be fetched: opencv-samples")
    t0 = time.time()
    was = opencv_samples.is_available() and not force and deb is None  # a --deb given is always unpacked
    root = opencv_samples.fetch_opencv_samples(deb=deb, force=force)
    files = sorted(p.name for p in root.iterdir() if p.name != opencv_samples.MARKER)
    if json_out:
        echo_json({"name": name, "path": str(root), "files": files, "cached": was,
                   "seconds": round(time.time() - t0, 2)})
        return
    typer.echo(f"{'already cached' if was else 'fetched'}: {len(files)} files of opencv-samples in {root}"
               + ("" if was else f" ({time.time() - t0:.1f} s)"))
