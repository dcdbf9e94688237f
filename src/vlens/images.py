"""Load any image file as an upright RGB ``PIL.Image`` or fail with a message that names the file.

What ``load_image`` guarantees:
- EXIF orientation is applied (a phone photo taken sideways comes out upright);
- every mode becomes RGB: ``1``/``L``/``I;16``/``I``/``F`` are scaled to 8 bits, ``LA``/``RGBA``/``P`` with
  transparency are composited on white, ``CMYK``/``YCbCr``/``LAB``/``HSV`` are converted;
- the pixel count is checked against a limit *before* decoding (decompression bombs are refused);
- missing, empty, truncated and non-image files raise :class:`vlens.errors.ImageLoadError`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlens import image_formats as formats
from vlens.errors import ImageLoadError

DEFAULT_MAX_PIXELS = 90_000_000
"""About 90 megapixels: larger than any camera photo, small enough that decoding cannot exhaust memory."""

IMAGE_SUFFIXES = set(formats.ALL_SUFFIXES)
"""Every suffix vlens reads (some only with the packages of ``vlens[photos]``: :func:`image_formats.missing_hint`)."""

# We enforce our own limit before decoding; PIL's bomb check would otherwise fire with a less useful message.
Image.MAX_IMAGE_PIXELS = None


def max_pixels_default() -> int:
    """The pixel limit, overridable with the ``VLENS_MAX_PIXELS`` environment variable."""
    value = os.environ.get("VLENS_MAX_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def load_image(source, *, max_pixels: int | None = None, name: str | None = None) -> Image.Image:
    """Read ``source`` (a path, bytes or a binary file object) and return an upright RGB image.

    ``max_pixels`` caps width*height (default :data:`DEFAULT_MAX_PIXELS` or ``$VLENS_MAX_PIXELS``);
    ``name`` is used in error messages when ``source`` is not a path, and its suffix picks the reader (a camera
    raw upload). Reads every format of :mod:`vlens.image_formats` (HEIC, AVIF, JPEG XL, camera RAW where their
    packages are installed; otherwise the error says what to install). The image's EXIF capture time, camera and
    GPS position are left in ``info["vlens_meta"]`` (:func:`vlens.photo_meta.exif_fields`).
    """
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if isinstance(source, bytes | bytearray):
        label, fp = name or "<bytes>", io.BytesIO(source)
        if not source:
            raise ImageLoadError(label, "the data is empty (0 bytes)")
    elif hasattr(source, "read"):
        label, fp = name or getattr(source, "name", "<stream>"), source
    else:
        path = Path(source)
        label, fp = str(path), path
        if not path.exists():
            raise ImageLoadError(label, "no such file")
        if path.is_dir():
            raise ImageLoadError(label, "this is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(label, "the file is empty (0 bytes)")
    fam = formats.family(Path(str(label)).suffix)
    try:
        if fam == "raw":
            return _decode_raw(fp, label, limit, None)
        if fam not in (None, "pillow") and not formats.enable(fam):
            raise ImageLoadError(label, formats.missing_reason(fam))
        return _decode(fp, label, limit)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        found = formats.sniff(_head(fp))
        if found is None or found == fam:
            raise ImageLoadError(label, "not a recognised image format") from None
        if not formats.enable(found):
            raise ImageLoadError(label, formats.missing_reason(found)) from None
        return _retry(fp, label, limit, found)
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "the file is truncated (incomplete download or copy?)"
        raise ImageLoadError(label, reason) from None


def _decode(fp, label, limit: int) -> Image.Image:
    """Pillow (and the plugins registered with it): check the size from the header, decode, turn upright."""
    with Image.open(fp) as im:
        if formats.is_raw_tiff(im):  # a DNG given without its suffix
            exif = im.getexif()
            return _decode_raw(_rewound(fp), label, limit, exif)
        w, h = im.size
        _check_pixels(label, w, h, limit)
        im.load()
        exif = im.getexif()
        im = ImageOps.exif_transpose(im)
        return _finish(to_rgb(im), label, exif)


def _decode_raw(fp, label, limit: int, exif) -> Image.Image:
    if not formats.enable("raw"):
        raise ImageLoadError(label, formats.missing_reason("raw"))
    data = fp.read_bytes() if isinstance(fp, Path) else fp.read()
    img, exif = formats.load_raw(data, exif, check=lambda w, h: _check_pixels(label, w, h, limit))
    return _finish(img, label, exif)


def _retry(fp, label, limit: int, fam: str) -> Image.Image:
    """Pillow did not know the data but its first bytes name a format a plugin reads (now enabled): decode again."""
    fp = _rewound(fp)
    try:
        return _decode_raw(fp, label, limit, None) if fam == "raw" else _decode(fp, label, limit)
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised image format") from None


def _check_pixels(label, w: int, h: int, limit: int) -> None:
    if w * h > limit:
        raise ImageLoadError(
            label,
            f"{w}x{h} = {w * h / 1e6:.0f} megapixels exceeds the limit of {limit / 1e6:.0f} "
            "megapixels (raise it with VLENS_MAX_PIXELS or max_pixels=)",
        )


def _finish(img: Image.Image, label, exif) -> Image.Image:
    from vlens.photo_meta import exif_fields

    img.info["vlens_source"] = str(label)  # names the file in later messages about this image
    img.info["vlens_meta"] = exif_fields(exif)
    return img


def _head(fp) -> bytes:
    if isinstance(fp, Path):
        with open(fp, "rb") as fh:
            return fh.read(32)
    fp.seek(0)
    return fp.read(32)


def _rewound(fp):
    if not isinstance(fp, Path):
        fp.seek(0)
    return fp


def image_size(path) -> tuple[int, int]:
    """(W, H) of an image file from its header (nothing decoded); ImageLoadError if it cannot be read."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ImageLoadError(path, "no such file" if not path.exists() else "not a readable image file")
    try:
        with Image.open(path) as im:
            return im.size
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, str(exc) or type(exc).__name__) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on a white background."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        hi = arr.max() if arr.size else 0
        if mode.startswith("I;16") or hi > 255:
            arr = arr / (65535.0 if hi > 255 or mode.startswith("I;16") else 1.0) * 255.0
        elif mode == "F" and hi <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if mode == "L" and "transparency" in im.info:
        has_alpha = True
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def shown_name(path) -> str:
    """``path`` as text that any terminal, log line, JSON or CSV file can hold: bytes that are not UTF-8 are
    written ``\\xe9`` and control characters (newline, tab, ...) as escapes, so one file is always one line."""
    text = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
    if any(map(_breaks_lines, text)):
        text = "".join(c.encode("unicode_escape").decode("ascii") if _breaks_lines(c) else c for c in text)
    return text


def shown_path(path, root=None) -> str:
    """How every printed skip list names a file (``index build|update|info``, ``caption``, ``match``, ``data
    inspect``, evaluations): relative to the current folder when it lies under it, else absolute, so the line can
    be pasted into the next command from where the user is. ``root``: the folder a relative ``path`` is relative to
    (an index stores paths relative to its image folder). Written through :func:`shown_name` (one line)."""
    p = os.path.abspath(os.path.join(os.fspath(root), os.fspath(path)) if root is not None else os.fspath(path))
    cwd = os.getcwd()
    if p == cwd or p.startswith(cwd.rstrip(os.sep) + os.sep):
        p = os.path.relpath(p, cwd)
    return shown_name(p)


def _breaks_lines(c: str) -> bool:
    """A control character (C0, DEL, C1) or a line/paragraph separator: breaks or garbles a line of output."""
    import unicodedata

    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def name_problem(path) -> str | None:
    """Why the name of ``path`` cannot be written to a record (a JSONL/CSV line, SQLite text, a line of output)
    exactly as it is, or None. Such files are skipped and listed by their :func:`shown_name`, never fatal."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 (e.g. Latin-1 names from an old camera or zip)
        return "the file name is not valid UTF-8; rename the file to use it"
    if any(map(_breaks_lines, text)):
        return "the file name contains a newline, tab or other control character; rename the file to use it"
    return None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass
class FolderScan:
    """What :func:`scan_folder` found: the image files it can read, and every other file counted by kind."""

    images: list[tuple[str, os.DirEntry]] = field(default_factory=list)
    """(path relative to the root, in POSIX form, its directory entry) of every readable image file, sorted."""
    passed_over: dict[str, int] = field(default_factory=dict)
    """kind -> count: '.mov', 'no suffix', 'hidden' (dot files), '.heic (install vlens[photos])' (a format whose
    reader is not installed), 'link to a folder (not followed)', 'not a regular file'."""


def scan_folder(folder) -> FolderScan:
    """Walk ``folder`` recursively (one ``scandir`` per folder, no per-file ``stat``: fast on 100k files) and
    sort every entry into the images vlens can read and the files it passes over, by kind. Links to folders are
    not followed (as ``Path.rglob``); links to files are listed (the caller checks where they point)."""
    from collections import Counter

    root = Path(folder)
    if not root.is_dir():
        from vlens.errors import DatasetError

        raise DatasetError(f"{root} is not a folder of images")
    images, passed = [], Counter()
    stack = [("", os.fspath(root))]
    while stack:
        prefix, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            passed["unreadable folder"] += 1
            continue
        for e in entries:
            rel = prefix + e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", e.path))
                    continue
                if not e.is_file():
                    passed["link to a folder (not followed)" if e.is_dir() else "not a regular file"] += 1
                    continue
            except OSError:
                passed["not a regular file"] += 1
                continue
            if e.name.startswith("."):
                passed["hidden"] += 1
                continue
            suffix = os.path.splitext(e.name)[1].lower()
            if suffix not in IMAGE_SUFFIXES:
                passed[suffix or "no suffix"] += 1
                continue
            hint = formats.missing_hint(suffix)
            if hint:
                passed[f"{suffix} ({hint})"] += 1
                continue
            images.append((rel, e))
    images.sort(key=lambda item: item[0])
    return FolderScan(images, dict(passed))


def header_meta(path) -> dict:
    """The EXIF fields (:func:`vlens.photo_meta.exif_fields`) and upright width/height of an image file, read from
    its header without decoding the pixels (camera raws: LibRaw reads the sizes). Unknown fields are None."""
    from vlens.photo_meta import EXIF_FIELDS, exif_fields

    path = Path(path)
    out = dict.fromkeys((*EXIF_FIELDS, "width", "height"))
    fam = formats.family(path.suffix)
    try:
        if fam == "raw":
            if not formats.enable("raw"):
                return out
            import rawpy

            data = path.read_bytes()
            out.update(exif_fields(formats.tiff_exif(data)))
            with rawpy.imread(io.BytesIO(data)) as raw:
                w, h, flip = raw.sizes.width, raw.sizes.height, raw.sizes.flip
            out["width"], out["height"] = (h, w) if flip in (5, 6) else (w, h)
            return out
        if fam not in (None, "pillow"):
            formats.enable(fam)
        with Image.open(path) as im:
            exif = im.getexif()
            w, h = im.size
    except Exception:  # noqa: BLE001 - metadata is best effort: an unreadable header leaves it unknown
        return out
    out.update(exif_fields(exif))
    out["width"], out["height"] = (h, w) if exif.get(0x0112) in (5, 6, 7, 8) else (w, h)
    return out


def list_images(folder, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by suffix, sorted, hidden files skipped."""
    root = Path(folder)
    if not root.is_dir():
        from vlens.errors import DatasetError

        raise DatasetError(f"{root} is not a folder of images")
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_file(p))


@dataclass
class SkipLog:
    """Images that could not be read during a dataset-level run: counted, listed, never fatal."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, err: ImageLoadError) -> None:
        self.skipped.append((err.path, err.reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 5) -> str:
        if not self.skipped:
            return "all images were readable"
        lines = [f"skipped {len(self.skipped)} unreadable image(s):"]
        lines += [f"  {shown_path(p)}: {r}" for p, r in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def load_images_safely(paths: Iterable, skips: SkipLog | None = None, **kw):
    """Yield ``(path, image)`` for every readable path; unreadable ones are recorded in ``skips``."""
    skips = SkipLog() if skips is None else skips
    for p in paths:
        try:
            yield p, load_image(p, **kw)
        except ImageLoadError as err:
            skips.add(err)


def pil_to_tensor(img: Image.Image):
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def tensor_to_pil(t) -> Image.Image:
    """Float tensor (3, H, W) in [0, 1] -> RGB PIL image."""
    arr = (t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")
