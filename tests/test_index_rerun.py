"""Failed and interrupted index runs can be rerun without manual cleanup; nothing invalid reaches the manifest."""

from __future__ import annotations

import json
import os

import pytest

from vlens.retrieval.index import IndexConfig, build_index
from vlens.retrieval.index_reader import ImageIndex
from vlens.retrieval.index_store import MANIFEST, is_index


@pytest.fixture()
def photos(shapes_folder, tmp_path):
    return shapes_folder(tmp_path / "photos", n=6)


def test_a_mistyped_model_or_captioner_leaves_nothing_and_the_rerun_works(cli, photos, tmp_path, tiny_clip):
    out = tmp_path / "idx"
    code, _, err = cli("index", "build", photos, "--out", out, "--model", "builtin:nope")
    assert code == 1 and "builtin:nope" in err and err.count("\n") == 1 and not out.exists()
    code, _, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--captioner", "builtin:nope")
    assert code == 1 and "builtin:nope" in err and not out.exists()
    # The folder a run killed right after taking the lock leaves (just the lock file) is resumed, not refused.
    out.mkdir()
    (out / "lock").write_text("pid 1 (vlens index build, since 10:00:00)")
    (out / ".manifest.json.abc123.json").write_text("{half")
    code, out_text, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--json")
    assert code == 0, err
    assert json.loads(out_text)["total"] == 6 and not (out / ".manifest.json.abc123.json").exists()
    # A folder with the user's own files in it is never taken over, --force or not.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        code, _, err = cli("index", "build", photos, "--out", mine, "--model", tiny_clip, *extra)
        assert code == 1 and "not a vlens index (notes.txt)" in err and (mine / "notes.txt").read_text() == "mine"


def test_invalid_settings_never_reach_the_manifest_and_a_poisoned_one_is_explained(cli, photos, tmp_path,
                                                                                   tiny_clip):
    from vlens.errors import ConfigError, IndexError_
    from vlens.retrieval.index import update_index

    out = tmp_path / "idx"
    for bad in ({"nlist": -3}, {"captioner": ""}, {"hnsw_m": 0}, {"batch_size": 0}, {"target_recall": float("nan")}):
        with pytest.raises(ConfigError):
            build_index(photos, out, IndexConfig(model=str(tiny_clip), **bad), progress=False)
        assert not out.exists()
    code, _, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--nlist", "-3")
    assert code == 1 and "--nlist: -3 is out of range" in err and not out.exists()
    # An index written by an older vlens that stored a bad value: update and build explain, --force repairs.
    assert cli("index", "build", photos, "--out", out, "--model", tiny_clip)[0] == 0
    m = json.loads((out / MANIFEST).read_text())
    m["config"]["nlist"] = -3
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="holds an invalid setting .*--force"):
        update_index(out, progress=False)
    code, _, err = cli("index", "update", out)
    assert code == 1 and "invalid setting" in err and err.count("\n") == 1
    code, _, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--force")
    assert code == 0, err
    assert json.loads((out / MANIFEST).read_text())["config"]["nlist"] == 0


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_finishes(cli, photos, tmp_path, tiny_clip, monkeypatch):
    from vlens import faults

    out = tmp_path / "idx"
    faults.reset()
    monkeypatch.setenv("VLENS_FAULT", "index.batch:2:interrupt")  # Ctrl-C after the second committed batch
    code, stdout, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--batch-size", "2")
    monkeypatch.delenv("VLENS_FAULT")
    faults.reset()
    assert code == 130 and stdout == "" and err.startswith("interrupted (Ctrl-C)") and err.count("\n") == 1
    assert is_index(out) and len(ImageIndex(out)) == 4
    code, stdout, err = cli("index", "build", photos, "--out", out, "--model", tiny_clip, "--json")
    assert code == 0 and json.loads(stdout)["added"] == 2 and len(ImageIndex(out)) == 6
    assert not [p for p in os.listdir(out) if p.startswith(".")]
