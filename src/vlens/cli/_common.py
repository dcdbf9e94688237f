"""Small pieces the CLI modules share: JSON output and a group with a default sub-command."""

from __future__ import annotations

import json
import sys

import typer
from typer.core import TyperGroup


def echo_json(obj) -> None:
    from vlens.runs import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


class DefaultCommandGroup(TyperGroup):
    """A group that runs ``default_command`` when the first argument is not one of its sub-commands.

    Lets ``vlens caption IMG...`` and ``vlens caption eval ...`` live side by side.
    """

    default_command = "run"

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-") or \
                (args and args[0].startswith("-") and args[0] not in ("-h", "--help")):
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)


def fail(message: str) -> None:
    """Raise a one-line user error."""
    from vlens.errors import VlensError

    raise VlensError(message)


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of text.")
