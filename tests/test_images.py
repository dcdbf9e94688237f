"""load_image: orientation, every mode, limits, and every bad-file case."""

import io

import numpy as np
import pytest
from PIL import Image

from vlens.errors import ImageLoadError
from vlens.images import SkipLog, list_images, load_image, load_images_safely


def _save(tmp_path, im, name, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def test_exif_orientation_is_applied(tmp_path):
    # 16x8: left half red, right half blue. EXIF orientation 6 = "rotate 90 degrees clockwise to display".
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(tmp_path, im, "rot.jpg", exif=exif.tobytes(), quality=100)
    out = np.asarray(load_image(p)).astype(int)
    assert out.shape == (16, 8, 3)  # portrait after rotation
    assert out[2, 4, 0] > 200 and out[2, 4, 2] < 60  # top is the old left side: red
    assert out[13, 4, 2] > 200 and out[13, 4, 0] < 60  # bottom is the old right side: blue


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 100, (100, 100, 100)),
    ("1", 1, (255, 255, 255)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32896, (128, 128, 128)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
    ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
    ("LA", (0, 128), (127, 127, 127)),  # half-transparent black on white
])
def test_modes_convert_to_rgb(tmp_path, mode, value, expected):
    im = Image.new(mode, (4, 4), value)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    p = _save(tmp_path, im, f"m.{fmt.lower()}", format=fmt)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (4, 4)
    assert tuple(int(v) for v in out.getpixel((1, 1))) == pytest.approx(expected, abs=1)


def test_palette_with_transparency_is_white(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 1
    p = _save(tmp_path, im, "p.png", transparency=1)
    assert load_image(p).getpixel((0, 0)) == (255, 255, 255)
    im2 = Image.new("P", (4, 4), 1)
    im2.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert load_image(_save(tmp_path, im2, "p2.png")).getpixel((0, 0)) == (255, 0, 0)


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    p = _save(tmp_path, Image.new("RGB", (100, 100)), "big.png")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageLoadError, match="megapixels exceeds the limit"):
        load_image(p, max_pixels=5000)
    assert decoded == []  # refused from the header alone
    monkeypatch.undo()
    monkeypatch.setenv("VLENS_MAX_PIXELS", "5000")
    with pytest.raises(ImageLoadError, match="big.png"):
        load_image(p)
    monkeypatch.setenv("VLENS_MAX_PIXELS", "20000")
    assert load_image(p).size == (100, 100)


def test_bad_files_name_the_file_and_reason(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, format="PNG")
    (tmp_path / "trunc.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not an image")
    cases = {
        "trunc.png": "truncated",
        "empty.jpg": "empty",
        "notes.jpg": "not a recognised image",
        "missing.png": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageLoadError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and reason in str(err.value)
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_bytes_and_safe_iteration(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (1, 2, 3)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (1, 2, 3)
    ok = _save(tmp_path, Image.new("RGB", (4, 4)), "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"xx")
    skips = SkipLog()
    got = list(load_images_safely([ok, bad, ok], skips))
    assert [p for p, _ in got] == [ok, ok]
    assert len(skips) == 1 and "bad.png" in skips.summary()
    assert list_images(tmp_path) == [bad, ok]
