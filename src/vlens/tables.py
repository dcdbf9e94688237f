"""Markdown tables for benchmark outputs: one small formatter below every capability that prints a table.

(:func:`vlens.sweep.markdown_table` formats a sweep's summary rows; this one takes headers and rows as they are.)"""

from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
