"""`vlens index build|update|info` and `vlens search` end to end, and the lab report's search section."""

from __future__ import annotations

import json

import pytest
from PIL import Image


@pytest.fixture
def photos(tmp_path, shapes_folder):
    root = shapes_folder(tmp_path / "photos")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_build_info_search_update(cli, photos, tmp_path, tiny_clip):
    out = tmp_path / "idx"
    code, stdout, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["total"] == rep["added"] == 12 and rep["skipped"][0]["path"] == "bad.png"
    assert rep["images_per_s"] > 0

    code, stdout, _ = cli("index", "info", out)
    assert code == 0 and "images    12" in stdout and "recall@10 1.000 (exact search)" in stdout
    assert "bad.png" in stdout
    info = json.loads(cli("index", "info", out, "--json")[1])
    assert info["count"] == 12 and info["kind"] == "flat" and info["skipped"][0]["path"] == "bad.png"

    code, stdout, _ = cli("search", out, "a blue square", "-k", "3", "--json", "--out", tmp_path / "sheet.png")
    assert code == 0
    res = json.loads(stdout)
    scores = [h["score"] for h in res["hits"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert Image.open(tmp_path / "sheet.png").format == "PNG"
    code, stdout, _ = cli("search", out, "a blue square", "-k", "3")
    lines = stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].split()[2] == res["hits"][0]["path"]

    code, stdout, _ = cli("search", out, "--image", photos / "test_00007.png", "-k", "1")
    assert code == 0 and "test_00007.png" in stdout and "+1.0000" in stdout

    (photos / "test_00000.png").unlink()
    code, stdout, _ = cli("index", "update", out)
    assert code == 0 and "1 removed" in stdout and "11 images indexed" in stdout


def test_ann_build_reports_recall(cli, shapes_dir, tmp_path, tiny_clip):
    out = tmp_path / "ivf"
    code, _, err = cli("index", "build", shapes_dir / "images", "--out", out, "--model", tiny_clip, "--kind", "ivf")
    assert code == 0, err
    code, stdout, _ = cli("index", "info", out)
    assert "kind      ivf (nlist" in stdout and "recall@10" in stdout and "against exact search" in stdout


def test_cli_errors_are_one_line(cli, photos, tmp_path, tiny_clip):
    code, _, err = cli("search", tmp_path / "none", "x")
    assert code == 1 and err.startswith("error: no index at") and "vlens index build" in err
    out = tmp_path / "idx"
    assert cli("index", "build", photos, "--out", out, "--model", tiny_clip)[0] == 0
    code, _, err = cli("search", out)
    assert code == 1 and "give a QUERY" in err and "--image FILE" in err
    code, _, err = cli("search", out, "--image", photos / "bad.png")
    assert code == 1 and "cannot load image" in err
    code, _, err = cli("index", "build", photos, "--out", out, "--model", "builtin:clip-tiny")
    assert code == 1 and "--force" in err  # another model: the vectors cannot be reused
    code, _, err = cli("index", "build", photos, "--out", tmp_path / "x", "--model", "builtin:nope")
    assert code == 1 and "builtin:nope" in err and "Traceback" not in err
    code, _, err = cli("index", "update", out, "--root", tmp_path / "gone")
    assert code == 1 and "not a folder" in err
    code, _, err = cli("search", out, "x", "-k", "0")
    assert code == 1 and "--top: 0 is out of range" in err


def test_help_teaches(cli):
    code, out, _ = cli("index", "build", "--help")
    assert code == 0 and "recall@10" in out and "--kind" in out and "resumes" in out
    code, out, _ = cli("search", "--help")
    assert code == 0 and "cosine similarity" in out and "--image" in out
    code, out, _ = cli("serve", "--help")
    assert code == 0 and "127.0.0.1" in out and "/docs" in out


def test_lab_section(tmp_path, shapes_dir, tiny_clip, monkeypatch):
    from vlens.report.section import LabContext
    from vlens.report.sections import search

    monkeypatch.setattr(search, "MODEL", str(tiny_clip))  # the lab uses builtin:clip-tiny
    ctx = LabContext(out=tmp_path / "lab", quick=True)
    ctx.cache["shapes-target"] = shapes_dir
    sec = search.section(ctx)
    assert (ctx.figures / "search_queries.png").stat().st_size > 5000
    m = sec.metrics
    assert m["images"] == 12 and 0 <= m["r1"] <= m["r5"] <= 100 and 1 <= m["median_rank"] <= 12
    assert any(b[0] == "table" for b in sec.blocks)
