"""Fault injection for crash tests: stop a real process at a point the test names, not at a moment it guesses.

Code that must survive a kill calls ``fault_point("NAME")`` at the places worth testing (before the first write,
after each committed step, between two files, after the last write). Unset, that costs one dictionary lookup.
A test sets ``VLENS_FAULT`` to ``NAME:K`` or ``NAME:K:ACTION`` (several joined by commas), e.g.
``bulk-batch-written:3`` or ``index.batch:2:interrupt``, and the K-th time the process passes NAME it acts:

- ``kill`` (the default): SIGKILL itself, exactly like ``kill -9`` from outside (no cleanup at all);
- ``interrupt``: SIGINT itself (what Ctrl-C sends);
- ``fail``: raise ``RuntimeError`` (an unexpected failure mid-way).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}
ACTIONS = ("kill", "interrupt", "fail")


def _plan(spec: str) -> dict[str, tuple[int, str]]:
    plan = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        bits = part.rsplit(":", 2)
        if len(bits) == 3 and bits[2] in ACTIONS:
            plan[bits[0]] = (int(bits[1]), bits[2])
        else:
            name, _, k = part.rpartition(":")
            plan[name] = (int(k), "kill")
    return plan


def fault_point(name: str) -> None:
    """Act if ``$VLENS_FAULT`` names this point and this is its K-th pass (see the module docstring)."""
    spec = os.environ.get("VLENS_FAULT")
    if not spec:
        return
    want = _plan(spec).get(name)
    if want is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != want[0]:
        return
    if want[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif want[1] == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    else:
        raise RuntimeError(f"fault injected at {name} #{_counts[name]}")


def reset() -> None:
    """Forget how often each point was reached (for tests that inject faults in their own process)."""
    _counts.clear()
