"""ONNX Runtime engine: export, verification against torch, the verified cache (hit, corrupt -> rebuilt, mismatch ->
refused with a torch fallback), auto's recorded choice, and a search process that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from vlens.engines import store  # noqa: E402
from vlens.engines.export import compare, forget_sessions, prepare  # noqa: E402
from vlens.models.hub import add_listener, remove_listener  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private export cache, and the notes (engine events) said while the test runs."""
    monkeypatch.setenv("VLENS_CACHE", str(tmp_path / "cache"))
    forget_sessions()
    notes: list[str] = []

    def listen(e):
        if e["event"] == "engine":
            notes.append(e["line"])

    add_listener(listen)
    yield notes
    remove_listener(listen)
    forget_sessions()


def _images(n=5):
    from PIL import Image

    rs = np.random.RandomState(0)
    return [Image.fromarray((rs.rand(40 + 7 * i, 57, 3) * 255).astype(np.uint8)) for i in range(n)]


TEXTS = ["a red circle", "two small blue squares on a green background, and a triangle", "x"]


def test_export_is_verified_cached_and_equal_to_torch(cache, tiny_clip, clip_encoder):
    from vlens.retrieval.model import DualEncoder

    enc = DualEncoder.from_spec(str(tiny_clip), engine="onnx")
    imgs = _images()
    got_i, got_t = enc.encode_images(imgs), enc.encode_texts(TEXTS)
    ref_i, ref_t = clip_encoder.encode_images(imgs), clip_encoder.encode_texts(TEXTS)
    assert enc.tower("image") is not None and enc.tower("text") is not None
    assert np.abs(got_i - ref_i).max() <= 1e-4 * np.abs(ref_i).max()
    assert np.abs(got_t - ref_t).max() <= 1e-4 * np.abs(ref_t).max()
    rows = store.list_exports()
    assert {r["tower"] for r in rows} == {"clip-image", "clip-text"}
    for r in rows:
        assert r["state"] == "ok" and r["verify"]["ok"] and r["verify"]["max_abs_diff"] <= r["verify"]["allowed"]
        assert r["verify"]["probe"]  # verified on its own probe batch, not the export's example
    assert sum("exporting" in n for n in cache) == 2
    # cache hit: a new encoder (and a new process's sessions) finds both exports and exports nothing
    forget_sessions()
    cache.clear()
    again = DualEncoder.from_spec(str(tiny_clip), engine="onnx")
    np.testing.assert_allclose(again.encode_texts(TEXTS), got_t, atol=1e-6)
    assert not any("exporting" in n for n in cache)


def test_auto_records_its_choice_and_follows_it(cache, tiny_clip):
    from vlens.engines.towers import clip_text_engine
    from vlens.models import load

    loaded = load(str(tiny_clip), "dual_encoder")
    clip_text_engine(loaded.model, loaded.path, str(tiny_clip), "auto")
    (row,) = store.list_exports()
    t = row["timing"]
    assert t["runs"] >= 3 and t["torch_ms"] > 0 and t["onnx_ms"] > 0
    assert row["choice"] == ("onnx" if t["onnx_ms"] < t["torch_ms"] else "torch")
    # a machine where torch measured faster keeps torch under auto; onnx still takes the export
    folder = Path(row["path"])
    m = json.loads((folder / store.MANIFEST).read_text())
    m["choice"] = "torch"
    (folder / store.MANIFEST).write_text(json.dumps(m))
    assert clip_text_engine(loaded.model, loaded.path, str(tiny_clip), "auto") is None
    assert clip_text_engine(loaded.model, loaded.path, str(tiny_clip), "onnx") is not None
    assert clip_text_engine(loaded.model, loaded.path, str(tiny_clip), "torch") is None


def test_corrupt_or_half_written_export_is_rebuilt_never_used(cache, tiny_clip, clip_encoder):
    from vlens.retrieval.model import DualEncoder

    DualEncoder.from_spec(str(tiny_clip), engine="onnx").tower("text")
    (row,) = store.list_exports()
    folder = Path(row["path"])
    onnx = folder / store.ONNX_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64  # same size, damaged bytes, mtime changes
    onnx.write_bytes(bytes(data))
    assert store.check(folder).state == "corrupt"
    forget_sessions()
    cache.clear()
    enc = DualEncoder.from_spec(str(tiny_clip), engine="onnx")
    np.testing.assert_allclose(enc.encode_texts(TEXTS), clip_encoder.encode_texts(TEXTS), atol=1e-5)
    assert any("damaged" in n and "rebuilding" in n for n in cache)
    assert store.check(folder).state == "ok"
    # half-written: no manifest (a kill before the rename cannot leave this; a hand-copied folder can)
    (folder / store.MANIFEST).unlink()
    assert store.check(folder).state == "corrupt"
    onnx.write_bytes(b"garbage")
    forget_sessions()
    enc = DualEncoder.from_spec(str(tiny_clip), engine="onnx")
    np.testing.assert_allclose(enc.encode_texts(TEXTS), clip_encoder.encode_texts(TEXTS), atol=1e-5)
    assert store.check(folder).state == "ok"
    # a killed export's temp folder is not an export and is not listed
    (folder.parent / f".{folder.name}.abc123").mkdir()
    assert [r["name"] for r in store.list_exports()] == [folder.name]


class BakedBatch(torch.nn.Module):
    """Traces its batch size as a constant: right on the export's example, wrong on any other batch."""

    def forward(self, x):  # (B, 4) -> (B, 4)
        return x * float(x.shape[0])


def test_mismatch_is_refused_with_torch_fallback(cache, tmp_path):
    folder = tmp_path / "fake-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    eid = store.ExportId("fake", store.weights_fingerprint(folder), "test", "b,4")
    args = ({"x": torch.ones(1, 4)}, {"x": torch.ones(3, 4)}, {"x": {0: "batch"}, "output": {0: "batch"}})
    assert prepare(eid, BakedBatch(), *args, engine="onnx") is None
    assert any("does not match torch" in n and "running on torch" in n for n in cache)
    found = store.lookup(eid)
    assert found.state == "refused" and not found.onnx.exists()
    cache.clear()
    assert prepare(eid, BakedBatch(), *args, engine="onnx") is None  # remembered: not exported again
    assert not any("exporting" in n for n in cache) and any("refused" in n for n in cache)


def test_compare_scale_and_int8_rule():
    ref = np.array([[1.0, -2.0], [0.5, 0.5]])
    assert compare(ref, ref + 1.9e-4)["ok"] and not compare(ref, ref + 2.1e-4)["ok"]  # 1e-4 x max |ref| = 2e-4
    assert compare(ref, ref * 1.01, "int8")["ok"] and not compare(ref, ref[:, ::-1], "int8")["ok"]
    assert not compare(ref, ref[:1])["ok"]


def test_torch_free_inputs_equal_the_transformers_processors(tiny_clip, clip_encoder):
    from vlens.retrieval.query_encoder import ExportedQueryEncoder

    q = ExportedQueryEncoder(str(tiny_clip))
    mine = q.text_inputs(TEXTS)
    ref = clip_encoder.tokenizer(TEXTS, padding=True, truncation=True, max_length=clip_encoder.max_text_tokens,
                                 return_tensors="np")
    np.testing.assert_array_equal(mine["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(mine["attention_mask"], ref["attention_mask"])
    imgs = _images() + [_images(1)[0].convert("L"), _images(1)[0].resize((30, 90))]
    px = np.asarray(clip_encoder.processor(images=imgs, return_tensors="np")["pixel_values"])
    np.testing.assert_allclose(q.image_inputs(imgs), px, atol=1e-5)


def test_torch_free_text_inputs_clean_as_the_model_declares(tiny_clip, tmp_path):
    """A model converted from an open_clip file declares open_clip's text cleaning; the torch-free query path
    tokenizes the cleaned text too, so a search gives the same ids as DualEncoder (and open_clip) would."""
    import shutil

    from vlens.models.text_cleaning import open_clip_clean
    from vlens.retrieval.model import DualEncoder
    from vlens.retrieval.query_encoder import ExportedQueryEncoder

    folder = shutil.copytree(tiny_clip, tmp_path / "clip-open-clip-cleaning")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "text_cleaning": "open_clip"}))
    texts = ["a \u201cred\u201d circle &amp; a square", "\ufb01ne   blue  star"]
    mine = ExportedQueryEncoder(str(folder)).text_inputs(texts)
    ref = DualEncoder.from_spec(str(folder)).text_inputs(texts)
    np.testing.assert_array_equal(mine["input_ids"], np.asarray(ref["input_ids"]))
    plain = ExportedQueryEncoder(str(tiny_clip)).text_inputs([open_clip_clean(t) for t in texts])
    np.testing.assert_array_equal(mine["input_ids"], plain["input_ids"])
    assert ExportedQueryEncoder(str(tiny_clip)).text_inputs(texts)["input_ids"].tolist() != mine["input_ids"].tolist()


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_search_with_an_export_never_imports_torch(cache, tmp_path, shapes_folder, tiny_clip):
    from vlens.cli.main import main

    root = shapes_folder(tmp_path / "photos", n=8)
    idx = tmp_path / "idx"
    assert main(["index", "build", str(root), "--out", str(idx), "--model", str(tiny_clip), "--workers", "0"]) == 0
    assert {r["tower"] for r in store.list_exports()} == {"clip-image", "clip-text"}  # auto exported both
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = ("import sys, json\nfrom vlens.cli.main import main\n"
            f"rc = main(['search', {str(idx)!r}, 'a red circle', '--json'])\n"
            f"rc += main(['search', {str(idx)!r}, '--image', {str(next(root.iterdir()))!r}, '--json'])\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'transformers') if m in sys.modules)}))")
    r = _run(code, env)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last == {"rc": 0, "heavy": []}
    # the same hits, in the same order, as torch
    fast = _run(f"from vlens.cli.main import main; main(['search', {str(idx)!r}, 'a red circle', '-k', '8'])", env)
    slow = _run(f"from vlens.cli.main import main; main(['search', {str(idx)!r}, 'a red circle', '-k', '8', "
                "'--engine', 'torch'])", env)
    assert fast.stdout == slow.stdout and fast.stdout.count("\n") == 8


def test_models_list_and_rm_exports(cache, tiny_clip, capsys):
    from vlens.cli.main import main
    from vlens.retrieval.model import DualEncoder

    DualEncoder.from_spec(str(tiny_clip), engine="onnx").tower("image")
    assert main(["models", "list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [e["tower"] for e in info["exports"]] == ["clip-image"] and info["exports"][0]["state"] == "ok"
    assert main(["models", "rm", "exports:nothing-like-this"]) == 1
    assert "no ONNX export matches" in capsys.readouterr().err
    assert main(["models", "rm", "exports"]) == 0
    assert "removed 1 ONNX export" in capsys.readouterr().out
    assert store.list_exports() == []


@pytest.mark.parametrize("family", ["tiny_vit", "tiny_dinov2"])
def test_vit_token_facet_on_onnx_equals_torch(cache, family, request):
    from vlens.match.features import extract_features

    spec = str(request.getfixturevalue(family))
    imgs = _images(3)  # two input sizes: one export per size
    ref = extract_features(imgs, spec, size=64, engine="torch")
    got = extract_features(imgs, spec, size=64, engine="onnx")
    for a, b in zip(ref, got):
        assert a.descriptors.shape == b.descriptors.shape
        assert (a.descriptors - b.descriptors).abs().max() <= 1e-4 * a.descriptors.abs().max()
    rows = store.list_exports()
    assert rows and all(r["tower"] == "vit-tokens" and r["state"] == "ok" for r in rows)
    assert len({r["family"] for r in rows}) == len({f.input_size for f in ref})
    # overlapping patches (--stride): the export traces the strided patch embedding, keyed by the stride
    from vlens.match.features import load_backbone

    stride = load_backbone(spec).patch_size // 2
    ref_s = extract_features(imgs[:1], spec, size=64, stride=stride, engine="torch")[0].descriptors
    got_s = extract_features(imgs[:1], spec, size=64, stride=stride, engine="onnx")[0].descriptors
    assert ref_s.shape == got_s.shape and ref_s.shape[0] > ref[0].descriptors.shape[0]
    assert (ref_s - got_s).abs().max() <= 1e-4 * ref_s.abs().max()
    assert any(r["family"].endswith(f":stride{stride}") for r in store.list_exports())
    cache.clear()
    extract_features(imgs[:1], spec, size=64, facet="key", engine="onnx")  # attention facets: torch, said once
    assert any("key facet" in n and "runs on torch" in n for n in cache)


def test_blip_vision_encoder_on_onnx_gives_the_same_captions(cache, tiny_blip):
    from vlens.caption.captioner import Captioner, DecodeSettings

    imgs = _images(2)
    s = DecodeSettings(max_new_tokens=8)
    ref = Captioner.from_spec(str(tiny_blip), device="cpu", engine="torch").caption(imgs, s)
    onnx = Captioner.from_spec(str(tiny_blip), device="cpu", engine="onnx")
    got = onnx.caption(imgs, s)
    assert onnx._vision_tower is not None
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in ref]
    assert [r["tower"] for r in store.list_exports()] == ["blip-vision"]


def test_quantize_int8_offered_only_where_it_kept_quality(cache, tiny_blip, tmp_path, capsys):
    from vlens.caption.captioner import Captioner, DecodeSettings
    from vlens.cli.main import main

    cap = Captioner.from_spec(str(tiny_blip), device="cpu", quantize="int8")
    caps = cap.caption(_images(2), DecodeSettings(max_new_tokens=4))
    assert len(caps) == 2 and cap._vision_tower is not None
    (row,) = store.list_exports()
    assert row["quantize"] == "int8" and row["verify"]["min_cosine"] >= 0.99
    (tmp_path / "p").mkdir()
    _images(1)[0].save(tmp_path / "p" / "a.png")
    capsys.readouterr()
    assert main(["index", "build", str(tmp_path / "p"), "--out", str(tmp_path / "i"), "--model",
                 "builtin:clip-tiny", "--quantize", "int8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not offered" in err[0] and "recall@5" in err[0]
    assert not (tmp_path / "i").exists()


def test_quantize_int8_for_vit_token_features(cache, tiny_vit, tmp_path, capsys):
    """Offered for ViT token features (PCK@10 kept on the real pairs, benchmarks/bench_int8.py --pck): an int8
    export of the token facet, same shapes as fp32 torch and every patch's cosine >= 0.99; the attention facets
    are refused in one line."""
    from vlens.cli.main import main
    from vlens.match.features import extract_features

    imgs = _images(2)
    ref = extract_features(imgs, str(tiny_vit), size=64)
    got = extract_features(imgs, str(tiny_vit), size=64, quantize="int8")
    for a, b in zip(ref, got):
        assert a.descriptors.shape == b.descriptors.shape
        cos = torch.nn.functional.cosine_similarity(a.flat, b.flat, dim=-1)  # (patches,)
        assert float(cos.min()) >= 0.99 and not torch.equal(a.descriptors, b.descriptors)
    rows = store.list_exports()
    assert rows and all(r["tower"] == "vit-tokens" and r["quantize"] == "int8" and r["state"] == "ok" for r in rows)
    for i, im in enumerate(imgs):
        im.save(tmp_path / f"{i}.png")
    n = len(rows)
    assert main(["match", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--model", str(tiny_vit), "--size", "64",
                 "--quantize", "int8", "--out", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").is_file() and len(store.list_exports()) == n  # the same int8 exports, reused
    capsys.readouterr()
    assert main(["match", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--model", str(tiny_vit), "--facet",
                 "key", "--quantize", "int8", "--out", str(tmp_path / "m.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token facet only" in err[0]
    assert not (tmp_path / "m.png").exists()


def test_web_match_and_explore_take_the_server_engine(cache, tiny_vit):
    """The web Match and Explore tabs run the token features on the server's --engine, as search and caption do:
    with engine=onnx the routes make and use ViT token exports, and answer as the torch server does; under auto (the
    server's default) they stay on torch, since every new upload size would wait for its own export."""
    import io

    from fastapi.testclient import TestClient

    from vlens.web.app import create_app

    a_img, b_img = _images(2)
    pngs = []
    for im in (a_img, b_img):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    files = {"image_a": ("a.png", pngs[0], "image/png"), "image_b": ("b.png", pngs[1], "image/png")}
    form = {"count": "20", "refine": "none", "bin_levels": "0"}
    out = {}
    for engine in ("torch", "auto", "onnx"):
        with TestClient(create_app(backbone=str(tiny_vit), engine=engine), raise_server_exceptions=False) as c:
            r = c.post("/api/match", files=files, data=form)
            assert r.status_code == 200, r.text
            ids = [c.post("/api/explore/images", files={"file": ("x.png", p, "image/png")}).json()["id"]
                   for p in pngs]
            p = c.post("/api/explore/point", json={"image_a": ids[0], "image_b": ids[1], "x": 20.0, "y": 15.0,
                                                   "size": 64, "top_k": 3})
            assert p.status_code == 200, p.text
            out[engine] = r.json()["matches"], p.json()
        made = store.list_exports()
        assert (len(made) > 0) == (engine == "onnx")  # torch and auto servers made none; onnx one per input size
        assert all(e["tower"] == "vit-tokens" and e["state"] == "ok" for e in made)
    (m_t, p_t), (m_o, p_o) = out["torch"], out["onnx"]
    pairs_t = {(tuple(m["src_xy"]), tuple(m["dst_xy"])): m["feature_distance"] for m in m_t}
    pairs_o = {(tuple(m["src_xy"]), tuple(m["dst_xy"])): m["feature_distance"] for m in m_o}
    common = pairs_t.keys() & pairs_o.keys()
    assert len(common) >= 18  # the same matches (an exact tie may order differently at the 20th place)
    assert max(abs(pairs_t[k] - pairs_o[k]) for k in common) <= 1e-4
    assert p_o["peak_xy"] == p_t["peak_xy"] and p_o["best"]["xy"] == p_t["best"]["xy"]
    assert abs(p_o["best"]["similarity"] - p_t["best"]["similarity"]) <= 1e-4
    assert [c["xy"] for c in p_o["candidates"]] == [c["xy"] for c in p_t["candidates"]]
