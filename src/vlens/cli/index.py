"""``vlens index build|update|info`` and ``vlens search``: a persistent, incremental image search index."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_OPTION,
    JSON_OPTION,
    QUANTIZE_OPTION,
    WORKERS_OPTION,
    check,
    echo_json,
)

app = typer.Typer(help="Build and maintain a search index of an image folder (FAISS vectors + SQLite metadata). "
                       "Killing a build or update is safe: rerun it to finish. For large collections run it under "
                       "`accelerate launch -m vlens index build ...` or `torchrun --nproc_per_node N -m vlens "
                       "index build ...`: each process embeds its shard, the first writes one index.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="index")
    root.command("search")(search_cmd)


def _report(rep, json_out: bool, index: Path) -> None:
    if json_out:
        d = {k: getattr(rep, k) for k in ("total", "added", "changed", "removed", "renamed", "reused", "unchanged",
                                          "embedded", "seconds", "embed_seconds")}
        from vlens.models.hub import source_of
        from vlens.retrieval.index import read_manifest

        model = read_manifest(index).get("model") if (Path(index) / "manifest.json").is_file() else None
        d.update(index=str(index), model=model, model_source=source_of(model), images_per_s=round(rep.images_per_s, 2),
                 skipped=[{"path": p, "reason": r} for p, r in rep.skipped], passed_over=rep.passed_over,
                 metadata_read=rep.described)
        echo_json(d)
    else:
        typer.echo(rep.summary())


@app.command("build")
def build_cmd(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Folder of images to index (searched recursively; paths are stored "
                                  "relative to it).", callback=check.existing("dir")),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create. If it already indexes the same "
                             "folder with the same model, the build resumes/updates instead.",
                             callback=check.output("dir")),
    model: str = typer.Option(None, "--model", "-m", help="Dual encoder: hub id, save_pretrained folder or "
                              "builtin:NAME. Default: the index's own model when OUT is an index, else "
                              "openai/clip-vit-base-patch32 when cached or downloadable, else builtin:clip-tiny "
                              "(with a note; see `vlens models list`).", callback=check.text()),
    kind: str = typer.Option("flat", "--kind", help="flat = exact (default; fine up to ~1M images). ivf = "
                             "inverted lists, hnsw = graph: approximate, for millions. ivfpq = compressed "
                             "(--pq-bytes per vector in RAM, exact re-ranking from the memory-mapped file), for "
                             "100M+. Or a FAISS factory string, e.g. 'IVF4096,PQ64'. Recall@10 against exact "
                             "search is measured and shown by `vlens index info`; see the README's memory table. On an "
                             "existing index a new kind rebuilds the search structure from the stored vectors (no "
                             "re-embedding).",
                             callback=check.text(max_len=200)),
    pq_bytes: int = typer.Option(0, "--pq-bytes", help="ivfpq: bytes per vector (0 = about dim/4; must divide "
                                 "the dimension). Fewer = less RAM, more re-ranking needed for the same recall.",
                                 callback=check.integer(0, 4096)),
    batch_size: int = typer.Option(32, "--batch-size", help="Images embedded and committed together.",
                                   callback=check.count(1, 4096)),
    captioner: str = typer.Option(None, "--captioner", help="Also caption each image with this BLIP model "
                                  "(e.g. builtin:blip-tiny); captions show in results. Slower.", callback=check.text()),
    nlist: int = typer.Option(0, "--nlist", help="IVF lists (0 = about 4*sqrt(N)).", callback=check.integer(0, 65536)),
    target_recall: float = typer.Option(0.95, "--target-recall", help="ANN search effort (nprobe / efSearch) "
                                        "is raised until recall@10 against exact search reaches this.",
                                        callback=check.number(0, 1, lo_open=True)),
    force: bool = typer.Option(False, "--force", help="Replace an existing index at --out."),
    workers: int = WORKERS_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_OPTION,
    quantize: str = QUANTIZE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Embed every image under IMAGES and write a search index (unreadable files are skipped and listed)."""
    from vlens.bulk import Processes
    from vlens.engines.int8 import check_int8
    from vlens.retrieval.index import IndexConfig, build_index, is_index, read_manifest

    check_int8("clip-image", quantize)  # one line, before any work, where int8 did not keep quality

    if not model and not force and is_index(out):
        model = read_manifest(out).get("model")  # resume / update with the model the index was built with
    if not model:
        from vlens.models import default_spec

        model = default_spec("dual_encoder")
    cfg = IndexConfig(model=model, kind=kind, batch_size=batch_size, captioner=captioner, nlist=nlist,
                      pq_bytes=pq_bytes, target_recall=target_recall)
    # on an existing index only the search settings typed here change (the rest stay as stored)
    given = {k for k in ("kind", "nlist", "pq_bytes", "target_recall")
             if ctx.get_parameter_source(k).name != "DEFAULT"}
    rep = build_index(images, out, cfg, force=force, log=lambda m: typer.echo(m, err=True), workers=workers,
                      device=device, dtype=dtype, given=given, engine=engine)
    if Processes().is_main:
        _report(rep, json_out, out)


@app.command("update")
def update_cmd(
    index: Path = typer.Argument(..., help="An index folder made by `vlens index build`.",
                                 callback=check.path()),
    root: Path = typer.Option(None, "--root", help="The image folder moved: index this folder from now on.",
                              callback=check.existing("dir")),
    workers: int = WORKERS_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = ENGINE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Add new and changed files, drop deleted ones, follow renames; unchanged images are not re-embedded."""
    from vlens.bulk import Processes
    from vlens.retrieval.index import update_index

    rep = update_index(index, root=root, log=lambda m: typer.echo(m, err=True), workers=workers, device=device,
                       dtype=dtype, engine=engine)
    if Processes().is_main:
        _report(rep, json_out, index)


@app.command("info")
def info_cmd(
    index: Path = typer.Argument(..., help="An index folder.", callback=check.path()),
    json_out: bool = JSON_OPTION,
):
    """Model, size, kind, measured ANN recall@10, and every file left out: the kinds the last build or update
    passed over (videos, sidecars, formats whose reader is not installed) and the unreadable files by name."""
    from vlens.images import shown_path
    from vlens.retrieval.index import all_skipped
    from vlens.retrieval.index_reader import ImageIndex
    from vlens.retrieval.index_store import skip_kinds

    ix = ImageIndex(index)
    info = ix.info()
    ix.close()
    info["skipped"] = all_skipped(info)  # what build and update refuse by name is not stored: list it as they do
    if json_out:
        echo_json(info)
        return
    ann = info["ann"]
    lines = [f"index     {info['index']}", f"images    {info['count']} from {info['root']}",
             f"model     {info['model']} ({info['dim']}-d, {info['metric']})",
             f"kind      {info['kind']}" + (f" (nlist {ann['nlist']})" if ann.get("nlist") else "")
             + (f", {ann['pq_bytes']} bytes per vector + exact re-ranking" if ann.get("pq_bytes") else "")]
    if info["kind"] == "flat":
        lines.append("recall@10 1.000 (exact search)")
    elif ann.get("recall_at_10") is not None:
        lines.append(f"recall@10 {ann['recall_at_10']:.3f} against exact search ({ann['recall_queries']} "
                     f"queries, {ann['param']}={ann['value']})")
    if info["captioner"]:
        lines.append(f"captions  by {info['captioner']}")
    lines += [f"on disk   {info['disk_bytes'] / 1e6:.1f} MB",
              f"updated   {info['updated']} (vlens {info['vlens_version']})"]
    if info["stale"]:
        lines.append("state     the FAISS file is behind the database (an interrupted run?): searches are exact "
                     "until `vlens index update` rebuilds it")
    kinds = skip_kinds(info.get("passed_over") or {}, len(info["skipped"]))
    if kinds:  # the kinds as counted by the last build/update; the unreadable files by name
        lines.append(f"skipped   {kinds}" + (":" if info["skipped"] else ""))
        lines += [f"  {shown_path(s['path'], info['root'])}: {s['reason']}" for s in info["skipped"][:20]]
        if len(info["skipped"]) > 20:
            lines.append(f"  ... and {len(info['skipped']) - 20} more (--json lists all)")
    typer.echo("\n".join(lines))


@app.command("dupes")
def dupes_cmd(
    index: Path = typer.Argument(..., help="An index folder made by `vlens index build`.", callback=check.path()),
    threshold: float = typer.Option(0.95, "--threshold", "-t", help="Near copies: the smallest cosine similarity "
                                    "of the two images' embeddings (1 = identical).",
                                    callback=check.number(-1, 1)),
    max_bits: int = typer.Option(10, "--max-bits", help="Near copies: at most this many of the 64 bits of the "
                                 "perceptual hash (dHash) may differ (0 = same layout of light and dark).",
                                 callback=check.integer(0, 64)),
    neighbours: int = typer.Option(10, "--neighbours", help="Candidates compared per image (its nearest in the "
                                   "index); raise it when one picture has many copies.",
                                   callback=check.count(1, 1000)),
    out: Path = typer.Option(None, "--out", "-o", help="Also write a contact sheet per group here "
                             "(group-001.png ...).", callback=check.output("dir")),
    json_out: bool = JSON_OPTION,
):
    """Group duplicate images: exact copies (same bytes) and near copies (a resized or re-encoded version: its
    embedding within --threshold cosine AND its perceptual hash within --max-bits). In each group the largest
    file comes first (usually the original to keep). Nothing is deleted."""
    from vlens.images import shown_name
    from vlens.retrieval.dupes import find_duplicates, group_sheets
    from vlens.retrieval.index_reader import ImageIndex

    ix = ImageIndex(index)
    try:
        groups = find_duplicates(ix, threshold=threshold, max_bits=max_bits, neighbours=neighbours,
                                 progress=not json_out)
        sheets = group_sheets(groups, ix.root, out) if out is not None else []
        root, count = ix.root, len(ix)
    finally:
        ix.close()
    spare = sum(sum(g.sizes[1:]) for g in groups)
    if json_out:
        echo_json({"index": str(index), "root": str(root), "images": count, "threshold": threshold,
                   "max_bits": max_bits, "spare_bytes": spare,
                   "groups": [{"kind": g.kind, "images": [{"id": i, "path": p, "size": z, "similarity": c, "bits": b}
                                                          for i, p, z, c, b in zip(g.ids, g.paths, g.sizes,
                                                                                   g.similarity, g.bits)],
                               "sheet": str(sheets[n]) if sheets else None} for n, g in enumerate(groups)]})
        return
    exact = sum(g.kind == "exact" for g in groups)
    typer.echo(f"{len(groups)} group(s) of duplicates among {count} images ({exact} exact, {len(groups) - exact} "
               f"near); all but the first of each: {sum(len(g.ids) - 1 for g in groups)} files, "
               f"{spare / 1e6:.1f} MB")
    for n, g in enumerate(groups, 1):
        typer.echo(f"group {n}: {g.kind}, {len(g.ids)} images")
        for j, (p, z, c, b) in enumerate(zip(g.paths, g.sizes, g.similarity, g.bits)):
            extra = "" if j == 0 else f"  cosine {c:.3f}" + (f", {b} bits" if b is not None else "")
            typer.echo(f"  {'keep' if j == 0 else '    '}  {shown_name(p)}  ({z / 1e3:.0f} kB){extra}")
    if sheets:
        typer.echo(f"contact sheets: {out}/group-001.png ... ({len(sheets)})")


SEARCH_HELP = """Find the images most like a query: words, pictures, or both, with weights and minus terms.
Prints rank, cosine similarity and path of each hit.

\b
QUERY is rclip's form: terms joined by + (add) and - (subtract), each term optionally weighted N:
  vlens search IDX "2:golden retriever" + ./pool.jpg - fruit
  vlens search IDX sunset beach - people          (words between operators are one phrase)
  vlens search IDX ./cat.jpg + "at night"
A term is an image when it starts with ./ ../ / ~/ or file:// or names an existing image file; id:N is the
indexed image with id N. Each term is a unit vector e; the query is sum(sign * weight * e) scaled to
length 1, so a score is the cosine similarity of the query and the image. Image terms weigh more than text
terms of the same weight (images are closer to images): give text 2: to 4: to balance. Quote a phrase that
contains - or +; put -- before a query that starts with -.

\b
Filters restrict the search itself (the top k are the best k among the images that pass):
  --after/--before DATE   capture time (EXIF), YYYY-MM-DD (whole day, both ends), YYYY, or YYYY-MM-DDTHH:MM
  --camera TEXT           make or model contains TEXT (any case)
  --folder GLOB           folder (relative to the indexed root) or a parent matches GLOB
  --near LAT,LON,KM       GPS position within KM kilometres
  --format LIST           jpg,heic,...
Photos without the metadata a filter needs are left out by it.

\b
For pipes: --paths prints bare absolute paths, one per line (-0: NUL-separated), e.g.
  vlens search IDX beach --after 2024-06-01 -0 | xargs -0 feh

With an ONNX export of the index model's towers (made by `vlens index build`, or by the first search), the
search runs without torch and answers in about a second.
"""


def search_cmd(
    index: Path = typer.Argument(..., help="An index folder made by `vlens index build`.",
                                 callback=check.path()),
    query: list[str] = typer.Argument(None, help="The query: terms joined by + and -, e.g. "
                                      "\"2:golden retriever\" + ./pool.jpg - fruit (see above).",
                                      callback=check.text()),
    image: Path = typer.Option(None, "--image", "-i", help="One more image term (+, weight 1); alone, search "
                               "with this image.", callback=check.existing("file")),
    k: int = typer.Option(5, "-k", "--top", help="How many results.", callback=check.count(1, 10000)),
    after: str = typer.Option(None, "--after", help="Taken on or after this date (YYYY-MM-DD, YYYY, or "
                              "YYYY-MM-DDTHH:MM; UTC as stored).", callback=check.text(max_len=40)),
    before: str = typer.Option(None, "--before", help="Taken on or before this date (a date includes its whole "
                               "day; a time is exact, excluded).", callback=check.text(max_len=40)),
    camera: str = typer.Option(None, "--camera", help="Camera make or model contains this (any case), e.g. "
                               "iphone.", callback=check.text(max_len=200)),
    folder: str = typer.Option(None, "--folder", help="Only images whose folder (relative to the indexed root) "
                               "or a parent of it matches this glob, e.g. 'trips/2024*'; '.' is the root alone.",
                               callback=check.text(max_len=1000)),
    near: str = typer.Option(None, "--near", help="Only photos taken within KM km of LAT,LON (GPS in the EXIF), "
                             "e.g. 48.8584,2.2945,5.", callback=check.text(max_len=100)),
    fmt: str = typer.Option(None, "--format", help="Only these formats, comma-separated, e.g. jpg,heic.",
                            callback=check.text(max_len=200)),
    paths: bool = typer.Option(False, "--paths", "-p", help="Print bare absolute paths, one per line, best "
                               "first (for pipes and image viewers)."),
    null: bool = typer.Option(False, "-0", "--null", help="Like --paths, but each path ends with a NUL "
                              "character (xargs -0: safe for any file name)."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write a contact sheet PNG of the results here.",
                             callback=check.output("file")),
    engine: str = ENGINE_OPTION,
    json_out: bool = JSON_OPTION,
):
    from vlens.errors import ConfigError
    from vlens.images import shown_name
    from vlens.retrieval.filters import Filters
    from vlens.retrieval.query import parse_query, query_text
    from vlens.retrieval.search import Searcher, contact_sheet

    if not query and image is None:
        raise ConfigError("give a QUERY (words, ./image paths, + and - terms) or --image FILE; "
                          "see `vlens search --help`")
    if json_out and (paths or null):
        raise ConfigError("choose one output: --json, or --paths / -0")
    filters = Filters.from_text(after=after, before=before, camera=camera, folder=folder, near=near, formats=fmt)
    terms = parse_query(query) if query else []
    s = Searcher(index, engine=engine)
    allowed = s.allowed(filters)
    vec = s.query_vector(terms, [image] if image is not None else ())
    hits = s.vectors(vec[None], k, allowed=allowed)[0]
    shown = query_text(terms) + (f" + {image}" if image is not None and terms else str(image) if image else "")
    if filters.active and not (paths or null or json_out):
        typer.echo(f"filter: {filters.describe()}: {len(allowed)} of {len(s.index)} images pass", err=True)
    if out is not None:
        title = f"query: {shown}" + (f"  [{filters.describe()}]" if filters.active else "")
        contact_sheet(hits, s.index.root, out, title=title, query_image=image if not terms else None)
    if paths or null:
        import sys

        end = "\0" if null else "\n"
        for h in hits:
            sys.stdout.write(str(s.index.root / h.path) + end)
        sys.stdout.flush()
        return
    if json_out:
        echo_json({"index": str(index), "query": shown if terms else None, "image": str(image) if image else None,
                   "terms": [{"kind": t.kind, "value": t.value, "weight": t.weight, "sign": t.sign} for t in terms],
                   "filters": filters.describe() or None, "passed": None if allowed is None else int(len(allowed)),
                   "root": str(s.index.root), "hits": hits, "sheet": str(out) if out else None})
        return
    if not hits:
        typer.echo("no results (no image passes the filters)" if filters.active else "no results (the index is empty)")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:+.4f}  {shown_name(h.path)}" + (f"  \"{h.caption}\"" if h.caption else ""))
    if out is not None:
        typer.echo(f"contact sheet: {out}")


search_cmd.__doc__ = SEARCH_HELP
