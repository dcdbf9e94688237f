"""Caption training on the tiny shapes set: prompt masking, loss going down, exact resume after a kill."""

from __future__ import annotations

import pytest
import torch

from vlens.caption.train import Collate, TrainConfig, caption_loss, train
from vlens.errors import ConfigError


def test_collate_masks_prompt_and_padding(tiny_blip):
    from PIL import Image

    from vlens.models import load

    lm = load(str(tiny_blip), "captioner")
    tok = lm.tokenizer
    prefix = [2, *tok("a picture of", add_special_tokens=False)["input_ids"]]
    col = Collate(lm.image_processor, tok, prefix, sep_id=3, pad_id=0, max_len=64)
    img = Image.new("RGB", (40, 40))
    pv, ids, attn, mask = col([(img, "a red circle"), (img, "a big blue square at the top")])
    assert pv.shape == (2, 3, 32, 32)
    p = len(prefix)
    n0 = len(tok("a red circle", add_special_tokens=False)["input_ids"])
    assert ids[0, :p].tolist() == prefix and ids[0, p + n0] == 3 and ids[0, p + n0 + 1 :].eq(0).all()
    # targets are tokens 1..T-1: exactly the caption tokens and [SEP] are learnt
    learnt = ids[0, 1:][mask[0]].tolist()
    assert learnt == [*tok("a red circle", add_special_tokens=False)["input_ids"], 3]
    assert attn[0].sum() == p + n0 + 1


def test_caption_loss_is_masked_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    by_hand = []
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                by_hand.append(-logits[b, t].log_softmax(-1)[ids[b, t + 1]])
    assert caption_loss(logits, ids, mask) == pytest.approx(float(torch.stack(by_hand).mean()), abs=1e-6)


def _cfg(shapes_dir, out, **kw):
    base = dict(
        preset="test-blip",
        epochs=3,
        lr=1e-2,
        batch_size=8,
        image_size=32,
        val_limit=4,
        max_train=16,
        prompt="a picture of",
        label_smoothing=0.0,
    )
    base.update(kw)
    return TrainConfig(str(shapes_dir), str(out), **base)


@pytest.mark.slow
def test_loss_decreases_and_best_model_loads(shapes_dir, tmp_path):
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.runs import read_json

    metrics = train(_cfg(shapes_dir, tmp_path / "run", epochs=4), log=lambda m: None)
    hist = [
        __import__("json").loads(line)
        for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    ]
    losses = [h["train_loss"] for h in hist]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.9
    assert read_json(tmp_path / "run" / "metrics.json")["best_epoch"] == metrics["best_epoch"]
    cap = Captioner.from_spec(str(tmp_path / "run" / "best"), device="cpu")
    ((c,),) = cap.caption(
        [__import__("PIL.Image").Image.new("RGB", (32, 32))], DecodeSettings(max_new_tokens=5)
    )
    assert isinstance(c.text, str)


@pytest.mark.slow
def test_resume_after_kill_gives_identical_weights(shapes_dir, tmp_path):
    from vlens.training import load_checkpoint

    train(_cfg(shapes_dir, tmp_path / "full", epochs=2), log=lambda m: None)

    def killer(msg):
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(shapes_dir, tmp_path / "cut", epochs=2), log=killer)
    logs = []
    train(_cfg(shapes_dir, tmp_path / "cut", epochs=2, resume=True), log=logs.append)
    assert any("resuming" in m for m in logs)
    a = load_checkpoint(tmp_path / "full" / "last.pt", restore_rng=False)["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt", restore_rng=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_processes_under_torchrun(shapes_dir, tmp_path):
    """DDP on CPU (gloo): both processes train, the main one validates and saves."""
    import os
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vlens.cli.main",
        "caption",
        "train",
        "--data",
        str(shapes_dir),
        "--preset",
        "test-blip",
        "--epochs",
        "2",
        "--max-train",
        "16",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--val-limit",
        "2",
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 steps/epoch x 2 epochs (2 process(es)" in res.stderr  # 16 images / (4 per step x 2 processes)
    hist = (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()
    assert len(hist) == 2 and (tmp_path / "ddp" / "best" / "model.safetensors").is_file()


def test_bad_train_config(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        train(TrainConfig(str(shapes_dir), str(tmp_path / "x")), log=lambda m: None)
    with pytest.raises(ConfigError, match="prompt is empty"):
        train(_cfg(shapes_dir, tmp_path / "y", prompt=" "), log=lambda m: None)


def test_new_model_tokenizer_is_deterministic_and_round_trips(shapes_captions):
    from vlens.models.tokenizer import train_wordpiece

    a, b = train_wordpiece(shapes_captions), train_wordpiece(list(reversed(shapes_captions)))
    assert a.get_vocab() == b.get_vocab()
    assert [a.cls_token_id, a.sep_token_id, a.pad_token_id] == [2, 3, 0]
    text = "there is a big red circle in the top left corner"
    ids = a(text)["input_ids"]
    assert a.convert_ids_to_tokens(ids)[1:-1] == text.split()  # whole words from the captions
    assert (
        a.decode(a("a depiction of")["input_ids"], skip_special_tokens=True) == "a depiction of"
    )  # unseen word


def test_collate_patch_classes_follow_the_mask(tiny_blip):
    """The patch-class targets are the majority mask class of each patch, row-major like the ViT's tokens."""
    import numpy as np
    from PIL import Image

    from vlens.models import load

    lm = load(str(tiny_blip), "captioner")
    col = Collate(lm.image_processor, lm.tokenizer, [2], sep_id=3, pad_id=0, max_len=64, grid=4, n_classes=6)
    mask = np.zeros((64, 64), dtype=np.int64)
    mask[:16, 48:] = 3  # a triangle in the top-right patch
    mask[40:, :24] = 5  # a diamond over the bottom-left patch and most of its right neighbour
    *_, targets = col([(Image.new("RGB", (64, 64)), "a red circle", {"mask": mask})])
    assert targets["patch_classes"].shape == (1, 16)
    grid = targets["patch_classes"][0].reshape(4, 4)
    assert grid[0, 3] == 3 and grid[3, 0] == 5 and grid[3, 1] == 0 and grid[2, 0] == 0
    assert int((grid > 0).sum()) == 2


@pytest.mark.slow
def test_patch_class_loss_trains_a_plain_blip_that_remembers_its_prompt(shapes_dir, tmp_path):
    import json

    import transformers

    from vlens.caption.captioner import Captioner, DecodeSettings

    cfg = _cfg(shapes_dir, tmp_path / "run", epochs=2, patch_class_weight=0.5, scene_weight=1.0, patch_size=8,
               patch_place_weight=1.0)
    train(cfg, log=lambda m: None)
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(h["patch_loss"] > 0 for h in hist) and hist[-1]["patch_loss"] < hist[0]["patch_loss"]
    assert hist[-1]["scene_loss"] < hist[0]["scene_loss"] and hist[-1]["place_loss"] < hist[0]["place_loss"]
    best = tmp_path / "run" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["caption_prompt"] == "a picture of"
    from safetensors import safe_open

    with safe_open(str(best / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    fresh = transformers.BlipForConditionalGeneration(transformers.BlipConfig.from_pretrained(best))
    assert saved <= set(fresh.state_dict())  # a plain BLIP: the training-only head is not saved
    cap = Captioner.from_spec(str(best), device="cpu")
    assert cap.prepare(DecodeSettings())[0].prompt == "a picture of"  # used by default
    assert cap.prepare(DecodeSettings(prompt=""))[0].prompt == ""  # "" = no prompt
    assert cap.prefix_ids("") == [cap.bos_id]


def test_patch_class_loss_needs_masks(tmp_path):
    from vlens.data.shapes import make_shapes

    data = make_shapes(tmp_path / "d", train=4, val=2, test=0, size=32, progress=False)
    meta = json_load(data / "dataset.json")
    for im in meta["images"]:
        im.pop("mask")
    (data / "dataset.json").write_text(__import__("json").dumps(meta))
    with pytest.raises(ConfigError, match="needs a dataset with per-pixel masks"):
        train(_cfg(data, tmp_path / "run", epochs=1, patch_class_weight=1.0), log=lambda m: None)
    with pytest.raises(ConfigError, match="multiple of --patch-size"):
        train(_cfg(data, tmp_path / "run2", epochs=1, patch_size=5), log=lambda m: None)


def json_load(path):
    import json

    return json.loads(path.read_text())


def test_scene_targets_and_aux_losses():
    """Per colour: shape id and place id (0 = absent); the losses are plain cross-entropies of the heads."""
    import numpy as np
    import torch.nn.functional as F

    from vlens.caption.train import aux_losses, scene_targets
    from vlens.data.shapes import COLOURS

    shape, place = scene_targets(
        [{"shape": "star", "colour": "blue", "cx": 0.1, "cy": 0.9}, {"shape": "circle", "colour": "red", "cx": 0.5,
                                                                     "cy": 0.5}]
    )
    blue, red = list(COLOURS).index("blue"), list(COLOURS).index("red")
    assert shape[blue] == 4 and shape[red] == 1 and shape.sum() == 5  # star is SHAPES[3], circle SHAPES[0]
    assert place[blue] == 7 and place[red] == 5 and place.sum() == 12  # bottom left = 6th phrase, middle = 4th
    g = torch.Generator().manual_seed(0)
    aux = {"scene_shape": torch.randn(2, 7, 6, generator=g), "scene_place": torch.randn(2, 7, 10, generator=g),
           "patch_classes": torch.randn(2, 4, 6, generator=g)}
    targets = {"scene_shape": torch.from_numpy(np.stack([shape, shape])),
               "scene_place": torch.from_numpy(np.stack([place, place])),
               "patch_classes": torch.tensor([[0, 1, 2, 0], [5, 0, 0, 3]])}
    got = aux_losses(aux, targets)
    scene = 0.5 * (F.cross_entropy(aux["scene_shape"].reshape(14, 6), targets["scene_shape"].reshape(14))
                   + F.cross_entropy(aux["scene_place"].reshape(14, 10), targets["scene_place"].reshape(14)))
    assert torch.isclose(got["scene"], scene)
    patch = F.cross_entropy(aux["patch_classes"].reshape(8, 6), targets["patch_classes"].reshape(8))
    assert torch.isclose(got["patch"], patch)


def test_patch_place_targets_by_hand():
    """Each object patch gets its own object's position phrase (nearest centre), background is ignored."""
    from vlens.caption.probe import POSITION_PHRASES
    from vlens.caption.train import IGNORE, patch_place_targets

    classes = torch.zeros(4, 4, dtype=torch.long)
    classes[0, 0] = classes[0, 1] = 1  # a circle at (0.1, 0.1): patch centres (0.125, 0.125), (0.375, 0.125)
    classes[1, 2] = classes[1, 3] = classes[2, 3] = 4  # a star at (0.85, 0.5): (0.625, 0.375) is 0.26 from it,
    # 0.59 from the circle
    objects = [{"shape": "circle", "colour": "red", "cx": 0.1, "cy": 0.1},
               {"shape": "star", "colour": "blue", "cx": 0.85, "cy": 0.5}]
    got = patch_place_targets(classes.reshape(-1), objects, 4).reshape(4, 4)
    tl, right = POSITION_PHRASES.index("in the top left corner"), POSITION_PHRASES.index("on the right")
    want = torch.full((4, 4), IGNORE)
    want[0, 0] = want[0, 1] = tl
    want[1, 2] = want[1, 3] = want[2, 3] = right
    assert torch.equal(got, want)
    assert (patch_place_targets(classes.reshape(-1), [], 4) == IGNORE).all()


def test_patch_place_loss_skips_background_and_collates(tiny_blip):
    """The place loss is the cross-entropy over object patches only; Collate builds its targets from the mask."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from vlens.caption.probe import POSITION_PHRASES
    from vlens.caption.train import IGNORE, aux_losses
    from vlens.models import load

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, generator=g)
    want = torch.tensor([[IGNORE, 3, 3, IGNORE], [IGNORE, IGNORE, 8, IGNORE]])
    by_hand = torch.stack([-logits[0, 1].log_softmax(-1)[3], -logits[0, 2].log_softmax(-1)[3],
                           -logits[1, 2].log_softmax(-1)[8]]).mean()
    got = aux_losses({"patch_places": logits}, {"patch_places": want})["place"]
    assert torch.isclose(got, by_hand)
    assert aux_losses({"patch_places": logits}, {"patch_places": torch.full((2, 4), IGNORE)})["place"] == 0
    assert torch.isclose(got, F.cross_entropy(logits.reshape(8, 9), want.reshape(8), ignore_index=IGNORE))

    lm = load(str(tiny_blip), "captioner")
    col = Collate(lm.image_processor, lm.tokenizer, [2], sep_id=3, pad_id=0, max_len=64, grid=4, n_classes=6,
                  places=True)
    mask = np.zeros((64, 64), dtype=np.int64)
    mask[48:, 48:] = 2  # a square in the bottom-right patch
    objects = [{"shape": "square", "colour": "red", "cx": 0.875, "cy": 0.875}]
    *_, targets = col([(Image.new("RGB", (64, 64)), "a red square", {"mask": mask, "objects": objects})])
    places = targets["patch_places"][0]
    assert places[15] == POSITION_PHRASES.index("in the bottom right corner")
    assert (places[:15] == IGNORE).all()


def test_patch_place_loss_needs_shapes_objects(tmp_path):
    from vlens.data.shapes import make_shapes

    data = make_shapes(tmp_path / "d", train=4, val=2, test=0, size=32, progress=False)
    meta = json_load(data / "dataset.json")
    meta["dataset"] = "other"
    (data / "dataset.json").write_text(__import__("json").dumps(meta))
    with pytest.raises(ConfigError, match="--patch-place-weight needs a shapes dataset"):
        train(_cfg(data, tmp_path / "run", epochs=1, patch_place_weight=1.0), log=lambda m: None)
    with pytest.raises(ConfigError, match="--patch-place-weight must be >= 0"):
        train(_cfg(data, tmp_path / "run2", epochs=1, patch_place_weight=-1.0), log=lambda m: None)


def test_images_without_captions_are_left_out_and_said(shapes_dir, tmp_path):
    """An image with only blank captions is data the loader keeps (retrieval training counts it); caption training
    leaves it out of training and validation and says so, and a blank caption is never a target."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    meta = json.loads((data / "dataset.json").read_text())
    rows = [r for r in meta["images"] if r["split"] == "train"]
    rows[0]["sentences"] = [{"raw": "  "}]
    rows[1]["sentences"] = [{"raw": ""}, *rows[1]["sentences"][1:]]
    next(r for r in meta["images"] if r["split"] == "val")["sentences"] = []
    (data / "dataset.json").write_text(json.dumps(meta))
    lines = []
    train(_cfg(data, tmp_path / "run", epochs=1, max_train=4, val_limit=2), log=lines.append)
    text = "\n".join(lines)
    assert "left out 1 training image(s) without a caption" in text
    assert "left out 1 validation image(s) without a caption" in text
