"""Issue 32 items 1, 2 and 5: a photo library as phones and cameras write it. HEIC, AVIF and camera RAW (a DNG the
test writes) are read everywhere images are read, every file a folder scan passes over is counted by kind, the
index stores capture time, camera, GPS, size, folder and format, and an update never re-reads unchanged files."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import numpy as np
import pytest
from PIL import Image

from vlens import image_formats
from vlens.errors import ImageLoadError
from vlens.images import header_meta, load_image, scan_folder
from vlens.photo_meta import exif_fields, file_fields, parse_exif_time
from vlens.retrieval.index import IndexConfig, build_index, update_index
from vlens.retrieval.index_reader import ImageIndex

pillow_heif = pytest.importorskip("pillow_heif")  # a default dependency; importorskip only names it
pytest.importorskip("rawpy")
pytest.importorskip("tifffile")  # the DNG writer (scripts/demo_photos.py)

PARIS = {"taken_at": "2024:05:01 14:03:22", "make": "Apple", "model": "iPhone 15", "lat": ("N", (48.0, 51.0, 29.0)),
         "lon": ("W", (2.0, 17.0, 40.0))}


def make_exif(orientation: int = 1, taken_at=PARIS["taken_at"], make=PARIS["make"], model=PARIS["model"],
              gps=True) -> Image.Exif:
    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0112] = make, model, orientation
    ex.get_ifd(0x8769)[0x9003] = taken_at
    if gps:
        g = ex.get_ifd(0x8825)
        g[1], g[2] = PARIS["lat"]
        g[3], g[4] = PARIS["lon"]
    return ex


def write_dng(path, rgb: np.ndarray, make: str = "VlensCam", model: str = "Model T") -> None:
    """scripts/demo_photos.py's DNG writer (the picture as a 12-bit RGGB sensor mosaic with the DNG tags LibRaw
    needs), loaded from the script, so these tests also check what the README's demo folder is made of."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "demo_photos", Path(__file__).resolve().parents[1] / "scripts" / "demo_photos.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.write_dng(Path(path), rgb, make, model)


@pytest.fixture()
def library(shapes_folder, tmp_path):
    """Shapes images as a phone and a camera would leave them: PNGs, a HEIC (rotated by EXIF, with capture time,
    camera and GPS), an AVIF, a DNG, in two folders."""
    root = shapes_folder(tmp_path / "photos", n=6)
    pngs = sorted(root.glob("*.png"))
    trip = root / "trip"
    trip.mkdir()
    pillow_heif.register_heif_opener()
    # stored sideways with orientation 6 (rotate 90° clockwise to view), as a phone held upright writes it
    Image.open(pngs[0]).convert("RGB").crop((0, 0, 64, 40)).rotate(90, expand=True).save(trip / "IMG_0001.HEIC", "HEIF",
                                                                     exif=make_exif(6).tobytes(), quality=95)
    Image.open(pngs[1]).convert("RGB").save(trip / "b.avif", "AVIF", quality=95,
                                            exif=make_exif(gps=False, make="Google", model="Pixel 8").tobytes())
    write_dng(root / "c.dng", np.asarray(Image.open(pngs[2]).convert("RGB")))
    return root


def test_heic_avif_dng_load_upright_with_their_metadata(library, shapes_dir):
    pngs = sorted(library.glob("*.png"))
    ref0 = np.asarray(Image.open(pngs[0]).convert("RGB").crop((0, 0, 64, 40)), np.float64)  # (40, 64, 3)
    heic = load_image(library / "trip" / "IMG_0001.HEIC")
    assert heic.size == (64, 40)
    assert np.abs(np.asarray(heic, np.float64) - ref0).mean() < 6  # upright (EXIF orientation applied), lossy
    assert heic.info["vlens_meta"] == {"taken_at": 1714572202.0, "camera_make": "Apple", "camera_model": "iPhone 15",
                                       "gps_lat": pytest.approx(48 + 51 / 60 + 29 / 3600),
                                       "gps_lon": pytest.approx(-(2 + 17 / 60 + 40 / 3600))}
    avif = load_image(library / "trip" / "b.avif")
    assert np.abs(np.asarray(avif, np.float64) - np.asarray(Image.open(pngs[1]).convert("RGB"))).mean() < 6
    assert avif.info["vlens_meta"]["camera_model"] == "Pixel 8" and avif.info["vlens_meta"]["gps_lat"] is None
    dng = load_image(library / "c.dng")  # no preview inside: a half-size demosaic of the mosaic
    ref2 = Image.open(pngs[2]).convert("RGB")
    assert dng.size == (ref2.width // 2, ref2.height // 2) and dng.info["vlens_size"] == ref2.size
    small = np.asarray(ref2.resize(dng.size, Image.Resampling.BOX), np.float64)
    assert np.corrcoef(np.asarray(dng, np.float64).ravel(), small.ravel())[0, 1] > 0.9  # the same picture
    assert dng.info["vlens_meta"]["camera_make"] == "VlensCam"
    # uploads come as bytes with a name (or none): the content decides
    assert load_image((library / "c.dng").read_bytes(), name="upload").size == dng.size
    assert load_image((library / "trip" / "IMG_0001.HEIC").read_bytes()).size == heic.size
    # header only, nothing decoded: the same metadata and the upright size
    h = header_meta(library / "trip" / "IMG_0001.HEIC")
    assert (h["width"], h["height"]) == heic.size and h["camera_model"] == "iPhone 15"
    assert (header_meta(library / "c.dng")["width"], header_meta(library / "c.dng")["height"]) == ref2.size


def test_jpeg_xl_loads_when_its_plugin_is_installed(tmp_path, shapes_dir):
    pytest.importorskip("pillow_jxl")
    src = Image.open(sorted((shapes_dir / "images").glob("test_*.png"))[0]).convert("RGB")
    src.save(tmp_path / "a.jxl", "JXL", quality=95, exif=make_exif(gps=False).tobytes())
    img = load_image(tmp_path / "a.jxl")
    assert np.abs(np.asarray(img, np.float64) - np.asarray(src, np.float64)).mean() < 6
    assert img.info["vlens_meta"]["camera_model"] == "iPhone 15"


def test_a_missing_reader_says_what_to_install(library, monkeypatch, tmp_path):
    monkeypatch.setattr(image_formats, "installed", lambda fam: fam == "pillow")
    monkeypatch.setattr(image_formats, "enable", lambda fam: fam == "pillow")
    for name in ("trip/IMG_0001.HEIC", "c.dng"):
        with pytest.raises(ImageLoadError, match=r"install vlens\[photos\]"):
            load_image(library / name)
    assert image_formats.missing_reason("heif") == ("reading HEIC/HEIF images needs pillow-heif: install "
                                                    "vlens[photos] (pip install 'vlens[photos]')")
    kinds = scan_folder(library).passed_over
    assert kinds == {".heic (install vlens[photos])": 1, ".dng (install vlens[photos])": 1}


def test_folder_scan_counts_every_kind_it_passes_over(library, tmp_path, cli, tiny_clip):
    (library / "clip.MOV").write_bytes(b"\x00" * 10)
    (library / "trip" / "clip2.mov").write_bytes(b"\x00" * 10)
    (library / "trip" / "IMG_0001.xmp").write_text("<x/>")
    (library / ".DS_Store").write_bytes(b"x")
    (library / "README").write_text("notes")
    (library / "broken.jpg").write_bytes(b"not a jpeg")
    (library / "half.png").write_bytes((library / "test_00000.png").read_bytes()[:60])
    os.symlink(library / "trip", library / "trip-link")
    out = tmp_path / "idx"
    code, text, err = cli("index", "build", library, "--out", out, "--model", tiny_clip)
    assert code == 0, err
    assert text.startswith("9 images indexed")  # 6 PNGs, the HEIC, the AVIF, the DNG
    assert ("skipped: 2 .mov, 1 .xmp, 1 hidden, 1 link to a folder (not followed), 1 no suffix, 2 unreadable:"
            in text), text
    assert "/broken.jpg: " in text and "/half.png: " in text
    code, stdout, _ = cli("index", "info", out, "--json")
    info = json.loads(stdout)
    assert info["passed_over"] == {".mov": 2, ".xmp": 1, "hidden": 1, "link to a folder (not followed)": 1,
                                   "no suffix": 1}
    assert {s["path"] for s in info["skipped"]} == {"broken.jpg", "half.png"}
    code, text, _ = cli("index", "info", out)
    assert "skipped   2 .mov, 1 .xmp, 1 hidden, 1 link to a folder (not followed), 1 no suffix, 2 unreadable:" in text


def test_heic_avif_dng_are_indexed_captioned_and_matched(library, tmp_path, cli, tiny_clip, tiny_blip, tiny_vit,
                                                         clip_encoder):
    out = tmp_path / "idx"
    rep = build_index(library, out, IndexConfig(model=str(tiny_clip), captioner=str(tiny_blip)),
                      embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False, workers=0)
    assert rep.total == 9 and not rep.skipped and not rep.passed_over
    ix = ImageIndex(out)
    for name in ("trip/IMG_0001.HEIC", "trip/b.avif", "c.dng"):  # each finds itself first by its own pixels
        q = clip_encoder.encode_images([load_image(library / name)])
        scores, ids = ix.search(q, 1)
        row = ix.rows(ids[0])[int(ids[0][0])]
        assert row["path"] == name and scores[0][0] > 0.999 and row["caption"]
    ix.close()
    code, stdout, err = cli("caption", library / "trip" / "IMG_0001.HEIC", library / "trip" / "b.avif",
                            library / "c.dng", "--model", tiny_blip, "--max-new-tokens", "4")
    assert code == 0 and len(stdout.strip().splitlines()) == 3, err
    code, stdout, err = cli("match", library / "trip" / "IMG_0001.HEIC", library / "c.dng", "--model", tiny_vit,
                            "--size", "64", "--out", tmp_path / "m.png", "--json")
    assert code == 0, err
    assert json.loads(stdout)["matches"] and (tmp_path / "m.png").exists()
    # the web app: a camera raw and a HEIC uploaded as browsers send them, and the library's HEIC as a thumbnail
    from fastapi.testclient import TestClient

    from vlens.web.app import create_app

    with TestClient(create_app(index=out, captioner=str(tiny_blip))) as c:
        r = c.post("/api/search/image", data={"k": "1"},
                   files={"file": ("c.dng", (library / "c.dng").read_bytes(), "application/octet-stream")})
        assert r.status_code == 200 and r.json()["hits"][0]["path"] == "c.dng", r.text
        r = c.post("/api/search/image", data={"k": "1"},
                   files={"file": ("x.heic", (library / "trip" / "IMG_0001.HEIC").read_bytes(), "image/heic")})
        hit = r.json()["hits"][0]
        assert hit["path"] == "trip/IMG_0001.HEIC"
        thumb = c.get(hit["thumb_url"])
        w, h = Image.open(io.BytesIO(thumb.content)).size
        assert thumb.status_code == 200 and w * 40 == h * 64  # upright: landscape as the photo was taken
        r = c.post("/api/caption", files={"file": ("b.avif", (library / "trip" / "b.avif").read_bytes(),
                                                   "image/avif")}, data={"strategy": "greedy"})
        assert r.status_code == 200, r.text


def test_metadata_columns_are_stored_and_an_old_index_is_filled_in(library, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    emb = (clip_encoder.encode_images, clip_encoder.dim)
    build_index(library, out, IndexConfig(model="x"), embedder=emb, progress=False, workers=0)
    con = sqlite3.connect(out / "meta.sqlite")
    cols = "path, taken_at, camera_make, camera_model, gps_lat, gps_lon, width, height, folder, format, size"
    rows = {r[0]: r[1:] for r in con.execute(f"SELECT {cols} FROM images")}
    heic = rows["trip/IMG_0001.HEIC"]
    assert heic[:3] == (1714572202.0, "Apple", "iPhone 15") and heic[3] == pytest.approx(48.858055555)
    assert heic[4] == pytest.approx(-2.294444444) and heic[5:9] == (64, 40, "trip", "heic")
    assert heic[9] == (library / "trip" / "IMG_0001.HEIC").stat().st_size
    assert rows["c.dng"][1:3] == ("VlensCam", "Model T") and rows["c.dng"][5:9] == (64, 64, "", "dng")
    assert rows["test_00000.png"] == (None,) * 5 + (64, 64, "", "png", (library / "test_00000.png").stat().st_size)
    # An index from before the columns existed: readers see None, the next update reads the headers (no embedding).
    con.executescript("CREATE TABLE old AS SELECT id, path, size, mtime_ns, sha256, caption, vector, added FROM "
                      "images; DROP TABLE images; ALTER TABLE old RENAME TO images;")
    con.close()
    ix = ImageIndex(out)
    row = next(iter(ix.rows([1]).values()))
    assert row["path"] and row["taken_at"] is None and row["format"] is None
    ix.close()
    rep = update_index(out, embedder=(lambda ims: pytest.fail("re-embedded"), clip_encoder.dim), progress=False)
    assert rep.described == 9 and rep.embedded == 0 and "photo metadata read for 9" in rep.summary()
    ix = ImageIndex(out)
    got = {r["path"]: r for r in ix.rows(range(1, 20)).values()}
    assert got["trip/IMG_0001.HEIC"]["taken_at"] == 1714572202.0 and got["trip/IMG_0001.HEIC"]["height"] == 40
    assert got["c.dng"]["camera_model"] == "Model T" and got["trip/b.avif"]["folder"] == "trip"
    ix.close()


def test_update_never_rereads_unchanged_files_nor_loads_the_model(library, tmp_path, clip_encoder, monkeypatch):
    import vlens.images
    import vlens.retrieval.index as index_mod

    out = tmp_path / "idx"
    build_index(library, out, IndexConfig(model="x"), embedder=(clip_encoder.encode_images, clip_encoder.dim),
                progress=False, workers=0)
    reads = []
    real_load, real_sha, real_header = vlens.images.load_image, index_mod.file_sha256, vlens.images.header_meta
    monkeypatch.setattr(vlens.images, "load_image", lambda p, **kw: reads.append(("decode", p)) or real_load(p))
    monkeypatch.setattr(index_mod, "file_sha256", lambda p: reads.append(("hash", p)) or real_sha(p))
    monkeypatch.setattr(vlens.images, "header_meta", lambda p: reads.append(("header", p)) or real_header(p))
    monkeypatch.setattr(index_mod, "_default_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    faiss_mtime = (out / "vectors.faiss").stat().st_mtime_ns
    rep = update_index(out, progress=False, workers=0)  # nothing changed: no file opened, no model, same FAISS file
    assert reads == [] and rep.unchanged == 9 and rep.embedded == 0
    assert (out / "vectors.faiss").stat().st_mtime_ns == faiss_mtime
    # two files change: exactly those two are hashed and decoded
    pngs = sorted(library.glob("*.png"))
    for p in pngs[:2]:
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p)
    monkeypatch.setattr(index_mod, "_default_embedder", lambda *a, **k: (clip_encoder.encode_images,
                                                                         clip_encoder.dim))
    rep = update_index(out, progress=False, workers=0)
    assert rep.changed == 2 and rep.embedded == 2 and rep.unchanged == 7
    assert sorted(reads) == sorted([(k, p) for p in pngs[:2] for k in ("hash", "decode")])


def test_exif_parsing_edge_cases():
    assert parse_exif_time("2024:05:01 14:03:22") == 1714572202.0
    assert parse_exif_time("2024-05-01T14:03:22+02:00") == 1714572202.0  # wall-clock time, zone ignored
    for bad in ("0000:00:00 00:00:00", "    :  :     :  :  ", "", None, 17, "2024:13:01 00:00:00"):
        assert parse_exif_time(bad) is None
    f = exif_fields(make_exif())
    assert f["gps_lat"] == pytest.approx(48.858055555) and f["gps_lon"] == pytest.approx(-2.294444444)
    south = make_exif()
    south.get_ifd(0x8825)[1] = "S"
    assert exif_fields(south)["gps_lat"] == pytest.approx(-48.858055555)
    broken = make_exif()
    broken.get_ifd(0x8825)[2] = (200.0, 0.0, 0.0)  # not a latitude: no position at all
    assert exif_fields(broken)["gps_lat"] is None and exif_fields(broken)["gps_lon"] is None
    assert exif_fields(None) == dict.fromkeys(("taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon"))
    assert file_fields("a/b/IMG.JPG") == {"folder": "a/b", "format": "jpg"}
    assert file_fields("x.heic") == {"folder": "", "format": "heic"}
    assert image_formats.sniff(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "heif"
    assert image_formats.sniff(b"\xff\x0a\x00") == "jxl" and image_formats.sniff(b"\x89PNG\r\n") is None
