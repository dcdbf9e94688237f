"""Issue 29 item 7: long work says how far it is (stderr lines where a bar is hidden, with an estimate of the time
left), and the attention memory check comes before the model loads."""

from __future__ import annotations

import io

import pytest
import torch


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_line_progress_is_silent_for_short_work_then_estimates_the_rest(monkeypatch):
    from vlens import runs

    clock = _Clock()
    monkeypatch.setattr(runs.time, "monotonic", clock)
    out = io.StringIO()
    bar = runs.LineProgress(100, "matching (10 x 10 patches)", unit="patch", after=3, every=10, stream=out)
    clock.now += 2
    bar.update(10)  # 2 s in: nothing yet
    assert out.getvalue() == ""
    clock.now += 2
    bar.update(10)  # 4 s, 20%: 16 s left at this rate
    clock.now += 5
    bar.update(30)  # 9 s: within 10 s of the last line, quiet
    clock.now += 6
    bar.update(10)  # 15 s, 60%: 10 s left
    clock.now += 3
    bar.update(40)
    bar.close()
    assert out.getvalue().splitlines() == [
        "matching (10 x 10 patches): 20% (20 of 100 patches) after 4 s, about 16 s left",
        "matching (10 x 10 patches): 60% (60 of 100 patches) after 15 s, about 10 s left",
        "matching (10 x 10 patches): done in 18 s"]
    quiet = io.StringIO()
    short = runs.LineProgress(5, "x", stream=quiet)
    short.update(5)
    short.close()
    assert quiet.getvalue() == ""


def test_stage_progress_off_a_terminal_is_lines(monkeypatch):
    from vlens import runs

    monkeypatch.delenv("VLENS_PROGRESS", raising=False)
    monkeypatch.setattr(runs.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(runs.stage_progress(10, "x"), runs.LineProgress)
    monkeypatch.setenv("VLENS_PROGRESS", "0")
    assert not isinstance(runs.stage_progress(10, "x"), runs.LineProgress)


def test_long_matching_reports_every_row_of_a(monkeypatch):
    """Matching above LONG_PAIRS ticks a stage bar through every row of A (and the answer is the plain one)."""
    from vlens import runs
    from vlens.match import matching

    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

        def close(self):
            ticks.append("closed")

    made = []
    monkeypatch.setattr(runs, "stage_progress", lambda total, desc, unit="step": made.append((total, desc)) or Bar())
    monkeypatch.setattr(matching, "LONG_PAIRS", 100)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g)
    got = matching.nearest_neighbors_both(a, b, tile_bytes=4 * 64 * 50)
    assert made == [(300, "matching (300 x 200 patches)")]
    assert sum(t for t in ticks if t != "closed") == 300 and ticks[-1] == "closed" and len(ticks) > 2
    monkeypatch.setattr(matching, "LONG_PAIRS", 10**12)
    ref = matching.nearest_neighbors_both(a, b, tile_bytes=4 * 64 * 50)
    for x, y in zip(got, ref):
        assert torch.equal(x, y)


def test_the_attention_memory_check_comes_before_the_model_loads(tmp_path, tiny_vit, monkeypatch):
    from PIL import Image

    from vlens.errors import ConfigError
    from vlens.match import attention

    img = Image.new("RGB", (64, 48), (120, 30, 200))

    def no_loading(spec):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(attention, "eager_backbone", no_loading)
    monkeypatch.setenv("VLENS_MEMORY_LIMIT", str(2e9))
    with pytest.raises(ConfigError, match="use --size"):
        attention.cls_attention(img, str(tiny_vit), size=4096)
    shape = attention.attention_shape(str(tiny_vit))
    monkeypatch.undo()
    bb = attention.eager_backbone(str(tiny_vit))
    assert (shape.patch_size, shape.num_layers, shape.num_prefix) == (bb.patch_size, bb.num_layers, bb.num_prefix)
    assert attention.attention_bytes(shape, 256, 192) == attention.attention_bytes(bb, 256, 192)
    fused = attention.attention_shape("builtin:dino-tiny*0.2+sift:8*0.8")
    assert fused is not None and fused.patch_size == 8
