"""Crash safety: SIGKILL a real `vlens index build/update` process at random moments, check, rerun, compare.

After every kill the index either does not exist yet (killed before its manifest was written) or opens and
answers searches with a consistent subset of the final content; a rerun then yields exactly what an
uninterrupted run yields: same paths, same vectors, no duplicates.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vlens.errors import IndexError_
from vlens.retrieval.index import ImageIndex, IndexConfig, build_index, is_index, update_index

pytestmark = pytest.mark.slow



def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vlens.cli.main", *map(str, args)]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLENS_PROGRESS="0", OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _rows(out) -> dict[str, np.ndarray]:
    con = sqlite3.connect(Path(out) / "meta.sqlite")
    paths = [r[0] for r in con.execute("SELECT path FROM images")]
    assert len(paths) == len(set(paths)), "duplicate paths"
    rows = {p: np.frombuffer(v, np.float32) for p, v in con.execute("SELECT path, vector FROM images")}
    con.close()
    return rows


def _count(out: Path) -> int:
    if not (out / "meta.sqlite").exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{out / 'meta.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the schema is not there yet
        return 0


def _kill_at_random(cmd, started, rng: random.Random, window: float) -> bool:
    """Start ``cmd``; once ``started()`` is true (the process is writing), SIGKILL it after a random delay.

    Returns True if it was killed, False if it finished first.
    """
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not started() and p.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, window))
    if p.poll() is not None:
        err = p.stderr.read().decode()
        assert p.returncode == 0, err
        return False
    p.send_signal(signal.SIGKILL)
    p.wait()
    return True


def _check_partial(out: Path, reference: dict[str, np.ndarray], encoder) -> None:
    """The interrupted index opens, answers, and holds only correct entries."""
    if not is_index(out):
        return
    rows = _rows(out)
    for path, vec in rows.items():
        np.testing.assert_allclose(vec, reference[path], atol=1e-5)
    ix = ImageIndex(out)
    from vlens.retrieval.search import Searcher

    hits = Searcher(ix, encoder=encoder).text("a red circle", k=5)
    assert len(hits) == min(5, len(rows)) and all(h.path in rows for h in hits)


@pytest.fixture(scope="module")
def setup(tiny_clip, shapes_dir, tmp_path_factory):
    from vlens.retrieval.model import DualEncoder

    enc = DualEncoder.from_spec(str(tiny_clip))
    root = tmp_path_factory.mktemp("crash") / "photos"
    shutil.copytree(shapes_dir / "images", root)
    ref = root.parent / "reference"
    build_index(root, ref, IndexConfig(model=str(tiny_clip)), embedder=(enc.encode_images, enc.dim),
                progress=False)
    return enc, root, _rows(ref), tiny_clip


def test_kill_build_at_random_points_then_rerun(setup, tmp_path):
    enc, root, reference, model = setup
    rng = random.Random(7)
    counts = []
    for trial in range(2):
        out = tmp_path / f"idx{trial}"
        cmd = _cmd("index", "build", root, "--out", out, "--model", model, "--batch-size", 2)
        # Up to 2 kills per trial, each at a random moment after the process starts writing.
        for _ in range(2 - trial):
            # Kill once the database holds a random number of images (then after a further random delay), so
            # kills land at random points of the embedding loop whatever the machine's speed.
            target = rng.randrange(1, len(reference))
            if not _kill_at_random(cmd, lambda out=out, target=target: _count(out) >= target, rng, window=0.05):
                break
            _check_partial(out, reference, enc)
            counts.append(len(_rows(out)) if is_index(out) else 0)
        rep = build_index(root, out, IndexConfig(model=str(model)), embedder=(enc.encode_images, enc.dim),
                          progress=False)
        rows = _rows(out)
        assert rows.keys() == reference.keys() and rep.total == len(reference)
        for p in rows:
            np.testing.assert_allclose(rows[p], reference[p], atol=1e-5)
        assert not ImageIndex(out).stale
    # At least one kill landed in the middle of the embedding (some batches committed, not all).
    assert any(0 < c < len(reference) for c in counts), counts


def test_kill_update_at_random_points_then_rerun(setup, tmp_path):
    enc, root0, _, model = setup
    rng = random.Random(11)
    root = tmp_path / "photos"
    shutil.copytree(root0, root)
    out = tmp_path / "idx"
    build_index(root, out, IndexConfig(model=str(model)), embedder=(enc.encode_images, enc.dim), progress=False)
    # A big change set: delete a third, rename a few, replace some pixels, add copies under new names.
    files = sorted(root.glob("*.png"))
    for p in files[:20]:
        p.unlink()
    for p in files[20:25]:
        os.rename(p, root / f"renamed_{p.name}")
    from PIL import Image

    for p in files[25:40]:
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p)
    (root / "new").mkdir()
    for p in files[40:60]:
        Image.open(p).rotate(90).save(root / "new" / p.name)
    ref = tmp_path / "ref"
    build_index(root, ref, IndexConfig(model=str(model)), embedder=(enc.encode_images, enc.dim), progress=False)
    reference = _rows(ref)
    old = _rows(out)
    killed = 0
    for _ in range(3):
        def started():
            return (out / "lock").stat().st_size > 0
        if _kill_at_random(_cmd("index", "update", out, "--json"), started, rng, window=1.5):
            killed += 1
            rows = _rows(out)
            for path, vec in rows.items():  # every row is either still valid from before or already new
                assert np.allclose(vec, reference.get(path, vec + 1), atol=1e-5) or \
                    np.allclose(vec, old.get(path, vec + 1), atol=1e-5)
            _check_partial_any(out, enc)
    update_index(out, embedder=(enc.encode_images, enc.dim), progress=False)
    rows = _rows(out)
    assert rows.keys() == reference.keys()
    for p in rows:
        np.testing.assert_allclose(rows[p], reference[p], atol=1e-5)
    assert killed >= 1


def _check_partial_any(out, enc) -> None:
    from vlens.retrieval.search import Searcher

    assert len(Searcher(out, encoder=enc).text("a blue square", k=3)) == 3


def test_two_processes_updating_at_once(setup, tmp_path):
    """One update runs; a second one started meanwhile fails at once with a clear message; data intact."""
    enc, root0, reference, model = setup
    root = tmp_path / "photos"
    shutil.copytree(root0, root)
    out = tmp_path / "idx"
    build_index(root, out, IndexConfig(model=str(model)), embedder=(enc.encode_images, enc.dim), progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from vlens.retrieval.index import index_lock\n"
                                f"with index_lock({str(out)!r}, 'vlens index update'):\n"
                                "    print('locked', flush=True); time.sleep(30)")],
        env=_env(), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(IndexError_, match=f"pid {holder.pid}"):
            update_index(out, embedder=(enc.encode_images, enc.dim), progress=False)
        r = subprocess.run(_cmd("index", "update", out), env=_env(), capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 1 and "being written by pid" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: the OS released the lock, the next update just works.
    rep = update_index(out, embedder=(enc.encode_images, enc.dim), progress=False)
    assert rep.total == len(reference) and _rows(out).keys() == reference.keys()
