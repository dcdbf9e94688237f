"""GPU paths that also run on the CPU: bf16 mixed precision in a trainer, match on a chosen device, and the
one-shot GPU check's tiny mode (CI runs it so the script cannot rot; it has not run on a GPU in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: start and leave these tests with none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_autocast_on_cpu_is_real_and_fp16_is_refused(fresh_accelerate_state):
    from vlens.errors import ConfigError
    from vlens.training import make_accelerator

    acc = make_accelerator(1, "bf16")
    assert acc.mixed_precision == "bf16"
    lin = torch.nn.Linear(8, 4)
    with acc.autocast():
        y = lin(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16 and lin.weight.dtype == torch.float32  # fp32 master weights
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
            make_accelerator(1, "fp16")


def test_retrieval_trainer_runs_in_bf16_mixed_precision(shapes_dir, tmp_path, fresh_accelerate_state):
    from vlens.retrieval.train import TrainConfig, train

    cfg = TrainConfig(data=str(shapes_dir), out=str(tmp_path / "run"), preset="test-clip", image_size=32,
                      vocab_size=200, epochs=1, batch_size=16, lr=2e-3, wd=0.0, warmup=1, mixed_precision="bf16")
    m = train(cfg, log=lambda *_: None)
    assert m["finished"] and all(np.isfinite(h["loss"]) for h in m["history"])


def test_match_on_an_explicit_device_equals_the_default(tiny_vit):
    from PIL import Image

    from vlens.match import extract_features, match_features

    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    b = a.transpose(Image.FLIP_LEFT_RIGHT)
    fa, fb = extract_features([a, b], str(tiny_vit), size=64)
    ga, gb = extract_features([a, b], str(tiny_vit), size=64, device="cpu", dtype="fp32")
    torch.testing.assert_close(fa.descriptors, ga.descriptors)
    m0, m1 = match_features(fa, fb), match_features(ga, gb, device="cpu")
    torch.testing.assert_close(m0.dst_xy, m1.dst_xy)
    ha, _ = extract_features([a, b], str(tiny_vit), size=64, device="cpu", dtype="bf16")
    assert ha.descriptors.dtype == torch.float32  # computed in bf16, handed back as float32
    cos = torch.nn.functional.cosine_similarity(ha.flat, fa.flat, dim=1)
    assert cos.mean() > 0.98
    extract_features([a], str(tiny_vit), size=64, device="cpu", dtype="fp32")  # leave the cached model as found


@pytest.mark.slow
def test_gpu_check_tiny_mode_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["device"] == "cpu" and r["gpu"] is None
    assert r["blip_base_captioning"]["captions_per_s_batch_1"] > 0
    assert r["blip_base_captioning"]["captions_per_s_batch_4"] > 0
    assert r["clip_vit_b32_embedding"]["images_per_s"] > 0
    assert r["dino_vit_s8_features"]["images_per_s"] > 0 and r["dino_vit_s8_features"]["patches"] == 64
    assert r["matching"]["ms_per_pair"] > 0


def test_gpu_check_full_mode_refuses_without_a_gpu(tmp_path, capsys):
    """Without a GPU the full mode says so instead of quietly benchmarking the CPU."""
    import importlib.util

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the full mode would run")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
