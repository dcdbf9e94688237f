"""Sizes inside the allowed range (issue 23, item 5): refused before allocating when the computation cannot fit,
progress on long feature extraction, Ctrl-C answered while one long tensor operation runs."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from PIL import Image


@pytest.fixture()
def img(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(p)
    return p


def test_attention_at_a_huge_size_is_refused_before_allocating(cli, img, tmp_path, tiny_vit, monkeypatch):
    from vlens.match.attention import attention_bytes, eager_backbone
    from vlens.match.features import input_size_for

    monkeypatch.setenv("VLENS_MEMORY_LIMIT", str(2e9))
    code, out, err = cli("explore", "attention", img, "--model", tiny_vit, "--size", "4096", "--out",
                         tmp_path / "att.png")
    assert code == 1 and err.count("\n") == 1 and "a bug in vlens" not in err, err
    assert "memory" in err and "TB" in err and "use --size" in err
    suggested = int(err.split("use --size ")[1].split()[0])
    bb = eager_backbone(str(tiny_vit))
    w, h = input_size_for((64, 48), bb.patch_size, suggested)
    assert attention_bytes(bb, w, h) <= 0.8 * 2e9  # the advice is honest: that size fits
    assert not (tmp_path / "att.png").exists()
    code, _, err = cli("explore", "attention", img, "--model", tiny_vit, "--size", str(suggested), "--out",
                       tmp_path / "att.png") if suggested <= 256 else (0, "", "")
    assert code == 0, err


def test_match_features_too_big_for_memory_are_one_line(cli, img, tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setenv("VLENS_MEMORY_LIMIT", str(5e7))
    code, _, err = cli("match", img, img, "--model", tiny_vit, "--size", "4096", "--out", tmp_path / "m.png")
    assert code == 1 and err.count("\n") == 1 and "memory" in err and "use --size" in err, err


def test_long_feature_extraction_shows_progress(tiny_vit, img, monkeypatch, capsys):
    import vlens.match.features as F

    monkeypatch.setenv("VLENS_PROGRESS", "1")
    monkeypatch.setattr(F, "LONG_TOKENS", 10)
    F.extract_features([img, img], str(tiny_vit), size=64, batch_size=1)
    err = capsys.readouterr().err
    assert "features (" in err and "block" in err


def test_progress_ticks_leave_the_features_unchanged(tiny_vit, img, monkeypatch):
    """The progress bar is ticked by forward hooks on the blocks; tqdm's update returns True whenever it redraws,
    and a hook's return value replaces the block's output. A bar that redraws on every tick must change nothing
    (it fed True to the next block: a TypeError that came and went with tqdm's redraw timing)."""
    import vlens.match.features as F
    import vlens.runs

    class RedrawingBar:
        def update(self, n=1):
            return True

        def close(self):
            pass

    plain = F.extract_features([img], str(tiny_vit), size=64)[0].descriptors
    monkeypatch.setattr(F, "LONG_TOKENS", 10)
    monkeypatch.setattr(vlens.runs, "progress", lambda *a, **k: RedrawingBar())
    ticked = F.extract_features([img], str(tiny_vit), size=64)[0].descriptors
    assert ticked.shape == plain.shape and bool((ticked == plain).all())


def test_ctrl_c_is_answered_while_one_forward_runs(cli, img, tmp_path, tiny_vit, monkeypatch):
    """The forward runs off the main thread, so the CLI's SIGINT handler answers at once (the bound is loose;
    before, the wait lasted as long as the operation: 60+ s at --size 4096)."""
    import vlens.match.features as F

    release, threads = threading.Event(), []

    def stuck_forward(*a, **k):
        threads.append(threading.current_thread())
        release.wait(60)  # one long operation
        raise RuntimeError("released")

    monkeypatch.setattr(F, "_forward", stuck_forward)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        code, _, err = cli("match", img, img, "--model", tiny_vit, "--size", "64", "--out", tmp_path / "m.png")
    finally:
        release.set()
        timer.cancel()
    took = time.perf_counter() - t0
    assert code == 130 and "interrupted" in err, err
    assert took < 10, took
    assert threads and threads[0] is not threading.main_thread()
