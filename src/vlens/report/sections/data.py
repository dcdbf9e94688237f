"""Report section: the datasets vlens ships or generates (shapes gallery with masks, the photo set, statistics)."""

from __future__ import annotations

import textwrap

import numpy as np

from vlens.report.section import LabContext, Section


def shapes_dataset(ctx: LabContext, style: str = "target"):
    """The shapes dataset used by every section of this lab run (generated once, cached in the run folder)."""
    from vlens.data.shapes import ensure_shapes

    key = f"shapes-{style}"
    if key not in ctx.cache:
        n = (120, 20, 40) if ctx.quick else (400, 50, 100)
        ctx.cache[key] = ensure_shapes(ctx.out / "data" / key, train=n[0], val=n[1], test=n[2], seed=ctx.seed,
                                       style=style, progress=False)
    return ctx.cache[key]


def section(ctx: LabContext) -> Section:
    from PIL import Image

    from vlens.data import load_dataset
    from vlens.data.photos import PHOTO_NAMES, photo_paths
    from vlens.data.shapes import CLASSES, MASK_PALETTE, load_mask
    from vlens.data.stats import dataset_stats
    from vlens.images import load_image
    from vlens.plots import image_grid

    s = Section("Data")
    s.text("vlens runs offline on data it generates or ships. The **shapes** dataset is procedural: 1-3 coloured "
           "shapes per scene with a position or a spatial relation, five paraphrased captions per image (as in "
           "COCO) and a per-pixel class mask. Two styles give two distributions: `target` (backgrounds cut from "
           "real photos) and `pretrain` (gradients, outlined shapes). The **photos** set is scikit-image's "
           "sample photos, used for correspondences.")
    rows, stats = [], {}
    for style in ("target", "pretrain"):
        root = shapes_dataset(ctx, style)
        ds = load_dataset(root)
        st = dataset_stats(ds, verify_images=True, progress=False)
        stats[style] = st
        rows.append([f"shapes ({style})", st["images"], ", ".join(f"{k} {v}" for k, v in st["splits"].items()),
                     st["captions"], st["caption_words"]["mean"], st["vocabulary"], len(st["unreadable"])])
    photos = photo_paths(PHOTO_NAMES)
    rows.append(["photos", len(photos), "-", 0, None, None, 0])
    s.table(["dataset", "images", "splits", "captions", "words/caption", "vocabulary", "unreadable"], rows,
            "Dataset statistics")

    ds = load_dataset(shapes_dataset(ctx, "target")).split("train")
    images, titles = [], []
    for smp in ds.samples[:6]:
        img = load_image(smp.image_path)
        mask = Image.fromarray(load_mask(smp.mask_path).astype(np.uint8), "P")
        mask.putpalette(MASK_PALETTE)
        images += [img, mask.convert("RGB")]
        cap = "\n".join(textwrap.wrap(smp.captions[0], 34))
        present = sorted({CLASSES[i] for i in np.unique(load_mask(smp.mask_path)) if i})
        titles += [cap, "mask: " + ", ".join(present)]
    fig = image_grid(images, titles, ctx.figures / "data_shapes.png", cols=4)
    s.figure(fig, "Shapes (target style): images with their first caption, and class masks.")
    pre = load_dataset(shapes_dataset(ctx, "pretrain")).split("train")
    fig = image_grid([load_image(x.image_path) for x in pre.samples[:8]],
                     ["\n".join(textwrap.wrap(x.captions[2], 30)) for x in pre.samples[:8]],
                     ctx.figures / "data_shapes_pretrain.png", cols=8, cell=1.6, fontsize=6)
    s.figure(fig, "Shapes (pretrain style): a second distribution with the same caption grammar.")
    fig = image_grid([load_image(p) for p in photos], [p.stem for p in photos], ctx.figures / "data_photos.png",
                     cols=6, cell=1.8)
    s.figure(fig, "The photo set (scikit-image sample photos) used by the correspondence sections.")
    s.metrics = {k: {kk: v[kk] for kk in ("images", "captions", "splits", "vocabulary")} for k, v in stats.items()}
    return s
