"""``vlens models list|fetch|rm``: each task's default and whether it is cached, the Hugging Face cache, the
embedded builtins; download the real models once; free their space."""

from __future__ import annotations

import typer

from vlens.cli._common import JSON_OPTION, check, echo_json

app = typer.Typer(help="The models vlens uses: each task's real default (used when it is in the Hugging Face cache "
                       "or can be downloaded), the embedded builtin:NAME fallbacks, and the cache itself.\n\n"
                       "  vlens models list                 what each task runs now, what is cached\n"
                       "  vlens models fetch defaults       download the three real defaults (~1.7 GB) once\n"
                       "  vlens models rm ORG/NAME          free a cached model's space\n"
                       "  vlens models rm exports           remove every ONNX export (remade when needed)",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")


@app.command("list")
def list_cmd(json_out: bool = JSON_OPTION):
    """Each task's default and whether it is cached, every cached model with its size, the builtins."""
    from vlens.engines.store import exports_root, list_exports
    from vlens.models.hub import hf_cache_dir, offline_reason
    from vlens.models.inventory import builtins, cached_models, converted_models, task_defaults

    info = {"tasks": task_defaults(), "cached": cached_models(), "converted": converted_models(),
            "builtins": builtins(),
            "cache_dir": str(hf_cache_dir()), "offline": offline_reason(), "exports": list_exports(),
            "exports_dir": str(exports_root())}
    if json_out:
        echo_json(info)
        return
    typer.echo("Task defaults (used without --model):")
    for t in info["tasks"]:
        state = "cached" if t["cached"] else (
            f"damaged ({t['damaged']}; `vlens models fetch {t['real']}` repairs it)" if t.get("damaged") else
            f"not cached (about {t['download_mb']} MB; `{t['fetch']}`)")
        typer.echo(f"  {t['task']:<10} {t['real']:<40} {state}")
        if not t["cached"]:
            typer.echo(f"  {'':<10} otherwise: {t['fallback']} ({t['fallback_knows']})")
    typer.echo(f"\nHugging Face cache ({info['cache_dir']}):")
    if not info["cached"]:
        typer.echo("  empty")
    for r in info["cached"]:
        what = r["kind"] or f"{r['type']}: not a model vlens loads"
        state = "" if r["complete"] else ("  (partial download: rerun `vlens models fetch " + r["id"] + "`)"
                                          if r["partial_download"] else "  (incomplete: no config or weights)")
        if r.get("damaged"):
            state = f"  (damaged: {r['damaged']}; `vlens models fetch {r['id']}` repairs it)"
        typer.echo(f"  {r['id']:<40} {r['size_mb']:>8.1f} MB  {what}{_interp(r)}{state}")
    if info["converted"]:
        typer.echo("\nConverted checkpoint files (--model PATH):")
    for r in info["converted"]:
        cleaning = f", text cleaning: {r['text_cleaning']}" if r["text_cleaning"] else ""
        typer.echo(f"  {r['source']}\n  {'':<40} {r['size_mb']:>8.1f} MB  {r['kind']} ({r['family']}){_interp(r)}"
                   f"{cleaning}")
        for what, source in (r["settings_from"] or {}).items():
            typer.echo(f"  {'':<40} {what}: {source}")
    typer.echo("\nEmbedded (offline, always there):")
    for b in info["builtins"]:
        typer.echo(f"  {b['spec']:<40} {b['size_mb']:>8.1f} MB  {b['kind']}: {b['knows']}{_interp(b)}")
    typer.echo(f"\nONNX exports ({info['exports_dir']}; `vlens models rm exports` removes them):")
    if not info["exports"]:
        typer.echo("  none (made by --engine onnx|auto when a model first runs)")
    for e in info["exports"]:
        if e["state"] == "ok":
            t = e.get("timing") or {}
            state = (f"auto uses {e['choice']} (torch {t.get('torch_ms', 0):.1f} ms, onnx {t.get('onnx_ms', 0):.1f} ms)"
                     + (f", {e['quantize']}" if e["quantize"] != "none" else ""))
        else:
            state = f"{e['state']}: {e['why']}"[:90]
        typer.echo(f"  {e['name']:<48} {e['size_mb']:>8.1f} MB  {state}")
    if info["offline"] == "VLENS_OFFLINE=1":
        typer.echo("\nVLENS_OFFLINE=1: runs without --model use the builtins, cached or not.")
    elif info["offline"]:
        typer.echo(f"\n{info['offline']}: cached defaults are used, nothing is downloaded.")


def _interp(row: dict) -> str:
    return f", pos-embed interpolation: {row['interpolation']}" if row.get("interpolation") else ""


@app.command("fetch")
def fetch_cmd(
    ids: list[str] = typer.Argument(..., help="Hub ids (ORG/NAME) to download, or `defaults` for every task's "
                                    "real default.", callback=check.text(max_len=200)),
    json_out: bool = JSON_OPTION,
):
    """Download models into the Hugging Face cache (size said first, progress bar, an interrupted download
    resumes), then load each to check it works."""
    from vlens.models.defaults import TASKS
    from vlens.models.inventory import fetch

    wanted: list[str] = []
    for i in ids:
        for repo in ([d.real for d in TASKS.values()] if i == "defaults" else [i]):
            if repo not in wanted:
                wanted.append(repo)
    done = []
    for repo in wanted:
        r = fetch(repo)
        done.append(r)
        if not json_out:
            how = "already in the cache" if r["source"] == "cache" else "downloaded"
            typer.echo(f"{repo}: {how}, loads as a {r['kind']} ({r['size_mb']:.1f} MB) at {r['path']}")
    if json_out:
        echo_json(done)


@app.command("rm")
def rm_cmd(
    repo_id: str = typer.Argument(..., metavar="ID", help="The hub id to delete from the Hugging Face cache; "
                                  "`exports` for every ONNX export, `exports:NAME` for one (its name or model spec "
                                  "as `vlens models list` shows it).", callback=check.text(max_len=200)),
    json_out: bool = JSON_OPTION,
):
    """Delete a model (every revision) from the Hugging Face cache, or ONNX exports from the vlens cache."""
    from vlens.models.inventory import remove

    if repo_id == "exports" or repo_id.startswith("exports:"):
        from vlens.engines.store import remove_exports

        gone = remove_exports(repo_id.split(":", 1)[1] if ":" in repo_id else "all")
        freed = sum(e["size_mb"] for e in gone)
        if json_out:
            echo_json({"removed": [e["name"] for e in gone], "freed_mb": round(freed, 2)})
        else:
            typer.echo(f"removed {len(gone)} ONNX export(s) ({freed:.1f} MB freed)")
        return
    r = remove(repo_id)
    if json_out:
        echo_json(r)
    else:
        typer.echo(f"removed {r['id']} ({r['freed_mb']:.1f} MB freed)")
