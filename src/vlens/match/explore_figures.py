"""Pictures of what a backbone sees: a point's similarity heatmap in the other image, [CLS] attention per head.

The overlays are PIL images at the image's own size (the web app sends them as they are); the figures put them
in matplotlib panels with titles and colour bars for the CLI and the lab report.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

HEAT_CMAP = "inferno"


def heat_overlay(img: Image.Image, values: torch.Tensor, vmin: float | None = None, vmax: float | None = None,
                 cmap: str = HEAT_CMAP, alpha: float = 0.6) -> Image.Image:
    """``values`` (h, w), any grid size, resized (bilinear) to the image, coloured and blended over a dimmed grey
    copy of ``img``; returns an RGB image of ``img.size``."""
    from matplotlib import colormaps

    w, h = img.size
    v = values.float()[None, None]  # (1, 1, h_v, w_v)
    if v.shape[-2:] != (h, w):
        v = torch.nn.functional.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
    v = v[0, 0].numpy()  # (H, W)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    norm = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    colour = (np.asarray(colormaps[cmap](norm))[..., :3] * 255).astype(np.float32)  # (H, W, 3)
    grey = np.asarray(img.convert("L").convert("RGB"), dtype=np.float32) * 0.9
    out = (1 - alpha) * grey + alpha * colour
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _colorbar(fig, ax, cmap: str, vmin: float, vmax: float, label: str):
    from matplotlib import cm, colors

    sm = cm.ScalarMappable(norm=colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def draw_point_panels(ax_a, ax_b, img_a: Image.Image, img_b: Image.Image, pm, vmin=None, vmax=None,
                      show_candidates: bool = True, fontsize: int = 8):
    """A with the point (and where its cycle lands) on ``ax_a``; B with the heatmap and best match on ``ax_b``."""
    sim = pm.similarity
    lo = float(sim.min()) if vmin is None else vmin
    hi = float(sim.max()) if vmax is None else vmax
    ax_a.imshow(img_a)
    qx, qy = pm.query_xy
    cx, cy = pm.cycle_xy
    ax_a.plot([qx], [qy], "o", ms=12, mfc="#00e5ff", mec="white", mew=1.5, label="the point")
    ax_a.plot([cx], [cy], "X", ms=7, mfc="#ff9f1c", mec="black", mew=0.8,
              label=f"cycle back lands here ({pm.cycle_distance:.0f} px)")
    if pm.cycle_distance > 0:
        ax_a.annotate("", xy=(cx, cy), xytext=(qx, qy),
                      arrowprops={"arrowstyle": "->", "color": "#ff9f1c", "lw": 1.5})
    ax_a.legend(loc="lower left", fontsize=fontsize - 1, framealpha=0.85)
    ax_a.set_axis_off()
    if pm.b_grid is not None:  # overlapping patches: the map sampled where its centres are
        from vlens.match.explore import similarity_at_image_size

        sim = similarity_at_image_size(pm, img_b.size)
    ax_b.imshow(heat_overlay(img_b, sim, lo, hi))
    if show_candidates:
        for rank, c in enumerate(pm.candidates[1:], start=2):
            ax_b.plot([c.xy[0]], [c.xy[1]], "o", ms=6, mfc="none", mec="white", mew=1)
            ax_b.annotate(str(rank), c.xy, xytext=(4, 4), textcoords="offset points", color="white",
                          fontsize=fontsize - 2)
    bx, by = pm.match_xy
    ax_b.plot([bx], [by], "*", ms=15, mfc="#39ff14", mec="black", mew=0.8,
              label="best match" + ("" if pm.refined_xy is None else f" ({pm.refine}-refined)"))
    ax_b.legend(loc="lower left", fontsize=fontsize - 1, framealpha=0.85)
    ax_b.set_axis_off()
    return lo, hi


def point_figure(img_a: Image.Image, img_b: Image.Image, pm, path, title: str = "") -> None:
    """A (left) with the point and its cycle back, B (right) with the similarity heatmap, best match and the
    other top-k candidates (numbered), a colour bar and the numbers in the title."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    ha = 4.2
    wa, wb = ha * img_a.width / img_a.height, ha * img_b.width / img_b.height
    fig, (ax_a, ax_b) = pyplot.subplots(1, 2, figsize=(wa + wb + 1.4, ha + 0.9),
                                         gridspec_kw={"width_ratios": [wa, wb]})
    lo, hi = draw_point_panels(ax_a, ax_b, img_a, img_b, pm)
    ax_a.set_title(f"A: point ({pm.query_xy[0]:.0f}, {pm.query_xy[1]:.0f})", fontsize=9)
    ax_b.set_title(f"B: best match ({pm.match_xy[0]:.0f}, {pm.match_xy[1]:.0f}), feature distance "
                   f"{pm.best.feature_distance:.3f}", fontsize=9)
    _colorbar(fig, ax_b, HEAT_CMAP, lo, hi, "cosine similarity to the point's patch")
    verdict = ("mutual nearest neighbours" + (f" (refined cycle {pm.cycle_distance:.1f} px)" if pm.cycle_distance
                                               else "")) if pm.cycle_index == pm.src_index else \
        f"not mutual: the cycle A -> B -> A lands {pm.cycle_distance:.0f} px away"
    fig.suptitle((title + "\n" if title else "") + verdict, fontsize=9)
    fig.tight_layout()
    save_fig(fig, path)


def attention_overlays(img: Image.Image, att) -> list[Image.Image]:
    """One overlay per head, then the mean: each map at the image's size, scaled to its own maximum."""
    maps = att.at_image_size()  # (heads + 1, H, W)
    return [heat_overlay(img, m, 0.0, float(m.max())) for m in maps]


def attention_figure(img: Image.Image, att, rgb: np.ndarray | None, path, title: str = "", cols: int = 4,
                     saliency=None) -> None:
    """The photo, its features' PCA as RGB, the saliency map when given (:mod:`vlens.match.saliency`), the heads'
    mean attention, then one panel per head."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    overlays = attention_overlays(img, att)
    panels = [(img, "photo")]
    if rgb is not None:
        panels.append((Image.fromarray((rgb * 255).astype(np.uint8)).resize(img.size, Image.NEAREST),
                       "patch features: 3 PCA components as RGB"))
    if saliency is not None:
        heads = "all heads" if len(saliency.heads) == att.heads else f"heads {','.join(map(str, saliency.heads))}"
        panels.append((heat_overlay(img, saliency.map, 0.0, 1.0), f"saliency: block {saliency.layer}, {heads}, 0-1"))
    mean = att.mean
    panels.append((overlays[-1], f"mean of {att.heads} heads (peak {100 * float(mean.max()):.1f}%)"))
    for h in range(att.heads):
        panels.append((overlays[h], f"head {h + 1}: peak {100 * float(att.maps[h].max()):.1f}%, "
                                    f"on [CLS] {100 * float(att.prefix_mass[h]):.0f}%"))
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    cell = 2.8
    aspect = img.height / img.width
    fig, axes = pyplot.subplots(rows, cols, figsize=(cols * cell + 0.8, rows * (cell * aspect + 0.45)),
                                squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (im, t) in zip(axes.flat, panels):
        ax.imshow(im)
        ax.set_title(t, fontsize=7.5)
    _colorbar(fig, axes.ravel().tolist(), HEAT_CMAP, 0, 1, "attention / the panel's peak")
    fig.suptitle(title or f"[CLS] attention of block {att.layer} of {att.model}: share of each head's attention "
                          "on the patches", fontsize=9)
    save_fig(fig, path)
