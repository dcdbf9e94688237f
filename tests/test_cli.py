"""The CLI: help, version, the data verbs, the one-line error path, and lazy imports."""

import json
import subprocess
import sys
import time

from vlens import __version__


def test_help_and_version(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "lab" in out and "data" in out
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"vlens {__version__}"


def test_cli_imports_stay_light():
    code = ("import sys, time; t=time.time(); import vlens.cli.main; "
            "print(int('torch' in sys.modules), int('transformers' in sys.modules), time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["0", "0"], "vlens --help must not import torch or transformers"


def test_help_is_fast():
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "vlens.cli.main", "--help"], capture_output=True, check=True)
    assert time.time() - t0 < 3  # ~0.2 s here; generous for a loaded CI machine (benchmarks measure it)


def test_data_inspect_text_and_json(cli, shapes_dir):
    code, out, _ = cli("data", "inspect", shapes_dir)
    assert code == 0 and "format      karpathy" in out and "train 40" in out and "unreadable  0" in out
    code, out, _ = cli("data", "inspect", shapes_dir, "--json")
    st = json.loads(out)
    assert st["images"] == 60 and st["captions"] == 300 and st["splits"]["test"] == 12


def test_make_shapes_cli(cli, tmp_path):
    code, out, _ = cli("data", "make-shapes", tmp_path / "s", "--train", "3", "--val", "1", "--test", "1",
                       "--size", "32", "--style", "pretrain")
    assert code == 0 and "wrote 5 images" in out
    assert json.loads((tmp_path / "s" / "dataset.json").read_text())["style"] == "pretrain"
    code, _, err = cli("data", "make-shapes", tmp_path / "t", "--style", "cartoon")
    assert code == 1 and err.startswith("error: invalid value for --style: 'cartoon' is not one of target, pretrain")
    # An existing dataset is never replaced silently: refused (saying --force), then replaced with --force.
    before = (tmp_path / "s" / "dataset.json").read_bytes()
    code, _, err = cli("data", "make-shapes", tmp_path / "s", "--train", "2", "--val", "0", "--test", "0",
                       "--size", "32")
    assert code == 1 and "already holds a dataset" in err and "--force" in err and err.count("\n") == 1
    assert (tmp_path / "s" / "dataset.json").read_bytes() == before
    code, out, _ = cli("data", "make-shapes", tmp_path / "s", "--train", "2", "--val", "0", "--test", "0", "--size",
                       "32", "--force")
    assert code == 0 and len(json.loads((tmp_path / "s" / "dataset.json").read_text())["images"]) == 2
    code, out, _ = cli("data", "make-shapes", tmp_path / "j", "--train", "2", "--val", "0", "--test", "1", "--size",
                       "32", "--json")
    got = json.loads(out)
    assert code == 0 and (got["images"], got["test"], got["dataset"]) == (3, 1, str(tmp_path / "j" / "dataset.json"))


def test_segment_parts_json(cli, tmp_path, shapes_dir):
    imgs = sorted((shapes_dir / "images").glob("test_*.png"))[:2]
    code, out, err = cli("segment", "parts", *imgs, "--k", "3", "--model", "pixels:8", "--size", "64",
                         "--out", tmp_path / "p.png", "--json")
    got = json.loads(out)
    assert code == 0, err
    assert got["picture"] == str(tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 1000
    assert [sum(im["part_sizes"]) for im in got["images"]] == [8 * 8, 8 * 8]  # every patch is in one part


def test_error_path_is_one_line_without_traceback(cli, tmp_path):
    code, out, err = cli("data", "inspect", tmp_path / "missing")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_debug_flag_shows_traceback(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    r = subprocess.run([sys.executable, "-m", "vlens.cli.main", "--debug", "data", "inspect", str(tmp_path / "x.json")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "DatasetError" in r.stderr


def test_usage_errors_are_one_line_not_a_bug_report(cli):
    code, _, err = cli("data", "nonsense")
    assert code == 2 and err == "error: no such command 'nonsense' (see 'vlens data --help')\n"
    code, _, err = cli("data", "inspect", "--bogus", "x")
    assert code == 2 and err.startswith("error: no such option: --bogus") and err.count("\n") == 1 and "bug" not in err


def test_models_list_shows_embedded_and_cached(cli, tmp_path, tiny_vit, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    commit = "0" * 40
    shutil.copytree(tiny_vit, cache / "models--acme--vit" / "snapshots" / commit)
    (cache / "models--acme--vit" / "refs").mkdir()
    (cache / "models--acme--vit" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, out, _ = cli("models", "list", "--json")
    rows = json.loads(out)["cached"]
    assert code == 0 and {"id": "acme/vit", "kind": "backbone", "complete": True}.items() <= next(
        r for r in rows if r["id"] == "acme/vit").items()


def test_caption_train_json(cli, tmp_path, shapes_dir):
    code, out, err = cli("caption", "train", "--data", shapes_dir, "--out", tmp_path / "run", "--preset",
                         "test-blip", "--epochs", "1", "--max-train", "4", "--val-limit", "2", "--image-size", "32",
                         "--batch-size", "4", "--json")
    got = json.loads(out)  # stdout is the metrics alone; progress went to stderr
    assert code == 0, err
    assert got["best_epoch"] == 1 and "val_BLEU-4" in got and (tmp_path / "run" / "best").is_dir()
