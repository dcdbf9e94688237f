"""Resolve a model spec to a local folder: ``builtin:NAME``, a folder written by ``save_pretrained``, or a hub id.

Hub ids are looked up in the Hugging Face cache first (``HF_HUB_CACHE`` / ``HF_HOME``). A download is tried only
when ``HF_HUB_OFFLINE`` is not set *and* the hub answers a 3-second connection probe; otherwise we fail at once
with a message naming the offline choices, instead of letting huggingface_hub retry for a minute.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from vlens.errors import ModelLoadError

BUILTIN_DIR = Path(__file__).parent / "builtin"
OFFLINE_CHOICES = ("use an embedded model (builtin:dino-tiny, builtin:blip-tiny, builtin:clip-tiny), "
                   "a local folder written by save_pretrained (--model PATH), or download the model into "
                   "the Hugging Face cache on a machine with internet")


def builtin_names() -> list[str]:
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file())


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def resolve(spec: str) -> tuple[Path, str]:
    """Return ``(folder, source)`` where source is 'builtin', 'local' or 'hub'."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        folder = BUILTIN_DIR / name
        if not (folder / "config.json").is_file():
            have = ", ".join(f"builtin:{n}" for n in builtin_names()) or "none"
            raise ModelLoadError(f"no embedded model '{spec}' in this install (available: {have})")
        return folder, "builtin"
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} exists but has no config.json; point --model at a folder written by "
                                 "save_pretrained")
        return path, "local"
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"no such model folder: {spec}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True)), "hub"
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        pass
    if _truthy("HF_HUB_OFFLINE"):
        raise ModelLoadError(f"model '{spec}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                             + OFFLINE_CHOICES)
    if not hub_reachable():
        raise ModelLoadError(f"model '{spec}' is not in the Hugging Face cache and the hub cannot be reached "
                             "(no network?); " + OFFLINE_CHOICES)
    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])), "hub"
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not download '{spec}': {exc.__class__.__name__}: {exc}. "
                             + OFFLINE_CHOICES) from None
