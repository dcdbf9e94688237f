"""What the model resolver tells users about (a fallback, a download, a checkpoint converted): events sent to the
listeners a front end registers; the CLI prints them on stderr (``vlens.cli.main.model_event_line``)."""

from __future__ import annotations

from collections.abc import Callable

_LISTENERS: list[Callable[[dict], None]] = []


def add_listener(fn: Callable[[dict], None]) -> None:
    """Call ``fn(event)`` for what users should hear about. Events (dicts, key ``event``): ``fallback`` (task,
    spec, real, reason), ``download`` (repo, bytes, files: said before a download starts), ``downloaded`` (repo,
    path, seconds), ``engine`` (line: an ONNX export made, refused or rebuilt; :mod:`vlens.engines`),
    ``converted`` (path, folder, line, settings_from: a checkpoint file converted once)."""
    if fn not in _LISTENERS:
        _LISTENERS.append(fn)


def remove_listener(fn: Callable[[dict], None]) -> None:
    if fn in _LISTENERS:
        _LISTENERS.remove(fn)


def emit(event: str, **info) -> None:
    for fn in list(_LISTENERS):
        fn({"event": event, **info})
