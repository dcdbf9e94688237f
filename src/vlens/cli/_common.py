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

    def parse_args(self, ctx, args):
        # Insert the default command before the group parses anything: otherwise a leading option of the default
        # command (`vlens caption --strategy sample img.png`) is rejected as an unknown option of the group.
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def fail(message: str) -> None:
    """Raise a one-line user error."""
    from vlens.errors import VlensError

    raise VlensError(message)


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of text.")
