"""Fault injection for crash tests: kill this process at a named point, deterministically.

Set ``VLENS_FAULT=NAME:K`` (e.g. ``bulk-batch-written:3``) and the K-th time the code passes
``fault_point("NAME")`` the process sends itself SIGKILL, exactly like ``kill -9`` from outside but at a moment the
test chooses, so a crash test never depends on timing. Unset, ``fault_point`` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die with SIGKILL if ``$VLENS_FAULT`` names this point and this is its K-th pass."""
    spec = os.environ.get("VLENS_FAULT")
    if not spec:
        return
    want, _, k = spec.rpartition(":")
    if want != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(k):
        os.kill(os.getpid(), signal.SIGKILL)
