"""Options and text formatting shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def add_input_shape_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=D1,D2,...",
        default=[],
        help="fix an input's shape (repeatable), e.g. x=1,3,640,640",
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=False):
            text = str(cell)
            numeric = text[:1].isdigit() or text in ("?", "-")
            out.append(text.rjust(width) if numeric else text.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def help_text(docstring: str | None) -> str:
    """A command module's docstring as ``--help`` shows it: without the reStructuredText quoting.

    >>> help_text("``ttgraph plan``: the cheapest order")
    "'ttgraph plan': the cheapest order"
    """
    return (docstring or "").replace("``", "'")


def log_to_stderr(name: str) -> None:
    """Progress lines of logger ``name`` (a step that has no bar: allocating, rewriting, writing) on a terminal
    only, like the progress bars: in a pipeline's log the summary on stdout says what was done, and a bad input's
    error stays one line. A library caller sees them only if it configures logging."""
    logger = logging.getLogger(name)
    if not logger.handlers and sys.stderr.isatty():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ttgraph: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
