"""Resolve a model spec to a local folder: ``builtin:NAME``, a folder written by ``save_pretrained``, or a hub id;
and, with no spec, each task's default (:mod:`vlens.models.defaults`: the real model first, the builtin otherwise).

Hub ids are looked up in the Hugging Face cache first (``HF_HUB_CACHE`` / ``HF_HOME``, read at call time, without
touching the network). A download is tried only when neither ``VLENS_OFFLINE`` nor ``HF_HUB_OFFLINE`` is set *and*
the hub answers a short connection probe; otherwise we fail (or fall back to the builtin) at once, instead of
letting huggingface_hub retry for a minute.

The library prints nothing: what happened (a fallback and why, a download's size before it starts) goes to the
listeners a front end registers with :func:`add_listener`; the CLI prints them on stderr.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from vlens.errors import ModelLoadError
from vlens.models.events import add_listener, remove_listener  # noqa: F401 - front ends register here
from vlens.models.events import emit as _emit

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


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, then ``HF_HOME``/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def offline_reason() -> str | None:
    """Why no connection may be tried (the variable the user set), or None."""
    if _truthy("VLENS_OFFLINE"):
        return "VLENS_OFFLINE=1"
    if _truthy("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE=1"
    return None


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        f.is_file() for pat in ("*.safetensors", "pytorch_model*.bin") for f in folder.glob(pat))


def cached(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` (revision main) in the Hugging Face cache when it holds a config and
    weights; None otherwise. Reads the cache's own layout (refs/main -> snapshots/HASH); no network, no retries."""
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    try:
        snap = repo / "snapshots" / ref.read_text().strip()
    except OSError:
        return None
    return snap if _has_weights(snap) else None


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable (empty, truncated, a header that is not JSON), from its header alone:
    8 bytes (header length N), N bytes of JSON, then exactly the bytes the header's offsets cover."""
    import json
    import struct

    size = path.stat().st_size
    if size == 0:
        return "is empty"
    if size < 8:
        return f"is truncated ({size} bytes)"
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > min(size - 8, 100 << 20):
            return "is truncated or not a safetensors file (its header runs past the end)"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "has a damaged header (not the JSON a safetensors file starts with)"
    if size != 8 + n + end:
        return f"is truncated ({size:,} of {8 + n + end:,} bytes)" if size < 8 + n + end else \
            f"has {size - 8 - n - end:,} bytes more than its header describes"
    return None


def damage(folder: Path) -> tuple[str, str] | None:
    """``(file name, what is wrong)`` for the first damaged file of a model folder (a config or other small JSON
    file that does not parse, an empty or truncated safetensors file, an empty PyTorch .bin), None when it looks
    whole. Reads the JSON files under 8 MB and the safetensors headers only: cheap enough for every resolve."""
    import json

    folder = Path(folder)
    for f in sorted(folder.iterdir()):
        try:
            if not f.is_file():
                if f.is_symlink():
                    return f.name, "is a link to a missing file"
                continue
            if f.suffix == ".json" and f.stat().st_size < (8 << 20):
                try:
                    obj = json.loads(f.read_bytes())
                except ValueError:
                    return f.name, "is not valid JSON"
                if f.name == "config.json" and not isinstance(obj, dict):
                    return f.name, "is not a JSON object"
            elif f.suffix == ".safetensors":
                why = _safetensors_problem(f)
                if why:
                    return f.name, why
            elif f.suffix == ".bin" and f.stat().st_size == 0:
                return f.name, "is empty"
        except OSError as exc:
            return f.name, f"cannot be read ({exc.strerror or exc})"
    return None


def damaged_message(repo_id: str, found: tuple[str, str]) -> str:
    """The one line for a damaged cached model: the file, what is wrong, the two repairs."""
    return (f"the cached model '{repo_id}' is damaged: {found[0]} {found[1]}; `vlens models fetch {repo_id}` "
            f"downloads the damaged files again, `vlens models rm {repo_id}` frees it")


def note(line: str) -> None:
    """Tell the user one line about how a model runs (an ``engine`` event: an export made, refused or rebuilt)."""
    _emit("engine", line=line)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included): to the proxy
    the environment names for it (``HTTPS_PROXY`` / ``HTTP_PROXY``, unless ``NO_PROXY`` covers the host), else to
    the endpoint itself."""
    import urllib.request

    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else "http://" + proxy)
        host, port = p.hostname or host, p.port or (443 if p.scheme == "https" else 80)
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


ANSWER_DEADLINE = 5.0
"""Seconds for the hub to answer at all: the connection probe and the file-list request together (a server that
accepts connections and never answers, or trickles its answer, is given up on after this)."""
READ_TIMEOUT = 10.0
"""Seconds a download may take for each :data:`READ_CHUNK` bytes (or each file's small request): slower than
that (about 6 KB/s, a stalled or trickling server) it stops with one line, the partial file kept to resume."""
READ_CHUNK = 64 * 1024


class HubStalled(ModelLoadError):
    """The hub accepted the connection but did not answer (or send data) in time."""


def _within(seconds: float, what: str, fn, *args, shown: float | None = None, **kw):
    """``fn(*args, **kw)`` with a hard deadline: it runs in a daemon thread, and when it has not returned after
    ``seconds`` :class:`HubStalled` is raised (the thread is abandoned; its socket times out on its own). The
    message names ``shown`` seconds (the whole deadline this wait was part of) when given."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(max(seconds, 0.01))
    if t.is_alive():
        raise HubStalled(f"the hub ({hub_endpoint()}) accepted the connection but did not answer {what} within "
                         f"{shown or seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


WEIGHT_PATTERNS = ("*.safetensors",)
FILE_PATTERNS = ("*.json", "*.txt", "*.model")
_DOWNLOADED: set[str] = set()  # ids downloaded by this process: their source is "hub", later runs say "cache"


def _pick_files(files: dict[str, int]) -> dict[str, int]:
    """The files of a repo that a transformers load needs: top-level configs, vocabularies and the weights
    (safetensors when the repo has them, else the PyTorch .bin files)."""
    from fnmatch import fnmatch

    top = {f: s for f, s in files.items() if "/" not in f}
    weights = {f: s for f, s in top.items() if f.endswith(".safetensors")}
    if not weights:
        weights = {f: s for f, s in top.items() if fnmatch(f, "pytorch_model*.bin")}
    small = {f: s for f, s in top.items() if any(fnmatch(f, p) for p in FILE_PATTERNS)}
    return {**small, **weights}


def _ranged_get(url: str, part: Path, size: int | None, headers: dict, timeout: float, bar, label: str = "") -> None:
    """GET ``url`` into ``part``, appending from its current length with an HTTP Range request (a killed download
    resumes where it stopped). Raises OSError-family errors on network failure; ``part`` keeps what arrived."""
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    import time

    req = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
    r = _within(timeout, f"the download of {part.name}", urllib.request.urlopen, req, timeout=timeout)
    with r:  # noqa: S310 - the hub endpoint (http/https)
        if have and r.status != 206:  # the server ignored the Range: start over
            have = 0
            bar.reset(total=bar.total)
        sock = _socket_of(r)
        got, window_start, window_bytes = have, time.monotonic(), 0
        with open(part, "ab" if have else "wb") as f:
            while True:
                left = timeout - (time.monotonic() - window_start)
                try:
                    if left <= 0:
                        raise TimeoutError
                    if sock is not None:
                        sock.settimeout(left)  # this read may take what is left of the window, no more
                    chunk = r.read1(1 << 20)
                except TimeoutError:
                    f.flush()
                    raise HubStalled(f"the download stalled: fewer than {READ_CHUNK // 1024} KB in {timeout:g} s "
                                     f"after {got / 1e6:.1f} MB of {label or part.name}; the partial file is "
                                     "kept, rerun the same command to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
                got += len(chunk)
                window_bytes += len(chunk)
                if window_bytes >= READ_CHUNK:
                    window_start, window_bytes = time.monotonic(), 0


def _socket_of(response):
    """The socket under a urllib response (to give each read its own deadline), or None."""
    try:
        return response.fp.raw._sock
    except AttributeError:
        return None


def _fetch_file(repo_id: str, name: str, cache: Path, endpoint: str, timeout: float, bar) -> Path:
    """One file of ``repo_id`` (revision main) into the cache: the bytes by :func:`_ranged_get` into
    ``blobs/ETAG.vlens-part`` (kept across runs: huggingface_hub >= 2 deletes its own partial files), then
    huggingface_hub lays out the snapshot link and refs/main around the finished blob."""
    from urllib.parse import urlparse as _parse

    from filelock import FileLock  # a dependency of huggingface_hub
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    meta = _within(timeout, f"the request for {name}", get_hf_file_metadata,
                   hf_hub_url(repo_id, name, revision="main", endpoint=endpoint), timeout=timeout)
    blobs = cache / ("models--" + repo_id.replace("/", "--")) / "blobs"
    blob = blobs / str(meta.etag)
    blobs.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + ".vlens-part")
    # One writer per blob: several processes (accelerate / torchrun ranks) may resolve the same default at once.
    with FileLock(str(part) + ".lock"):
        if not blob.exists():
            same_host = _parse(meta.location).netloc == _parse(endpoint).netloc
            _ranged_get(meta.location, part, meta.size, build_hf_headers() if same_host else {}, timeout, bar,
                        label=name)
            if meta.size is not None and part.stat().st_size != meta.size:
                raise ModelLoadError(f"{repo_id}/{name}: got {part.stat().st_size} of {meta.size} bytes; rerun "
                                     "to resume the download")
            part.replace(blob)
        else:
            bar.update(meta.size or 0)
    return Path(_within(timeout, f"the request for {name}", hf_hub_download, repo_id, name, revision="main",
                        cache_dir=cache, endpoint=endpoint, etag_timeout=timeout))


def download(repo_id: str, *, progress: bool = True, probe_timeout: float = 2.0, timeout: float | None = None,
             deadline: float | None = None) -> Path:
    """Download ``repo_id`` (revision main) into the Hugging Face cache and return its snapshot folder.

    Says the size first (a ``download`` event), shows a progress bar over the bytes (on a terminal, or with
    VLENS_PROGRESS=1), resumes an interrupted download from where it stopped (HTTP Range), and fails with
    :class:`ModelLoadError` within a few seconds when no connection may or can be made: ``deadline`` seconds
    (:data:`ANSWER_DEADLINE`) for the probe and the file list together, then ``timeout`` (:data:`READ_TIMEOUT`)
    for each file's request and each :data:`READ_CHUNK` of its bytes (:class:`HubStalled`: the partial file is
    kept for the next try).
    """
    import time

    timeout = READ_TIMEOUT if timeout is None else timeout
    deadline = ANSWER_DEADLINE if deadline is None else deadline
    t_end = time.monotonic() + deadline
    why = offline_reason()
    if why:
        raise ModelLoadError(f"model '{repo_id}' is not in the Hugging Face cache and {why} forbids a download; "
                             + OFFLINE_CHOICES)
    if not hub_reachable(min(probe_timeout, deadline)):
        raise ModelLoadError(f"model '{repo_id}' is not in the Hugging Face cache and the hub ({hub_endpoint()}) "
                             "cannot be reached (no network?); " + OFFLINE_CHOICES)
    from huggingface_hub import HfApi

    from vlens.runs import progress as progress_bar

    t0 = time.time()
    cache, endpoint = hf_cache_dir(), hub_endpoint()
    try:
        left = max(t_end - time.monotonic(), 0.5)
        info = _within(left, "the request for its file list", HfApi(endpoint=endpoint).model_info, repo_id,
                       files_metadata=True, timeout=left, shown=deadline)
        files = _pick_files({s.rfilename: int(s.size or 0) for s in (info.siblings or [])})
        if "config.json" not in files:
            raise ModelLoadError(f"'{repo_id}' on {endpoint} has no config.json: not a transformers model")
        total = sum(files.values())
        _emit("download", repo=repo_id, bytes=total, files=len(files), endpoint=endpoint)
        with progress_bar(total=total, desc=repo_id, unit="B", unit_scale=True,
                          disable=None if progress else True) as bar:
            for name in sorted(files, key=lambda f: files[f]):  # small files first: a bad repo fails early
                _fetch_file(repo_id, name, cache, endpoint, timeout, bar)
    except HubStalled as exc:
        raise HubStalled(f"could not download '{repo_id}': {exc}; otherwise " + OFFLINE_CHOICES) from None
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, HTTP, disk: one line, the offline choices
        raise ModelLoadError(f"could not download '{repo_id}' from {endpoint}: {exc.__class__.__name__}: "
                             f"{' '.join(str(exc).split())[:300]}. " + OFFLINE_CHOICES) from None
    snap = cached(repo_id)
    if snap is None:
        raise ModelLoadError(f"downloaded '{repo_id}' but the cache has no config.json and weights for it")
    _DOWNLOADED.add(repo_id)
    _emit("downloaded", repo=repo_id, path=str(snap), seconds=round(time.time() - t0, 1))
    return snap


def resolve(spec: str) -> tuple[Path, str]:
    """Return ``(folder, source)`` where source is 'builtin', 'local', 'cache' (a hub id found in the Hugging Face
    cache) or 'hub' (a hub id downloaded by this process)."""
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
        if path.is_file():
            from vlens.models.checkpoints import SUFFIXES, converted_folder, is_checkpoint_file

            if not is_checkpoint_file(path):
                raise ModelLoadError(f"{path} is a file but not a checkpoint ({', '.join(SUFFIXES)}); point --model "
                                     "at one, or at a folder written by save_pretrained")
            from vlens.models.defaults import TASKS

            return converted_folder(path, tokenizer_fallback=cached(TASKS["retrieval"].real)), "local"
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} exists but has no config.json; point --model at a folder written by "
                                 "save_pretrained, or at a checkpoint file (.pth, .pt, .bin, .safetensors)")
        return path, "local"
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"no such model folder: {spec}")
    snap = cached(spec)
    if snap is not None:
        found = damage(snap)
        if found:
            raise ModelLoadError(damaged_message(spec, found))
        return snap, "hub" if spec in _DOWNLOADED else "cache"
    return download(spec, progress=_truthy_default("VLENS_PROGRESS", True)), "hub"


def _truthy_default(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    return default if not v else v in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DefaultChoice:
    """What a task runs when no model is given: ``spec`` to load, ``source`` (cache | hub | builtin) and, for the
    builtin, ``reason`` (completes "because REAL ...")."""

    task: str
    spec: str
    source: str
    real: str
    reason: str = ""

    @property
    def is_fallback(self) -> bool:
        return self.source == "builtin"


_CHOICES: dict[tuple, DefaultChoice] = {}


def forget_choices() -> None:
    """Forget the defaults resolved so far and which ids this process downloaded (as a new process would: tests,
    a long-running server after a ``models fetch``)."""
    _CHOICES.clear()
    _DOWNLOADED.clear()


def resolve_default(task: str) -> DefaultChoice:
    """Pick ``task``'s model: the real one from the cache, else downloaded once (when allowed and reachable), else
    the builtin (a ``fallback`` event says why). Decided once per process and environment; never hangs."""
    from vlens.models.defaults import for_task

    d = for_task(task)
    key = (task, os.environ.get("VLENS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"), hub_endpoint(),
           str(hf_cache_dir()))
    if key in _CHOICES:
        return _CHOICES[key]
    reason = ""
    if _truthy("VLENS_OFFLINE"):
        reason = "is not used when VLENS_OFFLINE=1 (offline by choice)"
    elif cached(d.real) is not None and damage(cached(d.real)):
        name, why = damage(cached(d.real))
        reason = f"is damaged in the Hugging Face cache ({name} {why}; `vlens models fetch {d.real}` repairs it)"
    elif cached(d.real) is not None:
        choice = DefaultChoice(task, d.real, "hub" if d.real in _DOWNLOADED else "cache", d.real)
    elif _truthy("HF_HUB_OFFLINE"):
        reason = "is not in the Hugging Face cache and HF_HUB_OFFLINE=1"
    else:
        try:
            download(d.real, progress=_truthy_default("VLENS_PROGRESS", True))
            choice = DefaultChoice(task, d.real, "hub", d.real)
        except ModelLoadError as exc:
            msg = str(exc).replace(OFFLINE_CHOICES, "").rstrip("; .")
            reason = ("is not in the Hugging Face cache and the hub cannot be reached" if "cannot be reached" in msg
                      else "is not in the Hugging Face cache and the hub did not answer in time"
                      if isinstance(exc, HubStalled) and "did not answer" in msg
                      else f"is not in the Hugging Face cache and the download failed ({msg[:240]})")
    if reason:
        choice = DefaultChoice(task, d.fallback, "builtin", d.real, reason)
        _emit("fallback", task=task, spec=d.fallback, real=d.real, reason=reason)
    _CHOICES[key] = choice
    return choice


def source_of(spec: str | None) -> str:
    """Where ``spec``'s weights come from, without loading or downloading anything: builtin, local, cache, hub
    (downloaded by this process), computed (pixels, sift: no weights), random (random:SPEC) or unknown."""
    from vlens.models.defaults import first_part

    spec = first_part(spec or "")
    if spec.startswith("builtin:"):
        return "builtin"
    if spec.startswith("random:"):
        return "random"
    if spec.split(":")[0].lower() in ("pixels", "sift"):
        return "computed"
    if spec and Path(spec).expanduser().exists():
        return "local"
    if spec in _DOWNLOADED:
        return "hub"
    return "cache" if spec and cached(spec) is not None else "unknown"
