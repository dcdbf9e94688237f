"""Write a small photo folder as a phone and a camera leave it, for the README's library walkthrough:
scikit-image's real photos as HEIC (with capture time, camera and GPS in EXIF, stored sideways with an orientation
tag), AVIF, JPEG, a camera DNG (a sensor mosaic), plus what else such folders hold (a video, a sidecar, a dot file,
a broken JPEG).

    python scripts/demo_photos.py photos/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data


def exif(taken: str, make: str, model: str, gps=None, orientation: int = 1) -> bytes:
    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0112] = make, model, orientation
    ex.get_ifd(0x8769)[0x9003] = taken
    if gps:
        (lat_ref, lat), (lon_ref, lon) = gps
        g = ex.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = lat_ref, lat, lon_ref, lon
    return ex.tobytes()


def write_dng(path: Path, rgb: np.ndarray, make: str, model: str) -> None:
    """A minimal DNG: the (H, W, 3) sRGB picture as a 12-bit RGGB sensor mosaic (linear light), with the DNG tags
    LibRaw needs (version, CFA layout, black/white level, a colour matrix that makes the 'camera' sRGB).
    tests/test_photo_library.py writes its DNGs with this function."""
    import tifffile

    lin = (np.asarray(rgb, np.float64) / 255.0) ** 2.2 * 4000  # (H, W, 3)
    h, w = lin.shape[0] // 2 * 2, lin.shape[1] // 2 * 2
    cfa = np.empty((h, w), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = lin[0:h:2, 0:w:2, 0], lin[0:h:2, 1:w:2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = lin[1:h:2, 0:w:2, 1], lin[1:h:2, 1:w:2, 2]
    xyz_to_srgb = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    cm = tuple(v for x in xyz_to_srgb for v in (round(x * 10000), 10000))
    tags = [(50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
            (50708, "s", 0, f"{make} {model}", True), (33421, "H", 2, (2, 2), True),
            (33422, "B", 4, (0, 1, 1, 2), True), (50714, "H", 1, (0,), True), (50717, "H", 1, (4095,), True),
            (50721, "2i", 9, cm, True), (50778, "H", 1, (21,), True), (50728, "2I", 3, (1,) * 6, True),
            (271, "s", 0, make, True), (272, "s", 0, model, True)]
    tifffile.imwrite(path, cfa, photometric=32803, extratags=tags, subfiletype=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    out = ap.parse_args().out
    import pillow_heif

    pillow_heif.register_heif_opener()
    (out / "2024-paris").mkdir(parents=True, exist_ok=True)
    (out / "camera").mkdir(exist_ok=True)
    paris = (("N", (48.0, 51.0, 29.0)), ("E", (2.0, 17.0, 40.0)))
    Image.fromarray(data.astronaut()).rotate(90, expand=True).save(  # sideways, as a phone stores it
        out / "2024-paris" / "IMG_0001.HEIC", "HEIF", quality=90,
        exif=exif("2024:05:01 14:03:22", "Apple", "iPhone 15", paris, orientation=6))
    Image.fromarray(data.coffee()).save(out / "2024-paris" / "IMG_0002.HEIC", "HEIF", quality=90,
                                        exif=exif("2024:05:02 09:12:40", "Apple", "iPhone 15", paris))
    Image.fromarray(data.chelsea()).save(out / "chelsea.avif", "AVIF", quality=90,
                                         exif=exif("2023:11:20 18:30:00", "Google", "Pixel 8"))
    Image.fromarray(data.rocket()).save(out / "rocket.jpg", quality=90)
    write_dng(out / "camera" / "DSC_0042.dng", data.astronaut()[::2, ::2], "Nikon", "Z 6")
    (out / "2024-paris" / "IMG_0003.MOV").write_bytes(b"\x00\x00\x00\x14ftypqt  " + bytes(64))
    (out / "camera" / "DSC_0042.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    (out / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (out / "camera" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    print(f"wrote {sum(1 for p in out.rglob('*') if p.is_file())} files under {out}")


if __name__ == "__main__":
    main()
