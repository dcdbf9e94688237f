"""`vlens caption` end to end on the tiny random BLIP: files and folders, JSON, eval, sweep, train, bad
input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest


@pytest.fixture(scope="module")
def img_dir(shapes_folder, tmp_path_factory):
    d = shapes_folder(tmp_path_factory.mktemp("imgs"), n=3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


def test_files_and_folders_with_unreadable_skipped(cli, tiny_blip, img_dir, shapes_dir):
    single = shapes_dir / "images" / "val_00000.png"
    code, out, err = cli("caption", single, img_dir, "--model", tiny_blip, "--max-new-tokens", "5")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(str(single) + "\t")
    assert "skipped 1 unreadable image" in err and "broken.png" in err
    # a random model never ends within 5 tokens: the captions are cut, and stderr says what to do
    assert "4 caption(s) reached --max-new-tokens 5" in err and "raise --max-new-tokens" in err


def test_json_sampling_n_and_seed(cli, tiny_blip, img_dir):
    args = (
        "caption",
        "--strategy",
        "sample",
        img_dir,
        "--model",
        tiny_blip,
        "--n",
        "3",
        "--seed",
        "4",
        "--top-k",
        "20",
        "--temperature",
        "1.3",
        "--max-new-tokens",
        "6",
        "--json",
    )
    code, out, err = cli(*args)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["results"]) == 3 and all(len(r["captions"]) == 3 for r in doc["results"])
    assert doc["skipped"][0]["path"].endswith("broken.png")
    assert doc["settings"]["strategy"] == "sample" and doc["settings"]["seed"] == 4
    assert all(c["ended"] is False for r in doc["results"] for c in r["captions"])  # random model: cut at 6
    assert json.loads(cli(*args)[1])["results"] == doc["results"]  # same seed, same captions


def test_group_help_and_subcommand_help(cli):
    code, out, _ = cli("caption", "--help")
    assert code == 0 and all(w in out for w in ("eval", "sweep", "train", "vlens caption photo.jpg"))
    code, out, _ = cli("caption", "eval", "--help")
    assert code == 0 and "COCO metrics" in out and "--split" in out
    code, out, _ = cli("caption", "run", "--help")
    assert code == 0 and "--temperature" in out and "sharpens" in out


@pytest.mark.parametrize(
    "args, msg",
    [
        (("--strategy", "sample", "--top-k", "0"), "--top-k: 0 is out of range"),
        (("--strategy", "sample", "--top-k", "-3"), "--top-k: -3 is out of range"),
        (("--strategy", "sample", "--temperature", "-1"), "--temperature: -1.0 is out of range"),
        (("--prompt", " ".join(["circle"] * 80)), "shorter prompt"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tiny_blip, img_dir, args, msg):
    code, out, err = cli("caption", img_dir, "--model", tiny_blip, *args)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and msg in err and "Traceback" not in err


def test_temperature_zero_is_greedy_with_a_note(cli, tiny_blip, img_dir):
    code, out, err = cli(
        "caption",
        img_dir,
        "--model",
        tiny_blip,
        "--strategy",
        "sample",
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
    )
    greedy = cli("caption", img_dir, "--model", tiny_blip, "--max-new-tokens", "5")[1]
    assert code == 0 and "decoding greedily" in err and out == greedy


def test_no_images(cli, tiny_blip, tmp_path):
    code, _, err = cli("caption", tmp_path, "--model", tiny_blip)
    assert code == 1 and "no images to caption" in err


def test_eval_writes_coco_results_and_metrics(cli, tiny_blip, shapes_dir, tmp_path):
    code, out, err = cli(
        "caption",
        "eval",
        "--data",
        shapes_dir,
        "--limit",
        "4",
        "--model",
        tiny_blip,
        "--fast",
        "--max-new-tokens",
        "6",
        "--out",
        tmp_path / "ev",
    )
    assert code == 0, err
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert len(preds) == 4 and set(preds[0]) == {"image_id", "caption"}
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"} <= set(metrics) and "BLEU-4" in out
    # a shapes dataset: attribute accuracy next to the COCO metrics, from the same predictions
    from vlens.caption.attributes import score_attributes
    from vlens.data.shapes import scene_objects

    again = score_attributes({p["image_id"]: p["caption"] for p in preds}, scene_objects(shapes_dir))
    assert metrics["attributes"]["accuracy"] == again.accuracy and "colours named (all scenes)" in out
    assert any("SPICE skipped" in n for n in metrics["notes"])


def test_eval_missing_split(cli, tiny_blip, shapes_dir):
    code, _, err = cli("caption", "eval", "--data", shapes_dir, "--split", "restval", "--model", tiny_blip)
    assert code == 1 and "no 'restval' split" in err and "train (40)" in err


@pytest.mark.slow
def test_sweep_rows_table_plot_and_resume(cli, tiny_blip, shapes_dir, tmp_path):
    out_dir = tmp_path / "sw"
    args = (
        "caption",
        "sweep",
        "--data",
        shapes_dir,
        "--limit",
        "3",
        "--model",
        tiny_blip,
        "--top-k",
        "1,5",
        "--temperature",
        "0.5,1.0",
        "--prompt",
        "a picture of",
        "--prompt",
        "an image of",
        "--seeds",
        "2",
        "--out",
        out_dir,
    )
    code, out, err = cli(*args)
    assert code == 0, err
    with open(out_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["prompt"] for r in rows} == {"a picture of", "an image of"} and {r["seed"] for r in rows} == {
        "0",
        "1",
    }
    table = (out_dir / "table.md").read_text()
    first = table.split("\n\n")[0].splitlines()
    body = [
        line
        for line in table.splitlines()
        if line.startswith("| a picture of") or line.startswith("| an image")
    ]
    assert len(body) == 8 + 2  # 8 settings + 2 greedy baseline rows
    assert "±" in table and "top_k \\ temperature" in table and (out_dir / "sweep.png").stat().st_size > 1000
    assert first  # header text present
    # top-k 1 is greedy whatever the temperature or seed: zero spread, and equal to the greedy baseline
    summary = json.loads((out_dir / "summary.json").read_text())
    for e in summary["summary"]:
        if e["top_k"] == 1:
            assert e["BLEU-4_std"] == pytest.approx(0.0)
            assert e["CIDEr"] == pytest.approx(summary["greedy"][e["prompt"]]["CIDEr"])
    code, _, err = cli(*args)  # resume: nothing new to run
    assert code == 0 and "resuming sweep: 16 run(s)" in err


def test_train_then_caption_with_the_result(cli, shapes_dir, tmp_path, img_dir):
    train = ["caption", "train", "--data", shapes_dir, "--preset", "test-blip", "--epochs", "1", "--max-train", "8",
             "--image-size", "32", "--out", tmp_path / "tr"]
    code, out, err = cli(*train, "--val-limit", "2")
    assert code == 0, err
    assert "model in" in out and (tmp_path / "tr" / "best" / "model.safetensors").is_file()
    code, out, err = cli("caption", img_dir, "--model", tmp_path / "tr" / "best", "--max-new-tokens", "4")
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, _, err = cli(*train)  # the same run folder again, without --resume
    assert code == 1 and "--resume" in err


def test_the_training_prompt_is_the_default(cli, tiny_blip, img_dir, tmp_path):
    """A model trained behind a prompt (config caption_prompt) is prompted with it unless --prompt says
    otherwise; --prompt '' captions without one."""
    model = tmp_path / "prompted"
    shutil.copytree(tiny_blip, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "caption_prompt": "a picture of"}))
    args = ("caption", img_dir, "--model", model, "--max-new-tokens", "4", "--json")
    for extra, prompt in (((), "a picture of"), (("--prompt", ""), ""), (("--prompt", "an image of"), "an image of")):
        code, out, err = cli(*args, *extra)
        assert code == 0, err
        assert json.loads(out)["settings"]["prompt"] == prompt
    code, out, _ = cli("caption", img_dir, "--model", tiny_blip, "--max-new-tokens", "4", "--json")
    assert json.loads(out)["settings"]["prompt"] == ""  # trained without a prompt: none by default


def test_bulk_out_says_how_many_captions_were_cut(cli, tiny_blip, img_dir, tmp_path):
    """A random model never ends within 4 tokens: every line says "ended": false and the run says what to do."""
    out = tmp_path / "caps.jsonl"
    code, stdout, err = cli("caption", img_dir, "--model", tiny_blip, "--max-new-tokens", "4", "--out", out,
                            "--workers", "0", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert any("3 caption(s) reached --max-new-tokens 4" in n for n in doc["notes"])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["ended"] for r in recs if "captions" in r for c in r["captions"]] == [False] * 3


def test_listing_marks_cut_captions(cli, tiny_blip, img_dir):
    """With several captions per image the listing is ranked (finished first); cut ones end in an ellipsis."""
    code, out, err = cli("caption", img_dir, "--model", tiny_blip, "--strategy", "sample", "--n", "2", "--seed", "0",
                         "--max-new-tokens", "4")
    assert code == 0, err
    ranked = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(ranked) == 6 and all(line.endswith(" …") for line in ranked)  # a random model never ends in 4
    assert "6 caption(s) reached --max-new-tokens 4" in err and "(shown ending in …)" in err
