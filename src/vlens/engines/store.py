"""The export cache: where an ONNX export of a tower lives, what it was made from, and whether it is intact.

One folder per export under ``$VLENS_CACHE/exports`` (default ``~/.cache/vlens/exports``), named
``MODEL-TOWER-KEY`` where KEY hashes everything the export depends on: the weights fingerprint
(:func:`weights_fingerprint`), the tower, its input-shape family, the quantisation, the ONNX opset, the
onnxruntime version and this module's format. A folder holds ``model.onnx`` and ``manifest.json`` (written last):
the key's parts, the file's size, mtime and SHA-256, the verification against torch and the timed runs ``auto``
follows (:mod:`vlens.engines.export`).

Writes are atomic: the export is made in a temp folder ``.NAME.XXXX`` beside its final name and renamed into
place, so a killed export leaves a temp folder (removed by the next export of that name), never a half-written
export. On load :func:`lookup` checks the manifest and the file: the size always, the SHA-256 whenever the file's
size or mtime differ from what the manifest recorded (a file rewritten in place); a damaged export reads as
``corrupt`` and is rebuilt, never used. No torch here: the torch-free search path reads this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vlens.runs import file_sha256

FORMAT = 2  # 2: the file is ONNX Runtime's optimised graph (loaded without re-optimising)
OPSET = 17
ONNX_FILE = "model.onnx"
MANIFEST = "manifest.json"
SAMPLE_BLOCK = 1 << 16
SAMPLES = 64
FULL_HASH_BELOW = 64 << 20
"""Weight files smaller than this are hashed whole; larger ones by size, their first MiB (a safetensors header
names every tensor's shape and offset) and :data:`SAMPLES` blocks spread evenly through the file."""


def exports_root() -> Path:
    """``$VLENS_CACHE/exports`` (the same cache folder as :func:`vlens.data.cache.cache_dir`, which sits a floor
    above this one)."""
    base = os.environ.get("VLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vlens")
    return Path(base) / "exports"


def runtime_version() -> str | None:
    """The installed onnxruntime version, read from its metadata (no import), or None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return None


def _weight_files(folder: Path) -> list[Path]:
    pats = ("*.safetensors", "pytorch_model*.bin", "*.pth", "*.pt")
    return sorted({f for p in pats for f in folder.glob(p) if f.is_file()})


def _file_digest(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BELOW:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return
        h.update(fh.read(1 << 20))
        for i in range(SAMPLES):
            fh.seek((size - SAMPLE_BLOCK) * i // (SAMPLES - 1))
            h.update(fh.read(SAMPLE_BLOCK))


@functools.lru_cache(maxsize=32)
def _fingerprint(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(folder)
    cfg = root / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in _weight_files(root):
        _file_digest(f, h)
    return h.hexdigest()


def weights_fingerprint(folder) -> str:
    """A content fingerprint of a model folder: its config.json and weight files (see :data:`FULL_HASH_BELOW`).
    Copies of the same model share it; new weights change it. Cached per process by the files' size and mtime."""
    root = Path(folder).resolve()
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in [root / "config.json",
                                                                             *_weight_files(root)] if f.is_file())
    return _fingerprint(str(root), stamp)


@dataclass(frozen=True)
class ExportId:
    """What identifies one export: the model folder's fingerprint, the tower, its input-shape family."""

    model: str  # the spec as the user gave it (shown in listings)
    fingerprint: str
    tower: str  # clip-image | clip-text | vit-tokens | blip-vision
    family: str  # e.g. "b,3,224,224" or "b,s" (b = any batch, s = any length)
    quantize: str = "none"

    def key(self) -> str:
        parts = {"format": FORMAT, "fingerprint": self.fingerprint, "tower": self.tower, "family": self.family,
                 "quantize": self.quantize, "opset": OPSET, "onnxruntime": runtime_version()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.model.split(":")[-1]).name or "model")[:40]
        return exports_root() / f"{slug}-{self.tower}-{self.key()}"


@dataclass
class Found:
    """What :func:`lookup` found: ``state`` ok | refused (verification failed; torch runs) | missing | corrupt."""

    state: str
    folder: Path
    manifest: dict | None = None
    why: str = ""

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_FILE


def read_manifest(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def check(folder: Path) -> Found:
    """Is the export in ``folder`` usable? (see the module docstring for what is checked)."""
    if not folder.is_dir():
        return Found("missing", folder)
    m = read_manifest(folder)
    if m is None:
        return Found("corrupt", folder, None, "no readable manifest.json")
    if m.get("status") == "refused":
        return Found("refused", folder, m, m.get("reason", ""))
    f = folder / ONNX_FILE
    try:
        st = f.stat()
    except OSError:
        return Found("corrupt", folder, m, f"{ONNX_FILE} is missing")
    if st.st_size != m.get("bytes"):
        return Found("corrupt", folder, m, f"{ONNX_FILE} is {st.st_size} bytes, the manifest says {m.get('bytes')}")
    if st.st_mtime_ns != m.get("mtime_ns") and file_sha256(f) != m.get("sha256"):
        return Found("corrupt", folder, m, f"{ONNX_FILE} does not match the SHA-256 in its manifest")
    return Found("ok", folder, m)


def lookup(eid: ExportId) -> Found:
    return check(eid.folder())


def finish(tmp: Path, final: Path, manifest: dict) -> Path:
    """Record ``tmp/model.onnx``'s size, mtime and hash in the manifest, write it, and rename ``tmp`` to ``final``
    (replacing a damaged or refused export there)."""
    from vlens.runs import apply_umask_tree, write_json

    f = tmp / ONNX_FILE
    if f.is_file():
        st = f.stat()
        manifest.update(bytes=st.st_size, mtime_ns=st.st_mtime_ns, sha256=file_sha256(f))
    write_json(tmp / MANIFEST, manifest)
    apply_umask_tree(tmp)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def list_exports() -> list[dict]:
    """Every export in the cache: folder, model, tower, family, quantisation, state, size, recorded choice."""
    root = exports_root()
    rows = []
    if not root.is_dir():
        return rows
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = check(folder)
        m = found.manifest or {}
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        rows.append({"name": folder.name, "path": str(folder), "model": m.get("model"), "tower": m.get("tower"),
                     "family": m.get("family"), "quantize": m.get("quantize", "none"), "state": found.state,
                     "why": found.why, "size_mb": round(size / 1e6, 2), "choice": m.get("choice"),
                     "timing": m.get("timing"), "verify": m.get("verify"),
                     "onnxruntime": m.get("onnxruntime"), "opset": m.get("opset"), "created": m.get("created")})
    return rows


def remove_exports(which: str) -> list[dict]:
    """Delete exports: ``all``, one folder name, or every export of a model (its spec as listed). Returns what was
    removed; a one-line ModelLoadError when nothing matches."""
    from vlens.errors import ModelLoadError

    rows = list_exports()
    chosen = rows if which == "all" else [r for r in rows if which in (r["name"], r["model"])]
    if not chosen:
        have = ", ".join(sorted({r["model"] or r["name"] for r in rows})) or "none"
        raise ModelLoadError(f"no ONNX export matches '{which}' (exports of: {have}); `vlens models list` shows "
                             "them, `vlens models rm exports` removes them all")
    for r in chosen:
        shutil.rmtree(r["path"], ignore_errors=True)
    return chosen
