"""Named match recipes: one word for a published set of settings.

``dvf``: the correspondence recipe of "Deep ViT Features as Dense Visual Descriptors" (Amir et al.): the key
facet of layer 9 of 12 (three quarters of the depth, rounded, for a model of another depth), stride 4,
log-binned descriptors (2 levels, 17 cells), saliency threshold 0.05 and 10 well-spread best-buddy pairs. A patch
size that 4 does not divide (DINOv2's 14) gets half its patch (7), as 4 is half of 8.
Descriptors without a model (SIFT, pixels) keep their one descriptor and have no saliency: the recipe keeps the
rest and says so.
"""

from __future__ import annotations

from vlens.errors import ConfigError

RECIPES = ("dvf",)
DVF = {"facet": "key", "layer_fraction": 9 / 12, "stride": 4, "bin_levels": 2, "saliency_threshold": 0.05,
       "pairs": 10}


def scaled_layer(num_layers: int, fraction: float) -> int:
    """Block ``fraction`` of the way through a ``num_layers``-deep model, counted from 1 (9 of 12 -> 9; 4 -> 3)."""
    return max(1, min(num_layers, int(num_layers * fraction + 0.5)))


def recipe_stride(patches: list[int], stride: int = DVF["stride"]) -> int:
    """The recipe's stride where it divides every patch size (4 on the 8 px models it was written for), else half
    the patch as 4 is half of 8: the largest common divisor of the patch sizes up to half the smallest (1 at
    least)."""
    if all(p % stride == 0 for p in patches):
        return stride
    half = min(patches) // 2
    return max([d for d in range(1, half + 1) if all(p % d == 0 for p in patches)] or [1])


def recipe(name: str, spec: str | None) -> tuple[dict, list[str]]:
    """The settings of recipe ``name`` for backbone ``spec``, and notes on what it had to adapt."""
    from vlens.match.features import load_backbone

    if name not in RECIPES:
        raise ConfigError(f"unknown preset '{name}'; one of {', '.join(RECIPES)}")
    bb = load_backbone(spec)
    learnt = [p for p, _ in bb.parts if p.has_model] if bb.parts else ([bb] if bb.has_model else [])
    patches = [p.patch_size for p, _ in bb.parts] if bb.parts else [bb.patch_size]
    out = {"bin_levels": DVF["bin_levels"], "pairs": DVF["pairs"], "stride": recipe_stride(patches)}
    notes = []
    if out["stride"] != DVF["stride"]:
        notes.append(f"preset dvf: stride {out['stride']} (half the {min(patches)} px patch, as the recipe's 4 is "
                     "of 8: 4 does not divide this model's patch)")
    if learnt:
        depth = learnt[0].num_layers
        out.update(facet=DVF["facet"], layer=scaled_layer(depth, DVF["layer_fraction"]),
                   saliency_threshold=DVF["saliency_threshold"])
        if depth != 12:
            notes.append(f"preset dvf: layer {out['layer']} of {depth} (the recipe's 9 of 12, scaled to this depth)")
        if bb.parts:
            notes.append(f"preset dvf: facet, layer and saliency from the fusion's ViT part '{learnt[0].spec}'")
    else:
        out.update(facet="token", layer=-1, saliency_threshold=0.0)
        notes.append(f"preset dvf: '{bb.spec}' has no model: no key facet, no [CLS] saliency (pairs ranked by "
                     "cycle score)")
    return out, notes
