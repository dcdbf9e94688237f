"""What the CLI modules share: the one option-checking layer, JSON output, a group with a default sub-command.

How to declare a validated option (one way everywhere; `tests/test_cli_validation.py` walks every command and
fails if an int, float or path parameter has no check, then feeds each one a table of bad values)::

    from vlens.cli._common import check

    batch_size: int = typer.Option(32, "--batch-size", help="...", callback=check.count(max=4096))
    lr: float = typer.Option(5e-4, help="...", callback=check.number(0, 10, lo_open=True))
    seed: int = typer.Option(0, help="...", callback=check.seed())
    score: str = typer.Option("cycle", help="...", callback=check.choice("cycle", "feature"))
    image: Path = typer.Argument(..., help="...", callback=check.existing("file"))   # or "dir" / "any"
    out: Path = typer.Option(..., "--out", help="...", callback=check.output("dir"))  # or "file"

A check runs while the command line is parsed, so a bad value stops the command before it loads a model or
writes anything, with one line naming the option, the value and what is allowed::

    error: invalid value for --nlist: -3 is out of range (allowed: 0 to 65536)

Lists and tuples (repeatable options, ``tuple[float, float]``) are checked element by element. Every number needs
an upper bound (absurd values must fail fast, not run out of memory) and floats never accept NaN or infinity.
Checks between two options (e.g. min <= max) stay in the command, raised as ``ConfigError``; library functions
still validate their own arguments.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

MAX_SEED = 2**32 - 1
MAX_IMAGE_SIDE = 4096
"""Largest model-input / generated image side any option accepts (a ViT's memory grows with side**4)."""
MAX_COUNT = 10_000_000
"""Largest count of images, captions, steps, ... an option accepts."""


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


def option_name(param) -> str:
    """How the user wrote a parameter: its longest flag (``--batch-size``) or its metavar (``IMAGES``)."""
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    return max(opts, key=len) if opts else (param.name or "argument").upper()


class _Check:
    """Namespace of callback factories; each returns a typer callback tagged with ``vlens_check`` (a dict that
    says what it accepts, read by the tests that walk the CLI)."""

    @staticmethod
    def _make(spec: dict, one):
        def callback(ctx: typer.Context, param: typer.CallbackParam, value):
            if value is None or ctx.resilient_parsing:
                return value
            if isinstance(value, list | tuple):
                return type(value)(one(v, param) for v in value)
            return one(value, param)

        callback.vlens_check = spec
        return callback

    @staticmethod
    def _bad(param, value, allowed: str):
        raise typer.BadParameter(f"{value!r} is not allowed ({allowed})" if not isinstance(value, int | float)
                                 else f"{value} is out of range (allowed: {allowed})", param=param)

    def integer(self, lo: int, hi: int, exclude: tuple[int, ...] = ()):
        """An int in [lo, hi], not one of ``exclude``."""
        allowed = f"{lo} to {hi}" + (f" except {', '.join(map(str, exclude))}" if exclude else "")

        def one(v, param):
            if not lo <= v <= hi or v in exclude:
                self._bad(param, v, allowed)
            return v
        return self._make({"type": "int", "lo": lo, "hi": hi, "exclude": exclude}, one)

    def layer(self):
        """A transformer block counted from 1, or from the end with -1, -2, ..."""
        return self.integer(-256, 256, exclude=(0,))

    def count(self, lo: int = 1, max: int = MAX_COUNT):  # noqa: A002 - reads well at the call site
        """A count (of images, steps, batches): an int in [lo, max], by default at least 1."""
        return self.integer(lo, max)

    def seed(self):
        """A random seed: 0 to 2**32 - 1 (what NumPy accepts)."""
        return self.integer(0, MAX_SEED)

    def side(self, lo: int = 8, hi: int = MAX_IMAGE_SIDE):
        """An image side in pixels."""
        return self.integer(lo, hi)

    def number(self, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
        """A finite float in [lo, hi] (``lo_open`` / ``hi_open`` exclude the bound)."""
        allowed = f"{'above' if lo_open else 'from'} {lo:g} {'to below' if hi_open else 'to'} {hi:g}"

        def one(v, param):
            if not math.isfinite(v):
                raise typer.BadParameter(f"{v} is not a finite number (allowed: {allowed})", param=param)
            if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
                self._bad(param, v, allowed)
            return v
        return self._make({"type": "float", "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}, one)

    def choice(self, *choices: str):
        """One of a few words."""
        def one(v, param):
            if v not in choices:
                raise typer.BadParameter(f"{v!r} is not one of {', '.join(choices)}", param=param)
            return v
        return self._make({"type": "choice", "choices": choices}, one)

    def device(self):
        """auto, cpu, mps, cuda or cuda:N (whether it exists is checked when the model loads: vlens.devices)."""
        def one(v, param):
            ok = v in ("auto", "cpu", "mps", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
            if not ok:
                raise typer.BadParameter(f"{v!r} is not a device (allowed: auto, cpu, mps, cuda, cuda:N)",
                                         param=param)
            return v
        return self._make({"type": "choice", "choices": ("auto", "cpu", "mps", "cuda", "cuda:N")}, one)

    def text(self, max_len: int = 1000, empty: bool = False):
        """A free-text value (a model spec, a prompt): not empty unless ``empty``, at most ``max_len`` characters."""
        def one(v, param):
            if not empty and not str(v).strip():
                raise typer.BadParameter("an empty value is not allowed", param=param)
            if len(str(v)) > max_len:
                raise typer.BadParameter(f"a value of {len(str(v))} characters is too long (allowed: up to "
                                         f"{max_len})", param=param)
            if "\x00" in str(v):
                raise typer.BadParameter("a value with a NUL character is not allowed", param=param)
            return v
        return self._make({"type": "text", "max_len": max_len, "empty": empty}, one)

    def pair(self, lo: float, hi: float):
        """Two finite numbers written ``A,B`` (e.g. a point ``--xy 120,80``), each in [lo, hi]. The value stays
        the text as given; :func:`parse_pair` turns it into numbers in the command."""
        allowed = f"two numbers A,B, each from {lo:g} to {hi:g}"

        def one(v, param):
            try:
                a, b = parse_pair(v)
            except ValueError:
                raise typer.BadParameter(f"{v!r} is not two numbers A,B such as 120,80 (allowed: {allowed})",
                                         param=param) from None
            if not (lo <= a <= hi and lo <= b <= hi):
                raise typer.BadParameter(f"{v} is out of range (allowed: {allowed})", param=param)
            return v
        return self._make({"type": "pair", "lo": lo, "hi": hi}, one)

    def numbers(self, lo: float, hi: float, integer: bool = False):
        """A comma-separated list of finite numbers (a sweep grid, ``1e-4,5e-4``), each in [lo, hi]. The value
        stays the text as given; the command splits it."""
        kind = "whole numbers" if integer else "numbers"
        allowed = f"comma-separated {kind}, each from {lo:g} to {hi:g}"

        def one(v, param):
            items = [x.strip() for x in str(v).split(",")]
            if not any(items):
                raise typer.BadParameter(f"{v!r} is empty (allowed: {allowed})", param=param)
            if not all(items):  # "10,,50" or "10,": a value lost in typing, never dropped silently
                raise typer.BadParameter(f"{v!r} has an empty item; write each value once between commas, e.g. "
                                         f"{','.join(x for x in items if x)} (allowed: {allowed})", param=param)
            for x in items:
                try:
                    num = float(x)
                    ok = math.isfinite(num) and (not integer or num == int(num))
                except ValueError:
                    ok = False
                if not ok:
                    raise typer.BadParameter(f"{x!r} is not one of the {kind} expected (allowed: {allowed})",
                                             param=param)
                if not lo <= num <= hi:
                    raise typer.BadParameter(f"{x} is out of range (allowed: {allowed})", param=param)
            return v
        return self._make({"type": "numbers", "lo": lo, "hi": hi, "integer": integer}, one)

    def path(self):
        """An input path whose absence the command reports itself (e.g. skips and lists missing files)."""
        def one(v, param):
            if not str(v).strip() or "\x00" in str(v):
                raise typer.BadParameter(f"{str(v)!r} is not a usable path", param=param)
            return v
        return self._make({"type": "path", "role": "lenient", "kind": "any"}, one)

    def existing(self, kind: str = "any"):
        """An input path that must exist: ``file``, ``dir`` or ``any``."""
        def one(v, param):
            p = Path(v).expanduser()
            if not str(v).strip():
                raise typer.BadParameter("an empty path is not allowed", param=param)
            if not p.exists():
                raise typer.BadParameter(f"{v} is not a folder (it does not exist)" if kind == "dir"
                                         else f"{v}: no such file or folder", param=param)
            if kind == "file" and p.is_dir():
                raise typer.BadParameter(f"{v} is a folder; give a file", param=param)
            if kind == "dir" and not p.is_dir():
                raise typer.BadParameter(f"{v} is not a folder", param=param)
            if not os.access(p, os.R_OK):
                raise typer.BadParameter(f"{v}: permission denied (cannot read it)", param=param)
            return v
        return self._make({"type": "path", "role": "input", "kind": kind}, one)

    def output(self, kind: str = "file"):
        """An output path: a ``file`` to write (not an existing folder) or a ``dir`` to create or fill (not an
        existing file). The nearest existing parent must be a writable folder: checked now, before the work."""
        def one(v, param):
            if not str(v).strip():
                raise typer.BadParameter("an empty path is not allowed", param=param)
            p = Path(v).expanduser()
            try:
                str(p.absolute()).encode("utf-8")
            except UnicodeEncodeError:  # FAISS, SQLite and every text file vlens writes name their paths in UTF-8
                from vlens.images import shown_name

                raise typer.BadParameter(f"{shown_name(v)}: the path is not valid UTF-8; choose a UTF-8 name to "
                                         "write to", param=param) from None
            if str(v) == "-":
                from vlens.runs import output_problem

                raise typer.BadParameter(output_problem("-") if kind == "file" else
                                         "'-' is not a folder name; give a folder to write into", param=param)
            if kind == "file":
                from vlens.runs import is_special, output_problem

                problem = output_problem(p)
                if problem:
                    raise typer.BadParameter(problem, param=param)
                if is_special(p):  # a device, FIFO or /dev/stdout: written directly (not replaced)
                    return v
                if p.is_symlink():  # written at the link's final target, atomically there
                    p = Path(os.path.realpath(p))
            if kind == "dir" and p.exists() and not p.is_dir():
                raise typer.BadParameter(f"{v} is an existing file; give a folder", param=param)
            problem = writable_problem(p if kind == "dir" and p.is_dir() else p.parent)
            if problem:
                raise typer.BadParameter(f"cannot write {v}: {problem}", param=param)
            return v
        return self._make({"type": "path", "role": "output", "kind": kind}, one)


check = _Check()


def parse_pair(text: str) -> tuple[float, float]:
    """``"A,B"`` -> (A, B) as finite floats; ValueError otherwise."""
    parts = str(text).replace(" ", "").split(",")
    if len(parts) != 2:
        raise ValueError(text)
    a, b = float(parts[0]), float(parts[1])
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(text)
    return a, b


def empty_path_option(command, args: list[str]) -> tuple[str, str] | None:
    """(option, command path) of the first path option or argument given as an empty string, or None.

    Typer turns ``--out ''`` into ``Path('.')`` before any check sees it, so an empty value would be taken for
    the current folder (``--out '': is a folder``, or a whole working directory captioned). The raw command line
    is read here instead, with the same command lookup as the parser."""
    cmd, i, names = command, 0, ["vlens"]
    while hasattr(cmd, "commands"):
        if i < len(args) and args[i] in cmd.commands:
            cmd, i = cmd.commands[args[i]], i + 1
            names.append(cmd.name)
        elif getattr(cmd, "default_command", None) in getattr(cmd, "commands", {}) and i < len(args) \
                and args[i] not in ("-h", "--help"):
            cmd = cmd.commands[cmd.default_command]
            names.append(cmd.name)
        else:
            return None
    width, path_opts, path_args = {}, set(), []
    for p in cmd.params:
        is_path = (getattr(p.callback, "vlens_check", None) or {}).get("type") == "path"
        if p.param_type_name == "option":
            for o in p.opts:
                width[o] = 0 if getattr(p, "is_flag", False) else max(p.nargs, 1)
                if is_path:
                    path_opts.add(o)
        elif is_path:
            path_args.append(p)
    rest, j = args[i:], 0
    while j < len(rest):
        tok = rest[j]
        if tok.startswith("--") and "=" in tok:
            name, value = tok.split("=", 1)
            if name in path_opts and not value.strip():
                return name, " ".join(names)
        elif tok in width:
            if tok in path_opts and any(not v.strip() for v in rest[j + 1:j + 1 + width[tok]]):
                return tok, " ".join(names)
            j += 1 + width[tok]
            continue
        elif not tok.strip() and path_args:
            return option_name(path_args[0]), " ".join(names)
        j += 1
    return None


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be created under ``folder`` (which may not exist yet), or None if they can."""
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (permission denied)"
    return None


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of text.")


DEVICE_OPTION = typer.Option(
    "auto", "--device", help="Where to run the model: cuda (or cuda:N), mps, cpu, or auto (default: a GPU when "
    "torch sees one, else the CPU). Asking for a GPU that is not there is an error, not a quiet CPU run.",
    callback=check.device())
DTYPE_OPTION = typer.Option(
    "auto", "--dtype", help="Model number format: bf16 (recent GPUs and CPUs; half the memory), fp16 (older GPUs), "
    "fp32, or auto (default: bf16/fp16 on a GPU, fp32 on the CPU).", callback=check.choice("auto", "bf16", "fp16",
                                                                                           "fp32"))
PRECISION_OPTION = typer.Option(
    "auto", "--mixed-precision", help="Automatic mixed precision (accelerate autocast, fp32 master weights): auto "
    "(bf16, or fp16 on GPUs without bf16; off on the CPU), bf16 (GPUs and CPUs), fp16 (CUDA only), no.",
    callback=check.choice("auto", "no", "bf16", "fp16", "fp32"))
ENGINE_HELP = ("Runtime for the model's towers: torch (eager), onnx (ONNX Runtime: an export made once, checked "
               "against torch, cached under $VLENS_CACHE/exports; see `vlens models list`), or auto (default: "
               "whichever the export measured faster on this machine; torch where no export can be made).")
ENGINE_OPTION = typer.Option("auto", "--engine", help=ENGINE_HELP, callback=check.choice("torch", "onnx", "auto"))
ENGINE_TORCH_OPTION = typer.Option(
    "torch", "--engine", help=ENGINE_HELP.replace("or auto (default: ", "or auto (").replace(
        "where no export can be made).", "where no export can be made). Default torch: each new input size needs "
        "its own export (seconds to a minute), which pays off over many images, not one run."),
    callback=check.choice("torch", "onnx", "auto"))
QUANTIZE_OPTION = typer.Option(
    "none", "--quantize", help="int8: run the tower as an ONNX Runtime dynamic-int8 export, offered only where it "
    "kept quality (BLIP's vision encoder, ViT/DINO token features; refused in one line elsewhere: "
    "benchmarks/RESULTS.md, Engines).",
    callback=check.choice("none", "int8"))
WORKERS_OPTION = typer.Option(
    2, "--workers", help="Processes decoding and resizing images while the model runs (0 = none, in this process).",
    callback=check.count(lo=0, max=64))
THREADS_HELP = ("CPU threads for torch and FAISS in this process (default: the cores this process may use, shared "
                "with decode workers and torchrun processes on the node; VLENS_THREADS sets it too). Lower it when "
                "other work shares the machine.")
THREADS_OPTION = typer.Option(None, "--threads", help=THREADS_HELP, callback=check.count(1, 1024))


def with_threads(func):
    """``func`` with a ``--threads`` option that puts the CPU policy (:mod:`vlens.cpu`) in force before it runs.

    The CLI wraps every command that does heavy work with this (see ``LIGHT_COMMANDS`` in ``cli/main.py``), so
    the option means the same everywhere and no command sets thread counts itself. Commands with their own
    ``threads`` parameter (``serve``: threads per request) apply the policy themselves and are left alone.
    """
    import functools
    import inspect

    sig = inspect.signature(func, eval_str=True)
    if "threads" in sig.parameters:
        return func

    @functools.wraps(func)
    def wrapper(*args, threads: int | None = None, **kwargs):
        from vlens import cpu

        note = cpu.apply(threads).note()
        if note:
            typer.echo(note, err=True)
        return func(*args, **kwargs)

    param = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=THREADS_OPTION,
                              annotation=int | None)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])
    wrapper.__annotations__ = {**func.__annotations__, "threads": "int | None"}
    return wrapper
