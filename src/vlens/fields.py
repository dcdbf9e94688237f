"""Check the fields of hand-written data files (pair manifests, SPair annotations, caption datasets) up front.

Each function takes the value as parsed from JSON and ``where`` (the file, the entry and the field, e.g.
``manifest m.json: pair 'aloe' field 'disparity_scale'``) and returns the value in the type vlens works with, or
raises :class:`vlens.errors.DatasetError` with one line naming ``where``, what was found and what is expected.
JSON's ``true``/``false`` are not numbers, strings are not numbers, NaN and infinity are not data.
"""

from __future__ import annotations

import math

import numpy as np

from vlens.errors import DatasetError


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(where: str, value, expected: str):
    raise DatasetError(f"{where}: {_show(value)} is not {expected}")


def number(value, where: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           integer: bool = False) -> float:
    """A finite JSON number (not a bool, not a string) in [lo, hi] (``lo_open``: above lo)."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, value, kind)
    if not math.isfinite(value):
        _fail(where, value, f"{kind} (NaN and infinity are not allowed)")
    if integer and value != int(value):
        _fail(where, value, kind)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(where, value, f"{kind} {'above' if lo_open else 'at least'} {lo:g}")
    if hi is not None and value > hi:
        _fail(where, value, f"{kind} at most {hi:g}")
    return float(value)


def text(value, where: str, *, empty: bool = False) -> str:
    """A JSON string (not empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        _fail(where, value, "a text value" if empty else "a non-empty text value")
    return value


def relative_file(value, where: str) -> str:
    """A file name relative to the data file's folder: a non-empty string without NUL."""
    value = text(value, where)
    if "\x00" in value:
        _fail(where, value, "a file name")
    return value


def matrix(value, where: str, *, rows: int | None = None, cols: int | None = None, min_rows: int = 0) -> np.ndarray:
    """A list of ``rows`` lists of ``cols`` finite numbers -> a float64 array (rows, cols)."""
    shape = f"{rows if rows is not None else 'n'}x{cols if cols is not None else 'm'}"
    if not isinstance(value, list):
        _fail(where, value, f"a list of rows ({shape} numbers)")
    if rows is not None and len(value) != rows:
        raise DatasetError(f"{where}: expected {rows} rows ({shape} numbers), got {len(value)}")
    if len(value) < min_rows:
        raise DatasetError(f"{where}: expected at least {min_rows} row(s), got {len(value)}")
    width = cols
    for i, row in enumerate(value):
        if not isinstance(row, list):
            _fail(f"{where} row {i + 1}", row, f"a list of {width if width is not None else 'm'} numbers")
        if width is None:
            width = len(row)
        if len(row) != width:
            raise DatasetError(f"{where} row {i + 1}: {len(row)} numbers where {width} are expected (rows must all "
                               f"have {width})")
        for j, v in enumerate(row):
            number(v, f"{where} row {i + 1} value {j + 1}")
    return np.asarray(value, dtype=np.float64).reshape(len(value), width or 0)


def vector(value, where: str, *, size: int) -> np.ndarray:
    """A list of ``size`` finite numbers -> float64 array (size,)."""
    if not isinstance(value, list) or len(value) != size:
        _fail(where, value, f"a list of {size} numbers")
    for j, v in enumerate(value):
        number(v, f"{where} value {j + 1}")
    return np.asarray(value, dtype=np.float64)


def inside(points: np.ndarray, size: tuple[int, int], where: str, tolerance: float = 1.0) -> None:
    """Every (x, y) of ``points`` lies in an image of ``size`` (W, H), give or take ``tolerance`` pixels."""
    w, h = size
    bad = ~((points[:, 0] >= -tolerance) & (points[:, 0] <= w + tolerance) & (points[:, 1] >= -tolerance)
            & (points[:, 1] <= h + tolerance))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x, y = points[i]
        raise DatasetError(f"{where}: point {i + 1} ({x:g}, {y:g}) lies outside the {w}x{h} image"
                           + (f" ({int(bad.sum())} points do)" if bad.sum() > 1 else ""))


def of_type(value, hint, where: str):
    """``value`` checked against a dataclass field's type ``hint`` (int, float, str, bool, ``list[str]``,
    ``tuple[float, float]``, ``X | None``) and converted (lists to tuples); one-line DatasetError otherwise."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return of_type(value, inner[0], where) if len(inner) == 1 else value
    if hint is bool:
        if not isinstance(value, bool):
            _fail(where, value, "true or false")
        return value
    if hint is int:
        return int(number(value, where, integer=True))
    if hint is float:
        return number(value, where)
    if hint is str:
        return text(value, where, empty=True)
    if origin in (list, tuple):
        if not isinstance(value, list):
            _fail(where, value, "a list")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            _fail(where, value, f"a list of {len(args)} values")
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        kinds = args if fixed else [args[0] if args else str] * len(value)
        items = [of_type(v, k, f"{where} item {i + 1}") for i, (v, k) in enumerate(zip(value, kinds))]
        return tuple(items) if origin is tuple else items
    return value
