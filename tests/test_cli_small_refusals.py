"""Issue 29 item 10: small CLI quirks. --figure without --explain, an empty folder indexed, a refused build's
leftovers, an empty item in a sweep list, and one way of naming skipped files in every printed skip list."""

from __future__ import annotations

import json
import shutil

import pytest


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_figure_without_explain_is_refused_in_one_line(cli, shapes_folder, tmp_path):
    folder = shapes_folder(tmp_path / "photos", n=1)
    img = next(folder.iterdir())
    code, out, err = cli("caption", img, "--figure", tmp_path / "f.png", "--model", "builtin:blip-tiny")
    assert code == 1 and "--explain" in _one_error_line(err) and not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("value,fixed", [("10,,50", "10,50"), ("10,50,", "10,50"), (",10", "10")])
def test_an_empty_item_in_a_sweep_list_is_refused(cli, tmp_path, value, fixed):
    code, out, err = cli("caption", "sweep", "--data", tmp_path, "--top-k", value, "--out", tmp_path / "run")
    assert code == 1 and "empty item" in _one_error_line(err) and f"e.g. {fixed} " in err, err
    assert not (tmp_path / "run").exists()


def test_an_empty_folder_is_indexed_with_a_note_and_updates_say_the_same(cli, tmp_path, shapes_folder, tiny_clip):
    (tmp_path / "empty").mkdir()
    code, out, err = cli("index", "build", tmp_path / "empty", "--out", tmp_path / "idx", "--model", tiny_clip)
    assert code == 0 and "no image files under" in err and "0 images" in err, err
    folder = shapes_folder(tmp_path / "photos", n=2)
    assert cli("index", "build", folder, "--out", tmp_path / "idx2", "--model", tiny_clip)[0] == 0
    shutil.rmtree(folder)
    folder.mkdir()
    code, out, err = cli("index", "update", tmp_path / "idx2")
    assert code == 0 and "no image files under" in err and "0 images" in err, err


def test_a_refused_build_leaves_no_folder_behind(cli, tmp_path, shapes_folder, tiny_clip):
    folder = shapes_folder(tmp_path / "photos", n=3)
    out = tmp_path / "idx"
    code, _, err = cli("index", "build", folder, "--out", out, "--model", tiny_clip, "--kind", "IVF4096,Flat")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    out.mkdir()  # the user's own empty folder stays, empty
    assert cli("index", "build", folder, "--out", out, "--model", tiny_clip, "--kind", "IVF4096,Flat")[0] == 1
    assert out.is_dir() and not any(out.iterdir())


def test_skip_lists_name_files_relative_to_the_current_folder(cli, tmp_path, shapes_folder, tiny_clip, tiny_blip,
                                                               monkeypatch):
    """Index, caption (one by one and into a file) and data inspect list a broken file the same way: relative to
    the working folder when under it (absolute outside it); --json keeps each command's own form."""
    folder = shapes_folder(tmp_path / "work" / "photos", n=2)
    (folder / "broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path / "work")
    shown = "photos/broken.png"
    code, _, err = cli("index", "build", "photos", "--out", "idx", "--model", tiny_clip)
    assert code == 0 and f"  {shown}: " in err + _, err
    code, out, _ = cli("index", "info", "idx")
    assert f"  {shown}: " in out
    code, out, _ = cli("index", "info", "idx", "--json")
    assert [s["path"] for s in json.loads(out)["skipped"]] == ["broken.png"]  # relative to the index's root
    for args in (("caption", tmp_path / "work" / "photos"), ("caption", "photos", "--out", "caps.jsonl")):
        code, _, err = cli(*args, "--model", tiny_blip, "--workers", "0")
        assert code == 0 and f"  {shown}: " in err, (args, err)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("caption", tmp_path / "work" / "photos", "--model", tiny_blip, "--workers", "0")
    assert f"  work/{shown}: " in err
    monkeypatch.chdir(tmp_path / "work" / "photos")  # outside the folder: absolute
    other = shapes_folder(tmp_path / "other", n=1)
    (other / "bad.png").write_bytes(b"nope")
    code, _, err = cli("caption", other, "--model", tiny_blip, "--workers", "0")
    assert f"  {other / 'bad.png'}: " in err
