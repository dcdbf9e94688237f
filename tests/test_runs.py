"""Atomic writes, run folders, schedules and checkpoints shared by every trainer."""

import json

import numpy as np
import pytest
import torch

from vlens.runs import RunDir, atomic_path, atomic_write_text, write_json
from vlens.training import cosine_schedule, load_checkpoint, param_groups, save_checkpoint


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half-writt")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_rundir_writes_config_and_metrics(tmp_path):
    run = RunDir(tmp_path / "run", config={"lr": 1e-3, "path": tmp_path})
    run.write_metrics({"acc": np.float32(0.5), "curve": np.arange(3)})
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["lr"] == 1e-3 and "vlens_version" in cfg
    met = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert met["acc"] == 0.5 and met["curve"] == [0, 1, 2] and "wall_time_s" in met
    write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert json.loads((tmp_path / "nan.json").read_text()) == {"x": None}


def test_cosine_schedule_endpoints():
    s = cosine_schedule(1.0, 0.1, total_steps=10, warmup_steps=3, warmup_start=0.0)
    assert len(s) == 10 and s[0] == 0.0 and s[3] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[3:]) <= 1e-12)
    assert cosine_schedule(0.5, 0.5, 1)[0] == 0.5


def test_checkpoint_roundtrip_restores_rng(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ck.pt", model=lin.state_dict(), step=7)
    expected = torch.rand(3)
    torch.rand(5)
    ck = load_checkpoint(tmp_path / "ck.pt")
    assert ck["step"] == 7 and torch.equal(torch.rand(3), expected)


def test_param_groups_skip_decay_on_bias_and_norms():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    decay, no_decay = param_groups(m, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
