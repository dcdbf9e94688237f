"""``--model PATH`` for checkpoint files users already hold: read the file, recognise its layout, convert it with the
family's converter (``convert_dino``, ``convert_dinov2``, ``convert_open_clip``: pure functions, each with its
layout written beside it) and write a Hugging Face folder once, cached under ``$VLENS_CACHE/converted``.

An unknown layout is refused with one line naming the layouts expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from vlens.errors import ModelLoadError
from vlens.models import convert_dino, convert_dinov2, convert_open_clip

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
FAMILIES = {"dinov2": convert_dinov2, "dino": convert_dino, "open_clip": convert_open_clip}  # checked in this order
EXPECTED = "; ".join(m.LAYOUT for m in (convert_dino, convert_dinov2, convert_open_clip))
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_WRAPPERS = ("state_dict", "model", "teacher", "module", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_DROPPED = ("dino_head.", "ibot_head.")  # DINOv2 training heads beside the backbone
# Not weights: scalars in OpenAI's TorchScript CLIP files, and the causal mask a traced open_clip model keeps
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "vocab.txt")


def is_checkpoint_file(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in SUFFIXES


_SAFE_GLOBALS = ("argparse.Namespace",)  # what a training checkpoint may pickle beside tensors (DINO's main_dino args)


def _format_of(path: Path) -> str:
    """'safetensors', 'zip' (torch.save / TorchScript) or 'pickle' (legacy torch.save), from the bytes: a file in
    the Hugging Face cache is a suffix-less blob behind the ``snapshots/<rev>/NAME`` link."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28):
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    return "pickle"


def _unsafe_global(message: str) -> str | None:
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


def _torch_load(path: Path, hints: dict):
    import argparse

    import torch

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            jit = any(n.endswith("constants.pkl") for n in z.namelist())
        if jit:  # a TorchScript archive (OpenAI's CLIP files): its tensors, not its code's extras
            import warnings

            hints["jit"] = True
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice says nothing to a vlens user
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
            return {k: v for k, v in module.state_dict().items() if k not in _JIT_EXTRAS}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the whole reason, in one line
        name = _unsafe_global(str(exc))
        if name:
            raise ModelLoadError(f"cannot read checkpoint {path}: it pickles a {name}, which vlens does not unpickle "
                                 f"(a checkpoint may hold tensors, plain Python values and {', '.join(_SAFE_GLOBALS)} "
                                 "training arguments; any other object could run code while loading); re-save its "
                                 "weights with torch.save(model.state_dict(), ...) where you trust the file") from None
        raise


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """(state dict of tensors, hints) from a checkpoint file, read by its bytes (not its suffix): safetensors, a
    ``torch.save`` dict (``weights_only``, plus ``argparse.Namespace`` for training checkpoints' ``args``; wrappers
    such as ``{"state_dict": ...}`` / ``{"teacher": ...}`` and ``module.`` / ``backbone.`` prefixes removed) or a
    TorchScript archive (OpenAI's CLIP files). Hints: ``jit``, ``args_arch`` (a training checkpoint's
    ``args.arch``)."""
    import torch

    path = Path(path)
    hints: dict = {"jit": False}
    try:
        if _format_of(path) == "safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = _torch_load(path, hints)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the whole reason, on one line
        import re

        reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
        raise ModelLoadError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {reason}") from None
    if isinstance(obj, dict) and hasattr(obj.get("args"), "arch"):
        hints["args_arch"] = obj["args"].arch
    for _ in range(3):
        if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(f"{path} holds no state dict (a {type(obj).__name__}); expected one of: {EXPECTED}")
    sd = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(_DROPPED):
            continue
        if not torch.is_tensor(v):
            raise ModelLoadError(f"{path}: entry '{k}' is a {type(v).__name__}, not a tensor; expected one of: "
                                 f"{EXPECTED}")
        sd[k] = v
    return sd, hints


def family_of(sd: dict) -> str:
    """Which converter's layout ``sd`` looks like; a one-line ModelLoadError naming them all otherwise."""
    for name, mod in FAMILIES.items():
        if mod.matches(sd):
            return name
    keys = sorted(sd)
    raise ModelLoadError(f"unknown checkpoint layout (keys {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); "
                         f"expected one of: {EXPECTED}")


def convert_state_dict(sd: dict, *, path: Path | None = None, hints: dict | None = None):
    """(family, HF config kwargs, HF state dict, :class:`~vlens.models.checkpoint_settings.Settings`) for any
    supported layout. ``path``: the checkpoint's name as the user gave it (configs beside it and its name are
    sources of the settings); without one, the known-model table decides."""
    from vlens.models.checkpoint_settings import establish

    family = family_of(sd)
    settings = establish(path, family, sd, hints or {"jit": False})
    config, out = FAMILIES[family].convert(sd, **settings.kwargs)
    if settings.interpolation:
        config["pos_embed_interpolation"] = settings.interpolation  # vlens.models.pos_embed.CONFIG_KEY
    if settings.text_cleaning:
        config["text_cleaning"] = settings.text_cleaning  # vlens.models.text_cleaning
    return family, config, out, settings


def hf_config(config: dict):
    """The transformers config object for converter output."""
    import transformers

    kw = dict(config)
    mtype = kw.pop("model_type")
    cls = {"vit": transformers.ViTConfig, "dinov2": transformers.Dinov2Config,
           "dinov2_with_registers": transformers.Dinov2WithRegistersConfig, "clip": transformers.CLIPConfig}[mtype]
    return cls(**kw)


def _image_processor(config: dict):
    import transformers

    mtype = config["model_type"]
    if mtype == "clip":
        s = config["vision_config"]["image_size"]
        return transformers.CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                                  image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    if mtype == "vit":  # facebook/dino-vits8's: resize to 224, ImageNet statistics
        return transformers.ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN,
                                                 image_std=IMAGENET_STD)
    return transformers.BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                             image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)  # facebook/dinov2-*'s


def _tokenizer_source(checkpoint: Path, fallback: Path | None) -> Path:
    """Where a converted CLIP gets its tokenizer: files beside the checkpoint as the user named it (beside the
    ``snapshots/<rev>/`` link in a Hugging Face cache, not beside the blob), else ``fallback`` (the resolver passes
    the cached openai/clip-vit-base-patch32, whose BPE vocabulary is open_clip's ViT-B-32's)."""
    here = checkpoint.parent
    if (here / "tokenizer.json").is_file() or (here / "vocab.json").is_file() or (here / "vocab.txt").is_file():
        return here
    if fallback is not None:
        return fallback
    raise ModelLoadError(f"{checkpoint} is an open_clip model but no tokenizer is at hand: put tokenizer.json (or "
                         "vocab.json + merges.txt) beside it, or run `vlens models fetch openai/clip-vit-base-patch32` "
                         "once (its tokenizer is open_clip's)")


def write_hf_folder(config: dict, state: dict, out: Path, tokenizer_from: Path | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors``, the image processor (and tokenizer files) into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_config(config).save_pretrained(out)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    _image_processor(config).save_pretrained(out)
    if tokenizer_from is not None:
        for name in _TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file():
                shutil.copyfile(Path(tokenizer_from) / name, out / name)
    return out


def converted_root() -> Path:
    return Path(os.environ.get("VLENS_CACHE") or Path.home() / ".cache" / "vlens") / "converted"


def converted_folder(path: Path, tokenizer_fallback: Path | None = None) -> Path:
    """The Hugging Face folder for checkpoint ``path``, converted on first use and kept (keyed by the file's path as
    given, size and modification time) under ``$VLENS_CACHE/converted``. The path is not resolved: links are
    followed only to read bytes, so configs, tokenizer and name are those beside the name the user gave.
    ``tokenizer_fallback``: a folder with a CLIP tokenizer for open_clip files that have none beside them.
    Reports a ``converted`` event (:func:`vlens.models.events.add_listener`; the CLI prints its line on stderr) saying
    which source decided each setting; ``CONVERTED.json`` keeps the same as ``settings_from``."""
    from vlens.models.events import emit

    path = Path(os.path.abspath(Path(path).expanduser()))
    st = path.stat()
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    root = converted_root()
    out = root / f"{path.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    sd, hints = read_state_dict(path)
    family, config, state, settings = convert_state_dict(sd, path=path, hints=hints)
    tok = _tokenizer_source(path, tokenizer_fallback) if family == "open_clip" else None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=root))
    try:
        write_hf_folder(config, state, tmp, tok)
        (tmp / "CONVERTED.json").write_text(json.dumps(
            {"source": str(path), "bytes": st.st_size, "family": family, "origin": settings.origin,
             "layout": FAMILIES[family].LAYOUT, "quick_gelu": settings.kwargs.get("quick_gelu"),
             "pos_embed_interpolation": settings.interpolation, "text_cleaning": settings.text_cleaning,
             "settings_from": settings.sources, "tokenizer_from": str(tok) if tok else None}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit("converted", path=str(path), folder=str(out), line=settings.line(path), settings_from=settings.sources)
    return out
