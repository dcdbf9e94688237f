"""The one CLI validation layer: every command, every option, a table of bad values.

The commands are discovered from the typer app, so a command added later is covered without touching this file.
Each command's body is replaced by a stub that fails the test if it runs: a bad value must be refused while the
command line is parsed, before any work, with exactly one ``error:`` line naming the option, and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import io
import typing
from pathlib import Path

import pytest
import typer

from vlens.cli.main import app, invoke

FLAGS_WITHOUT_VALUE = {"help"}


def _leaves(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from _leaves(sub, (*path, name))
    else:
        yield path, cmd


def _base(t: type) -> type:
    args = typing.get_args(t)
    if typing.get_origin(t) in (list, tuple) and args:
        return args[0]
    return t


def _spec(param) -> dict | None:
    return getattr(param.callback, "vlens_check", None)


@pytest.fixture(scope="module")
def stubbed():
    """The whole CLI with every command body replaced by a tripwire."""
    command = typer.main.get_command(app)

    def tripwire(*a, **k):
        raise AssertionError("the command body ran although an option was invalid")

    leaves = list(_leaves(command))
    for _, leaf in leaves:
        fn = getattr(leaf.callback, "__wrapped__", leaf.callback)
        leaf.vlens_hints = typing.get_type_hints(fn)
        leaf.callback = tripwire
    return command, leaves


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_samples")
    img_dir = d / "images"
    img_dir.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(img_dir / "a.png")
    (d / "plain.txt").write_text("not a folder\n")
    return d


def _run(command, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = invoke(command, [str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _good(spec: dict | None, typ: type, d: Path) -> str:
    if spec is None:
        return "x"
    t = spec["type"]
    if t == "int":
        return str(next(v for v in (1, spec["lo"], spec["hi"]) if spec["lo"] <= v <= spec["hi"]
                        and v not in spec["exclude"]))
    if t == "float":
        return str(spec["hi"] if spec["lo_open"] and not spec["hi_open"] else spec["lo"] if not spec["lo_open"]
                   else (spec["lo"] + spec["hi"]) / 2)
    if t == "choice":
        return spec["choices"][0]
    if t == "text":
        return "x"
    if t == "pair":
        return f"{spec['lo']:g},{spec['lo']:g}"
    if t == "numbers":
        return f"{spec['lo']:g},{spec['hi']:g}"
    if spec["role"] == "output":
        return str(d / ("new_out.png" if spec["kind"] == "file" else "new_out_dir"))
    return str(d / "images" / "a.png") if spec["kind"] == "file" else str(d / "images")


def _bad_values(spec: dict, d: Path) -> list[str]:
    t = spec["type"]
    if t == "int":
        lo, hi = spec["lo"], spec["hi"]
        return ["abc", "1.5", str(lo - 1), str(hi + 1), str(10**30), str(-(10**30)), *map(str, spec["exclude"])]
    if t == "float":
        lo, hi = spec["lo"], spec["hi"]
        return ["abc", "nan", "inf", "-inf", str(lo - 1), str(hi * 2 + 1), "1e400",
                *([str(lo)] if spec["lo_open"] else []), *([str(hi)] if spec["hi_open"] else [])]
    if t == "choice":
        return ["bogus", ""]
    if t == "text":
        return ["x" * (spec["max_len"] + 1), *([] if spec["empty"] else ["", "   "])]
    if t == "pair":
        lo, hi = spec["lo"], spec["hi"]
        return ["abc", "1", "1,2,3", "", "nan,1", "1,inf", f"{lo - 1:g},{lo:g}", f"{lo:g},{hi * 2 + 1:g}"]
    if t == "numbers":
        lo, hi = spec["lo"], spec["hi"]
        return ["", ",", "abc", "1,abc", "nan", f"{lo:g},inf", f"{lo - 1:g}", f"{lo:g},{hi * 2 + 1:g}", "1e400",
                *(["1.5"] if spec["integer"] else [])]
    # (An empty path is not in the table: typer turns "" into Path("."), the current folder.)
    not_a_path = str(d / "plain.txt" / "below")
    if spec["role"] == "lenient":
        return ["a\x00b"]
    if spec["role"] == "input":
        bad = [str(d / "missing"), not_a_path]
        bad += [str(d / "images")] if spec["kind"] == "file" else [str(d / "plain.txt")] if spec["kind"] == "dir" \
            else []
        return bad
    return [not_a_path, str(d / "images") if spec["kind"] == "file" else str(d / "plain.txt")]


def _argv_for(leaf, d: Path, override: tuple[str, list[str]] | None = None) -> list[str]:
    """Required parameters filled with good values; ``override`` = (param name, its value tokens)."""
    hints = leaf.vlens_hints
    args, opts = [], []
    for p in leaf.params:
        if p.name in FLAGS_WITHOUT_VALUE or getattr(p, "is_flag", False):
            continue
        typ = _base(hints.get(p.name, str))
        n = p.nargs if p.nargs and p.nargs > 0 else 1
        if override and override[0] == p.name:
            tokens = override[1]
        elif p.required:
            tokens = [_good(_spec(p), typ, d)] * n
        else:
            continue
        if p.param_type_name == "argument":
            args += tokens
        else:
            opts += [max(p.opts, key=len), *tokens]
    return args + opts


def test_every_numeric_and_path_option_has_a_check(stubbed):
    _, leaves = stubbed
    import vlens.cli.main as cli_main

    missing = []
    for path, leaf in leaves:
        hints = leaf.vlens_hints
        for p in leaf.params:
            if p.name in FLAGS_WITHOUT_VALUE or getattr(p, "is_flag", False):
                continue
            typ = _base(hints.get(p.name, str))
            if typ in (int, float, Path, str) and _spec(p) is None:
                missing.append(f"vlens {' '.join(path)} {max(p.opts, key=len)} ({typ.__name__})")
    assert cli_main.COMMAND_MODULES and not missing, "declare these with a vlens.cli._common.check callback:\n" + \
        "\n".join(missing)


def test_bad_values_give_one_error_line_before_any_work(stubbed, samples):
    command, leaves = stubbed
    tried, failures = 0, []
    for path, leaf in leaves:
        for p in leaf.params:
            spec = _spec(p)
            if spec is None:
                continue
            n = p.nargs if p.nargs and p.nargs > 0 else 1
            name = max(p.opts, key=len) if p.param_type_name == "option" else None
            for bad in _bad_values(spec, samples):
                tokens = [bad] + [_good(spec, str, samples)] * (n - 1)
                argv = [*path, *_argv_for(leaf, samples, (p.name, tokens))]
                code, out, err = _run(command, argv)
                tried += 1
                lines = err.strip().splitlines()
                ok = (code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
                      and "unexpected" not in err and (name is None or name in lines[0]))
                if not ok:
                    failures.append(f"vlens {' '.join(map(str, argv))!s} -> exit {code}: {err.strip()[:300]}")
    assert tried > 300
    assert not failures, f"{len(failures)} of {tried} bad values not refused cleanly:\n" + "\n".join(failures[:40])


def test_good_values_reach_the_command(stubbed, samples):
    """The table is honest: with only the required values filled in, each command parses and its body runs."""
    command, leaves = stubbed
    for path, leaf in leaves:
        code, _, err = _run(command, [*path, *_argv_for(leaf, samples)])
        assert code == 2 and "the command body ran" in err, (path, err)


def test_usage_errors_are_one_line(cli):
    code, _, err = cli("data", "nonsense")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no such command 'nonsense'")
    code, _, err = cli("index", "build")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: missing") and "--help" in err


def test_messages_name_option_value_and_range(cli, tmp_path):
    code, _, err = cli("index", "build", tmp_path, "--out", tmp_path / "ix", "--nlist", "-3")
    assert code == 1 and err == ("error: invalid value for --nlist: -3 is out of range (allowed: 0 to 65536) "
                                 "(see 'vlens index build --help')\n")
    code, _, err = cli("ssl", "train", "--out", tmp_path / "r", "--lr", "nan")
    assert code == 1 and "--lr" in err and "nan is not a finite number" in err and "above 0" in err
    code, _, err = cli("data", "make-shapes", tmp_path / "s", "--seed", str(2**70))
    assert code == 1 and f"{2**70} is out of range (allowed: 0 to {2**32 - 1})" in err


def test_json_means_one_thing_in_every_command():
    """`--json` is a flag everywhere (print JSON on stdout instead of text), never an option that takes a file
    name; files go through the options that name files (--out, ...)."""
    command = typer.main.get_command(app)
    taking_a_value = [f"vlens {' '.join(path)}" for path, leaf in _leaves(command) for p in leaf.params
                      if "--json" in getattr(p, "opts", ()) and not getattr(p, "is_flag", False)]
    with_json = {path for path, leaf in _leaves(command) for p in leaf.params if "--json" in getattr(p, "opts", ())}
    assert len(with_json) > 10 and not taking_a_value, taking_a_value

