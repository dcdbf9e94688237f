"""``vlens models``: what models can be used offline right now (embedded ones and the Hugging Face cache)."""

from __future__ import annotations

import typer

from vlens.cli._common import JSON_OPTION, echo_json

app = typer.Typer(help="List the models vlens can load offline: embedded builtin:NAME models and the HF cache.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")


def offline_models() -> list[dict]:
    """Embedded models and cached hub models of the families vlens uses."""
    import json

    from vlens.models import _ACCEPTS
    from vlens.models.hub import BUILTIN_DIR, builtin_names

    kind_of = {t: k for k, types in _ACCEPTS.items() for t in types}
    rows = []
    for name in builtin_names():
        folder = BUILTIN_DIR / name
        mtype = json.loads((folder / "config.json").read_text()).get("model_type", "?")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        card = folder / "MODEL_CARD.md"
        summary = next((ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()), "") \
            if card.is_file() else ""
        rows.append({"spec": f"builtin:{name}", "kind": kind_of.get(mtype, "?"), "type": mtype,
                     "size_mb": round(size / 1e6, 2), "about": summary})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                cfg = next((f.file_path for f in rev.files if f.file_name == "config.json"), None)
                mtype = json.loads(cfg.read_text()).get("model_type", "?") if cfg else "?"
                if mtype in kind_of:
                    rows.append({"spec": repo.repo_id, "kind": kind_of[mtype], "type": mtype,
                                 "size_mb": round(rev.size_on_disk / 1e6, 1), "about": "Hugging Face cache"})
                    break
    except Exception:  # noqa: BLE001 - no cache folder, or an unreadable one: nothing cached to list
        pass
    return rows


@app.command("list")
def list_cmd(json_out: bool = JSON_OPTION):
    """Models usable without a network: pass the spec to --model."""
    rows = offline_models()
    if json_out:
        echo_json(rows)
        return
    if not rows:
        typer.echo("no models available offline")
        return
    w = max(len(r["spec"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['spec']:<{w}}  {r['kind']:<12} {r['type']:<8} {r['size_mb']:>7.2f} MB  {r['about']}")
