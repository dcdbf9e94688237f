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
COMMAND_MODULES = ["lab", "data", "models", "match", "explore", "caption", "retrieval", "index", "serve", "ssl"]


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

# Commands that only read or move files: every other command does heavy work and takes --threads.
LIGHT_COMMANDS = {"data inspect", "data fetch", "models", "index info"}


def _with_threads_everywhere(typer_app: typer.Typer, path: str = "") -> None:
    """Give every heavy command the shared ``--threads`` option (``cli._common.with_threads``)."""
    from vlens.cli._common import with_threads

    for info in typer_app.registered_commands:
        name = f"{path}{info.name or info.callback.__name__}"
        if name not in LIGHT_COMMANDS and path.strip() not in LIGHT_COMMANDS:
            info.callback = with_threads(info.callback)
    for group in typer_app.registered_groups:
        _with_threads_everywhere(group.typer_instance, f"{path}{group.name} ")


_with_threads_everywhere(app)


class Interrupted(BaseException):
    """Ctrl-C, raised by our SIGINT handler instead of KeyboardInterrupt (which the CLI framework swallows)."""


def _on_sigint(signum, frame):
    raise Interrupted()


def interrupt_message(args: list[str]) -> str:
    """What Ctrl-C prints: a command that works through files can be rerun to continue; a server just stops."""
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["serve"]:
        return "interrupted (Ctrl-C): vlens serve stopped"
    return "interrupted (Ctrl-C); rerun the same command to continue or start over"


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def model_event_line(event: dict) -> str | None:
    """The stderr line for what the model resolver reports (vlens.models.hub events): the builtin-fallback notice,
    a download's size before it starts, its end, a checkpoint file converted (with where each setting came from)."""
    kind = event.get("event")
    if kind == "fallback":
        from vlens.models.defaults import notice

        return notice(event["task"], event["spec"], event["reason"])
    if kind == "download":
        return (f"downloading {event['repo']} from {event['endpoint']}: {event['bytes'] / 1e6:.1f} MB in "
                f"{event['files']} files, once (kept in the Hugging Face cache; VLENS_OFFLINE=1 or --model "
                "builtin:NAME stays offline)")
    if kind == "downloaded":
        return f"{event['repo']}: downloaded in {event['seconds']:.1f} s into {event['path']}"
    if kind == "engine":
        return event["line"]
    if kind == "converted":
        return f"converted {event['line']} (kept in {event['folder']})"
    return None


def _print_model_event(event: dict) -> None:
    line = model_event_line(event)
    if line:
        typer.echo(line, err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status: 0; 1 for a user error (a bad option value included);
    2 for a malformed command line (unknown option or command, missing argument); 130 after Ctrl-C.
    Every failure prints exactly one ``error: ...`` line (``--debug``: the traceback)."""
    return invoke(typer.main.get_command(app), argv)


def invoke(command, argv: list[str] | None = None) -> int:
    import signal
    import threading

    import click
    import typer.exceptions
    from typer._click.exceptions import ClickException as TyperClickException

    # typer >= 0.20 carries its own copy of click: usage errors come from either one, depending on the version.
    usage_errors = (click.ClickException, TyperClickException)
    exits = (click.exceptions.Exit, typer.exceptions.Exit)
    aborts = (click.exceptions.Abort, typer.exceptions.Abort)

    from vlens import cpu

    try:  # before any command imports torch: libgomp reads its wait policy once, when torch loads
        cpu.apply()
    except Exception as exc:  # noqa: BLE001 - a bad VLENS_THREADS is a user error, said like every other one
        typer.echo(f"error: {_one_line(exc)}", err=True)
        return 1
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = list(sys.argv[1:] if argv is None else argv)
    from vlens.models.hub import add_listener

    add_listener(_print_model_event)
    debug = "--debug" in args or os.environ.get("VLENS_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, _on_sigint)
    try:
        from vlens.cli._common import empty_path_option

        empty = empty_path_option(command, args)
        if empty:
            typer.echo(f"error: invalid value for {empty[0]}: an empty path is not allowed (see '{empty[1]} --help')",
                       err=True)
            return 1
        rv = command.main(args=args, prog_name="vlens", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except exits as exc:
        if exc.exit_code == 130:  # a KeyboardInterrupt raised by someone else's handler
            typer.echo(interrupt_message(args), err=True)
        return exc.exit_code
    except usage_errors as exc:
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        param = getattr(exc, "param", None)
        if param is not None and type(exc).__name__ == "BadParameter":
            from vlens.cli._common import option_name

            msg = f"invalid value for {option_name(param)}: {_one_line(exc.message)}"
            exc.exit_code = 1  # a bad value, like every user error; 2 is for a malformed command line
        else:
            msg = _one_line(exc.format_message()).rstrip(".")
            msg = msg[:1].lower() + msg[1:]
        typer.echo(f"error: {msg}{where}", err=True)
        return exc.exit_code
    except (Interrupted, KeyboardInterrupt, *aborts):
        typer.echo(interrupt_message(args), err=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        from vlens.errors import VlensError

        if debug:
            raise
        if isinstance(exc, VlensError):
            typer.echo(f"error: {_one_line(exc)}", err=True)
            return exc.exit_code
        lost = _peer_lost(exc)
        if lost:
            typer.echo(f"error: {lost}", err=True)
            return 1
        if isinstance(exc, OSError) and exc.strerror:  # disk full, permission denied, read-only file system
            where = f" {exc.filename}" if exc.filename else ""
            typer.echo(f"error: cannot access{where}: {exc.strerror}", err=True)
            return 1
        if isinstance(exc, MemoryError):
            typer.echo("error: out of memory; use smaller sizes, batches or fewer images", err=True)
            return 1
        typer.echo(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} "
                   "(a bug in vlens: rerun with --debug and report the traceback)", err=True)
        return 2
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ProcessGroup", "NCCL error",
               "TCPStore", "Socket Timeout", "recvBytes", "Connection refused")


def _peer_lost(exc: BaseException) -> str | None:
    """Under torchrun / accelerate launch, the one-line message for a collective that failed because another
    process of the run died (its rank 0 killed, out of memory, Ctrl-C there); None otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    name, text = type(exc).__name__, str(exc)
    if not (name.startswith("Dist") or (isinstance(exc, RuntimeError) and any(s in text for s in _PEER_SIGNS))):
        return None
    rank = os.environ.get("RANK", "?")
    first = _one_line(text.splitlines()[0] if text else name)[:160]
    return (f"another process of this {world}-process run stopped, so process {rank} stops too ({first}); "
            "rerun the same command: work already written is kept and resumed")


def run() -> None:  # console-script shim
    sys.exit(main())


if __name__ == "__main__":
    run()
