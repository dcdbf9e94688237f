"""SIGKILL a real `vlens caption DIR --out` process after a batch chosen at random (seeded), then rerun: the file
ends up with every image exactly once, as an uninterrupted run writes it.

The kill comes from inside (``VLENS_FAULT=bulk-batch-written:K``, :mod:`vlens.faults`), right after the K-th batch
is written: the moment is random across seeds but never a matter of timing. A torn last line (a kill in the
middle of a write) is added by hand before the rerun.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(folder, out, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLENS_PROGRESS="0", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("VLENS_FAULT", None)
    if fault:
        env["VLENS_FAULT"] = fault
    cmd = [sys.executable, "-m", "vlens", "caption", str(folder), "--out", str(out), "--batch-size", "3",
           "--workers", "2", "--device", "cpu"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)


def test_kill_at_a_random_batch_then_resume_loses_and_duplicates_nothing(shapes_folder, tmp_path):
    from vlens.caption.bulk import caption_to_file, record_file
    from vlens.caption.captioner import Captioner, DecodeSettings

    folder = shapes_folder(tmp_path / "imgs", "train", n=14)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG truncated")
    ref = tmp_path / "ref.jsonl"
    caption_to_file([folder], ref, Captioner.from_spec("builtin:blip-tiny", device="cpu", dtype="fp32"),
                    DecodeSettings(batch_size=3), workers=0, progress=False)
    want = record_file(ref).records()
    assert len(want) == 15

    k = random.Random(15).randint(1, 4)  # 5 batches of 3: die after batch k (1..4), a different k per seed
    out = tmp_path / "caps.jsonl"
    res = _run(folder, out, fault=f"bulk-batch-written:{k}")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 3 * k  # every flushed batch is there, nothing after the kill
    with open(out, "a") as fh:
        fh.write(json.dumps(want[3 * k])[:25])  # and a torn line, as a kill in the middle of a write leaves
    res = _run(folder, out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "already there" in res.stdout and "zz_broken.png" in res.stderr
    got = record_file(out).records()
    assert [r["path"] for r in got] == [r["path"] for r in want]  # nothing lost, nothing twice, same order
    for g, w in zip(got, want):
        assert g.get("error") == w.get("error")
        if "captions" in w:
            assert g["captions"][0]["text"] == w["captions"][0]["text"]
            assert g["captions"][0]["logprob"] == pytest.approx(w["captions"][0]["logprob"], abs=1e-3)
