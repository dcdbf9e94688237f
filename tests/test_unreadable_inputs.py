"""Unreadable inputs are skipped, counted and listed by file name in the CLI, the index and the web app; a file
name that is not valid UTF-8 is one more skipped file, not the end of the run."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image


@pytest.fixture()
def messy(shapes_folder, tmp_path):
    root = shapes_folder(tmp_path / "photos", n=4)
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
    assert code == 0 and "skipped: 3 unreadable:" in text and "caf\\xe9.png" in text
    # The rerun is not stopped either, and the web app lists them too.
    from fastapi.testclient import TestClient

    from vlens.web.app import create_app

    with TestClient(create_app(index=out)) as c:
        ix = c.get("/api/info").json()["index"]
    # The same three index info lists: two stored, the UTF-8 refusal found again by the folder scan.
    assert ix["count"] == 4 and ix["skipped"] == 3
    assert {s["path"] for s in ix["skipped_files"]} == {"truncated.png", "notes.jpg", "caf\\xe9.png"}


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


# ---------------------------------------------------------------- issue 23 item 6: every command skips and lists


@pytest.fixture()
def photos_with_a_truncated_one(shapes_folder, tmp_path):
    root = shapes_folder(tmp_path / "imgs", "train", n=4)
    data = (root / "train_00000.png").read_bytes()
    (root / "zz_truncated.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    return root


def test_ssl_train_skips_and_lists_a_truncated_image(cli, photos_with_a_truncated_one, tmp_path):
    code, out, err = cli("ssl", "train", "--out", tmp_path / "run", "--images", photos_with_a_truncated_one,
                         "--preset", "test-vit", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2",
                         "--samples-per-epoch", "4", "--global-size", "32", "--local-size", "16", "--n-local", "1",
                         "--out-dim", "16", "--json")
    assert code == 0, err
    assert "skipped 1 unreadable image(s):" in err and "zz_truncated.png" in err


def test_bench_crops_lists_unreadable_files_and_runs_descriptor_models(cli, photos_with_a_truncated_one, tmp_path):
    (photos_with_a_truncated_one / "notes.jpg").write_text("not an image")
    code, out, err = cli("bench", "crops", "--images", photos_with_a_truncated_one, "--model", "pixels:8",
                         "--crops", "1", "--scenario", "large", "--source-side", "64", "--crop-side", "32",
                         "--out", tmp_path / "run", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert {s["path"].rsplit("/", 1)[-1] for s in body["skipped"]} == {"zz_truncated.png", "notes.jpg"}
    assert "skipped 2 unreadable image(s):" in err
    # pixels:8 has no weights: no random twin, and not itself twice
    assert [r["model"] for r in body["results"]] == ["pixels:8", "sift:8"]


def test_bench_keypoints_leaves_out_pairs_with_a_truncated_image(cli, tmp_path, tiny_vit):
    from test_match_keypoints import make_spair

    root = make_spair(tmp_path / "SPair-71k", pairs_per_cat=2, categories=("cat",))
    img = root / "JPEGImages" / "cat" / "cat2.jpg"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    code, out, err = cli("bench", "keypoints", "--data", root, "--model", "pixels:8", "--size", "64",
                         "--out", tmp_path / "run", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert [s["path"].rsplit("/", 1)[-1] for s in body["skipped"]] == ["cat2.jpg"]
    assert all(r["pairs"] == 1 for r in body["results"]) and "cat2.jpg" in err


def test_index_refuses_names_that_break_lines_and_info_lists_every_refusal(cli, messy, tmp_path, tiny_clip):
    """Issue 23 item 15: a newline or tab in a file name made `index search` print one result on two lines; such
    files are refused by name like the non-UTF-8 one, and `index info` lists what build and update list."""
    shutil.copy(messy / "test_00001.png", messy / "new\nline.png")
    shutil.copy(messy / "test_00002.png", messy / "tab\there.png")
    out = tmp_path / "idx"
    code, stdout, err = cli("index", "build", messy, "--out", out, "--model", tiny_clip, "--json")
    assert code == 0, err
    built = {s["path"] for s in json.loads(stdout)["skipped"]}
    assert {"new\\nline.png", "tab\\there.png", "caf\\xe9.png", "truncated.png", "notes.jpg"} == built
    code, stdout, _ = cli("index", "info", out, "--json")
    assert code == 0 and {s["path"] for s in json.loads(stdout)["skipped"]} == built
    code, text, _ = cli("index", "info", out)
    assert code == 0 and "skipped   5 unreadable:" in text
    assert f"  {messy}/new\\nline.png: " in text  # printed from outside the folder: absolute (README)
    code, text, _ = cli("search", out, "a red square", "-k", "10")
    assert code == 0 and len(text.strip().splitlines()) == 4  # 4 indexed images, one line each
