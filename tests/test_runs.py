"""Atomic writes, run folders, schedules and checkpoints shared by every trainer."""

import json
import os

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


def test_atomic_writes_go_through_links_to_their_target(tmp_path):
    """A symlink (or a chain of them) stays a link; its final target gets the new bytes, renamed into place there
    (no temp file left beside the link or the target); a dangling link creates its target."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "t.json").write_text("old")
    os.symlink(real / "t.json", tmp_path / "l1")
    os.symlink("l1", tmp_path / "l2")  # relative, to another link
    write_json(tmp_path / "l2", {"a": 1})
    assert os.path.islink(tmp_path / "l1") and os.path.islink(tmp_path / "l2")
    assert json.loads((real / "t.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(real)) == ["t.json"] and sorted(os.listdir(tmp_path)) == ["l1", "l2", "real"]
    os.symlink(real / "new.txt", tmp_path / "dangling")
    atomic_write_text(tmp_path / "dangling", "x")
    assert os.path.islink(tmp_path / "dangling") and (real / "new.txt").read_text() == "x"


def test_devices_and_fifos_are_written_directly_never_replaced(tmp_path):
    import stat
    import threading

    from vlens.runs import is_special

    # never the real /dev/null here: a regression run as root would replace it for the whole machine
    assert is_special("/dev/null") and is_special("/dev/stdout") and not is_special(tmp_path)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write_json(fifo, {"b": 2})
    reader.join(10)
    assert json.loads(got[0]) == {"b": 2} and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe.json"]


def test_dash_folders_and_link_loops_are_one_line_refusals(tmp_path):
    from vlens.errors import ConfigError

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    for bad, why in (("-", "not a file name"), (tmp_path / "a", "symbolic links"), (tmp_path, "is a folder")):
        with pytest.raises(ConfigError, match=why) as exc:
            atomic_write_text(bad, "x")
        assert "\n" not in str(exc.value)
    assert not os.path.exists("-")
