"""Collections that survive their users (issue 23): bulk captions with hostile file names, resumed from another
spelling of the folder or with other settings."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HOSTILE_NAMES = [b"caf\xe9.png", b"new\nline.png", b"tab\there.png", b"-dash.png", b'quo"te,comma.png',
                 "sp ace \u00e9\u4e2d.png".encode(), b"back\\slash.png", b"cr\rx.png"]


def _folder(src_dir: Path, root: Path, names=HOSTILE_NAMES, plain: int = 3) -> Path:
    root.mkdir(parents=True)
    srcs = sorted((src_dir / "images").glob("test_*.png"))
    for i in range(plain):
        shutil.copy(srcs[i], root / f"plain{i}.png")
    for i, name in enumerate(names):
        shutil.copy(srcs[(plain + i) % len(srcs)], root / os.fsdecode(name))
    return root


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                    HealthCheck.function_scoped_fixture])
@given(name=st.binary(min_size=1, max_size=24).filter(lambda b: b"/" not in b and b"\0" not in b
                                                      and b not in (b".", b"..")))
def test_every_file_name_is_either_recorded_exactly_or_skipped_by_name(tmp_path, name):
    """Any bytes a file name can hold: the JSONL and CSV record files give back the exact path on resume, or the
    file is refused up front with a reason and a one-line printable name."""
    from vlens.caption.bulk import collect, record_file
    from vlens.images import name_problem, shown_name

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / (os.fsdecode(name) + ".png")
    path.write_bytes(b"x")
    files, refused = collect([folder])
    shown = shown_name(path)
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in shown)
    shown.encode("utf-8")
    if name_problem(path):
        assert files == [] and refused == [(shown, name_problem(path))]
        return
    assert files == [str(path)] and refused == []
    for suffix in (".jsonl", ".csv"):
        rf = record_file(folder / f"out{suffix}")
        rf.open_for_append()
        rf.append([{"path": files[0], "captions": [{"text": "a", "logprob": -1.0, "mean_logprob": -0.5}]}])
        assert record_file(folder / f"out{suffix}").open_for_append() == {files[0]}


@pytest.fixture(scope="module")
def hostile(shapes_dir, tmp_path_factory):
    return _folder(shapes_dir, tmp_path_factory.mktemp("hostile") / "photos")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_bulk_captions_skip_and_list_hostile_names_and_finish(cli, hostile, tiny_blip, tmp_path, suffix):
    out = tmp_path / f"caps{suffix}"
    code, stdout, err = cli("caption", hostile, "--out", out, "--model", tiny_blip, "--workers", "0", "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    skipped = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert set(skipped) == {str(hostile / "caf\\xe9.png"), str(hostile / "new\\nline.png"),
                            str(hostile / "tab\\there.png"), str(hostile / "cr\\rx.png")}
    assert rep["captioned"] == 7 and rep["images"] == 11
    assert "a bug in vlens" not in err
    code, text, err = cli("caption", hostile, "--out", out, "--model", tiny_blip, "--workers", "0")
    assert code == 0 and "captioned 0 image(s)" in text and "7 were already there" in text
    assert "skipped 4 unreadable image(s):" in err and "caf\\xe9.png" in err
    assert all(line.startswith(("skipped", "  ")) for line in err.splitlines())  # one line per file


def test_resume_keys_on_the_resolved_file_not_its_spelling(cli, hostile, tiny_blip, tmp_path, monkeypatch):
    out = tmp_path / "caps.jsonl"
    args = ("--out", out, "--model", tiny_blip, "--workers", "0")
    assert cli("caption", hostile, *args)[0] == 0
    n = len(out.read_text().splitlines())
    assert n == 7
    monkeypatch.chdir(hostile.parent)
    assert cli("caption", "photos", *args)[0] == 0
    assert cli("caption", "./photos/", "photos/plain0.png", *args)[0] == 0
    monkeypatch.chdir(hostile)
    code, text, _ = cli("caption", ".", "../photos/plain1.png", *args)
    assert code == 0 and "captioned 0 image(s)" in text
    lines = out.read_text().splitlines()
    assert len(lines) == n and all(Path(json.loads(x)["path"]).is_absolute() for x in lines)


def test_a_file_named_twice_in_one_run_is_captioned_once(cli, hostile, tiny_blip, tmp_path):
    out = tmp_path / "caps.jsonl"
    code, _, err = cli("caption", hostile / "plain0.png", hostile, hostile / "plain0.png", "--out", out,
                       "--model", tiny_blip, "--workers", "0")
    assert code == 0, err
    paths = [json.loads(x)["path"] for x in out.read_text().splitlines()]
    assert len(paths) == len(set(paths)) == 7


def test_resume_with_other_settings_is_refused_in_one_line(cli, hostile, tiny_blip, tmp_path):
    out = tmp_path / "caps.jsonl"
    base = ("caption", hostile / "plain0.png", "--out", out, "--workers", "0")
    assert cli(*base, "--model", tiny_blip)[0] == 0
    before = out.read_bytes()
    side = json.loads(Path(str(out) + ".settings.json").read_text())
    assert side["model"] == str(Path(tiny_blip).resolve()) and side["strategy"] == "greedy" and "top_k" not in side
    for extra in (("--strategy", "sample", "--temperature", "0.7"), ("--n", "1", "--prompt", "a"),
                  ("--max-new-tokens", "5"), ("--model", "builtin:blip-tiny")):
        argv = [*base, *extra] if "--model" in extra else [*base, "--model", tiny_blip, *extra]
        code, _, err = cli(*argv)
        assert code == 1 and err.count("\n") == 1 and "choose another --out" in err, (extra, err)
    assert out.read_bytes() == before
    # What does not change a caption is not a mismatch: the batch size, workers, --top-k under greedy.
    code, _, err = cli(*base, "--model", tiny_blip, "--batch-size", "3", "--top-k", "7")
    assert code == 0, err
    assert side["dtype"] == "float32"  # bf16 makes other captions: recorded too


def test_resume_onto_captions_of_unknown_settings_is_refused(cli, hostile, tiny_blip, tmp_path):
    """Issue 29 item 9: the settings record damaged, then deleted as the message advised: the rerun must not
    append greedy captions to a sampled file (it did, with a note); nothing is written."""
    out = tmp_path / "caps.jsonl"
    side = Path(str(out) + ".settings.json")
    base = ("caption", hostile / "plain0.png", "--out", out, "--workers", "0", "--model", tiny_blip)
    assert cli(*base, "--strategy", "sample", "--seed", "1")[0] == 0
    before = out.read_bytes()
    side.write_text("{not json")
    code, _, err = cli(*base, hostile / "plain1.png")
    assert code == 1 and err.count("\n") == 1 and "damaged" in err and "choose another --out" in err, err
    side.unlink()
    code, _, err = cli(*base, hostile / "plain1.png")
    assert code == 1 and err.count("\n") == 1 and "no record of the settings" in err, err
    assert f"delete {out}" in err and out.read_bytes() == before and not side.exists()


def test_a_lost_peer_under_torchrun_is_one_line_not_a_bug(cli, hostile, tmp_path, monkeypatch):
    """Issue 23 item 16: when rank 0 dies, the surviving rank's collective fails inside gloo/NCCL; it says so in
    one line instead of 'a bug in vlens'. (Outside a multi-process run the same error stays a bug report.)"""
    import vlens.cli.caption as cap

    def gather_fails(*a, **k):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:29500")

    monkeypatch.setattr(cap, "_caption_to_file", gather_fails)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = cli("caption", hostile, "--out", tmp_path / "c.jsonl", "--model", "builtin:blip-tiny")
    assert code == 1 and err.count("\n") == 1 and "a bug in vlens" not in err
    assert "another process of this 2-process run stopped" in err and "process 1" in err
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, _, err = cli("caption", hostile, "--out", tmp_path / "c.jsonl", "--model", "builtin:blip-tiny")
    assert code == 2 and "a bug in vlens" in err


def test_faiss_training_warnings_are_one_note_not_raw_repeats(tmp_path, tiny_clip, clip_encoder, capfd):
    """Issue 23 item 16: FAISS's k-means warning on a small collection was printed raw three times."""
    import shutil as sh

    from vlens.retrieval.index import IndexConfig, build_index

    root = tmp_path / "photos"
    root.mkdir()
    from PIL import Image

    for i in range(40):
        Image.new("RGB", (32, 32), (i * 6, 255 - i * 6, (i * 37) % 255)).save(root / f"{i:02d}.png")
    logs: list[str] = []
    build_index(root, tmp_path / "idx", IndexConfig(model=str(tiny_clip), kind="ivf", nlist=16),
                embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False, log=logs.append)
    captured = capfd.readouterr()
    assert "please provide at least" not in captured.err  # nothing raw from FAISS's C++ code
    notes = [m for m in logs if "FAISS trained 16 clusters on only" in m]
    assert len(notes) == 1, logs
    sh.rmtree(tmp_path / "idx")
