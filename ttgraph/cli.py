"""Command-line entry point: one sub-command per module, errors as one line and exit status 2.

Each command module exposes ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` on the parsed namespace to a callable ``(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from ttgraph import check_companions
from ttgraph.errors import TTGraphError

# The sub-commands, in the order ``ttgraph --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "ttgraph.commands.inspect",
    "ttgraph.commands.compress",
    "ttgraph.commands.plan",
    "targets.cli",  # compile, bench (TVM is imported only when they run)
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with our one-line format instead of a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"ttgraph: error: {message}\n")
        raise SystemExit(2)


DESCRIPTION = (
    "Rewrite the 1×1 convolutions of an ONNX model as Tensor-Train factors sized from calibration data, plan "
    "their contraction and compile the result with Apache TVM. 'ttgraph COMMAND --help' for each command."
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ttgraph")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttgraph", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ttgraph {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():  # `ttgraph compress … --debug` works too (SUPPRESS: no default to clobber)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


class _Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """SIGTERM or SIGHUP (``kill``, ``timeout``, a CI cancel, a closed terminal): raised where the program is,
    so the cleanup of staged outputs runs as it does for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_terminated: int | None = None  # the signal, once one came: TVM's FFI turns our exception into its own error


def _raise_terminated(signum: int, _frame: object) -> None:
    global _terminated
    _terminated = signum
    raise _Terminated(signum)


def _raise_interrupted(signum: int, _frame: object) -> None:
    """Ctrl-C as Python has it (KeyboardInterrupt), remembered: inside TVM's tuning it came back as "TVM could
    not build it: RuntimeError"."""
    global _terminated
    _terminated = signum
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; SIGTERM and SIGHUP end it like Ctrl-C while it runs, and the caller's handlers are back
    when it returns (a pipeline calling main() in-process keeps its own)."""
    global _terminated
    _terminated = None
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave the caller's handlers
            if signum == signal.SIGINT and signal.getsignal(signum) is not signal.default_int_handler:
                continue  # ignored (a background job) or the caller's own: left as it is
            handler = _raise_interrupted if signum == signal.SIGINT else _raise_terminated
            previous[signum] = signal.signal(signum, handler)
    out = sys.stdout
    strict = out if isinstance(out, io.TextIOWrapper) and out.errors == "strict" else None
    if strict is not None:  # a console that cannot show "→" or "×" (cp1252) gets \u2192, not a traceback after the work
        strict.reconfigure(errors="backslashreplace")
    try:
        return _run(argv)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if strict is not None:
            strict.reconfigure(errors="strict")


def _run(argv: Sequence[str] | None) -> int:
    try:
        check_companions()
        parser = build_parser()
        args = parser.parse_args(argv)
    except TTGraphError as err:  # before the arguments are parsed: no --debug
        sys.stderr.write(f"ttgraph: error: {err.one_line(flags=True)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ttgraph: interrupted\n")
        return 130
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except _Terminated as stop:
        sys.stderr.write(f"ttgraph: terminated ({signal.Signals(stop.signum).name})\n")
        return 128 + stop.signum
    except TTGraphError as err:
        if _terminated == signal.SIGINT:  # raised inside a TVM callback, it came back as TVM's error
            sys.stderr.write("ttgraph: interrupted\n")
            return 130
        if _terminated is not None:  # raised inside a TVM callback, it came back as "could not build it: 15"
            sys.stderr.write(f"ttgraph: terminated ({signal.Signals(_terminated).name})\n")
            return 128 + _terminated
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"ttgraph: error: {err.one_line(flags=True)}\n")
        return 2
    except BrokenPipeError:  # e.g. `ttgraph inspect M | head`: the reader left, which is fine
        sys.stderr.close()
        return 0
    except OSError as err:  # the file system's refusal of a path (too long, a loop, …): one line, not a traceback
        if args.debug:
            traceback.print_exc()
        where = f"{os.fsdecode(err.filename)}: " if err.filename is not None else ""
        sys.stderr.write(f"ttgraph: error: {where}{err.strerror or err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ttgraph: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
