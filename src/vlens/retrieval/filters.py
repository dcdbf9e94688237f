"""Search filters on the photo metadata an index stores (capture time, camera, folder, GPS position, format):
which image ids pass, as one SQL query over ``meta.sqlite`` plus exact checks in numpy. The ids then restrict the
vector search itself (:meth:`vlens.retrieval.index_reader.ImageIndex.search`), so the top k are the true top k
among the images that pass, never a filtered-down top k.

Meanings (what ``--help`` says):

- ``after`` / ``before``: capture time (EXIF DateTimeOriginal, read as UTC like the index stores it). A date
  ``YYYY-MM-DD`` covers its whole day on both ends (``--after 2024-06-01 --before 2024-06-30`` is all of June); a
  time ``YYYY-MM-DDTHH:MM[:SS]`` is exact. Photos without a capture time are left out by either.
- ``camera``: case-insensitive substring of "make model" (``iphone``, ``canon eos``).
- ``folder``: a glob matched against the image's folder relative to the indexed root (``trips/*/day1``); a folder
  also passes when the glob matches one of its parents, so ``trips`` means trips and everything under it. ``.``
  or an empty string is the root folder alone.
- ``near``: within ``km`` kilometres (great-circle distance on a sphere of radius 6371.0088 km) of ``lat, lon``.
- ``formats``: file formats by suffix, any of them (``jpg,heic``; jpeg = jpg, tif = tiff, heif = heic).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from vlens.errors import ConfigError

EARTH_KM = 6371.0088
METADATA_COLUMNS = ("taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon", "folder", "format")
ALIASES = {"jpeg": "jpg", "jpe": "jpg", "tif": "tiff", "heif": "heic"}


def parse_time(text: str, end: bool = False) -> float:
    """``YYYY-MM-DD`` (start of the day, or the start of the next day when ``end``) or an ISO date-time -> unix
    seconds, UTC."""
    s = str(text).strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            d = dt.datetime.strptime(s, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            return (d + dt.timedelta(days=1 if end else 0)).timestamp()
        if re.fullmatch(r"\d{4}", s):
            d = dt.datetime(int(s) + (1 if end else 0), 1, 1, tzinfo=dt.UTC)
            return d.timestamp()
        d = dt.datetime.fromisoformat(s.replace(" ", "T"))
    except ValueError:
        raise ConfigError(f"'{text}' is not a date; write YYYY-MM-DD (e.g. 2024-06-30), a year (2024) or "
                          "YYYY-MM-DDTHH:MM") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def parse_near(text: str) -> tuple[float, float, float]:
    """``LAT,LON,KM`` -> (lat, lon, km), checked."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lat, lon, km = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--near '{text}': write LAT,LON,KM in decimal degrees and kilometres, e.g. "
                          "48.8584,2.2945,5") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ConfigError(f"--near '{text}': latitude must be -90..90 and longitude -180..180")
    if not 0 < km <= 20040:
        raise ConfigError(f"--near '{text}': the radius must be above 0 and at most 20040 km (half the globe)")
    return lat, lon, km


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (numpy broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def norm_format(f: str) -> str:
    f = f.strip().lower().lstrip(".")
    return ALIASES.get(f, f)


def folder_matches(folder: str, pattern: str) -> bool:
    """The folder (posix, relative to the root, '' for the root) or one of its parents matches the glob."""
    pattern = pattern.strip().strip("/")
    if pattern in ("", "."):
        return folder == ""
    parts = folder.split("/") if folder else []
    return any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1))


@dataclass
class Filters:
    """Which images a search may return; every field None/empty = no restriction."""

    after: float | None = None
    """Unix seconds: taken at or after."""
    before: float | None = None
    """Unix seconds: taken before."""
    camera: str | None = None
    folder: str | None = None
    near: tuple[float, float, float] | None = None
    """(lat, lon, km)."""
    formats: list[str] = field(default_factory=list)

    @classmethod
    def from_text(cls, after: str | None = None, before: str | None = None, camera: str | None = None,
                  folder: str | None = None, near: str | None = None, formats: str | list | None = None) -> Filters:
        """The CLI's and the web form's strings -> checked filters."""
        if isinstance(formats, str):
            formats = formats.split(",")
        f = cls(after=parse_time(after) if after else None, before=parse_time(before, end=True) if before else None,
                camera=(camera or "").strip() or None, folder=folder if folder is not None and folder != "" else None,
                near=parse_near(near) if near else None,
                formats=sorted({norm_format(x) for x in formats or [] if x.strip()}))
        if f.after is not None and f.before is not None and f.after >= f.before:
            raise ConfigError(f"--after {after} is not before --before {before}; nothing could match")
        return f

    @property
    def active(self) -> bool:
        return any(v not in (None, []) for v in (self.after, self.before, self.camera, self.folder, self.near,
                                                   self.formats))

    def describe(self) -> str:
        out = []
        if self.after is not None:
            out.append(f"taken from {dt.datetime.fromtimestamp(self.after, dt.UTC):%Y-%m-%d %H:%M}")
        if self.before is not None:
            out.append(f"taken before {dt.datetime.fromtimestamp(self.before, dt.UTC):%Y-%m-%d %H:%M}")
        if self.camera:
            out.append(f"camera ~ '{self.camera}'")
        if self.folder is not None:
            out.append(f"folder {self.folder}")
        if self.near:
            out.append(f"within {self.near[2]:g} km of {self.near[0]:g},{self.near[1]:g}")
        if self.formats:
            out.append("format " + "/".join(self.formats))
        return ", ".join(out)


def has_metadata(con: sqlite3.Connection) -> bool:
    cols = {r[1] for r in con.execute("PRAGMA table_info(images)")}
    return set(METADATA_COLUMNS) <= cols


def matching_ids(con: sqlite3.Connection, f: Filters) -> np.ndarray:
    """The ids (sorted int64) of the images that pass ``f`` (all of them when no filter is set)."""
    if f.active and not has_metadata(con):
        raise ConfigError("this index holds no photo metadata (made by an older vlens); run `vlens index update "
                          "INDEX` once to add capture time, camera, place and format, then filter")
    where, args = [], []
    if f.after is not None:
        where.append("taken_at >= ?")
        args.append(f.after)
    if f.before is not None:
        where.append("taken_at < ?")
        args.append(f.before)
    if f.camera:
        where.append("instr(lower(coalesce(camera_make, '') || ' ' || coalesce(camera_model, '')), ?) > 0")
        args.append(f.camera.lower())
    if f.formats:
        # what a folder scan stores is the lower-case suffix; an alias (jpeg for jpg) matches either spelling
        names = sorted({x for x in f.formats} | {a for a, b in ALIASES.items() if b in f.formats})
        where.append(f"lower(format) IN ({','.join('?' * len(names))})")
        args += names
    if f.folder is not None:
        folders = [r[0] or "" for r in con.execute("SELECT DISTINCT folder FROM images")]
        keep = [d for d in folders if folder_matches(d, f.folder)]
        if not keep:
            return np.zeros(0, np.int64)
        where.append(f"coalesce(folder, '') IN ({','.join('?' * len(keep))})")
        args += keep
    if f.near is not None:
        lat, lon, km = f.near
        # a bounding box the database can use, then the exact distance below
        dlat = math.degrees(km / EARTH_KM)
        where.append("gps_lat IS NOT NULL AND gps_lon IS NOT NULL AND gps_lat BETWEEN ? AND ?")
        args += [lat - dlat - 1e-9, lat + dlat + 1e-9]
    sql = "SELECT id" + (", gps_lat, gps_lon" if f.near else "") + " FROM images"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = con.execute(sql + " ORDER BY id", args).fetchall()
    if not rows:
        return np.zeros(0, np.int64)
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    if f.near is not None:
        la = np.array([r[1] for r in rows], np.float64)
        lo = np.array([r[2] for r in rows], np.float64)
        ids = ids[haversine_km(f.near[0], f.near[1], la, lo) <= f.near[2]]
    return ids
