"""What a photo says about itself: capture time, camera, GPS position (from EXIF), plus its pixel size and format.

These are the per-image metadata columns of an index (see :data:`vlens.retrieval.index_store.METADATA_COLUMNS`):

- ``taken_at``: EXIF DateTimeOriginal (else DateTimeDigitized) as unix seconds, the camera's wall-clock time read
  as if it were UTC (EXIF times carry no zone; OffsetTimeOriginal is ignored on purpose), so a filter
  ``--after 2024-05-01`` means the date the photo shows, wherever it was taken. NULL when the photo has none.
- ``camera_make``, ``camera_model``: EXIF Make and Model, stripped; NULL when absent.
- ``gps_lat``, ``gps_lon``: decimal degrees (south and west negative) from the GPS IFD; NULL when absent or
  not a valid position.
- ``width``, ``height``: the upright image's size (after EXIF orientation), ``format``: the lower-case suffix
  without the dot, ``folder``: the file's folder relative to the indexed root ('' at the root).

Everything here is pure: it parses a :class:`PIL.Image.Exif` (or the dict :func:`vlens.images.load_image` leaves in
``image.info["vlens_meta"]``); a malformed tag gives NULL for that field, never an error.
"""

from __future__ import annotations

import calendar
import math
import re
from pathlib import PurePosixPath

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
DATETIME_ORIGINAL, DATETIME_DIGITIZED = 0x9003, 0x9004
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4

EXIF_FIELDS = ("taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon")
"""The fields read from EXIF; the other metadata columns come from the file and the decoded image."""

_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def parse_exif_time(text) -> float | None:
    """'2024:05:01 14:03:22' -> unix seconds of that wall-clock time read as UTC; None if it is not a date
    (cameras without a clock write '0000:00:00 00:00:00' or blanks)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    m = _DATE.match(text.replace("\x00", ""))
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    if not (1800 <= y <= 2200 and 1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        return None
    try:
        return float(calendar.timegm((y, mo, d, h, mi, min(s, 59), 0, 0, 0)))
    except (OverflowError, ValueError):
        return None


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value or None


def _degrees(dms, ref) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals + 'N'/'S'/'E'/'W' -> signed decimal degrees."""
    try:
        parts = [float(x) for x in dms]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    value = sum(p / 60**i for i, p in enumerate(parts))
    ref = _text(ref)
    return -value if ref and ref[0].upper() in "SW" else value


def exif_fields(exif) -> dict:
    """A PIL ``Image.Exif`` (or None) -> {taken_at, camera_make, camera_model, gps_lat, gps_lon}, None when unknown."""
    out = dict.fromkeys(EXIF_FIELDS)
    if exif is None:
        return out
    try:
        sub = exif.get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001 - a damaged sub-IFD is simply absent
        sub = {}
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception:  # noqa: BLE001
        gps = {}
    out["taken_at"] = parse_exif_time(sub.get(DATETIME_ORIGINAL)) or parse_exif_time(sub.get(DATETIME_DIGITIZED))
    out["camera_make"], out["camera_model"] = _text(exif.get(MAKE)), _text(exif.get(MODEL))
    lat, lon = _degrees(gps.get(GPS_LAT), gps.get(GPS_LAT_REF)), _degrees(gps.get(GPS_LON), gps.get(GPS_LON_REF))
    if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
        out["gps_lat"], out["gps_lon"] = lat, lon
    return out


def file_fields(rel_path: str) -> dict:
    """{folder, format} of a path relative to the indexed root: 'trip/a.HEIC' -> folder 'trip', format 'heic'."""
    p = PurePosixPath(rel_path)
    folder = p.parent.as_posix()
    return {"folder": "" if folder == "." else folder, "format": p.suffix.lower().lstrip(".") or None}


def image_fields(image, rel_path: str) -> dict:
    """Every metadata column for an image returned by :func:`vlens.images.load_image` (it carries its EXIF fields
    in ``info["vlens_meta"]``) stored at ``rel_path`` under the indexed root."""
    meta = dict(image.info.get("vlens_meta") or dict.fromkeys(EXIF_FIELDS))
    width, height = image.info.get("vlens_size") or image.size  # a camera raw is decoded at half size
    meta.update(width=int(width), height=int(height), **file_fields(rel_path))
    return meta
