"""The lab report's correspondence section, end to end with a tiny model and two photos."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_match_section(tmp_path, tiny_vit, monkeypatch, opencv_samples):
    import vlens.data.opencv_samples
    import vlens.models
    from vlens.report.section import LabContext
    from vlens.report.sections.match import section

    monkeypatch.setitem(vlens.models.DEFAULTS, "backbone", str(tiny_vit))
    monkeypatch.setattr(vlens.data.opencv_samples, "HELDOUT_PHOTOS", ("fruits.jpg", "home.jpg"))
    s = section(LabContext(out=tmp_path, quick=True))
    kinds = [b[0] for b in s.blocks]
    assert kinds.count("table") == 4 and kinds.count("figure") == 6
    for block in s.blocks:
        if block[0] == "figure":
            assert block[1].exists() and block[1].stat().st_size > 1000
    crops = s.metrics["crops"]
    assert set(crops) == {tiny_vit.name, "sift:8", "pixels:8", f"random {tiny_vit.name}"}
    assert crops["pixels:8"]["cycle"]["mean"] == crops["pixels:8"]["feature"]["mean"]  # same matches, two rankings
    assert set(s.metrics["segment"]) == {tiny_vit.name, "sift:8", "pixels:8", f"random {tiny_vit.name}", "majority"}
    assert (tmp_path / "runs" / "match-crops" / "results.json").exists()
    assert (tmp_path / "runs" / "match-pairs" / "table.md").exists()
    pairs = s.metrics["pairs"]
    assert {"graffiti sift:8", "aloe sift:8", f"graffiti {tiny_vit.name}"} <= set(pairs)
    assert pairs["aloe sift:8"]["pck@10"] > pairs["aloe pixels:8"]["pck@10"]  # the classical anchor earns its place
    assert any("graffiti" in b[1].name for b in s.blocks if b[0] == "figure")
