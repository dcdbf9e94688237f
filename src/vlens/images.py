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

from vlens.errors import ImageLoadError

DEFAULT_MAX_PIXELS = 90_000_000
"""About 90 megapixels: larger than any camera photo, small enough that decoding cannot exhaust memory."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}

# We enforce our own limit before decoding; PIL's bomb check would otherwise fire with a less useful message.
Image.MAX_IMAGE_PIXELS = None


def max_pixels_default() -> int:
    """The pixel limit, overridable with the ``VLENS_MAX_PIXELS`` environment variable."""
    value = os.environ.get("VLENS_MAX_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def load_image(source, *, max_pixels: int | None = None, name: str | None = None) -> Image.Image:
    """Read ``source`` (a path, bytes or a binary file object) and return an upright RGB image.

    ``max_pixels`` caps width*height (default :data:`DEFAULT_MAX_PIXELS` or ``$VLENS_MAX_PIXELS``);
    ``name`` is used in error messages when ``source`` is not a path.
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
    try:
        with Image.open(fp) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageLoadError(
                    label,
                    f"{w}x{h} = {w * h / 1e6:.0f} megapixels exceeds the limit of {limit / 1e6:.0f} "
                    "megapixels (raise it with VLENS_MAX_PIXELS or max_pixels=)",
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            out = to_rgb(im)
            out.info["vlens_source"] = str(label)  # names the file in later messages about this image
            return out
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "the file is truncated (incomplete download or copy?)"
        raise ImageLoadError(label, reason) from None


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
        lines += [f"  {shown_name(p)}: {r}" for p, r in self.skipped[:limit]]
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
