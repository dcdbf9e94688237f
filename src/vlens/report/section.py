"""A report section: an ordered list of blocks (text, tables, figures) plus the metrics behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LabContext:
    """What sections share: the output folder, the seed, the size of the run and a cache of artefacts."""

    out: Path
    seed: int = 0
    quick: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def figures(self) -> Path:
        p = self.out / "figures"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def work(self, name: str) -> Path:
        """A scratch folder for a section's runs (kept, so a reader can look at raw results)."""
        p = self.out / "runs" / name
        p.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def text(self, paragraph: str) -> None:
        self.blocks.append(("text", paragraph.strip()))

    def table(self, headers: list[str], rows: list[list], caption: str = "") -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows], caption))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", Path(path), caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text.rstrip()))


def fmt(x, digits: int = 1) -> str:
    """Numbers for tables: fixed digits, '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)
