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
    assert kinds.count("table") == 5 and kinds.count("figure") == 6
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
    rf = s.metrics["refine_fuse"]  # nearest vs refined, the fusion vs its parts
    from vlens.match.features import fused_parts
    from vlens.models.defaults import MATCH_FALLBACK

    (_, w_model), (_, w_sift) = fused_parts(MATCH_FALLBACK)  # the offline default's weights
    fused = f"{tiny_vit.name}*{w_model:g}+sift:8*{w_sift:g}"
    assert {f"aloe {fused}", f"aloe {fused} + quadratic", "aloe sift:8 + quadratic", f"aloe {fused} + quadratic + bin",
            f"graffiti {tiny_vit.name}"} <= set(rf)
    cost = [b[1] for b in s.blocks if b[0] == "text" and "PCA to 10 components costs" in b[1]]
    assert any(all(f"{n} " in t for n in ("large", "small", "photometric", "geometric")) for t in cost)


def test_match_section_without_opencv_samples_says_what_it_skipped(tmp_path, tiny_vit, monkeypatch):
    """A fresh machine without the OpenCV samples: the section still renders its other parts and says, in one
    paragraph, what it skipped and the command that fetches the images; it never reaches the pair benchmark."""
    import vlens.data.opencv_samples
    import vlens.models
    import vlens.report.sections.match as match_section
    from vlens.report.section import LabContext

    monkeypatch.setitem(vlens.models.DEFAULTS, "backbone", str(tiny_vit))
    monkeypatch.setattr(vlens.data.opencv_samples, "is_available", lambda: False)

    def must_not_run(*a, **k):
        raise AssertionError("the real-pair / crop parts ran without the samples")

    monkeypatch.setattr(match_section, "_real_pairs", must_not_run)
    monkeypatch.setattr(match_section, "_crop_benchmark", must_not_run)
    s = match_section.section(LabContext(out=tmp_path, quick=True))
    texts = [b[1] for b in s.blocks if b[0] == "text"]
    skipped = [t for t in texts if t.startswith("**Skipped")]
    assert len(skipped) == 1 and "vlens data fetch opencv-samples" in skipped[0]
    assert s.metrics["crops"] == {} and s.metrics["pairs"] == {}
    assert any(b[0] == "table" for b in s.blocks)  # label transfer still reported
    assert not (tmp_path / "runs" / "match-pairs").exists()
