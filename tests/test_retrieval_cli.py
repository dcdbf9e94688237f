"""`vlens retrieval train|eval|sweep` end to end on the tiny test model, and their error messages."""

from __future__ import annotations

import json
import shutil

import pytest

TINY = ["--preset", "test-clip", "--image-size", "32", "--batch-size", "16", "--warmup", "2"]


def test_help_teaches(cli):
    code, out, _ = cli("retrieval", "train", "--help")
    assert code == 0
    for flag in ("--scratch", "--finetune", "--learn-temperature", "--grad-accum", "--freeze", "--resume"):
        assert flag in out
    code, out, _ = cli("retrieval", "eval", "--help")
    assert code == 0 and "ANY of" in out and "Ties count against" in " ".join(out.split())


@pytest.mark.slow
def test_train_then_eval_end_to_end(cli, shapes_dir, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("retrieval", "train", "--data", shapes_dir, "--out", run, "--scratch", *TINY,
                         "--epochs", "2", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["finished"] and m["epochs_done"] == 2 and m["train_images"] == 40
    assert (run / "best" / "model.safetensors").is_file() and (run / "checkpoint.pt").is_file()
    assert "epoch 2/2" in err

    code, out, err = cli("retrieval", "eval", "--data", shapes_dir, "--model", run / "best", "--split", "test",
                         "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 12 and r["captions"] == 60 and 0 <= r["score"] <= 100
    assert r["score"] == pytest.approx((r["i2t_r1"] + r["i2t_r5"] + r["i2t_r10"] + r["t2i_r1"] + r["t2i_r5"]
                                        + r["t2i_r10"]) / 6)
    assert (tmp_path / "ev" / "recall.md").read_text().startswith("| images")
    code, out, _ = cli("retrieval", "eval", "--data", shapes_dir, "--model", run / "best")
    assert code == 0 and "| i2t R@1 |" in out

    # the same --out again without --resume is refused with advice
    code, _, err = cli("retrieval", "train", "--data", shapes_dir, "--out", run, "--scratch", *TINY)
    assert code == 1 and "--resume" in err


def test_eval_one_caption_per_image(cli, shapes_dir, tiny_clip, tmp_path):
    data = tmp_path / "one"
    shutil.copytree(shapes_dir, data)
    meta = json.loads((data / "dataset.json").read_text())
    for im in meta["images"]:
        im["sentences"] = im["sentences"][:1]
    (data / "dataset.json").write_text(json.dumps(meta))
    code, out, err = cli("retrieval", "eval", "--data", data, "--model", tiny_clip, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == r["captions"] == 12 and r["captions_per_image"] == 1


def test_eval_reports_bad_data(cli, shapes_dir, tiny_clip, tmp_path):
    data = tmp_path / "bad"
    shutil.copytree(shapes_dir, data)
    meta = json.loads((data / "dataset.json").read_text())
    test = [im for im in meta["images"] if im["split"] == "test"]
    test[0]["sentences"][0]["raw"] = " ".join(["a big red circle"] * 30)
    test[1]["sentences"][2]["raw"] = ""
    (data / "images" / test[2]["filename"]).write_bytes(b"")
    (data / "dataset.json").write_text(json.dumps(meta))
    code, out, err = cli("retrieval", "eval", "--data", data, "--model", tiny_clip, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 11 and r["captions"] == 60 - 1 - 5  # one empty caption, one image with its 5
    assert r["truncated_captions"] == 1 and r["empty_captions"] == 1 and len(r["skipped_images"]) == 1
    code, out, err = cli("retrieval", "eval", "--data", data, "--model", tiny_clip)
    assert "truncated" in err and "unreadable" in err and "empty" in err


def test_errors_are_one_clear_line(cli, shapes_dir, tiny_blip, tmp_path):
    code, _, err = cli("retrieval", "train", "--data", shapes_dir, "--out", tmp_path / "a", "--finetune",
                       tiny_blip, *TINY)
    assert code == 1 and err.startswith("error: --finetune:") and "CLIP-style dual encoder" in err
    code, _, err = cli("retrieval", "train", "--data", shapes_dir, "--out", tmp_path / "b", "--scratch",
                       "--finetune", "builtin:clip-tiny")
    assert code == 1 and "either --scratch or --finetune" in err
    code, _, err = cli("retrieval", "eval", "--data", shapes_dir, "--model", tiny_blip)
    assert code == 1 and "dual encoder" in err
    code, _, err = cli("retrieval", "eval", "--data", shapes_dir, "--split", "dev", "--model", "builtin:clip-tiny")
    assert code == 1 and "no 'dev' split" in err
    code, _, err = cli("retrieval", "sweep", "--data", shapes_dir, "--out", tmp_path / "s", "--lr", "fast")
    assert code == 1 and "comma-separated numbers" in err


@pytest.mark.slow
def test_sweep_writes_rows_table_plot_and_resumes(cli, shapes_dir, tmp_path):
    args = ["retrieval", "sweep", "--data", shapes_dir, "--out", tmp_path / "sw", "--init", "scratch",
            "--lr", "1e-3,3e-3", "--epochs", "1", "--seeds", "0", "--preset", "test-clip", "--image-size", "32",
            "--batch-size", "16", "--warmup", "1", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    res = json.loads(out)
    assert len(res["rows"]) == 2 and {r["lr"] for r in res["rows"]} == {1e-3, 3e-3}
    assert "| init | lr |" in res["table"] and (tmp_path / "sw" / "sweep.png").is_file()
    assert (tmp_path / "sw" / "results.csv").read_text().count("\n") == 3
    code, out, err = cli(*args)  # everything done: nothing reruns
    assert code == 0 and "resuming sweep: 2 run(s)" in err
