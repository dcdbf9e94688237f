"""Report section: dense correspondences (crop benchmark, match pictures), label-transfer segmentation, parts."""

from __future__ import annotations

from vlens.report.section import LabContext, Section, fmt


def _stereo_pair():
    from PIL import Image
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    return Image.fromarray(left), Image.fromarray(right)


def section(ctx: LabContext) -> Section:
    from vlens.data.photos import photo_paths
    from vlens.match import draw_matches, match_images
    from vlens.match.crops import baseline_specs
    from vlens.match.draw import short_model
    from vlens.match.segment import SegmentConfig, run_segment_benchmark, segment_examples_figure
    from vlens.models import DEFAULTS
    from vlens.report.sections.data import shapes_dataset

    model = DEFAULTS["backbone"]
    s = Section("Dense correspondences")
    s.text(f"Patch features of `{model}` (last block, final layer norm) are matched by nearest neighbour, as "
           "`vlens match` does by default (no PCA; the crop benchmark below keeps the lab report's PCA to 10 "
           "components, fitted jointly on both images). A match is scored by the negative "
           "feature distance or by the negative *cycle distance* (patch -> nearest neighbour in the other image -> "
           "back; 0 px when the two patches are mutual nearest neighbours).")

    # -- real pairs with ground truth, then the crop benchmark, both on images the backbone never saw
    from vlens.data import opencv_samples

    results, pair_results = [], []
    if not opencv_samples.is_available():
        s.text("**Skipped: the real-pair table, the graffiti matches and the crop benchmark** need the OpenCV "
               "sample images (held-out photos, the graffiti and aloe pairs with ground truth), which are not in "
               f"{opencv_samples.samples_root()}. Run `vlens data fetch opencv-samples` (Debian-family machines) "
               "and run the lab again.")
    else:
        pair_results = _real_pairs(s, ctx, model)
        results = _crop_benchmark(s, ctx, model)

    # -- two real images: the stereo pair
    left, right = _stereo_pair()
    m = match_images(left, right, model=model, score="cycle", top=60, size=320 if ctx.quick else 448)
    pic = ctx.figures / "match_stereo.png"
    draw_matches(left, right, m, top=None, height=300).save(pic)
    s.figure(pic, "The 60 best matches by cycle score between the two views of scikit-image's stereo motorcycle "
                  "(left view left); yellow = best.")

    # -- segmentation by label transfer
    data = shapes_dataset(ctx, "target")
    n_ref, n_tgt = (8, 16) if ctx.quick else (16, 32)
    seg_cfg = SegmentConfig(k=10, size=160)
    seg = [run_segment_benchmark(spec, data, refs=n_ref, targets=n_tgt, config=seg_cfg,
                                 keep_examples=4 if spec == model else 0)
           for spec in [model, *baseline_specs(model), "majority"]]
    classes = list(seg[0].per_class_iou)
    s.text(f"**Segmentation by label transfer.** Each patch of a test image takes a vote of its {seg_cfg.k} most "
           f"similar patches among {n_ref} annotated training images of the shapes dataset (weights "
           f"exp(cos / {seg_cfg.temperature})), over their class fractions; probabilities are upsampled "
           f"bilinearly to pixels. Scored on {n_tgt} test images.")
    s.table(["model", "mIoU", "pixel acc", *classes],
            [[short_model(r.model), fmt(r.miou, 3), fmt(r.pixel_accuracy, 3),
              *[fmt(r.per_class_iou[c], 2) for c in classes]] for r in seg],
            "Label-transfer segmentation (majority = every pixel gets the most common reference class)")
    s.figure(segment_examples_figure(seg[0], ctx.figures / "match_segment.png"),
             "Test images, their true masks and the label-transfer prediction.")

    # -- parts and PCA-RGB
    from vlens.images import load_image
    from vlens.match.draw import overlay_labels, pca_rgb
    from vlens.match.segment import PART_PALETTE, discover_parts
    from vlens.plots import image_grid

    imgs = [load_image(p) for p in photo_paths(("chelsea", "astronaut"))]
    labels, feats = discover_parts(imgs, model, k=5, size=224, seed=ctx.seed)
    rgb = pca_rgb(feats[0].descriptors, [f.descriptors for f in feats[1:]])
    cells, titles = [], []
    from PIL import Image

    for im, lab, col in zip(imgs, labels, rgb):
        cells += [im, overlay_labels(im, lab, PART_PALETTE),
                  Image.fromarray((col * 255).astype("uint8")).resize(im.size, Image.NEAREST)]
        titles += ["photo", "5 parts (joint k-means)", "features: 3 PCA components as RGB"]
    fig = image_grid(cells, titles, ctx.figures / "match_parts.png", cols=3, cell=2.2)
    s.figure(fig, "Unsupervised parts: k-means on the joint features of both photos (a colour is the same cluster "
                  "in both), and the first three PCA components of the features as RGB.")

    s.metrics = {
        "crops": {short_model(r.model): {score: {k: round(getattr(r.overall(score), k), 2)
                                                 for k in ("mean", "median", "mean_top10", "mean_top50", "auc")}
                                         for score in ("feature", "cycle")} for r in results},
        "pairs": {f"{pr.pair} {short_model(d.descriptor)}": {"median": round(d.all["median"], 2),
                                                              "pck@10": round(d.all["pck@10"], 4),
                                                              "pck@10_top50_feature": round(
                                                                  d.top["feature@50%"]["pck@10"], 4)}
                  for pr in pair_results for d in pr.descriptors},
        "refine_fuse": s.metrics.get("refine_fuse", {}),
        "segment": {short_model(r.model): {"miou": round(r.miou, 4), "pixel_accuracy": round(r.pixel_accuracy, 4)}
                    for r in seg},
    }
    return s


def _real_pairs(s: Section, ctx: LabContext, model: str) -> list:
    """The real-pair table (backbone, dense SIFT, pixels, random weights, sparse SIFT) and the graffiti matches
    coloured by their true error."""
    from vlens.match.crops import baseline_specs
    from vlens.match.draw import draw_true_error_matches, short_model, stack_rows
    from vlens.match.pairs import PairsConfig, opencv_pairs, run_pairs_benchmark, working_pair, write_pairs_outputs

    pairs = opencv_pairs()
    cfg = PairsConfig(size=320 if ctx.quick else 448)
    res = run_pairs_benchmark([model, *baseline_specs(model)], pairs, cfg)
    pca10 = run_pairs_benchmark([model], pairs, PairsConfig(size=cfg.size, pca=10))
    write_pairs_outputs(res, cfg, ctx.work("match-pairs"))
    s.text(f"**Real pairs with ground truth** (images no vlens backbone was trained on): the Oxford *graffiti* "
           "viewpoint pair (images 1 and 3, ground-truth homography) and the Middlebury *aloe* stereo pair "
           f"(ground-truth disparities), both from Debian's opencv-doc, at a longer side of {cfg.size} px. Every "
           "source patch is matched to its nearest target patch (no PCA); the error is the distance in target "
           "pixels to the true location. PCK@t = share of matches within t px; top 50% = the half with the best "
           "feature score. Sparse SIFT is the practitioner's pipeline (SIFT keypoints, ratio test 0.8, RANSAC).")
    rows = []
    for pr in res:
        for d in pr.descriptors:
            rows.append([pr.pair, short_model(d.descriptor), fmt(d.all["median"]), fmt(100 * d.all["pck@5"]),
                         fmt(100 * d.all["pck@10"]), fmt(100 * d.top["feature@50%"]["pck@10"]),
                         fmt(100 * d.top["cycle@50%"]["pck@10"]),
                         "-" if d.corner_error is None else fmt(d.corner_error)])
        sp = pr.sparse_sift
        rows.append([pr.pair, f"sparse SIFT ({sp['evaluated']} matches)", fmt(sp["all"]["median"]),
                     fmt(100 * sp["all"]["pck@5"]), fmt(100 * sp["all"]["pck@10"]), "-", "-",
                     fmt(sp.get("corner_error"))])
    s.table(["pair", "descriptor", "median px", "PCK@5", "PCK@10", "PCK@10 top 50% feature",
             "PCK@10 top 50% cycle", "RANSAC corner px"], rows,
            "Real pairs: error of every source patch's match (target px); RANSAC corner px = mean corner error "
            "of the homography OpenCV's RANSAC fits to the matches (graffiti only)")
    s.text("What PCA to 10 components (the crop benchmark's setting) costs on these pairs, "
           f"{short_model(model)}: " + "; ".join(
               f"{a.pair} PCK@10 {100 * a.descriptors[0].all['pck@10']:.1f}% without, "
               f"{100 * b.descriptors[0].all['pck@10']:.1f}% with PCA 10" for a, b in zip(res, pca10)) + ".")
    s.metrics["refine_fuse"] = _refine_and_fuse(s, pairs, cfg.size, model, res)
    graf = next(pr for pr in res if pr.pair == "graffiti")
    img_s, img_t, _, _ = working_pair(pairs[0], cfg.size)
    cells, titles = [], []
    for d in graf.descriptors[:2]:  # the backbone and dense SIFT
        cells.append(draw_true_error_matches(img_s, img_t, *d.match_xy, d.errors, n=120, height=260))
        titles.append(f"{short_model(d.descriptor)}: 120 matches spread over the cycle-score ranking "
                      f"(PCK@10 {100 * d.all['pck@10']:.1f}%)")
    fig = ctx.figures / "match_graffiti.png"
    stack_rows(cells, titles).save(fig)
    s.figure(fig, "Graffiti 1 -> 3: matches coloured by their true error (green 0 px, red >= 50 px), from the "
                  "best-ranked (drawn on top) to the worst.")
    return res


def _refine_and_fuse(s: Section, pairs: list, size: int, model: str, plain: list) -> dict:
    """Refined vs nearest-patch matches, and the offline default's fusion (the backbone with dense SIFT, weights
    of vlens.models.defaults.MATCH_FALLBACK) vs its parts, on the same real pairs. ``plain``: the nearest-patch
    results already computed for the backbone and its baselines (their rows are reused, not recomputed)."""
    from vlens.match.features import fused_parts
    from vlens.match.pairs import PairsConfig, run_pairs_benchmark
    from vlens.match.refine import DEFAULT_REFINE
    from vlens.models.defaults import MATCH_FALLBACK

    (_, w_model), (anchor, w_anchor) = (fused_parts(MATCH_FALLBACK) or [("", 0.2), ("sift:8", 0.8)])[:2]
    fused = f"{model}*{w_model:g}+{anchor}*{w_anchor:g}"
    from vlens.match.binning import MATCH_BIN_LEVELS

    both = run_pairs_benchmark([fused], pairs, PairsConfig(size=size, refine=("none", DEFAULT_REFINE), sparse=False))
    refined = run_pairs_benchmark([model, anchor], pairs, PairsConfig(size=size, refine=(DEFAULT_REFINE,),
                                                                       sparse=False))
    binned = run_pairs_benchmark([fused], pairs, PairsConfig(size=size, refine=(DEFAULT_REFINE,), sparse=False,
                                                             bin_levels=MATCH_BIN_LEVELS))
    entries = []  # (pair, label, result): per pair the fusion, its parts, then the fusion as `vlens match` runs it
    for f, r, b, p in zip(both, refined, binned, plain):
        near = {d.descriptor: d for d in p.descriptors}
        ds = list(f.descriptors)
        for d in r.descriptors:  # each part: its nearest-patch row (if the main table has it), then refined
            ds += ([near[d.descriptor]] if d.descriptor in near else []) + [d]
        entries += [(f.pair, d.label, d) for d in ds] + [(b.pair, f"{d.label} + bin", d) for d in b.descriptors]
    rows = [[pair, label, *[fmt(100 * d.all[f"pck@{t}"]) for t in (1, 3, 5, 10)], fmt(d.all["median"])]
            for pair, label, d in entries]
    s.text(f"**Finer than a patch, and descriptors that combine.** The same pairs with every match refined off its "
           f"patch centre ({DEFAULT_REFINE}: a parabola through the similarities of the best patch and its "
           "neighbours, per axis; `vlens match --refine`) and with the backbone fused with dense SIFT (each part "
           f"L2-normalised per patch, weights {w_model:g} / {w_anchor:g}: the spec `{fused}`), beside its parts. "
           f"The rows marked '+ bin' log-bin the fused descriptors ({MATCH_BIN_LEVELS} levels, `vlens match --bin`), "
           "as `vlens match` does by default.")
    s.table(["pair", "descriptor", "PCK@1", "PCK@3", "PCK@5", "PCK@10", "median px"], rows,
            "Nearest patch vs refined, and the fusion vs its parts (PCK in %, target px at the working resolution)")
    return {f"{pair} {label}": {"pck@5": round(d.all["pck@5"], 4), "pck@10": round(d.all["pck@10"], 4)}
            for pair, label, d in entries}


def _crop_benchmark(s: Section, ctx: LabContext, model: str) -> list:
    """The crop benchmark on held-out photos (no PCA, as `vlens match`), and what the lab report's PCA 10 costs
    the backbone on the same crops."""
    from vlens.data.opencv_samples import HELDOUT_PHOTOS, photo_paths
    from vlens.match.crops import baseline_specs, run_crop_benchmark, table_rows, write_crop_outputs
    from vlens.match.draw import short_model

    # sized for ~45 s of the lab on 2 cores; `vlens bench crops` runs the full benchmark (12 photos, 2 crops)
    photos = photo_paths(HELDOUT_PHOTOS[:4] if ctx.quick else HELDOUT_PHOTOS[:8])
    kw = {"crops_per_image": 1, "seed": ctx.seed, "source_side": 320 if ctx.quick else 384}
    results = [run_crop_benchmark(spec, photos, keep_examples=1 if spec == model else 0, **kw)
               for spec in [model, *baseline_specs(model)]]
    pca10 = run_crop_benchmark(model, photos, keep_examples=0, pca=10, **kw)
    paths = write_crop_outputs(results, ctx.work("match-crops"))
    cfg = results[0].config
    s.text(f"**Crop benchmark on held-out photos.** {results[0].images} real photos from opencv-doc that no vlens "
           f"backbone was trained on, {cfg.crops_per_image} crop per photo and scenario, four scenarios of rising "
           "difficulty (large crops; small crops; colour jitter + blur + noise; aspect change + rotation up to 15 "
           "degrees). Each crop patch is matched back into the photo (raw features, no PCA); the crop "
           f"error is the distance in pixels (photo longer side {cfg.source_side} px) between the matched patch "
           "and the true location, known exactly from the crop's affine map. Baselines on the same crops: dense "
           "SIFT, raw-pixel patch descriptors and the same architecture with random weights.")
    headers = ["model", "score", "mean", "median", "mean top10%", "mean top50%", "AUC"]
    rows = [[r[0], r[1], r[3], r[4], r[5], r[7], r[9]] for r in table_rows(results, per_scenario=False, digits=None)]
    s.table(headers, [[fmt(v) for v in row] for row in rows],
            "Crop error (px), averaged over the four scenarios; top q% = the q% best-scored matches of each crop; "
            "AUC = mean of the error-vs-rank curve (lower: the score puts good matches first)")
    per = [[r[0], r[1], r[2], fmt(r[3]), fmt(r[4]), fmt(r[5]), fmt(r[9])]
           for r in table_rows(results, digits=None) if r[2] != "all (average)" and r[1] == "feature"]
    s.table(["model", "score", "scenario", "mean", "median", "mean top10%", "AUC"], per,
            f"Per scenario, every descriptor ({short_model(model)} first)")
    medians = [(n, results[0].get(n, "feature").median, pca10.get(n, "feature").median) for n in cfg.scenarios]
    s.text(f"What the lab report's PCA to 10 components costs {short_model(model)} on the same crops (median px, "
           "without -> with): " + "; ".join(f"{n} {a:.1f} -> {b:.1f}" for n, a, b in medians) + ".")
    s.figure(paths["curves"], "Error-vs-rank: mean crop error of the top q% of matches by score; one line per "
                              "scenario and line style per descriptor (the model solid).")
    s.figure(paths["best_worst"], "Best and worst 10 matches by cycle score for one crop per scenario, coloured "
                                  "by their true error (green small, red >= 100 px).")
    return results
