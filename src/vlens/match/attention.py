"""Where a ViT looks: the [CLS] token's attention in the last block, per head, over the image's patches.

The famous DINO pictures: in a self-supervised ViT the [CLS] token of the last block attends to the object,
each head to a different part of it. ``cls_attention`` runs the backbone with eager attention (in transformers
5.x the default sdpa kernel returns no attention weights), takes the attention row of [CLS] in the chosen block,
``(heads, tokens)``, and splits it into the mass on the prefix tokens ([CLS] itself and any registers) and the
patch part, reshaped to the patch grid. Each row of raw attention sums to one; ``maps`` is the patch part
renormalised to sum to one per head (the share of the head's patch attention each patch gets), and
``prefix_mass`` keeps what the renormalisation removed, so nothing is hidden.
"""

from __future__ import annotations

import copy
import functools
import threading
from dataclasses import dataclass

import torch

from vlens.errors import ConfigError

_LOCK = threading.Lock()


@dataclass(frozen=True)
class AttentionMaps:
    maps: torch.Tensor  # (heads, h, w) [CLS] attention on each patch, each head's map sums to 1
    prefix_mass: torch.Tensor  # (heads,) attention [CLS] puts on the prefix tokens ([CLS] + registers) instead
    image_size: tuple[int, int]  # original (W, H)
    input_size: tuple[int, int]  # model input (W_in, H_in)
    patch_size: int
    model: str
    layer: int  # block counted from 1
    stride: int | None = None  # input pixels between patch centres (None: the patch size; vlens.match.strided)

    @property
    def heads(self) -> int:
        return int(self.maps.shape[0])

    @property
    def mean(self) -> torch.Tensor:
        """The heads' average map, (h, w); sums to 1."""
        return self.maps.mean(0)

    def at_image_size(self) -> torch.Tensor:
        """Every head's map and the mean, resized (bilinear) to the image's pixels: (heads + 1, H, W)."""
        w, h = self.image_size
        if self.stride:  # overlapping patches: centres every stride px from half a patch
            from vlens.match.strided import grid_to_pixels

            return grid_to_pixels(torch.cat([self.maps, self.mean[None]]), self.stride, self.patch_size / 2,
                                  self.input_size, self.image_size)
        m = torch.cat([self.maps, self.mean[None]])[None].float()  # (1, heads + 1, h_p, w_p)
        return torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0]


@functools.lru_cache(maxsize=4)
def eager_backbone(spec: str | None):
    """The backbone of ``spec`` with eager attention (a copy: the shared matcher keeps its fast kernel)."""
    from vlens.match.features import load_backbone

    bb = load_backbone(spec)
    learnt = [p for p, _ in bb.parts if p.model is not None]
    if learnt:  # a fusion (e.g. the offline default builtin:dino-tiny*0.2+sift:8*0.8): its first learnt part
        bb = learnt[0]
    if bb.model is None:
        raise ConfigError(f"'{bb.spec}' is a descriptor without a model ({bb.model_type}): it has no attention; "
                          "pick a ViT / DINO / DINOv2 backbone")
    model = copy.deepcopy(bb.model)
    model.set_attn_implementation("eager")
    from dataclasses import replace

    return replace(bb, model=model.eval())


@torch.no_grad()
def cls_attention(image, model: str | None = None, *, layer: int = -1, size: int = 448, device=None,
                  dtype=None, stride: int | None = None) -> AttentionMaps:
    """[CLS] attention of block ``layer`` (counted from 1, -1 = last) on ``image`` (PIL image or path).
    ``device`` / ``dtype`` (torch objects or names, see :mod:`vlens.devices`) move the eager copy there first.
    ``stride``: overlapping patches, the patch embedding run every ``stride`` px (:mod:`vlens.match.strided`)."""
    from PIL import Image

    from vlens.images import load_image
    from vlens.match.features import _to_tensor, block_index, grid_of, input_size_for, placed
    from vlens.match.strided import check_stride, strided_patches

    img = image if isinstance(image, Image.Image) else load_image(image)
    name = img.info.get("vlens_source") or (str(image) if not isinstance(image, Image.Image) else "image")
    shape = attention_shape(model)
    if shape is not None:  # from config.json, before 10+ s of loading a model whose attention cannot fit anyway
        from vlens.devices import resolve_device, resolve_dtype

        dev = device if isinstance(device, torch.device) else resolve_device(device or "cpu")
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev) if dtype else torch.float32
        check_attention_memory(shape, img.size, size, torch.empty((), dtype=dt).element_size(), dev,
                               check_stride(shape.patch_size, stride, shape.spec), name)
    bb = placed(eager_backbone(model), device, dtype)  # a moved copy: the cached one stays as loaded
    li = block_index(bb, layer)  # 0-based block
    s = check_stride(bb.patch_size, stride, bb.spec)
    w_in, h_in = input_size_for(img.size, bb.patch_size, size, name)
    w = next(bb.model.parameters())
    check_attention_memory(bb, img.size, size, w.element_size(), w.device, s, name)
    x = _to_tensor(img, w_in, h_in, bb.mean, bb.std)[None].to(device=w.device, dtype=w.dtype)  # (1, 3, H, W)
    kwargs = {"interpolate_pos_encoding": True} if bb.model_type in ("vit", "deit", "dino") else {}
    from vlens.interrupt import interruptible

    with _LOCK:
        with strided_patches(bb.model, bb.patch_size, s):
            out = interruptible(_attend, bb.model, x, kwargs)
    att = out.attentions[li] if out.attentions else None
    if att is None:
        raise ConfigError(f"'{bb.spec}' ({bb.model_type}) returned no attention weights")
    row = att[0, :, 0, :].float().cpu()  # (heads, tokens): what [CLS] attends to
    gh, gw = grid_of(bb, w_in, h_in, s)
    patches = row[:, bb.num_prefix:]  # (heads, h*w)
    prefix = row[:, :bb.num_prefix].sum(-1)  # (heads,)
    maps = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)  # (heads, h*w), each row sums to 1
    return AttentionMaps(maps.reshape(-1, gh, gw), prefix, img.size, (w_in, h_in), bb.patch_size, bb.spec,
                         li + 1, None if s == bb.patch_size else s)


@torch.no_grad()
def _attend(model, x, kwargs):
    return model(pixel_values=x, output_attentions=True, **kwargs)


@dataclass(frozen=True)
class AttentionShape:
    """What the attention's memory depends on, read from a model's ``config.json`` without loading its weights
    (the same fields as a :class:`vlens.match.features.Backbone` for :func:`attention_bytes`)."""

    spec: str
    patch_size: int
    num_layers: int
    num_prefix: int
    heads: int


def attention_shape(spec: str | None) -> AttentionShape | None:
    """The :class:`AttentionShape` of the model :func:`eager_backbone` would load for ``spec`` (a fusion: its first
    learnt part), from its config alone; None when it cannot be told without loading (the check then runs after)."""
    import json

    from vlens.models import default_spec
    from vlens.models.hub import resolve

    spec = spec or default_spec("backbone")
    try:
        from vlens.match.features import fused_parts

        names = [n for n, _ in fused_parts(spec) or [(spec, 1.0)]]
        name = next(n for n in names if n.split(":")[0] not in ("pixels", "sift"))
        folder, _ = resolve(name.split(":", 1)[1] if name.startswith("random:") else name)
        cfg = json.loads((folder / "config.json").read_text())
        patch = cfg["patch_size"] if isinstance(cfg["patch_size"], int) else cfg["patch_size"][0]
        return AttentionShape(spec, int(patch), int(cfg["num_hidden_layers"]),
                              1 + int(cfg.get("num_register_tokens") or 0), int(cfg["num_attention_heads"]))
    except Exception:  # noqa: BLE001 - anything unusual is reported by the real load that follows
        return None


def attention_bytes(bb, w_in: int, h_in: int, element_size: int = 4, stride: int | None = None) -> int:
    """Memory of an eager forward that returns every block's attention: each of the ``layers`` blocks keeps a
    (heads, T, T) matrix, and the block being computed holds two more (scores and softmax), T = patches + prefix.
    Quadratic in tokens, so quartic in the image side (and in ``patch / stride``). ``bb``: a loaded backbone or
    an :class:`AttentionShape`."""
    from vlens.match.features import grid_of

    rows, cols = grid_of(bb, w_in, h_in, stride or bb.patch_size)
    tokens = rows * cols + bb.num_prefix
    heads = bb.heads if isinstance(bb, AttentionShape) else int(getattr(bb.model.config, "num_attention_heads", 1))
    return (bb.num_layers + 2) * heads * tokens * tokens * element_size


def check_attention_memory(bb, image_size: tuple[int, int], size: int, element_size: int, device,
                           stride: int | None = None, name: str = "image") -> None:
    """A one-line ConfigError, before anything is allocated, when the attention maps of this input cannot fit;
    it names the largest --size that would at this ``stride``. ``bb``: a backbone or an :class:`AttentionShape`
    (so the check can come before the model loads); ``name``: the image, as an unusable one is named."""
    from vlens.devices import check_memory
    from vlens.match.features import input_size_for

    def need_at(side: int) -> int:
        return attention_bytes(bb, *input_size_for(image_size, bb.patch_size, side, name), element_size, stride)

    w_in, h_in = input_size_for(image_size, bb.patch_size, size, name)
    need = need_at(size)

    def advice(budget: float) -> str:
        fit = int(size * (budget / need) ** 0.25) // bb.patch_size * bb.patch_size
        while fit >= 16 and need_at(fit) > budget:
            fit -= bb.patch_size
        at = f" at --stride {stride}" if stride and stride != bb.patch_size else ""
        return (f"attention memory grows with the 4th power of the side: use --size {fit} or less{at}"
                if fit >= 16 else "this model's attention does not fit at any size here")

    check_memory(need, device, f"the attention of {w_in}x{h_in} px ({bb.num_layers} blocks)", advice)


def pca_features(image, model: str | None = None, *, layer: int = -1, size: int = 448, device=None, dtype=None,
                 stride: int | None = None):
    """The image's patch features (token facet of ``layer``) as 3 PCA components in RGB: (h, w, 3) in [0, 1]."""
    from vlens.match.draw import pca_rgb
    from vlens.match.features import extract_features

    f = extract_features([image], model, layer=layer, size=size, device=device, dtype=dtype, stride=stride)[0]
    return pca_rgb(f.descriptors)[0]
