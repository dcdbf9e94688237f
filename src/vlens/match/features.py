"""Dense patch descriptors from ViT-family models (ViT, DINO, DINOv2, vlens builtins) at any size and aspect.

Coordinates convention (used everywhere in ``vlens.match``): continuous pixel coordinates ``(x, y)`` with the
origin at the top-left *corner* of the image, so pixel ``(col, row)`` covers ``[col, col+1) x [row, row+1)``
and its centre is ``(col + 0.5, row + 0.5)``. The image is resized to a model input of ``(H_in, W_in)``
(multiples of the patch size ``p``); patch ``(i, j)`` covers input pixels ``[j*p, (j+1)*p) x [i*p, (i+1)*p)``
and its centre, mapped back to the *original* image, is ``((j + 0.5) * p * W / W_in, (i + 0.5) * p * H / H_in)``.
``DenseFeatures.centers`` holds these centres in row-major patch order, matching ``descriptors.reshape(-1, d)``.
With a stride ``S`` (``stride=``, a divisor of ``p``; :mod:`vlens.match.strided`) the patches overlap: patch
``(i, j)`` covers ``[j*S, j*S+p) x [i*S, i*S+p)``, centred at ``(j*S + p/2, i*S + p/2)`` input pixels. The grid's
geometry lives in one place, the features: ``DenseFeatures.step`` (input pixels between centres, ``S``) and
``.origin`` (the first centre, ``p/2``); everything downstream (refinement, cycle distances, fusion resampling,
drawings) reads those, never the patch size.

Model specs: anything :func:`vlens.models.load` takes (hub id, folder, ``builtin:NAME``), plus ``pixels`` or
``pixels:P`` (raw P x P pixel patches as descriptors, P=16 by default: the no-learning baseline),
``random:SPEC`` (SPEC's architecture with random weights, seed 1234: what the architecture alone buys), and
``sift``, ``sift:P`` or ``sift:P:S`` (OpenCV's SIFT descriptor at the centre of every P x P patch, P=16 by
default, over a support of S pixels, 48 by default: the classical anchor, see :mod:`vlens.match.sift`). Every
spec returns the same :class:`DenseFeatures`; loaded models are cached per spec.

Fused specs: ``A+B`` or with weights ``A*0.3+B*0.7`` (any number of parts, each any spec above; weight 1 when
left out). Each part's descriptors are put on one grid, the finest part's (a coarser part is resampled bilinearly
at the finest part's patch centres, in the original image's pixels), L2-normalised per patch, multiplied by
their weight and concatenated: ``d = [w_A a / |a|, w_B b / |b|]``, the weights divided by the largest one
first (only their ratios matter to cosine similarity; huge weights such as ``1e308`` would otherwise overflow).
``layer`` and ``facet`` apply to the parts with a model; ``sift`` and ``pixels`` parts always give their one descriptor.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlens.errors import ConfigError, ImageLoadError, ModelLoadError

FACETS = ("token", "key", "query", "value")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 1234  # weights of ``random:SPEC`` (HF's own init, this seed)
DEFAULT_SIZE = 448
"""Default longer side of the model input in pixels (28 patches of 16 px)."""


@dataclass(frozen=True)
class DenseFeatures:
    """Patch descriptors of one image plus where each patch sits in the original image."""

    descriptors: torch.Tensor  # (h, w, d) float32
    centers: torch.Tensor  # (h*w, 2) patch centres (x, y) in original-image pixels, row-major
    image_size: tuple[int, int]  # original (W, H)
    input_size: tuple[int, int]  # model input (W_in, H_in)
    patch_size: int
    model: str
    layer: int
    facet: str
    note: str = ""  # e.g. "resized from 6000x4000"
    bin_levels: int = 0  # log-binned descriptors (vlens.match.binning): 0 = off, else the hierarchy levels
    stride: int | None = None  # input pixels between patch centres; None = the patch size (no overlap)

    @property
    def step(self) -> int:
        """Input pixels between neighbouring patch centres: the stride (the patch size unless overlapping)."""
        return self.stride or self.patch_size

    @property
    def origin(self) -> float:
        """Input pixels from the top-left corner to the first patch centre (half a patch)."""
        return self.patch_size / 2

    @property
    def step_px(self) -> tuple[float, float]:
        """Original pixels between neighbouring patch centres, (x, y)."""
        sx, sy = self.scale
        return self.step * sx, self.step * sy

    def index_at(self, xy) -> torch.Tensor:
        """Row-major index of the patch whose centre is nearest each point (n, 2) of the original image: (n,).
        Without overlap that is the patch that covers the point."""
        xy = torch.as_tensor(xy, dtype=torch.float64).reshape(-1, 2)
        gh, gw = self.grid
        sx, sy = self.scale
        lo = self.origin - self.step / 2  # input pixels where cell 0 starts (0 without overlap)
        col = ((xy[:, 0] - lo * sx) / (self.step * sx)).floor().long().clamp(0, gw - 1)
        row = ((xy[:, 1] - lo * sy) / (self.step * sy)).floor().long().clamp(0, gh - 1)
        return row * gw + col

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.descriptors.shape[:2])

    @property
    def flat(self) -> torch.Tensor:
        return self.descriptors.reshape(-1, self.descriptors.shape[-1])  # (h*w, d)

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per input pixel, (sx, sy)."""
        return self.image_size[0] / self.input_size[0], self.image_size[1] / self.input_size[1]


def patch_centers(grid_h: int, grid_w: int, patch: int, sx: float = 1.0, sy: float = 1.0) -> torch.Tensor:
    """Centres (x, y) of a ``grid_h x grid_w`` patch grid, row-major, scaled by (sx, sy): (h*w, 2)."""
    ys = (torch.arange(grid_h, dtype=torch.float32) + 0.5) * patch * sy  # (h,)
    xs = (torch.arange(grid_w, dtype=torch.float32) + 0.5) * patch * sx  # (w,)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # (h*w, 2)


def grid_of(bb: Backbone, w_in: int, h_in: int, stride: int) -> tuple[int, int]:
    """Patch grid (rows, cols) of ``bb`` on a ``w_in x h_in`` input at ``stride`` (:mod:`vlens.match.strided`)."""
    from vlens.match.strided import strided_grid

    return strided_grid(h_in, w_in, bb.patch_size, stride)


def block_index(bb: Backbone, layer: int) -> int | None:
    """The 0-based block of ``layer`` as users write it (counted from 1, -1 = the last, never 0) in ``bb``, or a
    ConfigError that names the layer as given and the model's range. None for descriptors without blocks (pixels,
    sift); a fusion checks each part that has a model."""
    if layer == 0:
        raise ConfigError(f"layer 0 does not exist: layers are counted from 1 (-1 = the last) in '{bb.spec}'")
    if bb.parts:
        for part, _ in bb.parts:
            if part.has_model:
                block_index(part, layer)
        return None
    if not bb.has_model:
        return None
    n = bb.num_layers
    li = layer - 1 if layer > 0 else n + layer
    if not 0 <= li < n:
        raise ConfigError(f"layer {layer} does not exist: '{bb.spec}' has {n} layers (use 1..{n} or -1 for the last)")
    return li


def smallest_side(bb: Backbone) -> int:
    """The shortest image side ``bb`` can describe: one patch (of the largest part's patch for a fusion)."""
    return max(p.patch_size for p, _ in bb.parts) if bb.parts else bb.patch_size


def input_size_for(image_size: tuple[int, int], patch: int, size: int, name: str = "image") -> tuple[int, int]:
    """Model input (W_in, H_in): longer side ``size`` rounded to whole patches, aspect ratio kept."""
    w, h = image_size
    if min(w, h) < patch:
        raise ImageLoadError(name, f"{w}x{h} pixels is smaller than one {patch} px patch; dense features need "
                             f"an image at least {patch} px on its shorter side")
    s = size / max(w, h)
    return max(1, round(w * s / patch)) * patch, max(1, round(h * s / patch)) * patch


@dataclass
class Backbone:
    """A model ready for dense features: the HF model (or None for ``pixels``), normalisation and patch size."""

    spec: str
    model: torch.nn.Module | None
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_prefix: int  # CLS + register tokens to drop
    num_layers: int
    model_type: str  # the HF model type, or "pixels" / "sift" / "fused" for the descriptors without a model
    support: float = 0.0  # sift: descriptor support in input pixels
    parts: tuple = ()  # fused: ((Backbone, weight), ...)
    folder: object = None  # the model's files (what an ONNX export is keyed by); None for random:/built models

    @property
    def is_pixels(self) -> bool:
        return self.model_type == "pixels"

    @property
    def has_model(self) -> bool:
        return self.model is not None

    def blocks(self) -> Sequence[torch.nn.Module]:
        """The transformer blocks in order (ViT names them ``layers``, DINOv2 ``encoder.layer``)."""
        for name in ("layers", "encoder.layer", "encoder.layers", "blocks"):
            mod = self.model
            for part in name.split("."):
                mod = getattr(mod, part, None)
            if isinstance(mod, torch.nn.ModuleList):
                return mod
        raise ModelLoadError(f"cannot find the transformer blocks of '{self.spec}' ({self.model_type})")


_WEIGHT = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?")  # ASCII: no 1_0, no "８"
MIN_WEIGHT_RATIO = 1e-6
"""A part whose weight is below this fraction of the largest one contributes nothing a float32 dot product keeps:
refused instead of silently ignored."""


def fused_parts(spec: str) -> list[tuple[str, float]] | None:
    """The parts ``[(spec, weight), ...]`` of a fused spec ``A+B`` / ``A*0.3+B*0.7``; None for a plain spec (an
    existing folder is never split). One-line :class:`ConfigError` for a malformed fusion.

    Spaces around ``+`` and ``*`` are allowed. Weights are plain ASCII decimals (``0.3``, ``2``, ``1e-3``; no
    ``1_0``, no non-ASCII digits), returned as written; the backbone *normalises* them (divides by the largest, so
    the largest part gets weight 1). Cosine similarity on the concatenation only sees the ratios, so ``A*2+B*6``
    and ``A*1e308+B*3e308`` match exactly like ``A*0.333+B*1`` (without the normalisation the latter overflows
    float32 to inf and NaN). A part weighted below :data:`MIN_WEIGHT_RATIO` of the largest is refused (it would
    contribute nothing)."""
    from pathlib import Path

    if not spec or ("+" not in spec and "*" not in spec) or Path(spec).exists():
        return None
    if "+" not in spec:
        raise ConfigError(f"'{spec}': a weight needs a fusion, e.g. builtin:dino-tiny*0.3+sift:8*0.7")
    parts = []
    for raw in spec.split("+"):
        name, weight = raw.strip(), 1.0
        if "*" in name:
            name, w = (x.strip() for x in name.rsplit("*", 1))
            weight = float(w) if _WEIGHT.fullmatch(w) else float("nan")
            if not math.isfinite(weight) or weight <= 0:
                raise ConfigError(f"'{spec}': the weight of '{name or raw.strip()}' must be a positive decimal "
                                  f"number such as 0.3 or 2, got '{w}'")
        if not name or "*" in name:
            raise ConfigError(f"'{spec}': write a fusion as A+B or A*0.3+B*0.7 (each part a descriptor spec); "
                              f"'{raw.strip()}' is not one")
        parts.append((canonical_spec(name), weight))
    top = max(w for _, w in parts)
    for name, w in parts:
        if w / top < MIN_WEIGHT_RATIO:
            raise ConfigError(f"'{spec}': the weight of '{name}' is under {MIN_WEIGHT_RATIO:g} of the largest, so "
                              "that part would count for nothing; raise it or leave the part out")
    return parts


def canonical_spec(spec: str) -> str:
    """vlens's own descriptor names in lower case (``SIFT:8`` -> ``sift:8``, ``Pixels`` -> ``pixels``, ``BUILTIN:``
    and ``RANDOM:`` prefixes too), so they are never taken for hub ids; anything else unchanged."""
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    if head.lower() in ("pixels", "sift"):
        return head.lower() + sep + rest
    if sep and head.lower() in ("builtin", "random") and head != head.lower():
        return head.lower() + sep + (canonical_spec(rest) if head.lower() == "random" else rest)
    return spec


def load_backbone(spec: str | None = None, pixels_patch: int = 16) -> Backbone:
    """Load (and cache) a backbone for dense features. ``spec``: model spec, ``pixels``, ``sift``, ``random:SPEC``
    or a fusion ``A+B`` / ``A*0.3+B*0.7`` of them; none: the match default (:func:`vlens.models.default_spec`,
    resolved before the cache so it is keyed by the answer)."""
    from vlens.models import default_spec

    return _load_backbone(canonical_spec(spec or default_spec("backbone")), pixels_patch)


@functools.lru_cache(maxsize=8)
def _load_backbone(spec: str, pixels_patch: int = 16) -> Backbone:
    from vlens.models import load

    fused = fused_parts(spec)
    if fused is not None:
        top = max(w for _, w in fused)  # normalised: see fused_parts
        bbs = tuple((load_backbone(name, pixels_patch), w / top) for name, w in fused)
        return Backbone(spec, None, min(b.patch_size for b, _ in bbs), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0, 0,
                        "fused", parts=bbs)
    for kind in ("pixels", "sift"):
        if spec == kind or spec.startswith(kind + ":"):
            parts = spec.split(":")[1:] or [str(pixels_patch)]
            ok = all(x.isascii() and x.isdigit() and int(x) >= 1 for x in parts) and \
                len(parts) <= (2 if kind == "sift" else 1)
            if not ok:
                extra = (" or sift:P:S with S the descriptor support in pixels (e.g. sift:8:48)"
                         if kind == "sift" else "")
                raise ConfigError(f"'{spec}': write {kind} or {kind}:P with P the patch size in pixels, "
                                  f"e.g. {kind}:8{extra}")
            support = 0.0
            if kind == "sift":
                from vlens.match.sift import SIFT_SUPPORT, _cv2

                _cv2()  # a clear error now if OpenCV is missing
                support = float(parts[1]) if len(parts) > 1 else SIFT_SUPPORT
            return Backbone(spec, None, int(parts[0]), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0, 0, kind, support)
    if spec.startswith("random:"):
        import transformers

        from vlens.models.pos_embed import install as install_pos_embed

        loaded = load(spec.split(":", 1)[1], "backbone")
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            model = transformers.AutoModel.from_config(loaded.model.config).eval()
        install_pos_embed(model)  # the same interpolation convention as the trained model
        proc = loaded.image_processor
    else:
        loaded = load(spec, "backbone")
        model, proc = loaded.model, loaded.image_processor
    cfg = model.config
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    mean = tuple(getattr(proc, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(proc, "image_std", None) or IMAGENET_STD)
    prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    folder = None if spec.startswith("random:") else loaded.path
    return Backbone(spec, model, patch, mean, std, prefix, cfg.num_hidden_layers, cfg.model_type, folder=folder)


_PLACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(device, dtype): moved copy}


def placed(bb: Backbone, device=None, dtype=None) -> Backbone:
    """``bb`` with its model on ``device`` in ``dtype`` (see :mod:`vlens.devices`; None = leave as loaded).

    The model is a copy, made once per (model, device, dtype): moving the cached backbone itself would hand bf16
    or a GPU model to every later caller in the process (the web app, a notebook) that asked for neither.
    """
    if bb.parts:
        return dataclasses.replace(bb, parts=tuple((placed(p, device, dtype), w) for p, w in bb.parts))
    if bb.model is None or (device is None and dtype is None):
        return bb
    from vlens.devices import resolve_device, resolve_dtype

    run_on = device if isinstance(device, torch.device) else resolve_device(device)
    run_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, run_on)
    w = next(bb.model.parameters())
    if w.device == run_on and w.dtype == run_dtype:
        return bb
    copies = _PLACED.setdefault(bb.model, {})
    key = (str(run_on), str(run_dtype))
    if key not in copies:
        copies[key] = copy.deepcopy(bb.model).to(device=run_on, dtype=run_dtype).eval()
    return dataclasses.replace(bb, model=copies[key])


def _to_tensor(img: Image.Image, w: int, h: int, mean, std) -> torch.Tensor:
    """Resize (bicubic) and normalise one image: (3, h, w)."""
    from vlens.images import to_rgb

    arr = np.asarray(to_rgb(img).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0  # (h, w, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)  # (3, h, w)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _sift_descriptors(img: Image.Image, w: int, h: int, p: int, support: float, stride: int | None = None
                      ) -> torch.Tensor:
    """Dense SIFT of one image resized (bicubic) to (w, h), one every ``stride`` px: (rows, cols, 128)."""
    from vlens.images import to_rgb
    from vlens.match.sift import dense_sift, gray_uint8

    return torch.from_numpy(dense_sift(gray_uint8(to_rgb(img).resize((w, h), Image.BICUBIC)), p, support, stride))


def _pixel_descriptors(x: torch.Tensor, p: int, stride: int | None = None) -> torch.Tensor:
    """Raw-pixel patch descriptors, one every ``stride`` px (``p`` by default): (B, 3, H, W) -> (B, h, w, 3*p*p)."""
    s = stride or p
    b, c, hh, ww = x.shape
    patches = x.unfold(2, p, s).unfold(3, p, s)  # (B, 3, h, w, p, p)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(b, patches.shape[2], patches.shape[3], c * p * p)


def _onnx_tokens(bb: Backbone, x: torch.Tensor, li: int, engine: str, stride: int,
                 quantize: str = "none") -> torch.Tensor | None:
    """The token facet of block ``li`` through ONNX Runtime (:mod:`vlens.engines`), or None to run torch. Called
    inside the patch-stride context, so an export traces (and is keyed by) the stride in force. ``quantize='int8'``:
    the ONNX Runtime dynamic-int8 export (engine onnx)."""
    if quantize == "int8":
        engine = "onnx"
    if engine == "torch" or bb.folder is None:
        return None
    from vlens.engines.towers import vit_tokens_engine

    tower = vit_tokens_engine(bb.model, bb.folder, bb.spec, engine, li, bb.num_prefix, tuple(x.shape[2:]), stride,
                              quantize)
    return None if tower is None else torch.from_numpy(tower(pixel_values=x.numpy()))


_NOTED: set = set()


@torch.no_grad()
def _forward(bb: Backbone, x: torch.Tensor, layer: int, facet: str, stride: int | None = None,
             engine: str = "torch", quantize: str = "none") -> torch.Tensor:
    """Run the model on (B, 3, H, W) and return (B, h, w, d) descriptors of ``layer`` and ``facet``, the patch
    embedding at ``stride`` (None: the patch size). ``engine`` (torch | onnx | auto): the token facet can run on
    an ONNX export; the attention facets always run torch."""
    from vlens.match.strided import strided_patches

    p = bb.patch_size
    s = stride or p
    b, _, hh, ww = x.shape
    gh, gw = grid_of(bb, ww, hh, s)
    if bb.is_pixels:
        return _pixel_descriptors(x, p, s)
    n = bb.num_layers
    li = layer if layer >= 0 else n + layer  # 0-based block index
    if not 0 <= li < n:
        raise ConfigError(f"layer {layer} does not exist: '{bb.spec}' has {n} layers (use 1..{n} or -1 for the last)")
    if facet == "token":
        with strided_patches(bb.model, p, s):
            tokens = _onnx_tokens(bb, x, li, engine, s, quantize)
        if tokens is not None:
            return tokens.reshape(b, gh, gw, -1).float()  # (B, h, w, d)
    elif engine == "onnx" and (bb.spec, facet) not in _NOTED:
        from vlens.models.hub import note

        _NOTED.add((bb.spec, facet))
        note(f"the {facet} facet of {bb.spec} runs on torch (only the token facet has an ONNX export)")
    kwargs = {"output_hidden_states": facet == "token"}
    if bb.model_type in ("vit", "deit", "dino"):
        kwargs["interpolate_pos_encoding"] = True
    captured = {}
    handle = None
    if facet != "token":
        attn = bb.blocks()[li].attention
        attn = getattr(attn, "attention", attn)
        proj = getattr(attn, facet[0] + "_proj", None) or getattr(attn, facet, None)
        if proj is None:
            raise ConfigError(f"facet '{facet}' is not available for '{bb.spec}' ({bb.model_type}); use --facet token")
        handle = proj.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    try:
        with strided_patches(bb.model, p, s):
            out = bb.model(pixel_values=x, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    if facet == "token":
        tokens = out.hidden_states[li + 1]  # (B, prefix + h*w, d); hidden_states[0] is the embeddings
        norm = getattr(bb.model, "layernorm", None)
        if norm is not None:  # the final norm, as DINO's get_intermediate_layers applies it
            tokens = norm(tokens)
    else:
        tokens = captured["x"]  # (B, prefix + h*w, d)
    tokens = tokens[:, bb.num_prefix:]  # (B, h*w, d)
    return tokens.reshape(b, gh, gw, -1).float()  # (B, h, w, d)


def extract_features(images, model: str | Backbone | None = None, *, layer: int = -1, facet: str = "token",
                     size: int = DEFAULT_SIZE, batch_size: int = 8, device=None, dtype=None,
                     bin_levels: int = 0, stride: int | None = None, engine: str = "torch",
                     quantize: str = "none") -> list[DenseFeatures]:
    """Dense features for a list of images (PIL images or paths): one :class:`DenseFeatures` per image.

    Each image is resized so its longer side is ``size`` (rounded to whole patches, aspect kept); images that
    share an input size are run as one batch. ``layer`` counts blocks from 1 (``-1`` = the last block);
    ``facet`` is ``token`` (block output, final layer norm applied) or ``key``/``query``/``value`` of that
    block's attention. ``device``/``dtype`` (see :mod:`vlens.devices`) move the model there first; descriptors
    always come back as float32 on the CPU. ``bin_levels`` > 0 log-bins every descriptor with that many levels
    (each patch concatenated with its neighbouring cells at growing scales, 2 levels = 17 x d dims; see
    :mod:`vlens.match.binning`), after fusion for a fused spec. ``stride``: overlapping patches, a descriptor
    every ``stride`` input pixels (a divisor of the patch size; None = the patch size, no overlap;
    :mod:`vlens.match.strided`); dense SIFT and raw pixels take it too, a fusion passes it to every part.
    ``engine`` (torch | onnx | auto, :mod:`vlens.engines`): what runs the token facet of a model loaded from
    files (fp32 on the CPU); one ONNX export per input size, block and stride, verified against torch when made.
    ``quantize='int8'``: the token facet as an ONNX Runtime dynamic-int8 export, where :mod:`vlens.engines.int8`
    offers it for ViT token features (a one-line ConfigError otherwise).
    """
    from vlens.engines.int8 import check_int8

    quantize = check_int8("vit-tokens", quantize)
    if quantize == "int8" and facet != "token":
        raise ConfigError(f"--quantize int8 covers the token facet only, not '{facet}'; use --facet token or drop "
                          "--quantize")
    if bin_levels:
        from vlens.match.binning import bin_features, check_levels

        check_levels(bin_levels)
        feats = extract_features(images, model, layer=layer, facet=facet, size=size, batch_size=batch_size,
                                 device=device, dtype=dtype, stride=stride, engine=engine, quantize=quantize)
        return [bin_features(f, bin_levels) for f in feats]
    from vlens.images import load_image
    from vlens.match.strided import check_stride

    if facet not in FACETS:
        raise ConfigError(f"unknown facet '{facet}'; one of {', '.join(FACETS)}")
    bb = placed(model if isinstance(model, Backbone) else load_backbone(model), device, dtype)
    if isinstance(images, Image.Image | str) or hasattr(images, "__fspath__"):
        images = [images]
    block_index(bb, layer)  # layer 0 or past the last block: refused before any work, numbered as given
    if bb.parts:
        for part, _ in bb.parts:
            check_stride(part.patch_size, stride, part.spec)
        return _fused_features(images, bb, layer=layer, facet=facet, size=size, batch_size=batch_size, stride=stride,
                               engine=engine, quantize=quantize)
    stride = None if stride is None or stride == bb.patch_size else check_stride(bb.patch_size, stride, bb.spec)
    pils = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
    if not bb.has_model and facet != "token":
        raise ConfigError(f"'{bb.spec}' has no attention facets; use facet 'token'")
    layer_idx = layer if layer < 0 or not bb.has_model else layer - 1
    names = [str(im) if not isinstance(im, Image.Image) else
             im.info.get("vlens_source") or getattr(im, "filename", "") or f"image {i + 1} of {len(pils)}"
             for i, im in enumerate(images)]
    sizes = [input_size_for(im.size, bb.patch_size, size, n) for im, n in zip(pils, names)]
    results: list[DenseFeatures | None] = [None] * len(pils)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(s, []).append(i)
    from vlens.interrupt import interruptible

    bar, hooks = _block_progress(bb, groups, batch_size, stride or bb.patch_size)
    try:
        for (w_in, h_in), idx in groups.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                _fill(results, bb, pils, chunk, w_in, h_in, size, layer, layer_idx, facet, interruptible, stride,
                      engine, quantize)
    finally:
        for h in hooks:
            h.remove()
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]


LONG_TOKENS = 40_000
"""Patches in one call above which feature extraction shows a progress bar (one tick per transformer block)."""


def _block_progress(bb: Backbone, groups: dict, batch_size: int, stride: int):
    """A progress bar over (chunk, block) for long extractions, ticked by forward hooks; (None, []) otherwise."""
    if not bb.has_model:
        return None, []
    tokens = sum(len(idx) * int(np.prod(grid_of(bb, w, h, stride))) for (w, h), idx in groups.items())
    if tokens < LONG_TOKENS:
        return None, []
    from vlens.runs import stage_progress

    chunks = sum(-(-len(idx) // batch_size) for idx in groups.values())
    bar = stage_progress(chunks * bb.num_layers, f"features ({tokens:,} patches)", unit="block")

    def tick(*_) -> None:  # returns None: a forward hook that returns a value replaces the block's output
        bar.update(1)  # (tqdm's update returns True whenever it redraws, which would feed True to the next block)

    return bar, [blk.register_forward_hook(tick) for blk in bb.blocks()]


def feature_bytes(bb: Backbone, batch: int, w_in: int, h_in: int, element_size: int, stride: int | None = None
                  ) -> int:
    """Activation bytes of a forward (:func:`check_feature_memory`): (layers + 6) x B x T x d, T the tokens of the
    grid at ``stride`` plus the prefix."""
    tokens = int(np.prod(grid_of(bb, w_in, h_in, stride or bb.patch_size))) + bb.num_prefix
    d = int(getattr(bb.model.config, "hidden_size", 768))
    return (bb.num_layers + 6) * batch * tokens * d * element_size


def largest_fitting_size(bb: Backbone, budget: float, aspect: float, fits) -> int:
    """The largest ``--size`` (a multiple of the patch size) for which ``fits(w_in, h_in)`` is under ``budget``;
    ``aspect`` = shorter / longer input side. 0 when not even one patch fits."""
    p = bb.patch_size
    side = p
    while True:
        nxt = side + p
        if fits(nxt, max(p, round(nxt * aspect / p) * p)) > budget or nxt > 1 << 16:
            break
        side = nxt
    return side if fits(side, max(p, round(side * aspect / p) * p)) <= budget else 0


def check_feature_memory(bb: Backbone, batch: int, w_in: int, h_in: int, size: int, weight,
                         stride: int | None = None) -> None:
    """A one-line ConfigError before a forward whose activations cannot fit: every block's hidden states are kept
    (the token facet reads one of them) plus a few block-sized temporaries, (layers + 6) x B x T x d. The advice
    names the largest ``--size`` that fits at this stride."""
    from vlens.devices import check_memory

    es = weight.element_size()
    need = feature_bytes(bb, batch, w_in, h_in, es, stride)

    def advice(budget: float) -> str:
        aspect = min(w_in, h_in) / max(w_in, h_in)
        fit = largest_fitting_size(bb, budget, aspect, lambda w, h: feature_bytes(bb, batch, w, h, es, stride))
        at = f" at --stride {stride}" if stride and stride != bb.patch_size else ""
        return f"use --size {fit} or less{at}" if fit >= bb.patch_size else "use a smaller model"

    check_memory(need, weight.device, f"features of {batch} image(s) at {w_in}x{h_in} px", advice)


def _fill(results, bb, pils, chunk, w_in, h_in, size, layer, layer_idx, facet, interruptible, stride=None,
          engine: str = "torch", quantize: str = "none") -> None:
    """Descriptors of the images ``chunk`` (same input size) into ``results``."""
    from vlens.match.strided import grid_centers

    if bb.model_type == "sift":
        desc = torch.stack([_sift_descriptors(pils[i], w_in, h_in, bb.patch_size, bb.support, stride)
                            for i in chunk])  # (B, h, w, 128)
    else:
        x = torch.stack([_to_tensor(pils[i], w_in, h_in, bb.mean, bb.std) for i in chunk])  # (B, 3, H, W)
        if bb.model is not None:  # wherever (and in whatever dtype) the model now is
            w = next(bb.model.parameters())
            check_feature_memory(bb, len(chunk), w_in, h_in, size, w, stride)
            x = x.to(device=w.device, dtype=w.dtype)
        desc = interruptible(_forward, bb, x, layer_idx, facet, stride, engine, quantize).float().cpu()  # (B, h, w, d)
    gh, gw = desc.shape[1:3]
    for k, i in enumerate(chunk):
        w0, h0 = pils[i].size
        note = ""
        if max(w0, h0) > 2 * size:
            note = f"resized from {w0}x{h0} to {w_in}x{h_in} for the model (change with --size)"
        if stride is None:
            centers = patch_centers(gh, gw, bb.patch_size, w0 / w_in, h0 / h_in)
        else:
            centers = grid_centers(gh, gw, stride, bb.patch_size / 2, w0 / w_in, h0 / h_in)
        results[i] = DenseFeatures(desc[k].contiguous(), centers, (w0, h0), (w_in, h_in), bb.patch_size,
                                   bb.spec, layer, facet, note, stride=stride)


def resample_grid(desc: torch.Tensor, step: float, origin: float, input_size: tuple[int, int],
                  image_size: tuple[int, int], centers: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a descriptor grid (h, w, d) at points ``centers`` (n, 2) in original-image pixels:
    (n, d). The grid's patch ``(i, j)`` sits at ``((j step + origin) W / W_in, (i step + origin) H / H_in)``
    (``step = p``, ``origin = p / 2`` without overlap); points beyond the outer centres take the border values."""
    h, w, d = desc.shape
    u = centers[:, 0] * input_size[0] / image_size[0] / step - origin / step  # (n,) in grid units: centre j -> j
    v = centers[:, 1] * input_size[1] / image_size[1] / step - origin / step
    gx = u / max(w - 1, 1) * 2 - 1 if w > 1 else torch.zeros_like(u)
    gy = v / max(h - 1, 1) * 2 - 1 if h > 1 else torch.zeros_like(v)
    grid = torch.stack([gx, gy], dim=-1).float()[None, None]  # (1, 1, n, 2)
    out = torch.nn.functional.grid_sample(desc.permute(2, 0, 1)[None].float(), grid, mode="bilinear",
                                          padding_mode="border", align_corners=True)  # (1, d, 1, n)
    return out[0, :, 0].T  # (n, d)


def fuse_features(parts: Sequence[DenseFeatures], weights: Sequence[float], spec: str) -> DenseFeatures:
    """One image's fused descriptors (module docstring): every part on the finest part's grid, L2-normalised per
    patch, weighted and concatenated."""
    ref = min(parts, key=lambda f: (f.step, f.patch_size))  # the first of the finest (then the most cells)
    gh, gw = ref.grid
    blocks = []
    for f, wt in zip(parts, weights):
        if f.image_size != ref.image_size:
            raise ConfigError(f"'{spec}': the parts saw different images ({f.image_size} vs {ref.image_size})")
        if (f.grid == ref.grid and f.input_size == ref.input_size and f.step == ref.step
                and f.origin == ref.origin):
            flat = f.flat  # the same grid: no resampling
        else:
            h, w = f.grid
            if (h < 2 and gh > 1) or (w < 2 and gw > 1):
                raise ConfigError(f"'{spec}': cannot align the {h}x{w} patch grid of '{f.model}' with the {gh}x{gw} "
                                  f"grid of '{ref.model}' (a grid needs 2 patches per side to be resampled); use a "
                                  "larger --size or parts with closer patch sizes")
            flat = resample_grid(f.descriptors, f.step, f.origin, f.input_size, f.image_size, ref.centers)
        blocks.append(wt * torch.nn.functional.normalize(flat.float(), dim=-1))
    desc = torch.cat(blocks, dim=-1).reshape(gh, gw, -1)
    note = next((f.note for f in parts if f.note), "")
    return dataclasses.replace(ref, descriptors=desc.contiguous(), model=spec, note=note)


def _fused_features(images, bb: Backbone, *, layer: int, facet: str, size: int, batch_size: int,
                    stride: int | None = None, engine: str = "torch", quantize: str = "none") -> list[DenseFeatures]:
    """:func:`extract_features` for a fused backbone: each part on the images, then :func:`fuse_features`."""
    from vlens.images import load_image

    imgs = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
    for im, src in zip(imgs, images):  # keep the names for one-line errors about the image
        if not isinstance(src, Image.Image):
            im.info.setdefault("vlens_source", str(src))
    per_part = [extract_features(imgs, part, layer=layer if part.has_model else -1,
                                 facet=facet if part.has_model else "token", size=size, batch_size=batch_size,
                                 stride=stride, engine=engine, quantize=quantize if part.has_model else "none")
                for part, _ in bb.parts]
    weights = [w for _, w in bb.parts]
    return [fuse_features([feats[i] for feats in per_part], weights, bb.spec) for i in range(len(imgs))]
