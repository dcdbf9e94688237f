"""Markdown tables: the one formatter behind every table vlens prints (benchmarks, sweeps, the lab report)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """A Markdown table (ending in a newline); floats are shown with one decimal, anything else as ``str``.

    ``align``: one letter per column, ``l`` (left) or ``r`` (right, for numbers); missing letters mean ``l``.
    """
    align = align.ljust(len(headers), "l")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
