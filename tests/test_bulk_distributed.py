"""Two CPU processes (torchrun, gloo) caption a folder into one JSONL and build one index; both equal what a
single process writes (same lines in the same order, same ids, vectors within float tolerance)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def _rows(index: Path) -> dict[str, tuple[int, np.ndarray]]:
    con = sqlite3.connect(index / "meta.sqlite")
    rows = {p: (i, np.frombuffer(v, np.float32)) for i, p, v in con.execute("SELECT id, path, vector FROM images")}
    con.close()
    return rows


def test_two_processes_write_what_one_writes(shapes_folder, tmp_path):
    from vlens.caption.bulk import caption_to_file, record_file
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.retrieval.index import IndexConfig, build_index
    from vlens.retrieval.index_reader import ImageIndex

    images = shapes_folder(shapes_folder(tmp_path / "imgs", "val"))  # 20 images: 4 steps of 2 x 3, the last uneven
    (images / "m_broken.jpg").write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VLENS_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH", ""))
                                         if p)}
    env.pop("VLENS_FAULT", None)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "bulk_ddp_worker.py"), str(images), str(ddp)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes" in res.stdout

    one = tmp_path / "one"
    caption_to_file([images], one / "caps.jsonl", Captioner.from_spec("builtin:blip-tiny", device="cpu"),
                    DecodeSettings(batch_size=3), workers=0, progress=False)
    want, got = record_file(one / "caps.jsonl").records(), record_file(ddp / "caps.jsonl").records()
    assert len(want) == 21 and [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert g.get("error") == w.get("error")
        if "captions" in w:
            assert g["captions"][0]["text"] == w["captions"][0]["text"]
            assert g["captions"][0]["logprob"] == pytest.approx(w["captions"][0]["logprob"], abs=1e-3)

    build_index(images, one / "index", IndexConfig(batch_size=3), progress=False, workers=0, log=lambda m: None)
    a, b = _rows(one / "index"), _rows(ddp / "index")
    assert a.keys() == b.keys() and len(a) == 20
    for path, (i, v) in a.items():
        assert b[path][0] == i  # same ids: rank 0 commits in the single-process order
        np.testing.assert_allclose(b[path][1], v, atol=1e-5)
    ix = ImageIndex(ddp / "index")
    info = ix.info()
    assert not ix.stale and info["count"] == 20 and [s["path"] for s in info["skipped"]] == ["m_broken.jpg"]
    scores, ids = ix.search(b["val_00000.png"][1][None], 3)
    assert ids[0, 0] == b["val_00000.png"][0] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    ix.close()


def test_process_group_is_destroyed_at_exit(tmp_path):
    """A gloo group left alive at interpreter teardown can abort a rank after its work is done ("terminate called
    without an active exception"); vlens destroys it from an atexit handler (registered once, however often asked)."""
    script = tmp_path / "pg.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "from vlens.devices import release_process_group_at_exit\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "real = dist.destroy_process_group\n"
        "dist.destroy_process_group = lambda *a: (print('destroyed', flush=True), real(*a))\n"
        "release_process_group_at_exit()\n"
        "release_process_group_at_exit()\n"
        "dist.barrier()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["destroyed"]
