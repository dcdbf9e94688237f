"""The lab report's "What the models see" section, end to end with the embedded models."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_explore_section(tmp_path, shapes_dir):
    from vlens.report.section import LabContext
    from vlens.report.sections.explore import section

    ctx = LabContext(out=tmp_path, quick=True)
    ctx.cache["shapes-target"] = shapes_dir  # the session's small shapes set instead of generating one
    s = section(ctx)
    figures = [b[1] for b in s.blocks if b[0] == "figure"]
    assert [f.name for f in figures] == ["explore_points.png", "explore_attention.png", "explore_decoding.png"]
    assert all(f.stat().st_size > 10_000 for f in figures)
    points, decoding = [b for b in s.blocks if b[0] == "table"]
    verdicts = [row[1] for row in points[2]]
    assert "success" in verdicts and "failure" in verdicts  # one that succeeds, one that fails
    cold, hot = s.metrics["decoding_cold"], s.metrics["decoding_hot"]
    assert cold["mean_effective_choices"] < hot["mean_effective_choices"]
    assert s.metrics["attention"]["heads"] == 4
