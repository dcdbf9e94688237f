"""scripts/cycle_vs_feature.py, the analysis behind the dino-tiny card's cycle-score section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cycle_vs_feature.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("cycle_vs_feature", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_texture_is_the_local_grey_std(script):
    a = np.full((32, 32), 100, np.uint8)
    a[:, 16:] = np.indices((32, 16)).sum(0) % 2 * 200  # left half flat, right half a 0/200 checkerboard
    xy = torch.tensor([[8.0, 8.0], [24.0, 24.0], [0.0, 31.0]])
    tex = script.texture(Image.fromarray(a).convert("RGB"), xy, 4)
    assert tex[0] == pytest.approx(0.0, abs=1e-3)
    assert tex[1] == pytest.approx(100.0, rel=1e-3)  # std of an even 0/200 mix over the 8 x 8 window
    assert tex[2] == pytest.approx(0.0, abs=1e-3)  # corners read the replicated border, not garbage


def test_the_script_prints_its_five_tables(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cycle_vs_feature.py", "--model", "pixels:8"])
    script.main()
    out = capsys.readouterr().out
    assert out.count("\n## ") + out.startswith("## ") == 5
    section = out.split("## Per photo")[1].split("\n## ")[0]
    per_photo = [r for r in section.splitlines() if r.startswith("| ") and "photo" not in r]
    assert len(per_photo) == 12 and all(r.rstrip(" |").split("| ")[-1] in ("cycle", "feature", "tie")
                                        for r in per_photo)
    footprint = out.split("against their footprint only")[1]
    assert "| 1.1x footprint |" in footprint and "| whole source |" in footprint
