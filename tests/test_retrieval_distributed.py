"""Two CPU processes (torchrun, gloo): the gathered contrastive loss and its gradients equal the
single-process loss and gradients on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_process_gather_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "retrieval_ddp_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert ddp["world"] == 2

    sys.path.insert(0, str(HERE))
    from retrieval_ddp_worker import build_model, global_batch

    from vlens.retrieval.loss import info_nce

    model = build_model()
    img, txt, scale = model(*global_batch())
    loss = info_nce(img, txt, scale)
    loss.backward()
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert abs(ddp["local_loss"].item() - loss.item()) > 1e-3  # without the gather it would differ
    # DDP averages the gradients of both processes; with the differentiable gather that is exactly the
    # gradient of the global-batch loss
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(ddp["grads"][name.removeprefix("module.")], p.grad, rtol=1e-4, atol=1e-6,
                                   msg=f"gradient of {name} differs")
