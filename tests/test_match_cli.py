"""`vlens match`, `vlens bench crops`, `vlens segment`, `vlens bench segment` end to end with tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("match-images")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(base).save(d / "a.png")
    Image.fromarray(base[8:40, 16:64]).convert("L").save(d / "b.png")  # a grayscale crop of a
    return d


def test_match_cli_writes_picture_and_json(cli, tiny_vit, two_images, tmp_path):
    out = tmp_path / "m.png"
    code, stdout, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit,
                            "--score", "feature", "--pca", "4", "--top", "5", "--size", "64", "--out", out)
    assert code == 0, err
    assert "matched into b.png" in stdout and out.exists()
    out.unlink()
    code, stdout, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit,
                            "--score", "feature", "--pca", "4", "--top", "5", "--size", "64", "--out", out,
                            "--json")
    assert code == 0, err
    info = json.loads(stdout)  # --json: the matches on stdout and nothing else; the picture still goes to --out
    assert out.exists()
    assert info["score"] == "feature" and len(info["matches"]) == 5 and info["grid_a"] == [5, 8]
    dists = [r["feature_distance"] for r in info["matches"]]
    assert dists == sorted(dists)
    assert {"src_xy", "dst_xy", "feature_score", "cycle_score", "mutual"} <= set(info["matches"][0])
    assert Image.open(out).size[1] == 48 * 8  # drawn at the height of the taller image (upscaled to 384)
    assert info["refine"] == "quadratic"  # the default: sub-patch points
    for refine in ("none", "soft"):
        code, stdout, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit, "--top",
                                "0", "--size", "64", "--refine", refine, "--out", out, "--json")
        assert code == 0, err
        rows = json.loads(stdout)["matches"]
        # b.png (48x32) runs at 64x40: patch centres are 6 px apart in x and 6.4 px in y, starting half a step in
        on_centres = all(abs(v / s - 0.5 - round(v / s - 0.5)) < 0.01 for r in rows
                         for v, s in zip(r["dst_xy"], (6.0, 6.4)))
        assert on_centres == (refine == "none"), refine


def test_match_json_is_a_flag_not_a_file_name(cli, tiny_vit, two_images, tmp_path, monkeypatch):
    """--json means one thing in every command: print JSON on stdout. The old `--json FILE` form is refused in
    one line (it used to write FILE, and `--json -` wrote a file named '-'); nothing is written."""
    monkeypatch.chdir(tmp_path)
    for name in ("m.json", "-"):
        code, stdout, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit,
                                "--size", "64", "--out", tmp_path / "m.png", "--json", name)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / name).exists() and not (tmp_path / "m.png").exists()


def test_match_cli_bad_input(cli, tiny_vit, two_images, tmp_path):
    code, _, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit, "--score", "x")
    assert code == 1 and "invalid value for --score: 'x' is not one of cycle, feature" in err
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    code, _, err = cli("match", tiny, two_images / "b.png", "--model", tiny_vit)
    assert code == 1 and "tiny.png: 4x4 pixels is smaller than one 8 px patch" in err
    code, _, err = cli("match", tmp_path / "missing.png", two_images / "b.png", "--model", tiny_vit)
    assert code == 1 and "no such file" in err


@pytest.mark.slow
def test_bench_crops_cli(cli, tiny_vit, two_images, tmp_path):
    code, stdout, err = cli("bench", "crops", "--model", tiny_vit, "--images", two_images, "--crops", "1",
                            "--scenario", "large", "--scenario", "geometric", "--source-side", "64",
                            "--crop-side", "32", "--out", tmp_path / "run", "--json")
    assert code == 0, err
    body = json.loads(stdout)
    assert [r["model"] for r in body["results"]] == [str(tiny_vit), "sift:8", "pixels:8", f"random:{tiny_vit}"]
    assert [s["scenario"] for s in body["results"][0]["scenarios"]] == ["large", "geometric"]
    for name in ("config.json", "metrics.json", "results.json", "table.md", "table.csv", "curves.png",
                 "best_worst.png"):
        assert (tmp_path / "run" / name).exists(), name
    code, _, err = cli("bench", "crops", "--model", tiny_vit, "--images", two_images, "--scenario", "huge",
                       "--out", tmp_path / "bad")
    assert code == 1 and "invalid value for --scenario: 'huge' is not one of" in err


def test_default_model_is_dino_tiny_or_a_clear_error(cli, two_images, tmp_path):
    from vlens.models.hub import builtin_names

    code, out, err = cli("match", two_images / "a.png", two_images / "b.png", "--size", "64", "--out",
                         tmp_path / "m.png")
    if "dino-tiny" in builtin_names():
        assert code == 0 and "matched into" in out, err
    else:
        assert code == 1 and "no embedded model 'builtin:dino-tiny'" in err
