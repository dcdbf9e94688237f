"""One resolver for every model: ``load(spec, kind)``.

``spec``: a hub id (``facebook/dinov2-small``), a folder written by ``save_pretrained``, or ``builtin:NAME``.
``kind``: ``backbone`` (ViT / DINO / DINOv2 patch features), ``captioner`` (BLIP), ``dual_encoder`` (CLIP).
The same Hugging Face classes serve real checkpoints and our tiny ones.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlens.errors import ModelLoadError

KINDS = ("backbone", "captioner", "dual_encoder")
_ACCEPTS = {
    "backbone": ("vit", "dinov2", "dinov2_with_registers", "dino", "deit"),
    "captioner": ("blip",),
    "dual_encoder": ("clip",),
}
DEFAULTS = {"backbone": "builtin:dino-tiny", "captioner": "builtin:blip-tiny", "dual_encoder": "builtin:clip-tiny"}
"""The embedded model of each kind: what ``vlens lab`` and the tests run. A run without ``--model`` asks
:func:`default_spec` instead (the real model first; :mod:`vlens.models.defaults`)."""


def default_spec(kind: str) -> str:
    """The spec a run of ``kind`` uses when none is given: the task's real model when it is cached or can be
    downloaded now, else its builtin fallback (see :func:`vlens.models.hub.resolve_default`)."""
    from vlens.models.defaults import TASK_OF_KIND
    from vlens.models.hub import resolve_default

    return resolve_default(TASK_OF_KIND[kind]).spec


@dataclass
class LoadedModel:
    model: Any
    image_processor: Any
    tokenizer: Any
    spec: str
    path: Path
    source: str  # builtin | local | cache (a hub id found in the HF cache) | hub (downloaded by this process)
    kind: str

    @property
    def config(self):
        return self.model.config


def load_image_processor(folder: Path):
    """The PIL image processor named in ``preprocessor_config.json`` (no torchvision needed)."""
    import transformers

    cfg_file = folder / "preprocessor_config.json"
    if not cfg_file.is_file():
        return None
    name = json.loads(cfg_file.read_text()).get("image_processor_type", "ViTImageProcessor")
    base = name.removesuffix("Fast").removesuffix("Pil")
    cls = getattr(transformers, base + "Pil", None) or getattr(transformers, base, None)
    if cls is None:
        cls = transformers.ViTImageProcessorPil
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(folder)


def quiet_transformers() -> None:
    """Silence transformers' and huggingface_hub's progress bars and info logs (ours are enough)."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def model_type(folder: Path) -> str:
    """The ``model_type`` of a model folder's config.json; a :class:`ModelLoadError` naming the file when it is not
    a JSON object (a damaged download, a hand edit)."""
    try:
        cfg = json.loads((folder / "config.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} cannot be read as JSON ({exc.__class__.__name__}); "
                             "restore it or point --model at another model") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{folder / 'config.json'} is not a JSON object; restore it or point --model at another "
                             "model")
    return str(cfg.get("model_type", "?"))


def damage_of(folder: Path) -> str | None:
    """A one-line description of a damaged file in a model folder (:func:`vlens.models.hub.damage`), or None."""
    from vlens.models.hub import damage

    found = damage(folder)
    return f"{Path(folder) / found[0]} {found[1]}; restore it or point --model at another model" if found else None


def load(spec: str | None, kind: str, *, attn_implementation: str | None = None) -> LoadedModel:
    """Load a model of ``kind`` from ``spec`` (none: the task's default, :func:`default_spec`)."""
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind '{kind}'; one of {', '.join(KINDS)}")
    if not spec:
        from vlens.models.defaults import first_part

        spec = first_part(default_spec(kind))  # a fused descriptor fallback: its model part
    from vlens.models.hub import resolve

    folder, source = resolve(spec)
    mtype = model_type(folder)
    if mtype not in _ACCEPTS[kind]:
        want = {"backbone": "a ViT/DINO/DINOv2 backbone", "captioner": "a BLIP captioning model",
                "dual_encoder": "a CLIP-style dual encoder"}[kind]
        raise ModelLoadError(f"'{spec}' is a '{mtype}' model, but this needs {want}")
    import transformers

    quiet_transformers()
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    cls = {"backbone": transformers.AutoModel, "captioner": transformers.BlipForConditionalGeneration,
           "dual_encoder": transformers.CLIPModel}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cls.from_pretrained(folder, **kw)
        except Exception as exc:  # noqa: BLE001 - damaged or foreign files: one line naming the folder
            found = damage_of(folder)
            raise ModelLoadError(found or f"cannot load weights from {folder}: {exc.__class__.__name__}: "
                                 f"{' '.join(str(exc).split())[:240]}") from None
    model.eval()
    if kind == "backbone":
        from vlens.models.pos_embed import install

        install(model)  # the position-embedding interpolation its config declares (transformers' by default)
    tokenizer = None
    if kind != "backbone":
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - as above, for the tokenizer files
            found = damage_of(folder)
            raise ModelLoadError(found or f"cannot load the tokenizer from {folder}: {exc.__class__.__name__}: "
                                 f"{' '.join(str(exc).split())[:240]}") from None
    return LoadedModel(model, load_image_processor(folder), tokenizer, spec, folder, source, kind)
