"""Overlapping patches: a ViT's patch embedding run at a stride ``S`` smaller than its patch size ``p``.

The reference recipe for dense DINO descriptors ("Deep ViT Features as Dense Visual Descriptors") runs the
patch-embedding convolution of a ViT-S/8 at stride 4, so the same ``p x p`` patches overlap by half and the model
gives a descriptor every 4 px. For an input of ``H_in x W_in`` pixels the grid has

    rows = 1 + (H_in - p) // S,    cols = 1 + (W_in - p) // S

patches; patch ``(i, j)`` covers input pixels ``[j S, j S + p) x [i S, i S + p)``, so its centre is at
``(j S + p / 2, i S + p / 2)``: the grid's *step* is ``S`` and its *origin* (first centre) ``p / 2``. At ``S = p``
this is the usual grid (``(j + 0.5) p``). The position embeddings, learnt for the model's own square grid, are
interpolated to ``rows x cols`` with the model's own convention (:func:`grid_position_embeddings`, through
:mod:`vlens.models.pos_embed`: ``exact`` for transformers' ViT / DINOv2, ``offset`` for the original DINO code's
checkpoints, ``exact-antialias`` for DINOv2 with registers); the rest of the
network (blocks, final norm) is unchanged, it only sees more tokens. Time and memory grow with the token count:
``(p / S)^2`` times the tokens, attention ``(p / S)^4`` times the pairs.

How: :func:`strided_patches` puts a forward hook on the model's embeddings module that replaces its output by the
strided embeddings (:func:`strided_embeddings`), so hidden states, attention hooks and facets all work as they do
at stride ``p``. At ``S = p`` nothing is hooked: today's numbers, bit for bit.
"""

from __future__ import annotations

import contextlib

import torch

from vlens.errors import ConfigError


def check_stride(patch: int, stride: int | None, spec: str = "") -> int:
    """The stride to use for a ``patch``-pixel grid: ``patch`` when ``stride`` is None, else ``stride`` when it is
    a positive divisor of ``patch``; a one-line ConfigError otherwise."""
    if stride is None:
        return patch
    if not isinstance(stride, int) or stride < 1 or patch % stride:
        divisors = [d for d in range(1, patch + 1) if patch % d == 0]
        where = f" of '{spec}'" if spec else ""
        raise ConfigError(f"--stride {stride} does not divide the {patch} px patch{where}; use one of "
                          f"{', '.join(map(str, divisors))}")
    return stride


def strided_grid(h_in: int, w_in: int, patch: int, stride: int) -> tuple[int, int]:
    """Patch grid (rows, cols) of an ``h_in x w_in`` input cut into ``patch``-pixel patches every ``stride`` px."""
    if h_in < patch or w_in < patch:
        raise ConfigError(f"a {w_in}x{h_in} input has no whole {patch} px patch")
    return 1 + (h_in - patch) // stride, 1 + (w_in - patch) // stride


def grid_centers(rows: int, cols: int, step: float, origin: float, sx: float = 1.0, sy: float = 1.0
                 ) -> torch.Tensor:
    """Centres (x, y) of a ``rows x cols`` grid whose first centre is ``origin`` input pixels from the top-left
    corner and whose centres are ``step`` input pixels apart, scaled by (sx, sy) into original pixels, row-major:
    (rows*cols, 2). With ``origin = step / 2 = p / 2`` this is the plain patch grid ``(j + 0.5) p``."""
    ys = (torch.arange(rows, dtype=torch.float32) * step + origin) * sy  # (rows,)
    xs = (torch.arange(cols, dtype=torch.float32) * step + origin) * sx  # (cols,)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (rows, cols) each
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # (rows*cols, 2)


def grid_to_pixels(values: torch.Tensor, step: float, origin: float, input_size: tuple[int, int],
                   image_size: tuple[int, int]) -> torch.Tensor:
    """Per-patch maps (C, h, w) on a grid whose centres sit at ``origin + i * step`` input pixels, bilinear at the
    centre of every pixel of the original image (W, H) = ``image_size``: (C, H, W); beyond the outer centres the
    border values. For heatmaps drawn over the image (attention, point similarity) on overlapping patches."""
    c, h, w = values.shape
    (w_img, h_img), (w_in, h_in) = image_size, input_size
    u = ((torch.arange(w_img, dtype=torch.float32) + 0.5) * w_in / w_img - origin) / step  # (W,) grid units
    v = ((torch.arange(h_img, dtype=torch.float32) + 0.5) * h_in / h_img - origin) / step  # (H,)
    gx = u / max(w - 1, 1) * 2 - 1
    gy = v / max(h - 1, 1) * 2 - 1
    gy2, gx2 = torch.meshgrid(gy, gx, indexing="ij")  # (H, W) each
    grid = torch.stack([gx2, gy2], dim=-1)[None]  # (1, H, W, 2)
    return torch.nn.functional.grid_sample(values[None].float(), grid, mode="bilinear", padding_mode="border",
                                           align_corners=True)[0]  # (C, H, W)


def pos_convention(model) -> str:
    """How ``model`` (an HF ViT / DINOv2) resizes its position embeddings: the convention installed on its
    embeddings by :func:`vlens.models.pos_embed.install`, else the one its config declares (``exact`` for
    transformers' ViT / DINOv2, ``offset`` for converted original DINO checkpoints, ...)."""
    from vlens.models.pos_embed import convention_of

    emb = getattr(model, "embeddings", model)
    return (getattr(emb, "vlens_pos_embed_interpolation", None) or convention_of(getattr(model, "config", None))
            or "exact")


def grid_position_embeddings(pos: torch.Tensor, rows: int, cols: int, convention: str = "exact",
                             square_input: bool = True) -> torch.Tensor:
    """Position embeddings ``pos`` (1, 1 + N, D) (CLS first, then a square ``sqrt(N)`` grid) resized to a
    ``rows x cols`` grid under the model's ``convention``: (1, 1 + rows*cols, D). The one seam to the shared
    interpolation, :func:`vlens.models.pos_embed.interpolate` (``square_input``: the pixel input was square,
    which decides the conventions' shortcut for the trained grid)."""
    from vlens.models.pos_embed import interpolate

    return interpolate(pos, rows, cols, convention, square_input=square_input)


def strided_embeddings(embeddings: torch.nn.Module, x: torch.Tensor, stride: int, convention: str = "exact"
                       ) -> torch.Tensor:
    """What a ViT / DINOv2 embeddings module returns for pixels ``x`` (B, 3, H, W), with its patch convolution run
    at ``stride``: (B, 1 + registers + rows*cols, D), CLS first, then the register tokens (no position), then the
    patches row-major."""
    conv = embeddings.patch_embeddings.projection
    weight = conv.weight
    x = x.to(weight.dtype)
    tokens = torch.nn.functional.conv2d(x, weight, conv.bias, stride=stride)  # (B, D, rows, cols)
    b, _, rows, cols = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, rows*cols, D)
    tokens = torch.cat([embeddings.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)  # (B, 1+T, D)
    square = x.shape[-1] == x.shape[-2]
    tokens = tokens + grid_position_embeddings(embeddings.position_embeddings, rows, cols, convention, square)
    registers = getattr(embeddings, "register_tokens", None)
    if registers is not None:
        tokens = torch.cat([tokens[:, :1], registers.expand(b, -1, -1).to(tokens.dtype), tokens[:, 1:]], dim=1)
    return tokens


@contextlib.contextmanager
def strided_patches(model: torch.nn.Module, patch: int, stride: int):
    """Within the block, ``model``'s embeddings are computed with the patch convolution at ``stride`` (see the
    module docstring); at ``stride == patch`` nothing changes."""
    if stride == patch:
        yield
        return
    emb = getattr(model, "embeddings", None)
    if emb is None or not hasattr(getattr(emb, "patch_embeddings", None), "projection"):
        raise ConfigError(f"--stride needs a ViT patch embedding; {type(model).__name__} has none (use --stride "
                          f"{patch})")
    convention = pos_convention(model)

    def hook(_module, args, kwargs, _out):
        x = args[0] if args else kwargs["pixel_values"]
        return strided_embeddings(emb, x, stride, convention)

    handle = emb.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
