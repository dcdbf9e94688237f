"""What models this machine holds (``vlens models list|fetch|rm``): the task defaults and whether they are cached,
every model in the Hugging Face cache with its size on disk, the embedded builtins and what they know."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vlens.errors import ModelLoadError


def _kind_of_type(model_type: str) -> str:
    from vlens.models import _ACCEPTS

    return next((k for k, types in _ACCEPTS.items() if model_type in types), "")


def interpolation_of(cfg: dict) -> str:
    """The position-embedding interpolation a model's config.json declares (``pos_embed_interpolation``), else
    transformers' for its type; "" for models that run at their trained size only (CLIP, BLIP)."""
    from vlens.models.pos_embed import CONFIG_KEY, transformers_convention

    return cfg.get(CONFIG_KEY) or transformers_convention(cfg.get("model_type", "")) or ""


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def builtins() -> list[dict]:
    """The embedded models: spec, kind, size, what they know, the first line of their model card."""
    from vlens.models.defaults import knows
    from vlens.models.hub import BUILTIN_DIR, builtin_names

    rows = []
    for name in builtin_names():
        folder = BUILTIN_DIR / name
        cfg = _read_config(folder)
        mtype = cfg.get("model_type", "?")
        card = folder / "MODEL_CARD.md"
        title = next((ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()), "") \
            if card.is_file() else ""
        rows.append({"spec": f"builtin:{name}", "kind": _kind_of_type(mtype), "type": mtype,
                     "size_mb": round(_dir_size(folder) / 1e6, 2), "knows": knows(f"builtin:{name}"),
                     "card": title, "interpolation": interpolation_of(cfg)})
    return rows


def cached_models() -> list[dict]:
    """Every model repo in the Hugging Face cache (:func:`vlens.models.hub.hf_cache_dir`): id, size on disk (blobs,
    counted once), the model type and kind vlens would load it as ("" when vlens cannot), and whether a complete
    snapshot (config + weights) is there."""
    from vlens.models.hub import cached, damage, hf_cache_dir

    root = hf_cache_dir()
    rows = []
    if not root.is_dir():
        return rows
    for repo in sorted(root.glob("models--*")):
        repo_id = repo.name[len("models--"):].replace("--", "/", 1)
        snap = cached(repo_id)
        cfg = _read_config(snap) if snap else {}
        mtype = cfg.get("model_type", "?")
        partial = any(repo.glob("blobs/*.vlens-part")) or any(repo.glob("blobs/*.incomplete"))
        found = damage(snap) if snap is not None else None
        rows.append({"id": repo_id, "size_mb": round(_dir_size(repo) / 1e6, 1), "type": mtype,
                     "kind": _kind_of_type(mtype), "complete": snap is not None, "partial_download": partial,
                     "damaged": f"{found[0]} {found[1]}" if found else None,
                     "path": str(snap or repo), "interpolation": interpolation_of(cfg)})
    return rows


def converted_models() -> list[dict]:
    """Checkpoint files converted by ``--model PATH`` (``$VLENS_CACHE/converted``): the file, its family and
    layout, the position-embedding interpolation and text cleaning it got, and which source decided its settings."""
    from vlens.models.checkpoints import converted_root

    rows = []
    root = converted_root()
    for folder in sorted(root.glob("*/CONVERTED.json")) if root.is_dir() else []:
        try:
            info = json.loads(folder.read_text())
        except (OSError, ValueError):
            continue
        cfg = _read_config(folder.parent)
        rows.append({"source": info.get("source", "?"), "family": info.get("family", "?"),
                     "type": cfg.get("model_type", "?"), "kind": _kind_of_type(cfg.get("model_type", "")),
                     "interpolation": interpolation_of(cfg), "text_cleaning": info.get("text_cleaning", ""),
                     "settings_from": info.get("settings_from", ""), "path": str(folder.parent),
                     "size_mb": round(_dir_size(folder.parent) / 1e6, 1)})
    return rows


def task_defaults() -> list[dict]:
    """Each task's default: the real id, whether it is cached, its download size, the builtin fallback."""
    from vlens.models.defaults import TASKS
    from vlens.models.hub import cached, damage

    rows = []
    for d in TASKS.values():
        snap = cached(d.real)
        found = damage(snap) if snap is not None else None
        rows.append({"task": d.task, "real": d.real, "cached": snap is not None and not found,
                     "damaged": f"{found[0]} {found[1]}" if found else None, "download_mb": d.size_mb,
                     "fallback": d.fallback, "fallback_knows": d.knows, "commands": d.commands,
                     "fetch": d.fetch_command})
    return rows


def fetch(repo_id: str, *, progress: bool = True) -> dict:
    """Download ``repo_id`` into the Hugging Face cache (resuming a partial download), then load it to check it
    works. Returns {id, path, kind, source: cache (already there) | hub (downloaded), size_mb}."""
    from vlens.models import load
    from vlens.models.hub import cached, damage, damaged_message, download, forget_choices, offline_reason

    if repo_id.startswith("builtin:") or Path(repo_id).expanduser().exists() or repo_id.count("/") != 1:
        raise ModelLoadError(f"'{repo_id}' is not a hub id (ORG/NAME, e.g. facebook/dino-vits8); builtins and "
                             "local folders need no fetch")
    snap = cached(repo_id)
    source = "cache"
    found = damage(snap) if snap is not None else None
    if found:  # repair: the damaged file goes (its blob too, else the download would trust it), then it comes again
        why = offline_reason()
        if why:
            raise ModelLoadError(f"{damaged_message(repo_id, found).split(';')[0]}, and {why} forbids downloading it "
                                 f"again; unset it and rerun `vlens models fetch {repo_id}`, or `vlens models rm "
                                 f"{repo_id}`")
        _remove_damaged(snap, found[0])
        forget_choices()
        snap = None
    if snap is None:
        snap = download(repo_id, progress=progress)
        source = "hub"
        found = damage(snap)
        if found:
            raise ModelLoadError(f"downloaded '{repo_id}' again but {found[0]} {found[1]} (damaged on the hub?); "
                                 f"`vlens models rm {repo_id}` frees it")
    from vlens.models import model_type

    mtype = model_type(snap)
    kind = _kind_of_type(mtype)
    if not kind:
        raise ModelLoadError(f"'{repo_id}' is a '{mtype}' model, which vlens does not use (it loads ViT/DINO/DINOv2 "
                             "backbones, BLIP captioners and CLIP dual encoders); `vlens models rm "
                             f"{repo_id}` frees its space")
    load(repo_id, kind)  # raises ModelLoadError when the files do not load
    return {"id": repo_id, "path": str(snap), "kind": kind, "source": source,
            "size_mb": round(_dir_size(snap.parent.parent) / 1e6, 1)}


def _remove_damaged(snap: Path, name: str) -> None:
    """Delete ``name`` from a snapshot: the link (or file) and, when it is a link into ``blobs/``, the blob it
    names (downloads skip blobs that exist), so the next download fetches that file again."""
    f = snap / name
    if f.is_symlink():
        blob = Path(os.path.realpath(f))
        if blob.parent.name == "blobs" and blob.exists():
            blob.unlink()
    if f.exists() or f.is_symlink():
        f.unlink()


def remove(repo_id: str) -> dict:
    """Delete ``repo_id`` (all its revisions and blobs) from the Hugging Face cache; returns {id, freed_mb}."""
    from vlens.models.hub import forget_choices, hf_cache_dir

    if repo_id.startswith("builtin:"):
        raise ModelLoadError(f"'{repo_id}' is embedded in vlens and cannot be removed")
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if repo_id.count("/") != 1 or not repo.is_dir():
        have = ", ".join(r["id"] for r in cached_models()) or "none"
        raise ModelLoadError(f"'{repo_id}' is not in the Hugging Face cache {hf_cache_dir()} (cached: {have})")
    size = _dir_size(repo)
    shutil.rmtree(repo)
    forget_choices()
    return {"id": repo_id, "freed_mb": round(size / 1e6, 1)}
