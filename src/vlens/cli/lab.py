"""``vlens lab``: run everything and write a report."""

from __future__ import annotations

from pathlib import Path

import typer

from vlens.cli._common import JSON_OPTION, check, echo_json


def register(root: typer.Typer) -> None:
    root.command("lab")(lab)


def lab(
    out: Path = typer.Option(Path("vlens-lab"), "--out", "-o", help="Folder for report.html, report.md, "
                             "manifest.json, figures/ and the raw runs.", callback=check.output("dir")),
    seed: int = typer.Option(0, help="Seed for data generation, sampling and training.", callback=check.seed()),
    quick: bool = typer.Option(False, help="Smaller datasets and fewer settings (for a fast look or tests)."),
    only: list[str] = typer.Option(None, "--only", help="Run just these sections (repeatable), e.g. --only data.",
                                   callback=check.text()),
    json_out: bool = JSON_OPTION,
):
    """Run every part of vlens on the embedded data and models and write a lab report (offline).

    Sections: data, then each capability vlens has (correspondences, captioning, retrieval, search).
    Open OUT/report.html in a browser when it is done.
    """
    import os

    from vlens.errors import VlensError
    from vlens.report.lab import run_lab

    os.environ["VLENS_OFFLINE"] = "1"  # the lab runs the embedded models only: reproducible, no download

    manifest = run_lab(out, seed=seed, quick=quick, only=only or None, log=lambda m: typer.echo(m, err=True))
    if json_out:  # the manifest (sections, their times and status) and where the report is
        echo_json({**manifest, "report": str(out / "report.html")})
    else:
        typer.echo(f"report: {out / 'report.html'}  ({manifest['total_s']:.0f} s)")
    if manifest["failed"]:
        raise VlensError(f"section(s) failed: {', '.join(manifest['failed'])}; see {out / 'report.html'}")
