"""``vlens index build|update|info`` and ``vlens search``: a persistent, incremental image search index."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    ENGINE_OPTION,
    JSON_OPTION,
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
    json_out: bool = JSON_OPTION,
):
    """Embed every image under IMAGES and write a search index (unreadable files are skipped and listed)."""
    from vlens.bulk import Processes
    from vlens.retrieval.index import IndexConfig, build_index, is_index, read_manifest

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
    from vlens.images import shown_name
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
        lines += [f"  {shown_name(s['path'])}: {s['reason']}" for s in info["skipped"][:20]]
        if len(info["skipped"]) > 20:
            lines.append(f"  ... and {len(info['skipped']) - 20} more (--json lists all)")
    typer.echo("\n".join(lines))


def search_cmd(
    index: Path = typer.Argument(..., help="An index folder made by `vlens index build`.",
                                 callback=check.path()),
    query: str = typer.Argument(None, help="What to look for, in words, e.g. \"a white airplane\".",
                                callback=check.text()),
    image: Path = typer.Option(None, "--image", "-i", help="Search with an image instead of words.",
                               callback=check.existing("file")),
    k: int = typer.Option(5, "-k", "--top", help="How many results.", callback=check.count(1, 10000)),
    out: Path = typer.Option(None, "--out", "-o", help="Also write a contact sheet PNG of the results here.",
                             callback=check.output("file")),
    engine: str = ENGINE_OPTION,
    json_out: bool = JSON_OPTION,
):
    """Find the images most similar to a text or an image query; prints rank, cosine similarity and path.

    With an ONNX export of the index model's towers (made by `vlens index build`, or by the first search), the
    search runs without torch and answers in about a second."""
    from vlens.errors import ConfigError
    from vlens.images import shown_name
    from vlens.retrieval.search import Searcher, contact_sheet

    if (query is None) == (image is None):
        raise ConfigError("give a text QUERY or --image FILE (exactly one)")
    s = Searcher(index, engine=engine)
    hits = s.text(query, k) if query is not None else s.image(image, k)
    if out is not None:
        title = f'query: "{query}"' if query is not None else f"query image: {image.name}"
        contact_sheet(hits, s.index.root, out, title=title, query_image=image)
    if json_out:
        echo_json({"index": str(index), "query": query, "image": str(image) if image else None,
                   "root": str(s.index.root), "hits": hits, "sheet": str(out) if out else None})
        return
    if not hits:
        typer.echo("no results (the index is empty)")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:+.4f}  {shown_name(h.path)}" + (f"  \"{h.caption}\"" if h.caption else ""))
    if out is not None:
        typer.echo(f"contact sheet: {out}")
