"""The web app's JSON API through FastAPI's TestClient: search, images by id, uploads, caption, match, errors."""

from __future__ import annotations

import io
import shutil
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlens.retrieval.search import Searcher


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, shapes_index, clip_encoder):
    base = tmp_path_factory.mktemp("web")
    (base / "secret.txt").write_text("top secret")
    out, root = shapes_index(base)
    return out, root, clip_encoder


@pytest.fixture(scope="module")
def client(indexed, tiny_blip, tiny_vit):
    from vlens.web.app import create_app

    app = create_app(index=indexed[0], captioner=str(tiny_blip), backbone=str(tiny_vit),
                     max_upload_bytes=200_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _png(size=(48, 40), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for tab in ("Search", "Caption", "Match"):
        assert f">{tab}</button>" in r.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/search/image", "/api/images/{image_id}", "/api/caption", "/api/match",
                 "/api/info"):
        assert path in spec["paths"], path
    hit = spec["components"]["schemas"]["Hit"]["properties"]
    assert {"id", "path", "score", "url"} <= hit.keys()
    assert client.get("/docs").status_code == 200


def test_info(client, indexed):
    info = client.get("/api/info").json()
    assert info["index"]["count"] == 12 and info["index"]["kind"] == "flat"
    assert info["features"]["search"]["available"] and info["features"]["caption"]["available"]
    assert info["max_upload_bytes"] == 200_000


def test_text_search_matches_library(client, indexed):
    out, _, enc = indexed
    r = client.post("/api/search", json={"query": "a green triangle", "k": 5})
    assert r.status_code == 200
    body = r.json()
    ref = Searcher(out, encoder=enc).text("a green triangle", 5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in ref]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in ref], atol=1e-4)
    assert body["hits"][0]["url"] == f"/api/images/{ref[0].id}"


def test_image_search_and_image_endpoint(client, indexed):
    root = indexed[1]
    data = (root / "test_00003.png").read_bytes()
    r = client.post("/api/search/image", files={"file": ("q.png", data, "image/png")}, data={"k": "3"})
    assert r.status_code == 200
    top = r.json()["hits"][0]
    assert top["path"] == "test_00003.png" and top["score"] == pytest.approx(1.0, abs=1e-3)
    img = client.get(top["url"])
    assert img.status_code == 200 and img.content == data
    thumb = client.get(top["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


@pytest.mark.parametrize("url", [
    "/api/images/../../etc/passwd", "/api/images/..%2F..%2Fsecret.txt", "/api/images/%2e%2e%2fsecret.txt",
    "/api/images/..", "/api/images/1%2F..%2F..%2Fsecret.txt", "/api/images/secret.txt", "/api/images/-1",
    "/api/images/99999999999999999999999999", "/api/images/1.5", "/api/images/0", "/api/images/%00",
    "/api/images//etc/passwd", "/api/images/1?size=100000", "/api/images/1?size=abc",
])
def test_path_traversal_and_bad_ids_are_refused(client, url):
    r = client.get(url)
    assert r.status_code in (404, 405, 422), (url, r.status_code)
    assert b"top secret" not in r.content and b"root:" not in r.content


def test_tampered_database_path_is_not_served(tmp_path, indexed):
    """Even a row whose path escapes the root (a hand-edited database) is refused."""
    from vlens.web.app import create_app

    out = indexed[0]
    copy = tmp_path / "idx"
    shutil.copytree(out, copy)
    con = sqlite3.connect(copy / "meta.sqlite")
    with con:
        con.execute("UPDATE images SET path = '../secret.txt' WHERE id = 1")
    con.close()
    with TestClient(create_app(index=copy)) as c:
        r = c.get("/api/images/1")
        assert r.status_code == 404 and b"top secret" not in r.content


@pytest.mark.parametrize("kwargs,status", [
    ({"json": {}}, 422),
    ({"json": {"query": ""}}, 422),
    ({"json": {"query": "x" * 1001}}, 422),
    ({"json": {"query": "circle", "k": 0}}, 422),
    ({"json": {"query": "circle", "k": "many"}}, 422),
    ({"json": {"query": ["a", "b"]}}, 422),
    ({"json": ["query"]}, 422),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ({"content": b"query=circle", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 422),
    ({"json": {"query": "   "}}, 422),
])
def test_malformed_search_requests_get_4xx(client, kwargs, status):
    r = client.post("/api/search", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_uploads_are_checked(client, indexed):
    root = indexed[1]
    cases = [
        (("notes.txt", b"hello", "text/plain"), 415),
        (("x.png", b"definitely not an image", "image/png"), 415),
        (("x.bin", b"\x00\x01\x02" * 100, "application/octet-stream"), 415),
        (("x.png", (root / "test_00001.png").read_bytes()[:200], "image/png"), 422),  # truncated
        (("x.png", b"", "image/png"), 422),
    ]
    for file, status in cases:
        r = client.post("/api/search/image", files={"file": file})
        assert r.status_code == status, (file[0], r.status_code, r.text)
        assert r.json()["detail"]
    r = client.post("/api/search/image", data={"k": "3"})  # no file at all
    assert r.status_code == 422
    r = client.post("/api/search/image", files={"file": ("q.png", _png(), "image/png")}, data={"k": "0"})
    assert r.status_code == 422


def test_oversized_uploads_get_413(client):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 200_000
    r = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the server counts the bytes as they arrive
        for i in range(0, len(big), 16384):
            yield big[i:i + 16384]

    r = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_caption_endpoint(client):
    img = ("q.png", _png((64, 64)), "image/png")
    r = client.post("/api/caption", files={"file": img}, data={"strategy": "greedy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["captions"]) == 1 and isinstance(body["captions"][0]["text"], str)
    assert isinstance(body["captions"][0]["ended"], bool)
    r = client.post("/api/caption", files={"file": img},
                    data={"strategy": "sample", "n": "3", "top_k": "5", "temperature": "0.7", "seed": "1",
                          "prompt": "a picture of"})
    assert r.status_code == 200 and len(r.json()["captions"]) == 3
    assert r.json()["settings"]["prompt"] == "a picture of"
    for bad in ({"strategy": "psychic"}, {"temperature": "-1"}, {"top_k": "0"}, {"n": "99"},
                {"strategy": "greedy", "n": "2"}):
        r = client.post("/api/caption", files={"file": img}, data=bad)
        assert r.status_code == 422, (bad, r.text)
    r = client.post("/api/caption", files={"file": ("a.txt", b"text", "text/plain")})
    assert r.status_code == 415


def test_caption_prompt_field_default_none_or_text():
    """The Caption tab's prompt: an empty field is the model's training prompt, the "no prompt" box is none at
    all (what `vlens caption --prompt ''` does), and both at once is a 422 naming the conflict. The shipped
    blip-tiny was trained behind "a picture of", so the three are told apart in what the server answers."""
    from vlens.web.app import create_app

    img = ("q.png", _png((64, 64)), "image/png")
    with TestClient(create_app(captioner="builtin:blip-tiny")) as c:
        def prompt_of(**form):
            r = c.post("/api/caption", files={"file": img}, data={"strategy": "greedy", **form})
            assert r.status_code == 200, r.text
            return r.json()["settings"]["prompt"]

        assert prompt_of() == "a picture of"
        assert prompt_of(no_prompt="true") == ""
        assert prompt_of(prompt="an image of") == "an image of"
        for route in ("/api/caption", "/api/caption/explain"):
            r = c.post(route, files={"file": img}, data={"prompt": "an image of", "no_prompt": "true"})
            assert r.status_code == 422 and "not both" in r.text
        r = c.post("/api/caption/explain", files={"file": img}, data={"no_prompt": "true"})
        assert r.status_code == 200, r.text


def test_match_endpoint(client, indexed):
    root = indexed[1]
    a = ("a.png", (root / "test_00001.png").read_bytes(), "image/png")
    b = ("b.png", (root / "test_00002.png").read_bytes(), "image/png")
    r = client.post("/api/match", files={"image_a": a, "image_b": b}, data={"score": "cycle", "count": "10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"].startswith("data:image/png;base64,") and len(body["matches"]) == 10
    import base64

    pic = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1])))
    assert pic.width > pic.height  # the two images side by side
    from vlens.match.refine import DEFAULT_REFINE, METHODS

    assert body["refine"] == DEFAULT_REFINE  # as `vlens match`
    assert body["bin_levels"] == 2 and body["stride"] is None  # binned by default, as `vlens match`
    strided = client.post("/api/match", files={"image_a": a, "image_b": b},
                          data={"count": "5", "stride": "4", "bin_levels": "0"}).json()
    assert strided["stride"] == 4 and strided["bin_levels"] == 0 and len(strided["matches"]) == 5
    # ranked by the chosen score, best first: mutual matches first (a refined cycle distance of a mutual match is
    # sub-patch noise, see Matches.order), then the others by cycle distance
    key = [0.0 if m["mutual"] else m["cycle_distance"] for m in body["matches"]]
    assert key == sorted(key)
    centres = client.post("/api/match", files={"image_a": a, "image_b": b},
                          data={"score": "cycle", "count": "10", "refine": "none"}).json()
    assert centres["refine"] == "none"
    cycle = [m["cycle_distance"] for m in centres["matches"]]
    assert cycle == sorted(cycle)  # patch centres: a mutual match's cycle distance is exactly 0
    spec = client.get("/openapi.json").json()
    form = spec["components"]["schemas"]["Body_match_api_match_post"]["properties"]["refine"]
    assert {v for alt in form.get("anyOf", [form]) for v in alt.get("enum", [])} == set(METHODS)
    assert client.post("/api/match", files={"image_a": a, "image_b": b}, data={"refine": "cubic"}).status_code == 422
    r = client.post("/api/match", files={"image_a": a, "image_b": b}, data={"score": "vibes"})
    assert r.status_code == 422
    r = client.post("/api/match", files={"image_a": a})
    assert r.status_code == 422


def test_without_index_search_says_how_to_enable_it(tiny_blip):
    from vlens.web.app import create_app

    with TestClient(create_app(captioner=str(tiny_blip))) as c:
        r = c.post("/api/search", json={"query": "a circle"})
        assert r.status_code == 503 and "--index" in r.json()["detail"]
        assert c.get("/api/images/1").status_code == 503
        info = c.get("/api/info").json()
        assert info["index"] is None and not info["features"]["search"]["available"]


def test_wrong_methods_and_unknown_routes(client):
    assert client.get("/api/search").status_code == 405
    assert client.delete("/api/images/1").status_code == 405
    assert client.get("/api/nothing").status_code == 404


@pytest.mark.slow
def test_serve_command_binds_localhost_and_answers(indexed, tmp_path):
    """`vlens serve` as a user runs it: a real process on 127.0.0.1, the page and the API answer."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vlens.cli.main", "serve", "--index", str(indexed[0]),
                             "--port", str(port), "--no-preload"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["index"]["count"] == 12
        # The first search loads the model in the server process: generous, a loaded CI machine is slow.
        hits = httpx.post(f"http://127.0.0.1:{port}/api/search", json={"query": "a red circle", "k": 2},
                          timeout=300).json()["hits"]
        assert len(hits) == 2
        assert "<title>vlens</title>" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}" in out


def test_missing_models_are_reported_up_front(indexed):
    from vlens.web.app import create_app

    with TestClient(create_app(index=indexed[0], captioner="builtin:nope", backbone="builtin:nada")) as c:
        f = c.get("/api/info").json()["features"]
        assert f["search"]["available"]
        assert not f["caption"]["available"] and "builtin:nope" in f["caption"]["detail"]
        assert not f["match"]["available"] and "builtin:nada" in f["match"]["detail"]
        r = c.post("/api/caption", files={"file": ("q.png", _png(), "image/png")})
        assert r.status_code == 503 and "builtin:nope" in r.json()["detail"]


def test_cpu_slots_reach_the_limiter_the_routes_use(monkeypatch):
    """`create_app(cpu_slots=N)` (what `vlens serve` passes from the CPU policy) sizes the limiter that
    run_cpu uses (it lives in vlens.web.shared, with the other request helpers)."""
    from vlens.web import shared
    from vlens.web.app import create_app

    monkeypatch.setattr(shared, "CPU_SLOTS", shared.CPU_SLOTS)
    monkeypatch.setattr(shared, "_cpu_limiter", None)
    create_app(cpu_slots=3)
    assert shared.CPU_SLOTS == 3 and shared._cpu_limiter is None


def test_info_names_each_model_and_its_source(client, tiny_blip, tiny_vit):
    models = client.get("/api/info").json()["models"]
    assert models["caption"] == {"spec": str(tiny_blip), "source": "local", "builtin": False, "knows": "",
                                 "real": "Salesforce/blip-image-captioning-base",
                                 "fetch": "vlens models fetch Salesforce/blip-image-captioning-base"}
    assert models["match"]["source"] == "local" and models["search"]["source"] == "local"


def test_without_models_the_server_runs_the_builtins_and_says_so():
    from vlens.web.app import create_app

    with TestClient(create_app()) as c:  # the tests run with VLENS_OFFLINE=1: the task defaults fall back
        models = c.get("/api/info").json()["models"]
        page = c.get("/").text
    assert models["caption"]["spec"] == "builtin:blip-tiny" and models["caption"]["builtin"] is True
    assert "synthetic shapes" in models["caption"]["knows"]
    assert models["match"]["source"] == "builtin"
    assert models["match"]["fetch"] == "vlens models fetch facebook/dino-vits8"
    assert "search" not in models and 'id="model-notice"' in page


def test_offline_fused_match_default_is_available(monkeypatch):
    """The offline Match default is a fusion (builtin:dino-tiny*0.2+sift:8*0.8): the page must offer Match and
    Explore, as their routes answer; a fusion naming a missing part is still reported up front."""
    from vlens.models.defaults import MATCH_FALLBACK
    from vlens.web.app import create_app

    with TestClient(create_app(backbone=MATCH_FALLBACK)) as c:
        f = c.get("/api/info").json()["features"]
        assert f["match"]["available"] and f["explore"]["available"], f["match"]
        assert c.post("/api/match", files={"image_a": ("a.png", _png((64, 64)), "image/png"),
                                           "image_b": ("b.png", _png((64, 64)), "image/png")}).status_code == 200
    with TestClient(create_app(backbone="builtin:nada*0.5+sift:8*0.5")) as c:
        f = c.get("/api/info").json()["features"]
        assert not f["match"]["available"] and "builtin:nada" in f["match"]["detail"]


def test_info_lists_the_skipped_files_index_info_lists(tmp_path, shapes_index, cli):
    """/api/info counts what `vlens index info` lists: the stored unreadable files and the files the folder scan
    refuses by name (links out of the folder), with the same root-relative paths."""
    import json

    from vlens.web.app import create_app

    idx, root = shapes_index(tmp_path, n=3)
    (tmp_path / "outside.png").write_bytes(_png())
    (root / "link_out.png").symlink_to(tmp_path / "outside.png")
    (root / "broken.png").write_bytes(b"not a png")
    code, out, _ = cli("index", "update", idx, "--json")
    assert code == 0, out
    code, out, _ = cli("index", "info", idx, "--json")
    listed = json.loads(out)["skipped"]
    assert {s["path"] for s in listed} == {"link_out.png", "broken.png"}
    with TestClient(create_app(index=idx)) as c:
        ix = c.get("/api/info").json()["index"]
    assert ix["skipped"] == len(listed) == 2
    assert sorted(s["path"] for s in ix["skipped_files"]) == sorted(s["path"] for s in listed)


def test_match_endpoint_pairs(client, indexed):
    root = indexed[1]
    a = ("a.png", (root / "test_00001.png").read_bytes(), "image/png")
    b = ("b.png", (root / "test_00002.png").read_bytes(), "image/png")
    body = client.post("/api/match", files={"image_a": a, "image_b": b}, data={"pairs": "4", "refine": "none"}).json()
    assert 1 <= body["pairs"] == len(body["matches"]) <= 4 and body["ranked_by"] in ("saliency", "cycle")
    assert all(m["mutual"] for m in body["matches"])
    assert len({m["cluster"] for m in body["matches"]}) == len(body["matches"])
    r = client.post("/api/match", files={"image_a": a, "image_b": b}, data={"preset": "dvf", "pairs": "3"})
    assert r.status_code == 200, r.text
    assert r.json()["preset"] == "dvf" and r.json()["pairs"] <= 3
    assert client.post("/api/match", files={"image_a": a, "image_b": b}, data={"preset": "xyz"}).status_code == 422


def test_library_filters_combined_queries_and_dupes(client, indexed):
    """The Search tab's API: the library a page at a time (with filters and skip counts), combined queries equal
    to the library's Searcher, paths refused, duplicate groups."""
    from vlens.retrieval.query import parse_query
    from vlens.retrieval.search import Searcher

    out, root, enc = indexed
    page = client.post("/api/library?limit=5", json={}).json()
    assert page["total"] == page["passed"] == 12 and len(page["items"]) == 5
    assert [it["path"] for it in page["items"]] == sorted(p.name for p in root.glob("*.png"))[:5]
    page2 = client.post("/api/library?offset=10&limit=5", json={}).json()
    assert len(page2["items"]) == 2
    assert client.post("/api/library", json={"format": "png", "folder": "."}).json()["passed"] == 12
    assert client.post("/api/library", json={"format": "heic"}).json()["passed"] == 0
    assert client.post("/api/library", json={"after": "someday"}).status_code == 422

    q = "2:a red circle - a blue square + id:3"
    r = client.post("/api/search", json={"query": q, "k": 4})
    assert r.status_code == 200, r.text
    s = Searcher(out, encoder=enc)
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in s.query(parse_query(q), 4)]
    assert client.post("/api/search", json={"query": "x", "format": "heic"}).json()["hits"] == []
    r = client.post("/api/search", json={"query": "a cat + ./secret.jpg"})
    assert r.status_code == 422 and "upload the image" in r.json()["detail"]
    # an upload combines with the typed terms
    data = (root / "test_00004.png").read_bytes()
    r = client.post("/api/search/image", files={"file": ("q.png", data, "image/png")},
                    data={"k": "3", "query": "a red circle", "format": "png"})
    assert r.status_code == 200, r.text
    d = client.get("/api/dupes").json()
    assert d["threshold"] == 0.95 and isinstance(d["groups"], list)
