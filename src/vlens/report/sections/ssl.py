"""Report section: self-supervised training (DINO) of the embedded backbone and a backbone comparison.

Shows the training curve of ``builtin:dino-tiny`` from the run log shipped with it, the crop-benchmark table
measured when it was built (from its ``eval.json``), and a live linear / kNN probe on this lab's shapes data
comparing it with the same architecture at random weights, raw pixels and any cached hub backbone.
"""

from __future__ import annotations

import json

from vlens.report.section import LabContext, Section, fmt


def _training_curve(ctx: LabContext, folder, s: Section) -> None:
    log_file = folder / "training_log.jsonl"
    if not log_file.is_file():
        s.text("_No training log shipped with builtin:dino-tiny._")
        return
    from vlens.ssl.train import loss_curve_figure

    hist = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    path = loss_curve_figure(hist, ctx.figures / "ssl_training_curve.png", height=3.0)
    s.figure(path, f"Training of builtin:dino-tiny ({len(hist)} steps, from its shipped log). A collapse would "
                   "show as the teacher entropies falling to 0 (one prototype) or rising to log K (uniform).")
    s.metrics["train_steps"] = len(hist)
    s.metrics["final_loss"] = hist[-1]["loss"]


def _build_eval(folder, s: Section) -> None:
    ev = folder / "eval.json"
    if not ev.is_file():
        return
    data = json.loads(ev.read_text())
    crop = data.get("crop_benchmark")
    if crop:
        rows = []
        for r in crop["rows"]:
            rows.append([r["model"], r["scenario"], fmt(r["feature_median"]), fmt(r["feature_top50"]),
                         fmt(r["cycle_top50"])])
        s.table(["backbone", "scenario", "median error (px)", "top-50% mean, feature score",
                 "top-50% mean, cycle score"], rows,
                f"Crop benchmark measured when builtin:dino-tiny was built ({crop['note']})")
    seg = data.get("segment")
    if seg:
        s.table(["descriptor", "label-transfer mIoU", "pixel accuracy"],
                [[r["model"], fmt(r["miou"], 3), fmt(r["pixel_accuracy"], 3)] for r in seg["rows"]],
                f"Label transfer on the shapes masks measured when builtin:dino-tiny was built (`{seg['command']}`)")


def section(ctx: LabContext) -> Section:
    from vlens.models.hub import BUILTIN_DIR
    from vlens.report.sections.data import shapes_dataset
    from vlens.ssl.probe import ProbeConfig, format_table, run_probe

    s = Section("Self-supervised backbone (DINO)")
    folder = BUILTIN_DIR / "dino-tiny"
    s.text("vlens cannot download pretrained weights here, so it trains its own backbone: `vlens ssl train` runs "
           "DINO (student/teacher ViT, multi-crop, EMA teacher, centering and sharpening) and, for dense use, "
           "patch terms between two views whose geometry (crop box, rotation) is known: a patch-level DINO "
           "cross-entropy and a patch InfoNCE, where each patch must find the patch of the other view that shows "
           "the same image point. The embedded `builtin:dino-tiny` was trained in two stages: DINO + patch "
           "InfoNCE on the scikit-image photos, then fine-tuned with the same terms plus a dense-SIFT distillation "
           "term (a training-only linear head on its patch tokens regresses OpenCV's SIFT descriptor of the same "
           "patch: it distils a classical descriptor besides DINO) and homography crops, on those photos, 16 "
           "opencv-doc photos and 40 unlabelled shapes images; its card (`MODEL_CARD.md`) has the commands, seeds, "
           "wall times and the held-out tables.")
    _training_curve(ctx, folder, s)
    _build_eval(folder, s)
    n_train, n_test = (20, 8) if ctx.quick else (40, 16)
    cfg = ProbeConfig(data=str(shapes_dataset(ctx, "target")), train_images=n_train, test_images=n_test,
                      size=128, k=10, max_train_patches=2000, seed=ctx.seed)
    res = run_probe(cfg, log=lambda _m: None)
    s.text("**Backbone comparison** on the shapes masks: a linear (logistic regression) and a kNN probe on "
           "patch features predict each patch's class; predictions are upsampled to pixels and scored with mIoU.")
    table = format_table(res)
    rows = [[r["model"], fmt(100 * r["linear_miou"]), fmt(100 * r["knn_miou"]), fmt(100 * r["linear_pixel_acc"]),
             r["dim"]] for r in res["rows"]]
    s.table(["backbone", "linear mIoU %", "kNN mIoU %", "linear pixel acc %", "dim"], rows,
            table.splitlines()[-1])
    for note in res["notes"]:
        s.text(f"_{note}_")
    s.metrics["probe"] = {r["model"]: {"linear_miou": r["linear_miou"], "knn_miou": r["knn_miou"]}
                          for r in res["rows"]}
    return s
