"""Options and text formatting shared by the sub-commands."""

from __future__ import annotations

import argparse
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
