"""Ordinary mistakes and hostile inputs: refused with one line before any work, user data never replaced or
misread, files shared as the umask says."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_writes_and_temp_folders_respect_the_umask(tmp_path, umask):
    from vlens.runs import make_temp_dir, write_json

    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)):
        umask(mask)
        f = write_json(tmp_path / f"m{mask:o}.json", {"a": 1})
        d = make_temp_dir(tmp_path, f"model{mask:o}")
        assert (_mode(f), _mode(d)) == (file_mode, dir_mode), oct(mask)


def test_a_saved_model_folder_respects_the_umask(tmp_path, umask, clip_encoder):
    from vlens.retrieval.train import save_model

    umask(0o022)
    out = save_model(clip_encoder.model, clip_encoder.processor, clip_encoder.tokenizer, tmp_path / "best")
    assert _mode(out) == 0o755 and all(_mode(p) == 0o644 for p in out.iterdir() if p.is_file())


def _images(folder: Path, n: int, colour=(10, 200, 30)) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (40, 30), colour).save(folder / f"img{i}.png")
    return folder


def test_a_folder_named_like_a_builtin_set_is_used_as_that_folder(tmp_path, monkeypatch):
    from vlens.data.image_sets import image_set

    monkeypatch.chdir(tmp_path)
    mine = _images(tmp_path / "shapes_v2", 3)
    assert sorted(p.name for p in image_set("shapes_v2")) == ["img0.png", "img1.png", "img2.png"]
    assert sorted(p.resolve() for p in image_set(str(mine))) == sorted(mine.glob("*.png"))
    _images(tmp_path / "shapes", 2)  # exactly the built-in set's name, but a folder the user has: the folder wins
    assert sorted(p.name for p in image_set("shapes")) == ["img0.png", "img1.png"]


def test_output_mistakes_are_refused_before_any_work(cli, tmp_path, monkeypatch):
    imgs = _images(tmp_path / "imgs", 2)
    a, b = imgs / "img0.png", imgs / "img1.png"
    # --out names an existing folder where a file is written: refused while parsing (no model is loaded).
    code, out, err = cli("match", a, b, "--model", "builtin:does-not-exist", "--out", imgs)
    assert code == 1 and err == f"error: invalid value for --out: {imgs} is a folder; give a file name to write " \
                                "(see 'vlens match --help')\n"
    # A run folder that is an existing file, or that sits under a file.
    code, _, err = cli("bench", "crops", "--out", a)
    assert code == 1 and "is an existing file; give a folder" in err and err.count("\n") == 1
    code, _, err = cli("bench", "crops", "--out", a / "run")
    assert code == 1 and "is a file, not a folder" in err
    # A folder the user cannot write to (root can write anywhere, so the permission answer is simulated).
    ro = tmp_path / "readonly"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro and mode & os.W_OK
                        else real_access(p, mode, **kw))
    code, _, err = cli("index", "build", imgs, "--out", ro / "index", "--model", "builtin:does-not-exist")
    assert code == 1 and f"cannot write {ro / 'index'}: {ro} is not writable" in err
    assert not (ro / "index").exists()


def test_os_errors_during_the_work_are_one_line(cli, tmp_path, monkeypatch):
    import vlens.data.shapes as shapes

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "s" / "images" / "x.png"))

    monkeypatch.setattr(shapes, "make_shapes", full_disk)
    code, _, err = cli("data", "make-shapes", tmp_path / "s", "--train", "1", "--val", "0", "--test", "0")
    assert code == 1 and err == f"error: cannot access {tmp_path / 's' / 'images' / 'x.png'}: No space left on " \
                                "device\n"


def test_inconsistent_ranges_and_sweep_grids_are_one_line(cli, tmp_path, shapes_dir):
    code, _, err = cli("ssl", "train", "--out", tmp_path / "ssl", "--global-scale", "0.5", "0.2", "--preset",
                       "test-vit", "--epochs", "1", "--warmup-epochs", "0")
    assert code == 1 and err == "error: --global-scale MIN MAX needs 0 < MIN <= MAX <= 1 (got 0.5 0.2)\n"
    assert not (tmp_path / "ssl").exists()
    code, _, err = cli("retrieval", "sweep", "--data", shapes_dir, "--out", tmp_path / "sw", "--lr", "1e-3,nan")
    assert code == 1 and err.startswith("error: invalid value for --lr: 'nan' is not one of the numbers expected")
    code, _, err = cli("caption", "sweep", "--data", shapes_dir, "--top-k", "10,1e30")
    assert code == 1 and "--top-k: 1e30 is out of range" in err and not (tmp_path / "sw").exists()


def test_empty_paths_are_refused_as_empty_not_taken_for_the_current_folder(cli, tmp_path, monkeypatch):
    """Issue 23 item 18: typer turns '' into Path('.'); the check layer sees the raw command line."""
    monkeypatch.chdir(tmp_path)
    imgs = _images(tmp_path / "imgs", 2)
    for argv, name in ((("match", imgs / "img0.png", imgs / "img1.png", "--out", ""), "--out"),
                       (("match", imgs / "img0.png", imgs / "img1.png", "--out="), "--out"),
                       (("caption", "", "--model", "builtin:blip-tiny"), "PATHS"),
                       (("index", "build", imgs, "--out", ""), "--out"),
                       (("data", "make-shapes", ""), "OUT")):
        code, out, err = cli(*argv)
        assert code == 1 and err.startswith(f"error: invalid value for {name}: an empty path is not allowed"), \
            (argv, err)
        assert err.count("\n") == 1 and not out
    # An empty text value stays allowed where it means something.
    code, _, err = cli("caption", imgs / "img0.png", "--prompt", "", "--model", "builtin:blip-tiny")
    assert code == 0, err


def test_make_shapes_force_with_fewer_images_leaves_no_orphans(cli, tmp_path):
    """Issue 23 item 10."""
    out = tmp_path / "s"
    assert cli("data", "make-shapes", out, "--train", "6", "--val", "2", "--test", "2", "--size", "32")[0] == 0
    (out / "images" / "mine.png").write_bytes(b"the user's own file")
    assert cli("data", "make-shapes", out, "--train", "2", "--val", "0", "--test", "1", "--size", "32",
               "--force")[0] == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["mine.png", "test_00000.png", "train_00000.png",
                                                                  "train_00001.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["test_00000.png", "train_00000.png",
                                                                 "train_00001.png"]


def test_a_bogus_deb_is_named_for_what_it_is_and_deb_is_never_ignored(cli, tmp_path, monkeypatch):
    """Issue 23 item 18: a 100 KB file that is not a package, and --deb while the cache already exists."""
    import os as _os

    cache = tmp_path / "cache"
    monkeypatch.setenv("VLENS_CACHE", str(cache))
    bogus = tmp_path / "opencv-doc_1.0_all.deb"
    bogus.write_bytes(_os.urandom(100_000))
    code, _, err = cli("data", "fetch", "opencv-samples", "--deb", bogus)
    assert code == 1 and "is not a Debian package" in err and "100,000-byte" in err and "empty" not in err
    bogus.write_text("<!DOCTYPE html><html>404</html>")
    code, _, err = cli("data", "fetch", "opencv-samples", "--deb", bogus)
    assert code == 1 and "HTML page" in err
    (cache / "opencv-samples").mkdir(parents=True)
    (cache / "opencv-samples" / "SOURCE.txt").write_text("x\n")  # already cached: --deb is still unpacked
    code, out, err = cli("data", "fetch", "opencv-samples", "--deb", bogus)
    assert code == 1 and "HTML page" in err and "already cached" not in out


def test_an_output_path_that_is_not_utf8_is_refused_before_any_work(cli, tmp_path):
    """Issue 23: FAISS and SQLite could not open such a path, so an index build failed after embedding."""
    imgs = _images(tmp_path / "imgs", 2)
    code, out, err = cli("index", "build", imgs, "--out", tmp_path / os.fsdecode(b"idx\xe9"), "--model",
                         "builtin:does-not-exist")
    assert code == 1 and err.count("\n") == 1 and "idx\\xe9: the path is not valid UTF-8" in err


def test_a_settings_file_with_wrong_types_is_one_line(cli, tmp_path):
    cfg = tmp_path / "config.json"
    for text, expect in (('{"epochs": "many"}', "'epochs'"), ('{"crops": {"global_scale": [0.2]}}', "global_scale"),
                         ("{broken", "cannot read the settings file"), ('[1, 2]', "JSON object")):
        cfg.write_text(text)
        code, _, err = cli("ssl", "train", "--out", tmp_path / "run", "--config", cfg)
        assert code == 1 and err.count("\n") == 1 and expect in err and "a bug" not in err, (text, err)
