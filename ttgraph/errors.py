"""The one error type ttgraph raises for bad input, so every surface reports it the same way.

The CLI prints it as a single line, ``ttgraph: error: <file>: <what> (<node>)``, and exits with
status 2; library callers catch :class:`TTGraphError` and read its fields.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager


class TTGraphError(Exception):
    """A problem with what the user gave us: a file, a model, a node, an option.

    ``source`` names the file (or option) at fault, ``what`` says what was expected and what
    was found, ``node`` optionally names the graph node involved.
    """

    def __init__(self, source: str | os.PathLike[str] | None, what: str, node: str | None = None):
        self.source = os.fspath(source) if source is not None else None
        self.what = what
        self.node = node
        super().__init__(self.one_line())

    def one_line(self, flags: bool = False) -> str:
        """``source: what (node)`` on one line; ``flags``: an option named as the library's keyword
        (``preprocess``) is named as the command line's flag (``--preprocess``) instead."""
        text = _flags_outside_quotes(self.what) if flags else self.what
        if self.source:
            # a file or folder that happens to be called "holdout" is named as it is, not as the flag
            option = flags and self.source in OPTION_FLAGS and not os.path.lexists(self.source)
            text = f"{OPTION_FLAGS[self.source] if option else self.source}: {text}"
        if self.node:
            text = f"{text} ({self.node})"
        return " ".join(text.split())


#: the library's keyword → the command line's flag, for errors about an option given either way
OPTION_FLAGS = {
    "preprocess": "--preprocess",
    "calibration": "--calib",
    "input_shapes": "--input-shape",
    "lower": "--lower",
    "holdout": "--holdout",
    "cores": "--cores",
    "rank": "--rank",
    "rank_ratio": "--rank-ratio",
    "tolerance": "--tolerance",
    "latency_threads": "--latency-threads",
    "sensitivity": "--sensitivity",
    "compensate_samples": "--compensate-samples",
    "rank_multiple": "--rank-multiple",
    "judge": "--judge",
    "distill": "--distill",
    "target": "--target",
    "tune": "--tune",
    "tune_minutes": "--tune-minutes",
    "tune_db": "--tune-db",
    "tune_db=False": "--no-tune-db",
    "tune_tracker": "--tracker",
    "tune_key": "--key",
    "rpc": "--rpc",
    "tracker": "--tracker",
    "key": "--key",
    "inputs": "--inputs",
}
#: keywords named inside a message (``macs_ratio must be in (0, 1]``), written as the flag on the command line; not
#: inside a path (a folder named tune_db, or holdout, stays as it is)
_KEYWORD = re.compile(
    r"(?<![\w/.-])(macs_ratio|params_ratio|latency_ratio|max_error|rank_ratio|rank_multiple|compensate_samples"
    r"|distill_lr|distill_batch|latency_threads|plan_cost|input_shapes|preprocess|holdout|tune_minutes|tune_db"
    r"|tune_tracker|tune_key)(?![\w/.-])"
)
#: a keyword given a placeholder in a message (``give tune=N or tune_key=KEY``), written ``--tune N`` on the command
#: line; only before a capital placeholder or False, so prose ("key=value") and values ("+key=1") stay as they are
_ASSIGNED = re.compile(
    r"(?<![\w/.-])(tune_db=False|(?:tune|tune_minutes|tune_db|tune_tracker|tune_key|rpc|tracker|key|target|inputs)="
    r"(?=[A-Z]))"
)
#: a quoted name (not a possessive's apostrophe; "…" where it holds one, and JSON), or a library example of a
#: shape, ``input_shapes={'x': (1, 3, H, W)}``, which is ``--input-shape x=1,3,H,W`` on the command line: both are
#: left to :func:`_protected`
_PROTECTED = re.compile(r"""(input_shapes=\{(?:'[^']*'|"[^"]*"): \([^)]*\)\}|(?<!\w)'[^']*'(?!\w)|"[^"]*")""")
_SHAPE_EXAMPLE = re.compile(r"""input_shapes=\{(['"])(.*?)\1: \(([^)]*)\)\}""")


def _flags_outside_quotes(text: str) -> str:
    """Keywords as flags, except inside quotes: an input named 'preprocess' is still 'preprocess'."""
    return "".join(
        _protected(part) if _PROTECTED.fullmatch(part) else _flags_in(part) for part in _PROTECTED.split(text) if part
    )


def _protected(part: str) -> str:
    """A quoted name as it is; a shape example as the flag, the name quoted for a shell if it needs it."""
    example = _SHAPE_EXAMPLE.fullmatch(part)
    if example is None:
        return part
    return f"--input-shape {shlex.quote(example.group(2) + '=' + example.group(3).replace(' ', ''))}"


def _flags_in(text: str) -> str:
    text = _ASSIGNED.sub(lambda m: _flag(m.group(1).rstrip("=")) + ("" if m.group(1) == "tune_db=False" else " "), text)
    return _KEYWORD.sub(lambda m: _flag(m.group(1)), text)


def _flag(keyword: str) -> str:
    return OPTION_FLAGS.get(keyword, "--" + keyword.replace("_", "-"))


@contextmanager
def naming(source: str) -> Iterator[None]:
    """Errors a step raises about ``"<model>"`` (the in-memory copy it was handed) name the file instead."""
    try:
        yield
    except TTGraphError as err:
        if err.source == "<model>" and source != "<model>":
            raise TTGraphError(source, err.what, err.node) from err
        raise
