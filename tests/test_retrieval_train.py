"""The retrieval trainer on the tiny test model: it learns, resumes exactly, and handles bad input clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlens.errors import ConfigError, ModelLoadError
from vlens.retrieval.train import TrainConfig, epoch_batches, train


def _cfg(data, out, **kw):
    base = {"data": str(data), "out": str(out), "preset": "test-clip", "image_size": 32, "vocab_size": 200,
            "epochs": 2, "batch_size": 16, "lr": 2e-3, "wd": 0.0, "warmup": 2}
    base.update(kw)
    return TrainConfig(**base)


def _quiet(*_):
    pass




def test_epoch_batches_depend_only_on_seed_and_epoch():
    a = epoch_batches(50, 16, seed=3, epoch=2, world=1)
    assert [len(b) for b in a] == [16, 16, 16] + [2]
    assert all((x == y).all() for x, y in zip(a, epoch_batches(50, 16, seed=3, epoch=2, world=1)))
    assert not (a[0] == epoch_batches(50, 16, seed=3, epoch=3, world=1)[0]).all()
    # two processes: every global batch splits evenly; a last batch of 1 image is dropped
    assert [len(b) for b in epoch_batches(49, 16, 0, 0, world=2)] == [16, 16, 16]


@pytest.mark.slow
def test_training_improves_recall_on_tiny_dataset(shapes_dir, tmp_path):
    from vlens.data import load_dataset
    from vlens.retrieval.evaluate import evaluate_encoder
    from vlens.retrieval.model import DualEncoder

    m = train(_cfg(shapes_dir, tmp_path / "run", epochs=25, batch_size=20, lr=3e-3, val_split="train"), log=_quiet)
    assert m["finished"] and m["steps"] == 50
    ds = load_dataset(shapes_dir).split("train")
    before, _ = evaluate_encoder(DualEncoder.from_spec(str(tmp_path / "run" / "init")), ds)
    after, _ = evaluate_encoder(DualEncoder.from_spec(m["model"]), ds)
    assert after.score > before.score + 4, (before, after)
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]


@pytest.mark.slow
def test_resume_is_exact(shapes_dir, tmp_path):
    full = train(_cfg(shapes_dir, tmp_path / "a", epochs=3), log=_quiet)
    train(_cfg(shapes_dir, tmp_path / "b", epochs=3, stop_after=1), log=_quiet)  # "killed" after epoch 1
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(shapes_dir, tmp_path / "b", epochs=3), log=_quiet)
    resumed = train(_cfg(shapes_dir, tmp_path / "b", epochs=3, resume=True), log=_quiet)
    assert resumed["finished"] and resumed["steps"] == full["steps"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_learnable_temperature_moves_and_stays_clamped(shapes_dir, tmp_path):
    # a big learning rate moves log(1/T) by ~lr per Adam step: far outside a narrow window, so it must end
    # on one of the clamp bounds, whichever way the gradient points
    m = train(_cfg(shapes_dir, tmp_path / "t", epochs=1, learn_temperature=True, temperature=0.07,
                   min_temperature=0.06, max_temperature=0.08, lr=0.5, warmup=0), log=_quiet)
    t = m["final_temperature"]
    assert t == pytest.approx(0.06, rel=1e-4) or t == pytest.approx(0.08, rel=1e-4)
    fixed = train(_cfg(shapes_dir, tmp_path / "f", epochs=1, temperature=0.07, lr=0.5, warmup=0), log=_quiet)
    assert fixed["final_temperature"] == pytest.approx(0.07, rel=1e-6)


def test_finetune_of_a_captioner_is_refused(shapes_dir, tiny_blip, tmp_path):
    with pytest.raises(ModelLoadError, match="--finetune.*CLIP-style dual encoder"):
        train(_cfg(shapes_dir, tmp_path / "x", finetune=str(tiny_blip)), log=_quiet)


def test_bad_settings_are_refused(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        train(_cfg(shapes_dir, tmp_path / "x", temperature=5.0), log=_quiet)
    with pytest.raises(ConfigError, match="batch-size"):
        train(_cfg(shapes_dir, tmp_path / "x", batch_size=1), log=_quiet)
    with pytest.raises(ConfigError, match="CLIP preset"):
        train(_cfg(shapes_dir, tmp_path / "x", preset="test-vit"), log=_quiet)


def broken_copy(shapes_dir, dest):
    """The shapes set with an empty caption, a 120-word caption, an unreadable image and a caption-less image."""
    shutil.copytree(shapes_dir, dest)
    meta = json.loads((dest / "dataset.json").read_text())
    train_rows = [r for r in meta["images"] if r["split"] == "train"]
    train_rows[0]["sentences"][0]["raw"] = ""
    train_rows[1]["sentences"][1]["raw"] = " ".join(["a red circle"] * 40)
    (dest / "images" / train_rows[2]["filename"]).write_bytes(b"not a png")
    train_rows[3]["sentences"] = [{"raw": "  "}]
    (dest / "dataset.json").write_text(json.dumps(meta))
    return dest, train_rows


def test_bad_data_is_skipped_counted_and_reported(shapes_dir, tmp_path):
    data, rows = broken_copy(shapes_dir, tmp_path / "broken")
    lines = []
    m = train(_cfg(data, tmp_path / "run", epochs=1), log=lines.append)
    assert m["truncated_captions"] == 1 and m["empty_captions"] == 2
    assert [s["path"].endswith(rows[2]["filename"]) for s in m["skipped_images"]] == [True]
    assert m["train_images"] == 40 - 2  # the unreadable one and the caption-less one
    text = "\n".join(lines)
    assert "truncated" in text and "unreadable" in text and "empty" in text


def test_frozen_image_tower_and_gradient_accumulation(shapes_dir, tmp_path):
    from safetensors.torch import load_file

    m = train(_cfg(shapes_dir, tmp_path / "f", epochs=1, batch_size=8, grad_accum=2, freeze="image"),
              log=_quiet)
    assert m["steps"] == 3  # 5 micro-batches of 8 -> optimiser steps after 2, 4 and the epoch's last
    init = load_file(tmp_path / "f" / "init" / "model.safetensors")
    best = load_file(tmp_path / "f" / "best" / "model.safetensors")
    vision = [k for k in init if k.startswith(("vision_model.", "visual_projection."))]
    text = [k for k in init if k.startswith(("text_model.", "text_projection."))]
    assert vision and all(torch.equal(init[k], best[k]) for k in vision)
    assert any(not torch.equal(init[k], best[k]) for k in text)
