"""Entry point of the ``vlens`` command. Imports stay light: each command imports what it needs when it runs.

``main(argv)`` is callable from tests. A :class:`vlens.errors.VlensError` prints one line (``error: ...``) and
exits non-zero; ``--debug`` (anywhere on the line) shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from vlens import __version__

app = typer.Typer(
    name="vlens",
    help="See what vision models see: dense correspondences, captioning, image-text retrieval, one lab report.\n\n"
         "Start with `vlens lab --out lab/` (offline, a few minutes on a laptop), then explore the verbs below. "
         "Every command takes --help.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module registers its commands on the root app. The order is the order in `vlens --help`.
COMMAND_MODULES = ["lab", "data", "models", "match", "caption", "retrieval", "index", "serve", "ssl"]


def _version(value: bool):
    if value:
        typer.echo(f"vlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the vlens version and exit.")):
    pass


for _name in COMMAND_MODULES:
    importlib.import_module(f"vlens.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    import click
    import typer.exceptions
    from typer._click.exceptions import ClickException as TyperClickException

    # typer >= 0.20 carries its own copy of click: usage errors come from either one, depending on the version.
    usage_errors = (click.ClickException, TyperClickException)
    exits = (click.exceptions.Exit, typer.exceptions.Exit)
    aborts = (click.exceptions.Abort, typer.exceptions.Abort)

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("VLENS_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="vlens", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except exits as exc:
        return exc.exit_code
    except usage_errors as exc:
        exc.show()
        return exc.exit_code
    except aborts:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        from vlens.errors import VlensError

        if debug:
            raise
        if isinstance(exc, VlensError):
            typer.echo(f"error: {exc}", err=True)
            return exc.exit_code
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc}\n"
                   "This is a bug in vlens; rerun with --debug and report the traceback.", err=True)
        return 2


def run() -> None:  # console-script shim
    sys.exit(main())


if __name__ == "__main__":
    run()
