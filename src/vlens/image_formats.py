"""The image formats vlens reads beyond Pillow's own, and the optional packages that read them.

Measured on this stack (Pillow 13, Python 3.11, late 2026): Pillow reads JPEG, PNG, WebP, GIF, TIFF, BMP, PNM and
AVIF itself. HEIC/HEIF (what iPhones write by default) needs ``pillow-heif`` (26 MB installed, 40 ms import), JPEG XL
``pillow-jxl-plugin`` (6 MB, 21 ms), camera RAW ``rawpy`` (LibRaw, 10 MB, 290 ms import). pillow-heif is a default
dependency (HEIC is the commonest photo format after JPEG); rawpy and the JPEG XL plugin come with the extra
``vlens[photos]`` (which also names pillow-heif, so that one command fixes every missing format). Each package is
imported only when a file of its kind is read.

A file whose reader is missing is never an error deep in a run: a folder scan counts it as passed over with the
hint (``3 .heic (install vlens[photos])``) and :func:`vlens.images.load_image` says the same in one line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io

from PIL import Image, ImageOps

EXTRA = "vlens[photos]"
PILLOW_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                             ".ppm", ".pgm", ".pbm", ".avif"})
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
JXL_SUFFIXES = frozenset({".jxl"})
RAW_SUFFIXES = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})
ALL_SUFFIXES = PILLOW_SUFFIXES | HEIF_SUFFIXES | JXL_SUFFIXES | RAW_SUFFIXES

PACKAGES = {"heif": ("pillow_heif", "pillow-heif"), "jxl": ("pillow_jxl", "pillow-jxl-plugin"),
            "raw": ("rawpy", "rawpy")}
"""family -> (module, PyPI name)."""

RAW_PREVIEW_MIN = 1024
"""A camera's embedded JPEG preview is used when its long side has at least this many pixels (decoding it takes
milliseconds; a demosaic takes a second or more); smaller previews mean a half-size demosaic of the raw data."""


def family(suffix: str) -> str | None:
    """'pillow', 'heif', 'jxl', 'raw' for a suffix vlens reads ('.HEIC' works), None for any other."""
    s = suffix.lower()
    if s in PILLOW_SUFFIXES:
        return "pillow"
    for fam, group in (("heif", HEIF_SUFFIXES), ("jxl", JXL_SUFFIXES), ("raw", RAW_SUFFIXES)):
        if s in group:
            return fam
    return None


@functools.cache
def installed(fam: str) -> bool:
    """Whether the package for ``fam`` can be imported (looked up, not imported: cheap)."""
    if fam not in PACKAGES:
        return fam == "pillow"
    return importlib.util.find_spec(PACKAGES[fam][0]) is not None


def missing_hint(suffix: str) -> str | None:
    """None if files with ``suffix`` can be read here, else what to install, e.g. 'install vlens[photos]'."""
    fam = family(suffix)
    if fam is None or installed(fam):
        return None
    return f"install {EXTRA}"


def missing_reason(fam: str) -> str:
    what = {"heif": "HEIC/HEIF", "jxl": "JPEG XL", "raw": "camera RAW"}[fam]
    return f"reading {what} images needs {PACKAGES[fam][1]}: install {EXTRA} (pip install '{EXTRA}')"


@functools.cache
def enable(fam: str) -> bool:
    """Import the package for ``fam`` and register it with Pillow (once); False if it is not installed."""
    if fam == "pillow":
        return True
    if not installed(fam):
        return False
    module = importlib.import_module(PACKAGES[fam][0])
    if fam == "heif":
        module.register_heif_opener()
    return True  # pillow_jxl registers itself on import; rawpy is called directly


def sniff(head: bytes) -> str | None:
    """The family of a file from its first 32 bytes when Pillow did not recognise it: HEIF, JPEG XL or a raw
    container (Canon CR3, Fujifilm RAF, Panasonic RW2, Olympus ORF, or a TIFF holding a sensor mosaic)."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "heif"
        if brand == b"crx ":
            return "raw"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "jxl"
    if head[:15] == b"FUJIFILMCCD-RAW" or head[:4] in (b"IIU\x00", b"IIRO", b"IIRS", b"MMOR"):
        return "raw"
    if head[:4] in (b"II*\x00", b"MM\x00*"):  # a TIFF that Pillow cannot open: a CFA mosaic (DNG, CR2, NEF, ...)
        return "raw"
    return None


def is_raw_tiff(im: Image.Image) -> bool:
    """A TIFF that is really a DNG (Pillow would show its small first-page thumbnail or fail), so it goes to the
    raw decoder. Other TIFF-shaped raws (CR2, NEF, ARW) are recognised by their suffix."""
    if im.format != "TIFF":
        return False
    return 50706 in getattr(im, "tag_v2", {})  # DNGVersion


def tiff_exif(data: bytes):
    """EXIF-style tags (Make, Model, the Exif and GPS IFDs) of a TIFF-shaped raw file's first IFD, or None."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    exif = Image.Exif()
    try:
        exif.load(data)
    except Exception:  # noqa: BLE001 - damaged tags mean no metadata, not an unreadable image
        return None
    return exif


def load_raw(source, exif=None, check=None) -> tuple[Image.Image, object]:
    """Decode a camera raw file (bytes) -> (upright RGB image, PIL Exif or None).

    The embedded JPEG preview is used when it is at least :data:`RAW_PREVIEW_MIN` pixels on its long side, turned
    upright by its own EXIF orientation or else by the raw's; otherwise a half-size demosaic with the camera's white
    balance (LibRaw applies the orientation). ``exif``: metadata already read, else the file's own TIFF tags when
    it has them.
    ``check(width, height)`` is called with the sensor's size before anything is decoded (it raises to refuse).
    The photo's own (upright) size is left in ``info["vlens_size"]``. Data LibRaw cannot read raises ``OSError``
    with LibRaw's reason.
    """
    import numpy as np
    import rawpy

    if exif is None:
        exif = tiff_exif(source)
    try:
        with rawpy.imread(io.BytesIO(source)) as raw:
            if check is not None:
                check(int(raw.sizes.width), int(raw.sizes.height))
            flip, w, h = int(raw.sizes.flip), int(raw.sizes.width), int(raw.sizes.height)
            size = (h, w) if flip in (5, 6) else (w, h)  # the upright photo's size, whichever way it is decoded
            preview = _raw_preview(raw)
            if preview is not None:
                pexif = preview.getexif()
                if exif is None or not len(exif):
                    exif = pexif
                preview = ImageOps.exif_transpose(preview) if pexif.get(0x0112, 1) != 1 else _flip(preview, flip)
                out = preview.convert("RGB")
            else:
                rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)  # (H, W, 3) uint8
                out = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
            out.info["vlens_size"] = size
            return out, exif
    except rawpy.LibRawError as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise OSError(f"not a camera raw file LibRaw can read ({type(exc).__name__}: {reason})") from None


def _raw_preview(raw) -> Image.Image | None:
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            im = Image.open(io.BytesIO(thumb.data))
            if max(im.size) < RAW_PREVIEW_MIN:
                return None
            im.load()
            return im
        except (OSError, SyntaxError, ValueError):
            return None
    if thumb.format == rawpy.ThumbFormat.BITMAP and max(thumb.data.shape[:2]) >= RAW_PREVIEW_MIN:
        return Image.fromarray(thumb.data)
    return None


def _flip(im: Image.Image, flip: int) -> Image.Image:
    """LibRaw's orientation code (0 none, 3 180°, 5 90° counter-clockwise, 6 90° clockwise) applied to ``im``."""
    op = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}.get(flip)
    return im.transpose(op) if op is not None else im
