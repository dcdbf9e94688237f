"""Report section: what the models see — point heatmaps on a crop pair (successes and failures), the embedded
backbone's [CLS] attention per head, and the decoding inspector at a cold and a hot temperature.

Small by design (~10 s on 2 cores): one crop, one photo, one caption image.
"""

from __future__ import annotations

from vlens.report.section import LabContext, Section, fmt


def _crop_pair(seed: int):
    """A small crop (30-45% of the shorter side) of the astronaut photo (source at 320 px), its affine map."""
    import numpy as np

    from vlens.data.photos import photo_paths
    from vlens.images import load_image
    from vlens.match.crops import SCENARIOS, make_crop
    from vlens.match.geometry import working_image

    src = working_image(load_image(photo_paths(("astronaut",))[0]), 320)
    crop = make_crop(src, SCENARIOS[1], 192, np.random.default_rng([seed, 16]))
    return src, crop


def point_heatmaps(ctx: LabContext, model: str, path):
    """Match every crop patch back to the source; draw a success (the smallest true error), the patch the cycle
    score trusts most, and the largest true error. Returns (path, rows of the table, all errors)."""
    import torch

    from vlens.match import match_features
    from vlens.match.crops import crop_errors
    from vlens.match.explore import point_match
    from vlens.match.explore_figures import HEAT_CMAP, _colorbar, draw_point_panels
    from vlens.match.features import extract_features
    from vlens.plots import plt, save_fig

    src, crop = _crop_pair(ctx.seed)
    fc, fs = extract_features([crop.image, src], model, size=224)
    m = match_features(fc, fs, pca=10)
    err = crop_errors(crop, m)  # (n,) source px, one per crop patch
    by_error = torch.argsort(err, stable=True)
    picks = [("smallest true error", int(by_error[0])), ("most trusted by the cycle score", int(m.order("cycle")[0])),
             ("largest true error", int(by_error[-1]))]
    pyplot = plt()
    fig, axes = pyplot.subplots(len(picks), 2, figsize=(8.4, 3.4 * len(picks)),
                                gridspec_kw={"width_ratios": [crop.image.width / crop.image.height,
                                                              src.width / src.height]})
    rows = []
    for (label, i), (ax_a, ax_b) in zip(picks, axes):
        xy = tuple(float(v) for v in m.src_xy[i])
        pm = point_match(fc, fs, xy, pca=10, top_k=3)
        truth = crop.to_source(m.src_xy[i:i + 1])[0].tolist()
        lo, hi = draw_point_panels(ax_a, ax_b, crop.image, src, pm, fontsize=7)
        ax_b.plot([truth[0]], [truth[1]], "s", ms=9, mfc="none", mec="#00e5ff", mew=2, label="true location")
        ax_b.legend(loc="lower left", fontsize=6.5, framealpha=0.85)
        e = float(err[i])
        verdict = "success" if e < 2 * fs.patch_size * fs.scale[0] else "failure"
        ax_a.set_title(f"crop: {label}", fontsize=8)
        ax_b.set_title(f"source: {verdict}, error {e:.0f} px, cycle distance {pm.cycle_distance:.0f} px",
                       fontsize=8)
        _colorbar(fig, ax_b, HEAT_CMAP, lo, hi, "cosine similarity")
        rows.append([label, verdict, fmt(e), fmt(pm.cycle_distance), fmt(pm.best.similarity, 3)])
    fig.suptitle(f"Where a crop patch lands in its source ({model}, last block, PCA 10)", fontsize=9)
    fig.tight_layout()
    save_fig(fig, path)
    return path, rows, err


def section(ctx: LabContext) -> Section:
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.caption.explain_figure import explain_figure
    from vlens.data import load_dataset
    from vlens.data.photos import photo_paths
    from vlens.images import load_image
    from vlens.match.attention import cls_attention, pca_features
    from vlens.match.explore_figures import attention_figure
    from vlens.models import DEFAULTS
    from vlens.report.sections.data import shapes_dataset

    model = DEFAULTS["backbone"]
    s = Section("What the models see")
    s.text("The evidence behind the answers above, drawn with `vlens explore` and `vlens caption --explain` "
           "(the same pictures as the web app's Explore tab and its \"why these words\" view).")

    # -- point heatmaps on a crop pair
    path, rows, err = point_heatmaps(ctx, model, ctx.figures / "explore_points.png")
    s.text(f"**Point heatmaps.** A small crop of the astronaut photo (upsampled about 2x) is matched back into "
           f"the photo (longer side 320 px). For three crop patches — the best matched, the one the cycle score "
           f"trusts most, and the worst matched — the heatmap shows the cosine similarity of every source "
           f"patch, the star the best match, the cyan square the true location (known from the crop's affine "
           f"map). Over all "
           f"{len(err)} crop patches the median error is {float(err.median()):.1f} px.")
    s.table(["patch", "verdict", "error (px)", "cycle distance (px)", "similarity"], rows,
            "The three points of the figure: success = within two patches of the truth.")
    s.figure(path, "Crop (left) with the point and where its cycle crop -> source -> crop lands; source (right) "
                   "with the similarity heatmap, best match (star), next candidates (numbered) and the truth.")

    # -- attention heads
    photo = load_image(photo_paths(("chelsea",))[0])
    att = cls_attention(photo, model, size=320)
    rgb = pca_features(photo, model, size=320)
    apath = ctx.figures / "explore_attention.png"
    attention_figure(photo, att, rgb, apath)
    s.text(f"**Attention.** The [CLS] token's attention in the last block of `{model}`, one panel per head "
           "(each head's attention over the patches sums to one; the panel title says how much it kept on [CLS] "
           "itself), next to the first three PCA components of the patch features as RGB.")
    s.figure(apath, "Where each head of the embedded backbone looks, on scikit-image's cat.")
    s.metrics["attention"] = {"heads": att.heads, "peak": [round(float(m.max()), 4) for m in att.maps],
                              "on_cls": [round(float(v), 4) for v in att.prefix_mass]}

    # -- decoding inspector, cold and hot
    cap = Captioner.from_spec("builtin:blip-tiny")
    sample = load_dataset(shapes_dataset(ctx, "target")).split("test").samples[1]
    img = load_image(sample.image_path)
    settings = [("cold", DecodeSettings(strategy="sample", temperature=0.3, top_k=100, seed=ctx.seed)),
                ("hot", DecodeSettings(strategy="sample", temperature=1.0, top_k=100, seed=ctx.seed))]
    exps = [(name, cap.explain(img, st, show=7)) for name, st in settings]
    epath = explain_figure([e for _, e in exps], ctx.figures / "explore_decoding.png", max_steps=30)
    table = []
    for name, e in exps:
        sm = e.summary()
        table.append([f"{name}: T {e.settings.temperature:g}, top-k {e.settings.top_k}", e.caption.text,
                      f"{sm['top_choice_steps']}/{sm['steps']}", fmt(sm["mean_effective_choices"]),
                      fmt(sm["min_p_model_of_chosen"], 3)])
        s.metrics[f"decoding_{name}"] = sm
    s.text("**Decoding inspector.** The same test image captioned by sampling at temperature 0.3 and 1.0, both "
           f"with top-k 100 (more than the model's {cap.model.config.text_config.vocab_size}-token vocabulary, so "
           "top-k filters nothing). \"Effective choices\" is exp(entropy) of the distribution the sampler draws "
           "from: 1 means one certain token.")
    s.table(["setting", "caption", "model's top token chosen", "effective choices / step", "lowest p(model) picked"],
            table, f"Greedy caption: “{exps[0][1].greedy_text}”.")
    s.figure(epath, "One row per generated token: candidates shaded by their probability under the setting "
                    "(model's own probability in brackets), the chosen one framed in orange.")
    return s
