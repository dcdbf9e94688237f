"""The Explore endpoints and the caption explainer through FastAPI's TestClient: content-keyed cache, the point
heatmap on a shifted pair, attention panels, why-these-words, and 4xx (never 5xx) on bad input."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _texture(size=(96, 80), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3)).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture(scope="module")
def client(tiny_blip):
    from vlens.web.app import create_app

    app = create_app(captioner=str(tiny_blip), backbone="pixels:8", max_upload_bytes=400_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def vit_client(tiny_vit):
    from vlens.web.app import create_app

    with TestClient(create_app(backbone=str(tiny_vit)), raise_server_exceptions=False) as c:
        yield c


def _upload(c, img: Image.Image) -> dict:
    r = c.post("/api/explore/images", files={"file": ("x.png", _png(img), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_images_are_keyed_by_content(client):
    a = _texture()
    first, again = _upload(client, a), _upload(client, a.copy())
    assert first["id"] == again["id"] and (first["width"], first["height"]) == (96, 80)
    other = _upload(client, _texture(seed=1))
    assert other["id"] != first["id"]
    r = client.get(first["url"])
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (96, 80)
    big = _upload(client, Image.new("RGB", (2000, 400), (10, 200, 30)))
    assert max(big["width"], big["height"]) == 1024  # stored bounded


def test_uploads_are_bounded_like_every_other_route(client):
    # /api/explore/images and /api/caption/explain read uploads without the shape check the other routes made.
    strip = _png(Image.new("RGB", (4000, 60), (10, 200, 30)))
    for route in ("/api/explore/images", "/api/caption/explain"):
        r = client.post(route, files={"file": ("strip.png", strip, "image/png")})
        assert r.status_code == 422, (route, r.status_code)
        assert r.json()["detail"] == "file (strip.png): 4000x60 pixels is too elongated (more than 16:1); crop it"


def test_point_heatmap_peaks_at_the_true_location_and_features_are_cached(client):
    tex = _texture((160, 160), seed=2)
    a_img, b_img = tex.crop((0, 0, 96, 96)), tex.crop((24, 16, 120, 112))  # A's p is B's p - (24, 16)
    a, b = _upload(client, a_img), _upload(client, b_img)
    body = {"image_a": a["id"], "image_b": b["id"], "x": 50.0, "y": 41.0, "pca": 0, "size": 96, "top_k": 4}
    r = client.post("/api/explore/point", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    truth = [(6 + 0.5) * 8 - 24, (5 + 0.5) * 8 - 16]  # the centre of A's patch (6, 5), shifted
    assert d["peak_xy"] == truth and d["best"]["xy"] == truth and d["mutual"] and d["cycle_distance"] == 0
    assert len(d["candidates"]) == 4 and d["cached"] is False
    heat = _decode(d["heatmap"])
    assert heat.size == b_img.size
    arr = np.asarray(heat.convert("L"), dtype=float)  # inferno: the brightest pixels are the highest similarity
    py, px = np.unravel_index(arr.argmax(), arr.shape)
    assert abs(px + 0.5 - truth[0]) <= 8 and abs(py + 0.5 - truth[1]) <= 8
    r2 = client.post("/api/explore/point", json={**body, "x": 10.0, "y": 70.0})
    assert r2.status_code == 200 and r2.json()["cached"] is True  # a second click: no new features, no new PCA
    r3 = client.post("/api/explore/point", json={**body, "pca": 5})
    assert r3.json()["cached"] is False  # other settings, other cache entry
    cache = client.app.state.explore
    assert len(cache.features) >= 2 and cache.features.hits >= 2


def test_demo_pair(client):
    r = client.post("/api/explore/demo")
    assert r.status_code == 200
    d = r.json()
    dx, dy = d["shift"]
    assert d["a"]["width"] - dx == d["b"]["width"] and d["a"]["height"] - dy == d["b"]["height"]


@pytest.mark.parametrize("body,status", [
    ({"image_a": "0" * 16, "image_b": "0" * 16, "x": 1, "y": 1}, 404),
    ({"image_a": "../../etc/passwd", "image_b": "0" * 16, "x": 1, "y": 1}, 422),
    ({"image_a": "0" * 16, "image_b": "0" * 16, "x": -1, "y": 1}, 422),
    ({"image_a": "0" * 16, "image_b": "0" * 16, "x": 1, "y": 1, "size": 5000}, 422),
    ({"image_a": "0" * 16, "image_b": "0" * 16, "x": 1, "y": 1, "facet": "nope"}, 422),
    ({"image_a": "0" * 16}, 422),
])
def test_bad_point_requests_get_4xx(client, body, status):
    r = client.post("/api/explore/point", json=body)
    assert r.status_code == status and "detail" in r.json()


def test_point_outside_image_a_and_pixels_attention_are_4xx(client):
    a = _upload(client, _texture())
    r = client.post("/api/explore/point", json={"image_a": a["id"], "image_b": a["id"], "x": 500, "y": 1})
    assert r.status_code == 422 and "outside" in r.json()["detail"]
    r = client.post("/api/explore/attention", json={"image": a["id"]})
    assert r.status_code == 422 and "no attention" in r.json()["detail"]
    assert client.get("/api/explore/images/nothex").status_code == 422
    assert client.get("/api/explore/images/" + "f" * 16).status_code == 404


def test_attention_panels_at_image_size(vit_client):
    a = _upload(vit_client, _texture((72, 56)))
    r = vit_client.post("/api/explore/attention", json={"image": a["id"], "size": 64})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["heads"] == 2 and len(d["panels"]) == 2 + 2  # PCA, mean, one per head
    assert all(_decode(p["image"]).size == (72, 56) for p in d["panels"])
    assert all(0 <= p["on_prefix"] <= 1 for p in d["panels"][2:])


def test_caption_explain_endpoint(client):
    img = _png(_texture((64, 64), seed=3))
    r = client.post("/api/caption/explain", files={"file": ("x.png", img, "image/png")},
                    data={"strategy": "sample", "top_k": "3", "temperature": "0.7", "seed": "0", "show": "5"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["steps"] and d["summary"]["steps"] == len(d["steps"])
    for st in d["steps"]:
        assert st["eligible"] <= 3 and len(st["candidates"]) >= 5
        kept = [c for c in st["candidates"] if c["kept"]]
        assert sum(c["p_sample"] for c in kept) == pytest.approx(1.0, abs=1e-3)
        assert all(c["p_sample"] == 0 for c in st["candidates"] if not c["kept"])
    r = client.post("/api/caption/explain", files={"file": ("x.png", img, "image/png")}, data={"top_p": "0"})
    assert r.status_code == 422


def test_openapi_lists_the_explore_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/explore/images", "/api/explore/point", "/api/explore/attention", "/api/explore/demo",
              "/api/caption/explain"):
        assert p in paths


# ------------------------------------------------- one validation rule for every explore route (issue 23, item 12)


def _point(c, a, b, **kw):
    return c.post("/api/explore/point", json={"image_a": a, "image_b": b, "x": 5, "y": 5, "size": 64, **kw})


def test_layers_are_numbered_like_the_cli_on_every_route(vit_client):
    """Layer 0 used to be taken as the last block by /point and refused by /attention; past the end, /point
    named the 0-based block (layer 3 of a 2-block model was 'layer 2 does not exist')."""
    a = _upload(vit_client, _texture((64, 64), seed=4))["id"]
    att = {"image": a, "size": 64}
    zero = [_point(vit_client, a, a, layer=0), vit_client.post("/api/explore/attention", json={**att, "layer": 0})]
    for r in zero:
        assert r.status_code == 422
        assert r.json()["detail"] == ("layer: 0 does not exist: layers are counted from 1 (-1 = the last), as on "
                                      "the command line")
    for layer in (3, -3, 256):  # the tiny ViT has 2 blocks
        for r in (_point(vit_client, a, a, layer=layer),
                  vit_client.post("/api/explore/attention", json={**att, "layer": layer})):
            assert r.status_code == 422
            assert r.json()["detail"].startswith(f"layer {layer} does not exist: ")
            assert r.json()["detail"].endswith("has 2 layers (use 1..2 or -1 for the last)")
    for layer in (1, 2, -1, -2):
        assert _point(vit_client, a, a, layer=layer).status_code == 200
        r = vit_client.post("/api/explore/attention", json={**att, "layer": layer})
        assert r.status_code == 200 and r.json()["layer"] == (layer if layer > 0 else 3 + layer)
    assert _point(vit_client, a, a, layer=257).status_code == 422  # the CLI's range, before any model work


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_coordinates_are_refused_as_such(client, value):
    a = _upload(client, _texture())["id"]
    body = f'{{"image_a": "{a}", "image_b": "{a}", "x": {value}, "y": 5}}'
    r = client.post("/api/explore/point", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"] == "x: Input should be a finite number"  # was "must be <= 1024" for NaN too


@pytest.mark.parametrize("size", [(1, 1), (7, 40), (40, 7)])
def test_images_smaller_than_one_patch_are_refused_at_upload(client, size):
    """A 1x1 upload used to be stored and then fail on every click; pixels:8 needs 8 px on the shorter side."""
    r = client.post("/api/explore/images", files={"file": ("dot.png", _png(Image.new("RGB", size)), "image/png")})
    assert r.status_code == 422
    d = r.json()["detail"]
    assert d.startswith(f"file (dot.png): {size[0]}x{size[1]} pixels is too small for pixels:8")
    assert "at least 8 px on its shorter side" in d
    ok = _upload(client, Image.new("RGB", (8, 8), (200, 10, 10)))  # exactly one patch: stored and usable
    r = client.post("/api/explore/point", json={"image_a": ok["id"], "image_b": ok["id"], "x": 3, "y": 3})
    assert r.status_code == 200, r.text


def test_upload_errors_name_the_file(client):
    r = client.post("/api/explore/images", files={"file": ("holiday.jpg", b"not a picture", "image/jpeg")})
    assert r.status_code == 415 and r.json()["detail"] == "file (holiday.jpg): not a recognised image format"
    r = client.post("/api/explore/images", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 422 and r.json()["detail"] == "file (empty.png): the file is empty"
    from starlette.datastructures import UploadFile

    from vlens.web.shared import upload_label

    assert upload_label(UploadFile(io.BytesIO(), filename="a\nb.png"), "file") == "file (a\\nb.png)"  # one line
    assert upload_label(UploadFile(io.BytesIO(), filename=None), "image_a") == "image_a"


def test_attention_names_the_image_it_cannot_use(tiny_vit):
    """The attention path called every image 'image' ("cannot load image image: ...")."""
    from vlens.errors import ImageLoadError
    from vlens.match.attention import cls_attention

    img = Image.new("RGB", (4, 4))
    img.info["vlens_source"] = "holiday.jpg"
    with pytest.raises(ImageLoadError, match="^cannot load image holiday.jpg: 4x4 pixels is smaller than one"):
        cls_attention(img, str(tiny_vit), size=64)
