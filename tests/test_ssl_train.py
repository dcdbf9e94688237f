"""The DINO trainer end to end on a tiny model: outputs, exact resume, CLI, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from vlens.ssl.augment import MultiCropConfig
from vlens.ssl.train import DINOConfig, export_checkpoint, train


def tiny_config(out, images, **kw) -> DINOConfig:
    base = {"out": str(out), "images": [str(images)], "preset": "test-vit", "epochs": 2, "samples_per_epoch": 4,
            "batch_size": 2, "warmup_epochs": 1, "out_dim": 16, "head_hidden_dim": 16, "head_bottleneck_dim": 8,
            "checkpoint_every": 2, "max_side": 64, "crops": MultiCropConfig(global_size=32, local_size=16, n_local=2)}
    base.update(kw)
    return DINOConfig(**base)


def _state(path):
    return torch.load(path / "checkpoint.pt", weights_only=False)


def test_train_writes_a_loadable_backbone(tmp_path, shapes_dir):
    from vlens.models import load

    m = train(tiny_config(tmp_path / "run", shapes_dir / "images"), log=lambda _m: None)
    assert m["finished"] and m["steps"] == 4 and m["world_size"] == 1 and m["ranks_in_sync"]
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint.pt", "log.jsonl", "loss_curve.png", "metrics.json",
                 "backbone/config.json", "backbone/model.safetensors", "backbone/preprocessor_config.json",
                 "backbone/MODEL_CARD.md"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [1, 2, 3, 4]
    assert log[0]["lr"] == 0.0 and all(h["loss"] > 0 for h in log)
    loaded = load(str(run / "backbone"), "backbone")
    out = loaded.model(pixel_values=torch.randn(1, 3, 32, 32)).last_hidden_state
    assert out.shape == (1, 1 + 16, 32)
    # the saved backbone is the teacher's
    teacher = _state(run)["teacher"]
    for k, v in loaded.model.state_dict().items():
        if "backbone." + k in teacher:
            assert torch.equal(v, teacher["backbone." + k])
    card = (run / "backbone" / "MODEL_CARD.md").read_text()
    assert "seed: 0" in card and "wall time" in card


@pytest.mark.slow
def test_resume_is_exact(tmp_path, shapes_dir):
    images = shapes_dir / "images"
    # every term of the builtin recipe: [CLS] + dense DINO + patch InfoNCE (student keys), rotated crops
    crops = MultiCropConfig(global_size=32, local_size=16, n_local=2, rotation=15, min_overlap=0.2, flip_p=0)
    kw = {"dense_weight": 0.5, "contrast_weight": 0.5, "patch_out_dim": 8, "crops": crops}
    train(tiny_config(tmp_path / "full", images, **kw), log=lambda _m: None)
    part = train(tiny_config(tmp_path / "part", images, stop_after=3, checkpoint_every=1, **kw), log=lambda _m: None)
    assert part["steps"] == 3 and not part["finished"] and not (tmp_path / "part" / "backbone").exists()
    # resume takes the settings from the checkpoint; only out/resume/stop_after come from the call
    done = train(DINOConfig(out=str(tmp_path / "part"), resume=True), log=lambda _m: None)
    assert done["steps"] == 4 and done["finished"]
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    for key in ("student", "teacher"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert torch.equal(a["center"], b["center"]) and torch.equal(a["center_patch"], b["center_patch"])
    assert "loss_dense" in a["history"][-1] and "loss_contrast" in a["history"][-1]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_export_checkpoint(tmp_path, shapes_dir):
    from vlens.models import load

    train(tiny_config(tmp_path / "run", shapes_dir / "images", stop_after=2, export="student"), log=lambda _m: None)
    folder = export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "exported")
    model = load(str(folder), "backbone").model
    assert model.config.hidden_size == 32
    ckpt = _state(tmp_path / "run")  # export="student": the student's weights, not the teacher's
    # the loaded ViTModel adds an (untrained, unused) pooler that the training backbone does not have
    exported = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    assert exported and all(torch.equal(v, ckpt["student"]["backbone." + k]) for k, v in exported.items())
    assert not all(torch.equal(v, ckpt["teacher"]["backbone." + k]) for k, v in exported.items())


def test_cli_train_and_errors(tmp_path, shapes_dir, cli):
    code, out, err = cli("ssl", "train", "--out", tmp_path / "run", "--images", shapes_dir / "images",
                         "--preset", "test-vit", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2",
                         "--samples-per-epoch", "2", "--global-size", "32", "--local-size", "16", "--n-local", "1",
                         "--out-dim", "16", "--global-scale", "0.3", "0.9", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["steps"] == 1 and m["finished"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert cfg["crops"]["global_scale"] == [0.3, 0.9] and cfg["crops"]["n_local"] == 1
    code, _, err = cli("ssl", "train", "--out", tmp_path / "bad", "--images", shapes_dir / "images",
                       "--preset", "test-vit", "--epochs", "2", "--warmup-epochs", "5")
    assert code == 1 and "warmup-epochs" in err
    code, _, err = cli("ssl", "train", "--out", tmp_path / "bad2", "--images", tmp_path / "nowhere",
                       "--preset", "test-vit")
    assert code == 1 and "error:" in err
    code, _, err = cli("ssl", "train", "--out", tmp_path / "bad3", "--images", shapes_dir / "images",
                       "--preset", "test-blip")
    assert code == 1 and "ViT" in err


def test_relative_image_folder_exports_from_anywhere(tmp_path, shapes_dir, cli, monkeypatch):
    """A run started with relative paths (`--images imgs` in the run's directory) stores them absolute, so its
    checkpoint exports from any directory; an export whose images are gone stops before writing any file."""
    import shutil

    from vlens.errors import DatasetError

    work = tmp_path / "work"
    shutil.copytree(shapes_dir / "images", work / "imgs")
    monkeypatch.chdir(work)
    code, _, err = cli("ssl", "train", "--out", "run", "--images", "imgs", "--preset", "test-vit", "--epochs", "1",
                       "--warmup-epochs", "0", "--batch-size", "2", "--samples-per-epoch", "2", "--global-size",
                       "32", "--local-size", "16", "--n-local", "1", "--out-dim", "16", "--json")
    assert code == 0, err
    assert json.loads((work / "run" / "config.json").read_text())["config"]["images"] == [str(work / "imgs")]
    monkeypatch.chdir(tmp_path)
    folder = export_checkpoint(work / "run" / "checkpoint.pt", tmp_path / "exported")
    listed = json.loads((folder / "training_images.json").read_text())
    assert len(listed["images"]) == len(list((work / "imgs").iterdir()))
    shutil.rmtree(work / "imgs")
    with pytest.raises(DatasetError, match="not a folder of images"):
        export_checkpoint(work / "run" / "checkpoint.pt", tmp_path / "exported-2")
    assert not (tmp_path / "exported-2").exists()


def test_help_teaches(cli):
    code, out, _ = cli("ssl", "train", "--help")
    assert code == 0 and "--momentum-teacher" in out and "--resume" in out and "collapse" in out


@pytest.mark.slow
def test_kill_and_resume(tmp_path, shapes_dir):
    """SIGKILL a real training process after its first checkpoints, resume it, and get the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--images", str(shapes_dir / "images"), "--preset", "test-vit", "--epochs", "12", "--warmup-epochs", "1",
            "--batch-size", "2", "--samples-per-epoch", "4", "--global-size", "32", "--local-size", "16",
            "--n-local", "1", "--out-dim", "16", "--max-side", "64", "--checkpoint-every", "2", "--threads", "1"]
    env = {**os.environ, "VLENS_PROGRESS": "0"}
    base = [sys.executable, "-m", "vlens.cli.main", "ssl", "train"]
    subprocess.run([*base, "--out", str(tmp_path / "full"), *args], env=env, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen([*base, "--out", str(tmp_path / "killed"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 24, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "backbone").exists()
    subprocess.run([*base, "--out", str(tmp_path / "killed"), "--resume", "--threads", "1"], env=env, check=True,
                   capture_output=True, timeout=300)
    a, b = _state(tmp_path / "full"), _state(tmp_path / "killed")
    assert b["step"] == a["step"] == 24
    for k in a["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    assert (tmp_path / "killed" / "backbone" / "model.safetensors").is_file()


def test_init_from_weights_and_training_list(tmp_path, shapes_dir):
    """--init starts from a trained backbone; the export lists the run's images plus the ones the initial weights
    were trained on, so benchmarks can refuse both."""
    from vlens.errors import ConfigError
    from vlens.match.heldout import find_overlap, training_images
    from vlens.ssl.train import build_backbone, init_backbone

    images = sorted((shapes_dir / "images").glob("*.png"))
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "img").mkdir(parents=True), (second / "img").mkdir(parents=True)
    for p in images[:3]:
        (first / "img" / p.name).write_bytes(p.read_bytes())
    for p in images[3:5]:
        (second / "img" / p.name).write_bytes(p.read_bytes())
    train(tiny_config(first / "run", first / "img"), log=lambda _m: None)
    a = first / "run" / "backbone"
    assert len(training_images(str(a))) == 3
    fresh = build_backbone("test-vit", 32)
    init_backbone(fresh, str(a))
    from vlens.models import load

    ref = load(str(a), "backbone").model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ConfigError, match="do not fit the preset"):
        init_backbone(build_backbone("dino-tiny", 32), str(a))
    train(tiny_config(second / "run", second / "img", init=str(a), epochs=1), log=lambda _m: None)
    b = str(second / "run" / "backbone")
    assert len(training_images(b)) == 5
    assert [x for x, _ in find_overlap(b, images[:6])] == [p.name for p in images[:5]]
