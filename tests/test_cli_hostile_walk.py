"""The CLI walk's two hostile columns (issue 23): every command that reads files runs once on a file or folder
with a hostile *name* (not UTF-8, a newline, a tab, a leading dash) and once on a hostile *data file* (garbage
bytes where an image is expected, null entries, NaN ground truth, nesting too deep, a web page saved as .deb).

Every run must end in success or one ``error:`` line (exit 1), never a traceback or "a bug in vlens". The
commands are discovered from the typer app like tests/test_cli_validation.py does: a command that reads files and
has no row here fails the coverage test, so a surface added later joins the walk.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli_validation import _leaves

pytestmark = pytest.mark.slow

NO_FILE_INPUT = {"data make-shapes", "lab", "models fetch", "models list", "models rm"}
NOT_RUN = {"serve": "starts a server that runs until stopped; its inputs are fuzzed in tests/test_web_fuzz.py and "
                    "tests/test_web_explore.py"}
HOSTILE = [b"caf\xe9.png", b"new\nline.png", b"tab\there.png", b"-dash.png"]


def _texture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def world(tmp_path_factory, shapes_dir):
    from test_match_keypoints import make_spair

    d = tmp_path_factory.mktemp("hostile")
    imgs = d / "imgs"
    imgs.mkdir()
    for i in range(3):
        _texture(i).save(imgs / f"plain{i}.png")
    for i, name in enumerate(HOSTILE):
        _texture(10 + i).save(imgs / os.fsdecode(name), format="PNG")
    w = {"d": d, "imgs": imgs, "ok": imgs / "plain0.png", "hostile": imgs / os.fsdecode(HOSTILE[1]),
         "odd": imgs / os.fsdecode(b"caf\xe9.png")}
    (d / "garbage.png").write_bytes(os.urandom(3000))
    w["garbage"] = d / "garbage.png"
    garbage_dir = d / "garbage_imgs"
    garbage_dir.mkdir()
    (garbage_dir / "a.png").write_bytes(os.urandom(2000))
    (garbage_dir / "b.jpg").write_text("<html>not an image</html>")
    w["garbage_dir"] = garbage_dir
    # a caption dataset under a hostile name (the shapes test split) and two broken ones
    ds = d / os.fsdecode(b"shapes \xe9\n")
    shutil.copytree(shapes_dir, ds)
    w["ds"] = ds
    (d / "nulls.json").write_text(json.dumps({"images": [None, {"filename": "x.png", "sentences": []}]}))
    w["nulls"] = d / "nulls.json"
    (d / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    w["deep"] = d / "deep.json"
    # pair manifests: a good one under a hostile name, one with NaN ground truth
    _texture(0).save(d / "L.png")
    _texture(0).save(d / "R.png")
    good = {"pairs": [{"name": "p", "source": "L.png", "target": "R.png", "homography": [[1, 0, 0], [0, 1, 0],
                                                                                           [0, 0, 1]]}]}
    w["manifest"] = d / os.fsdecode(b"m\xe9\t.json")
    w["manifest"].write_text(json.dumps(good))
    good["pairs"][0]["homography"][0][2] = float("nan")
    w["bad_manifest"] = d / "nan.json"
    w["bad_manifest"].write_text(json.dumps(good))
    w["spair"] = make_spair(d / os.fsdecode(b"SPair \xe9"), pairs_per_cat=1, categories=("cat",))
    bad_spair = make_spair(d / "SPair-bad", pairs_per_cat=1, categories=("cat",))
    for f in (bad_spair / "PairAnnotation" / "test").glob("*.json"):
        a = json.loads(f.read_text())
        a["trg_bndbox"] = [0, 0, float("inf"), 10]
        f.write_text(json.dumps(a))
    w["bad_spair"] = bad_spair
    (d / "bogus.deb").write_text("<!DOCTYPE html><html>404</html>")
    w["deb"] = d / os.fsdecode(b"opencv-doc \xe9\n.deb")
    shutil.copy(d / "bogus.deb", w["deb"])
    (d / "config.json").write_text('{"epochs": "many", "lr": null}')
    w["bad_config"] = d / "config.json"
    (d / "not-an-index").mkdir()
    (d / "not-an-index" / "manifest.json").write_text("{broken")
    w["bad_index"] = d / "not-an-index"
    return w


def rows(w, tiny):
    """{command: {"name": argv, "data": argv}}; ``tiny`` holds the tiny model folders."""
    vit, blip, clip = tiny["vit"], tiny["blip"], tiny["clip"]
    out = w["d"] / "out"
    small = ("--size", "64")
    idx = w["d"] / "idx \t\n\u00e9"  # a UTF-8 name with a tab and a newline (non-UTF-8 output paths are refused)
    mask_a = w["ds"] / "masks" / "train_00000.png"
    img_a = w["ds"] / "images" / "train_00000.png"
    return {
        "match": {"name": ["match", w["hostile"], w["odd"], "--model", vit, *small, "--out", out / "m.png"],
                  "data": ["match", w["garbage"], w["ok"], "--model", vit, *small, "--out", out / "m.png"]},
        "explore point": {"name": ["explore", "point", w["hostile"], w["odd"], "--xy", "5,5", "--model", vit,
                                   *small, "--out", out / "p.png"],
                          "data": ["explore", "point", w["ok"], w["garbage"], "--xy", "5,5", "--model", vit,
                                   *small, "--out", out / "p.png"]},
        "explore attention": {"name": ["explore", "attention", w["hostile"], "--model", vit, *small, "--out",
                                       out / "a.png"],
                              "data": ["explore", "attention", w["garbage"], "--model", vit, *small, "--out",
                                       out / "a.png"]},
        "caption run": {"name": ["caption", w["imgs"], "--model", blip, "--out", out / "c.jsonl", "--workers", "0"],
                        "data": ["caption", w["garbage_dir"], w["garbage"], "--model", blip]},
        "caption eval": {"name": ["caption", "eval", "--data", w["ds"], "--model", blip, "--limit", "2", "--fast",
                                  "--out", out / "ce"],
                         "data": ["caption", "eval", "--data", w["nulls"], "--model", blip, "--fast"]},
        "caption sweep": {"name": ["caption", "sweep", "--data", w["ds"], "--model", blip, "--limit", "2",
                                   "--top-k", "5", "--temperature", "0.7", "--seeds", "1", "--out", out / "cs"],
                          "data": ["caption", "sweep", "--data", w["deep"], "--model", blip]},
        "caption train": {"name": ["caption", "train", "--data", w["ds"], "--out", out / "ct", "--preset",
                                   "test-blip", "--epochs", "1", "--max-train", "4", "--val-limit", "2",
                                   "--image-size", "32", "--batch-size", "4"],
                          "data": ["caption", "train", "--data", w["nulls"], "--out", out / "ct2", "--preset",
                                   "test-blip"]},
        "data inspect": {"name": ["data", "inspect", w["ds"], "--no-verify"],
                         "data": ["data", "inspect", w["deep"]]},
        "data fetch": {"name": ["data", "fetch", "opencv-samples", "--deb", w["deb"]],
                       "data": ["data", "fetch", "opencv-samples", "--deb", w["d"] / "bogus.deb"]},
        "index build": {"name": ["index", "build", w["imgs"], "--out", idx, "--model", clip, "--workers", "0"],
                        "data": ["index", "build", w["garbage_dir"], "--out", out / "ix2", "--model", clip,
                                 "--workers", "0"]},
        "index info": {"name": ["index", "info", idx], "data": ["index", "info", w["bad_index"]]},
        "index dupes": {"name": ["index", "dupes", idx], "data": ["index", "dupes", w["bad_index"]]},
        "index update": {"name": ["index", "update", idx, "--workers", "0"],
                         "data": ["index", "update", w["bad_index"]]},
        "search": {"name": ["search", idx, "--image", w["hostile"]],
                   "data": ["search", idx, "--image", w["garbage"]]},
        "bench crops": {"name": ["bench", "crops", "--images", w["imgs"], "--model", "pixels:8", "--crops", "1",
                                 "--scenario", "large", "--source-side", "64", "--crop-side", "32", "--out",
                                 out / "bc"],
                        "data": ["bench", "crops", "--images", w["garbage_dir"], "--model", "pixels:8", "--out",
                                 out / "bc2"]},
        "bench pairs": {"name": ["bench", "pairs", "--data", w["manifest"], "--model", "pixels:8", "--size", "64",
                                 "--out", out / "bp"],
                        "data": ["bench", "pairs", "--data", w["bad_manifest"], "--model", "pixels:8", "--out",
                                 out / "bp2"]},
        "bench keypoints": {"name": ["bench", "keypoints", "--data", w["spair"], "--model", "pixels:8", "--size",
                                     "64", "--out", out / "bk"],
                            "data": ["bench", "keypoints", "--data", w["bad_spair"], "--model", "pixels:8",
                                     "--out", out / "bk2"]},
        "bench segment": {"name": ["bench", "segment", "--model", "pixels:8", "--data", w["ds"], "--refs", "2",
                                   "--targets", "1", "--size", "64", "--no-baselines", "--out", out / "bs"],
                          "data": ["bench", "segment", "--model", "pixels:8", "--data", w["nulls"], "--out",
                                   out / "bs2"]},
        "segment parts": {"name": ["segment", "parts", w["hostile"], w["odd"], "--k", "2", "--model", "pixels:8",
                                   *small, "--out", out / "parts.png"],
                          "data": ["segment", "parts", w["garbage"], w["ok"], "--model", "pixels:8", "--out",
                                   out / "parts2.png"]},
        "segment transfer": {"name": ["segment", "--ref", w["hostile"], "--ref-mask", w["hostile"], "--target",
                                      w["odd"], "--model", "pixels:8", *small, "--out", out / "seg"],
                             "data": ["segment", "--ref", img_a, "--ref-mask", w["garbage"], "--target", w["ok"],
                                      "--model", "pixels:8", "--out", out / "seg2"]},
        "retrieval eval": {"name": ["retrieval", "eval", "--data", w["ds"], "--model", clip, "--split", "test"],
                           "data": ["retrieval", "eval", "--data", w["nulls"], "--model", clip]},
        "retrieval sweep": {"name": ["retrieval", "sweep", "--data", w["deep"], "--out", out / "rs"],
                            "data": ["retrieval", "sweep", "--data", w["nulls"], "--out", out / "rs2"]},
        "retrieval train": {"name": ["retrieval", "train", "--data", w["ds"], "--out", out / "rt", "--scratch",
                                     "--preset", "test-clip", "--image-size", "32", "--batch-size", "16",
                                     "--warmup", "0", "--epochs", "1"],
                            "data": ["retrieval", "train", "--data", w["nulls"], "--out", out / "rt2"]},
        "ssl probe": {"name": ["ssl", "probe", "--data", w["ds"], "--model", "pixels"],
                      "data": ["ssl", "probe", "--data", w["garbage_dir"], "--model", "pixels"]},
        "ssl train": {"name": ["ssl", "train", "--out", out / "st", "--images", w["imgs"], "--preset", "test-vit",
                               "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2", "--samples-per-epoch",
                               "2", "--global-size", "32", "--local-size", "16", "--n-local", "1", "--out-dim", "16"],
                      "data": ["ssl", "train", "--out", out / "st2", "--config", w["bad_config"]]},
    }
    del mask_a


def _file_commands():
    import typer

    from vlens.cli.main import app

    return {" ".join(path) for path, _ in _leaves(typer.main.get_command(app))}


def test_every_command_that_reads_files_has_both_hostile_columns(world, tiny_vit, tiny_blip, tiny_clip):
    table = rows(world, {"vit": tiny_vit, "blip": tiny_blip, "clip": tiny_clip})
    missing = _file_commands() - set(table) - NO_FILE_INPUT - set(NOT_RUN)
    assert not missing, f"add a 'name' and a 'data' row for: {sorted(missing)}"
    assert all(set(r) == {"name", "data"} for r in table.values())


@pytest.mark.parametrize("column", ["name", "data"])
def test_hostile_inputs_end_in_success_or_one_error_line(cli, world, tiny_vit, tiny_blip, tiny_clip, column,
                                                         monkeypatch):
    monkeypatch.setenv("VLENS_CACHE", str(world["d"] / "cache"))
    table = rows(world, {"vit": tiny_vit, "blip": tiny_blip, "clip": tiny_clip})
    bad = []
    for command in sorted(table):
        code, out, err = cli(*table[command][column])
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        ok = code in (0, 1) and "a bug in vlens" not in err and "Traceback" not in err and (
            code == 0 or len(errors) == 1)
        if not ok:
            bad.append(f"{command} [{column}] -> exit {code}: {err.strip()[-300:]}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- outputs through links, special paths

def output_rows(w, tiny, idx):
    """Commands that write one file named by --out (a picture or a record file); ``{}`` stands for the output."""
    vit, blip = tiny["vit"], tiny["blip"]
    small = ("--size", "64")
    return {
        "match": ["match", w["ok"], w["hostile"], "--model", vit, *small, "--out", "{}"],
        "explore point": ["explore", "point", w["ok"], w["hostile"], "--xy", "5,5", "--model", vit, *small,
                          "--out", "{}"],
        "explore attention": ["explore", "attention", w["ok"], "--model", vit, *small, "--out", "{}"],
        "segment parts": ["segment", "parts", w["ok"], w["hostile"], "--k", "2", "--model", "pixels:8", *small,
                          "--out", "{}"],
        "search": ["search", idx, "a red circle", "--out", "{}"],
        "caption run": ["caption", w["ok"], "--model", blip, "--workers", "0", "--max-new-tokens", "2", "--out",
                        "{}"],
    }


def _argv(row, out):
    return [out if a == "{}" else a for a in row]


def test_outputs_through_links_and_special_paths(cli, world, tiny_vit, tiny_blip, tiny_clip, shapes_index,
                                                 tmp_path, monkeypatch):
    """The link column: ``--out LINK`` writes the link's target (atomically there) and leaves the link a link
    (it used to be replaced by a regular file, the target untouched). The special column: ``--out -`` is one
    error line (it used to write a file named '-'), ``--out FIFO`` writes into the pipe and leaves it one
    (as root, atomic writes used to replace /dev/stdout's link), a folder is one error line."""
    import stat
    import threading

    monkeypatch.setenv("VLENS_CACHE", str(world["d"] / "cache"))
    monkeypatch.chdir(tmp_path)
    idx, _ = shapes_index(tmp_path / "ix", n=4)
    table = output_rows(world, {"vit": tiny_vit, "blip": tiny_blip}, idx)
    bad = []

    def check(command, column, argv, want_ok, extra=""):
        code, out, err = cli(*argv)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        ok = "a bug in vlens" not in err and "Traceback" not in err and (
            code == 0 if want_ok else (code == 1 and len(errors) == 1 and extra in errors[0]))
        if not ok:
            bad.append(f"{command} [{column}] {argv[-1]} -> exit {code}: {err.strip()[-300:]}")
        return code

    for command, row in sorted(table.items()):
        suffix = ".jsonl" if command == "caption run" else ".png"
        target_dir = tmp_path / command.replace(" ", "_")
        target_dir.mkdir()
        target = target_dir / f"target{suffix}"
        target.write_bytes(b"")
        link = tmp_path / f"link-{command.replace(' ', '_')}{suffix}"
        os.symlink(os.path.relpath(target, tmp_path), link)
        check(command, "link", _argv(row, link), True)
        if not (os.path.islink(link) and target.stat().st_size > 0):
            bad.append(f"{command} [link]: link kept {os.path.islink(link)}, target {target.stat().st_size} bytes")
        if sorted(os.listdir(target_dir)) != [target.name]:
            bad.append(f"{command} [link]: left {sorted(os.listdir(target_dir))}")
        check(command, "special", _argv(row, "-"), False, "'-' is not a file name")
        check(command, "special", _argv(row, target_dir), False, "is a folder")
        fifo = tmp_path / f"fifo-{command.replace(' ', '_')}{suffix}"  # not /dev/null: a regression run as
        os.mkfifo(fifo)  # root would replace the machine's /dev/null
        got = []
        reader = threading.Thread(target=lambda f=fifo, g=got: g.append(open(f, "rb").read()), daemon=True)
        reader.start()
        if command == "caption run":  # a record file is read back to resume: never a device or pipe
            check(command, "special", _argv(row, fifo), False, "is a device or a pipe")
            with open(fifo, "wb"):  # let the reader go
                pass
        else:
            check(command, "special", _argv(row, fifo), True)
        reader.join(10)
        if not (stat.S_ISFIFO(os.stat(fifo).st_mode) and (got[0][:4] == b"\x89PNG" or command == "caption run")):
            bad.append(f"{command} [special]: the FIFO was replaced or got {got[:1]!r:.40}")
    assert not os.path.exists(tmp_path / "-")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- damaged cache, stalled hub

def model_rows(w, out):
    """Commands that resolve a model (their default, or a hub id given with --model), and the model commands."""
    from test_model_download import BLIP

    small = ("--size", "64")
    return {
        "caption run": ["caption", w["ok"], "--max-new-tokens", "2", "--workers", "0"],
        "caption run --model ID": ["caption", w["ok"], "--model", BLIP, "--max-new-tokens", "2", "--workers", "0"],
        "match": ["match", w["ok"], w["hostile"], *small, "--out", out / "m.png"],
        "explore point": ["explore", "point", w["ok"], w["hostile"], "--xy", "5,5", *small, "--out", out / "p.png"],
        "index build": ["index", "build", w["imgs"], "--out", out / "ix", "--workers", "0", "--force"],
        "models list": ["models", "list"],
        "models fetch": ["models", "fetch", BLIP],
    }


def _walk(cli, table, column):
    bad, seen = [], {}
    for command, argv in table.items():
        code, out, err = cli(*argv)
        errors = [ln for ln in err.splitlines() if "error:" in ln]  # a progress bar may share the line
        ok = code in (0, 1) and "a bug in vlens" not in err and "Traceback" not in err and (
            code == 0 or (len(errors) == 1 and any(w in errors[0] for w in ("vlens models", "rerun", "use an"))))
        if not ok:
            bad.append(f"{command} [{column}] -> exit {code}: {err.strip()[-300:]}")
        seen[command] = (code, out, err)
    return bad, seen


def test_damaged_cache_column(cli, world, hf_cache, tiny_vit, tiny_blip, tiny_clip, tmp_path):
    """The three real defaults in the cache, each damaged a different way (config.json cut off, safetensors
    truncated, safetensors empty): without --model each command runs its builtin with a notice naming the damage;
    with --model ID it is one line naming the file and `vlens models fetch`/`rm`; models list flags all three."""
    from test_model_download import _damage

    from vlens.models.defaults import TASKS

    for task, tiny, how in (("caption", tiny_blip, "config"), ("retrieval", tiny_clip, "truncated"),
                            ("match", tiny_vit, "empty")):
        _damage(hf_cache.add(TASKS[task].real, tiny), how)
    bad, seen = _walk(cli, model_rows(world, tmp_path), "damaged cache")
    assert not bad, "\n".join(bad)
    for command in ("caption run", "match", "index build"):
        assert seen[command][0] == 0 and "is damaged in the Hugging Face cache" in seen[command][2], command
    code, _, err = seen["caption run --model ID"]
    assert code == 1 and "config.json is not valid JSON" in err
    assert seen["models list"][1].count("damaged (") == 3 and seen["models fetch"][0] == 1


def _online(monkeypatch, url):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.mark.parametrize("server", ["silent", "trickle"])
def test_stalled_hub_column(cli, world, hf_cache, tiny_blip, tmp_path, monkeypatch, server):
    """An empty cache and a hub that accepts connections but never answers (silent), or answers the file list
    and then sends the weights a byte every half second (trickle): every command ends within a few seconds, the
    defaults on their builtins with a notice, a fetch in one line (the partial file kept for the trickle)."""
    import time

    from test_model_download import BLIP, FakeHub, SilentHub

    from vlens.models import hub as hubmod

    monkeypatch.setattr(hubmod, "ANSWER_DEADLINE", 1.0)
    monkeypatch.setattr(hubmod, "READ_TIMEOUT", 1.0)
    srv = SilentHub() if server == "silent" else FakeHub({BLIP: tiny_blip})
    if server == "trickle":
        srv.trickle.add("model.safetensors")
    _online(monkeypatch, srv.url)
    table = model_rows(world, tmp_path)
    if server == "trickle":  # only BLIP is served: the captioning rows and the fetch
        table = {k: v for k, v in table.items() if k.startswith(("caption", "models"))}
    try:
        t0 = time.time()
        bad, seen = _walk(cli, table, f"{server} hub")
        took = time.time() - t0
    finally:
        srv.close()
    assert not bad, "\n".join(bad)
    assert seen["caption run"][0] == 0 and "note: caption runs builtin:blip-tiny" in seen["caption run"][2]
    assert seen["models fetch"][0] == 1 and seen["caption run --model ID"][0] == 1
    assert took < 40, took  # a handful of commands, each giving up after about a second (it used to hang)
