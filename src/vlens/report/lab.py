"""``vlens lab``: run the report sections, in order, and write ``report.md``, ``report.html``, ``manifest.json``.

SECTIONS is the explicit list of what the report contains. A section that fails is reported in place (with
the error) and the others still run; the command then exits non-zero.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

from vlens.report.section import LabContext, Section

# (key, "module:function"), in report order.
SECTIONS: list[tuple[str, str]] = [
    ("data", "vlens.report.sections.data:section"),
    ("match", "vlens.report.sections.match:section"),
    ("ssl", "vlens.report.sections.ssl:section"),
    ("caption", "vlens.report.sections.caption:section"),
    ("retrieval", "vlens.report.sections.retrieval:section"),
    ("search", "vlens.report.sections.search:section"),
    ("explore", "vlens.report.sections.explore:section"),
]


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("vlens", "torch", "transformers", "numpy", "faiss", "PIL"):
        try:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            out[mod] = None
    return out


def run_lab(out, seed: int = 0, quick: bool = False, only: list[str] | None = None,
            log=print) -> dict:
    """Run the sections (all, or those in ``only``) and write the report; returns the manifest."""
    from vlens.errors import ConfigError
    from vlens.report.render import to_html, to_markdown
    from vlens.runs import atomic_write_text, seed_everything, write_json

    keys = [k for k, _ in SECTIONS]
    unknown = sorted(set(only or []) - set(keys))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; sections are: {', '.join(keys)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = LabContext(out=out, seed=seed, quick=quick)
    sections, timings, failed = [], {}, []
    t_start = time.time()
    for key, target in SECTIONS:
        if only and key not in only:
            continue
        log(f"[lab] {key} ...")
        seed_everything(seed)
        t0 = time.time()
        try:
            mod, fn = target.split(":")
            sec = getattr(importlib.import_module(mod), fn)(ctx)
        except Exception as exc:  # noqa: BLE001 - a failing section must not lose the others
            failed.append(key)
            sec = Section(key)
            sec.text(f"**Failed**: {type(exc).__name__}: {exc}")
            sec.code("".join(traceback.format_exception(exc))[-3000:])
        timings[key] = round(time.time() - t0, 2)
        sec.text(f"_Section time: {timings[key]:.1f} s._")
        log(f"[lab] {key} done in {timings[key]:.1f} s" + (" (FAILED)" if key in failed else ""))
        sections.append((key, sec))
    total = round(time.time() - t_start, 2)
    manifest = {
        "command": " ".join(["vlens", *sys.argv[1:]]) if sys.argv else "vlens lab",
        "seed": seed, "quick": quick, "sections": [k for k, _ in sections], "failed": failed,
        "timings_s": timings, "total_s": total, "versions": _versions(),
        "metrics": {k: s.metrics for k, s in sections},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    meta = (f"vlens {manifest['versions']['vlens']} · torch {manifest['versions']['torch']} · seed {seed} · "
            f"{total:.0f} s on {platform.machine()} · {manifest['finished']}")
    secs = [s for _, s in sections]
    atomic_write_text(out / "report.md", to_markdown("vlens lab report", secs, out, meta))
    atomic_write_text(out / "report.html", to_html("vlens lab report", secs, out, meta))
    write_json(out / "manifest.json", manifest)
    return manifest
