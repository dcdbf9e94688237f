"""DINO under torchrun with 2 CPU processes (gloo): ranks stay in sync and the run equals one process with the
same global batch (each rank takes a disjoint half; DDP averages gradients; the centre is all-reduced)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from vlens.ssl.augment import MultiCropConfig
from vlens.ssl.train import DINOConfig, train

ARGS = ["--preset", "test-vit", "--epochs", "2", "--warmup-epochs", "1", "--samples-per-epoch", "8",
        "--global-size", "32", "--local-size", "16", "--n-local", "2", "--out-dim", "16", "--max-side", "64",
        "--checkpoint-every", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, shapes_dir):
    images = shapes_dir / "images"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLENS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "vlens.cli.main", "ssl", "train", "--out", str(tmp_path / "ddp"),
           "--images", str(images), "--batch-size", "2", "--threads", "1", "--json", *ARGS]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["global_batch"] == 4 and m["ranks_in_sync"] and m["steps"] == 4
    a, b = m["rank_checksums"]
    assert a == b
    assert res.stdout.count('"world_size"') == 1  # only the first process prints

    single = DINOConfig(out=str(tmp_path / "one"), images=[str(images)], preset="test-vit", epochs=2,
                        warmup_epochs=1, samples_per_epoch=8, batch_size=4, out_dim=16, max_side=64,
                        crops=MultiCropConfig(global_size=32, local_size=16, n_local=2))
    train(single, log=lambda _m: None)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    for k, v in one["teacher"].items():
        assert torch.allclose(ddp["teacher"][k], v, atol=1e-4, rtol=1e-4), k
    assert torch.allclose(ddp["center"], one["center"], atol=1e-5)
    losses = [h["loss"] for h in ddp["history"]]
    assert losses == pytest.approx([h["loss"] for h in one["history"]], abs=1e-3)
