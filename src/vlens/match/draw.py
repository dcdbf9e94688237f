"""Pictures of matches and features: match lines between two images, crop-benchmark curves, overlays."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def _colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """(n,) values in [0, 1] -> (n, 3) uint8 colours from a matplotlib colormap."""
    from matplotlib import colormaps

    return (np.asarray(colormaps[name](np.clip(values, 0, 1)))[:, :3] * 255).astype(np.uint8)


def side_by_side(img_a: Image.Image, img_b: Image.Image, height: int | None = None, gap: int = 8,
                 max_aspect: float = 4.0):
    """Both images at the same height next to each other; returns (canvas, scale_a, scale_b, offset_b).

    An image wider than ``max_aspect`` times the height is drawn smaller (top-aligned) instead of wider, so a
    panorama or a 1-pixel-high strip cannot make a canvas of millions of pixels."""
    h = height or max(img_a.height, img_b.height)
    sa, sb = (min(h / im.height, max_aspect * h / im.width) for im in (img_a, img_b))
    a = img_a.convert("RGB").resize((max(1, round(img_a.width * sa)), max(1, round(img_a.height * sa))),
                                    Image.BICUBIC)
    b = img_b.convert("RGB").resize((max(1, round(img_b.width * sb)), max(1, round(img_b.height * sb))),
                                    Image.BICUBIC)
    canvas = Image.new("RGB", (a.width + gap + b.width, h), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    return canvas, sa, sb, a.width + gap


def draw_matches(img_a: Image.Image, img_b: Image.Image, matches, top: int | None = 50, by: str = "cycle",
                 height: int | None = 384, colors: np.ndarray | None = None, width: int = 2) -> Image.Image:
    """Draw the ``top`` best matches (by ``by``) as lines from A (left) to B (right).

    Colour = rank by score (yellow = best, purple = worst of those drawn) unless ``colors`` (n, 3) is given.
    ``matches`` coordinates must be in the pixels of ``img_a`` / ``img_b`` as passed.
    """
    m = matches.top(top, by) if top else matches.ranked(by)
    canvas, sa, sb, off = side_by_side(img_a, img_b, height)
    n = len(m)
    if colors is None:
        colors = _colormap(1.0 - np.arange(n) / max(n - 1, 1))
    draw = ImageDraw.Draw(canvas)
    r = max(2, width + 1)
    for i in reversed(range(n)):  # best drawn last, on top
        x0, y0 = (m.src_xy[i] * sa).tolist()
        x1, y1 = (m.dst_xy[i] * sb).tolist()
        x1 += off
        c = tuple(int(v) for v in colors[i])
        draw.line([(x0, y0), (x1, y1)], fill=c, width=width)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=c, width=width)
        draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], outline=c, width=width)
    return canvas


def draw_error_matches(crop: Image.Image, source: Image.Image, matches, errors: torch.Tensor, by: str,
                       n: int = 10, height: int = 256) -> tuple[Image.Image, Image.Image]:
    """The ``n`` best and ``n`` worst matches of a crop by score ``by``, coloured by crop error
    (green = small, red = large; 0 to 100 source pixels)."""
    order = matches.order(by)
    out = []
    for idx in (order[:n], order[-n:]):
        sub = matches.select(idx)
        err = errors[idx].numpy()
        colors = _colormap(err / 100.0, "RdYlGn_r")
        out.append(draw_matches(crop, source, sub, top=None, by=by, height=height, colors=colors))
    return out[0], out[1]


def crop_curves_figure(results, path):
    """Error-vs-rank curves: one panel per score, one colour per scenario, one line style per model."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    scores = ("feature", "cycle")
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4), sharey=True)
    styles = ["-", "--", ":", "-."]
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, score in zip(axes, scores):
        for mi, res in enumerate(results):
            for si, sc in enumerate(res.scenarios):
                curve = sc.scores[score].curve
                q = 100 * np.arange(1, len(curve) + 1) / len(curve)
                label = f"{sc.scenario}" + (f" · {short_model(res.model)}" if len(results) > 1 else "")
                ax.plot(q, curve, styles[mi % len(styles)], color=colors[si % len(colors)], label=label, lw=1.5)
        ax.set_title(f"ranked by {score} score (-{score} distance)")
        ax.set_xlabel("top q% of matches by score")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean crop error of the top q% (source px)")
    axes[1].legend(fontsize=7, loc="upper left", ncol=1 if len(results) == 1 else 2)
    fig.tight_layout()
    return save_fig(fig, path)


def short_model(spec: str) -> str:
    """A short label for a model spec (folder paths shortened to their last part)."""
    from pathlib import Path

    if "+" in spec and not Path(spec).exists():  # a fusion: each part shortened, weights kept
        return "+".join(short_model(p.rsplit("*", 1)[0]) + ("*" + p.rsplit("*", 1)[1] if "*" in p else "")
                        for p in spec.split("+"))
    if spec.startswith("random:"):
        return "random " + short_model(spec.split(":", 1)[1])
    if "/" in spec and Path(spec).exists():
        return Path(spec).name
    return spec


def best_worst_figure(result, path, by: str = "cycle", n: int = 10):
    """For each scenario's first crop: the n best and n worst matches by score, coloured by true error."""
    from vlens.plots import plt, save_fig

    pyplot = plt()
    ex = []
    seen = set()
    for e in result.examples:
        if e.scenario not in seen:
            seen.add(e.scenario)
            ex.append(e)
    fig, axes = pyplot.subplots(len(ex), 2, figsize=(10, 2.6 * len(ex)), squeeze=False)
    for row, e in zip(axes, ex):
        best, worst = draw_error_matches(e.crop, e.source, e.matches, e.errors, by, n)
        for ax, im, what in zip(row, (best, worst), ("best", "worst")):
            ax.imshow(im)
            ax.axis("off")
            ax.set_title(f"{e.scenario}: the {n} {what} by {by} score", fontsize=8)
    fig.suptitle("crop left, source right; line colour = true error (green 0 px, red >= 100 px)", fontsize=8)
    fig.tight_layout()
    return save_fig(fig, path)


def pca_rgb(features: torch.Tensor, others: list[torch.Tensor] = ()) -> list[np.ndarray]:
    """Project (h, w, d) feature maps jointly to 3 PCA components and scale to [0, 1] RGB: [(h, w, 3), ...]."""
    from vlens.match.pca import fit_pca

    maps = [features, *others]
    flat = [f.reshape(-1, f.shape[-1]) for f in maps]  # (h*w, d) each
    basis = fit_pca(torch.cat(flat), 3)
    proj = [basis.project(f) for f in flat]  # (h*w, 3)
    allp = torch.cat(proj)
    lo, hi = allp.quantile(0.01, dim=0), allp.quantile(0.99, dim=0)
    return [((p - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1).reshape(*m.shape[:2], 3).numpy()
            for p, m in zip(proj, maps)]


def overlay_labels(img: Image.Image, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Blend a (H, W) label map (any size; resized nearest) over ``img`` using ``palette`` (K, 3) uint8."""
    lab = Image.fromarray(labels.astype(np.uint8)).resize(img.size, Image.NEAREST)
    colour = Image.fromarray(palette[np.asarray(lab)].astype(np.uint8), "RGB")
    return Image.blend(img.convert("RGB"), colour, alpha)


def mma_figure(summaries, path):
    """Mean matching accuracy curves (fraction of matches within t px), one panel per set of pairs (the mean over
    its pairs, :func:`vlens.match.pairs.summarize`), one line per descriptor plus the sparse SIFT reference
    (dashed)."""
    from vlens.match.geometry import MMA_THRESHOLDS
    from vlens.plots import plt, save_fig

    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(summaries), figsize=(5 * len(summaries), 3.8), squeeze=False)
    for ax, sm in zip(axes[0], summaries):
        colours = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(r["descriptor"] for r in sm["descriptors"]))}
        styles = {"none": ":", "soft": "--"}  # one colour per descriptor, one line style per refinement
        for r in sm["descriptors"]:
            ax.plot(MMA_THRESHOLDS, r["mma"], styles.get(r["refine"], "-"), marker="o", ms=2.5,
                    color=colours[r["descriptor"]], label=r["label"])
        ax.plot(MMA_THRESHOLDS, sm["sparse_sift"]["mma"], "k--", label="sparse SIFT + ratio")
        ax.set_title(f"{sm['set']} ({sm['kind']}" + (f", mean of {sm['pairs']} pairs)" if sm["pairs"] > 1 else ")"),
                     fontsize=9)
        ax.set_xlabel("threshold t (target px at the working resolution)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of matches within t px")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return save_fig(fig, path)


def draw_true_error_matches(img_a: Image.Image, img_b: Image.Image, src_xy: np.ndarray, dst_xy: np.ndarray,
                            errors: np.ndarray, n: int = 150, max_error: float = 50.0,
                            height: int = 320) -> Image.Image:
    """``n`` matches spread evenly over a best-first ranking, drawn from A (left) to B (right) and coloured by
    their true error (green 0 px, red ``max_error`` px or more)."""
    from vlens.match.matching import Matches

    k = len(errors)
    idx = np.unique(np.linspace(0, k - 1, min(n, k)).round().astype(int)) if k else np.zeros(0, dtype=int)
    t = torch.as_tensor
    sub = Matches(t(src_xy[idx], dtype=torch.float32), t(dst_xy[idx], dtype=torch.float32), t(idx), t(idx),
                  torch.zeros(len(idx)), torch.zeros(len(idx)), torch.ones(len(idx), dtype=torch.bool))
    colors = _colormap(np.asarray(errors)[idx] / max_error, "RdYlGn_r")
    return draw_matches(img_a, img_b, sub, top=None, height=height, colors=colors, width=1)


def stack_rows(images: list[Image.Image], labels: list[str], gap: int = 6) -> Image.Image:
    """Pictures one above the other, each under a one-line label (PIL's default font)."""
    width = max(im.width for im in images)
    bar = 16
    canvas = Image.new("RGB", (width, sum(im.height + bar + gap for im in images)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for im, label in zip(images, labels):
        draw.text((4, y + 2), label, fill=(0, 0, 0))
        canvas.paste(im.convert("RGB"), (0, y + bar))
        y += im.height + bar + gap
    return canvas


def pair_colors(n: int) -> np.ndarray:
    """``n`` distinct colours (tab10, then tab20 beyond 10, then hues): (n, 3) uint8."""
    from matplotlib import colormaps

    if n <= 20:
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        return (np.asarray([cmap(i)[:3] for i in range(n)]) * 255).astype(np.uint8)
    return _colormap(np.arange(n) / n, "hsv")


def draw_pairs(img_a: Image.Image, img_b: Image.Image, matches, height: int | None = 384,
               lines: bool = False) -> Image.Image:
    """The "Deep ViT Features" correspondence picture: A left, B right, each pair one distinct colour as a ringed
    dot at both ends (no lines unless ``lines``), the first pair (the best) drawn last, on top."""
    canvas, sa, sb, off = side_by_side(img_a, img_b, height)
    draw = ImageDraw.Draw(canvas)
    n = len(matches)
    colors = pair_colors(n)
    r = max(4, round(canvas.height / 70))
    for i in reversed(range(n)):
        c = tuple(int(v) for v in colors[i])
        x0, y0 = (matches.src_xy[i] * sa).tolist()
        x1, y1 = (matches.dst_xy[i] * sb).tolist()
        x1 += off
        if lines:
            draw.line([(x0, y0), (x1, y1)], fill=c, width=1)
        for x, y in ((x0, y0), (x1, y1)):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(255, 255, 255), width=max(1, r // 4))
            draw.ellipse([x - r // 3, y - r // 3, x + r // 3, y + r // 3], fill=(255, 255, 255))
    return canvas
