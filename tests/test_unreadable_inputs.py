"""Unreadable inputs are skipped, counted and listed by file name in the CLI, the index and the web app; a file
name that is not valid UTF-8 is one more skipped file, not the end of the run."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image


@pytest.fixture()
def messy(shapes_dir, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for p in sorted((shapes_dir / "images").glob("test_*.png"))[:4]:
        shutil.copy(p, root / p.name)
    (root / "truncated.png").write_bytes((root / "test_00000.png").read_bytes()[:60])
    (root / "notes.jpg").write_text("not an image")
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not valid UTF-8
    shutil.copy(root / "test_00001.png", root / latin1)
    return root


def test_index_build_skips_and_lists_them_by_name(cli, messy, tmp_path, tiny_clip):
    out = tmp_path / "idx"
    code, stdout, err = cli("index", "build", messy, "--out", out, "--model", tiny_clip, "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    skipped = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert rep["total"] == 4 and set(skipped) == {"truncated.png", "notes.jpg", "caf\\xe9.png"}
    assert "not valid UTF-8" in skipped["caf\\xe9.png"]
    code, text, _ = cli("index", "build", messy, "--out", out, "--model", tiny_clip)
    assert code == 0 and "skipped 3 unreadable file(s):" in text and "caf\\xe9.png" in text
    # The rerun is not stopped either, and the web app lists them too.
    from fastapi.testclient import TestClient

    from vlens.web.app import create_app

    with TestClient(create_app(index=out)) as c:
        ix = c.get("/api/info").json()["index"]
    assert ix["count"] == 4 and ix["skipped"] == 2  # the UTF-8 refusal is reported per run, not stored
    assert {s["path"] for s in ix["skipped_files"]} == {"truncated.png", "notes.jpg"}


def test_caption_run_lists_unreadable_files_by_name(cli, messy, tiny_blip):
    code, out, err = cli("caption", messy, "--model", tiny_blip)
    assert code == 0, err
    assert "skipped 2 unreadable image(s):" in err and "truncated.png" in err and "notes.jpg" in err
    assert "caf\\xe9.png\t" in out  # captioned and shown escaped (one line per image), no crash


def test_feature_errors_name_the_file_not_its_position(tmp_path, tiny_vit):
    from vlens.errors import VlensError
    from vlens.images import load_image
    from vlens.match import extract_features

    Image.new("RGB", (4, 3)).save(tmp_path / "tiny.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "ok.png")
    with pytest.raises(VlensError, match="tiny.png") as exc:
        extract_features([load_image(tmp_path / "ok.png"), load_image(tmp_path / "tiny.png")], str(tiny_vit))
    assert "of 2" not in str(exc.value)
