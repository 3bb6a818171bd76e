"""Process-wide settings ttgraph changes while it works — warnings filters, a library's log level, ``sys.stdout``
— made safe for a caller that runs ttgraph in several threads at once.

Saving a global, changing it and restoring it is not safe when two calls overlap: the second saves the first's
temporary value and, leaving last, restores that for good (seen in a threaded service: warnings switched off,
onnx-graphsurgeon's log level stuck at ERROR, ``sys.stdout`` left a ``StringIO``). Here the first call in
changes a setting and the last one out restores it, under one lock; output capture is per thread.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["quiet_warnings", "shared", "stdout_into"]

_lock = threading.RLock()
_held: dict[str, list[Any]] = {}  # key → [entered context manager, number of callers inside]


@contextlib.contextmanager
def shared(key: str, make: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
    """Inside ``make()``'s context while any caller is inside one for ``key``: the first caller enters it, the
    last one leaves it (which restores what it changed), whatever threads they run in."""
    with _lock:
        entry = _held.get(key)
        if entry is None:
            context = make()
            context.__enter__()
            entry = _held[key] = [context, 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                entry[0].__exit__(None, None, None)


@contextlib.contextmanager
def _warnings_ignored() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quiet_warnings() -> contextlib.AbstractContextManager[None]:
    """Warnings ignored while ttgraph works (Pillow's notes on an image, matplotlib's on a missing glyph): the
    caller's filters come back when the last overlapping call is done. One key for every use: two nested
    ``catch_warnings`` left in the wrong order would restore each other's filters."""
    return shared("warnings", _warnings_ignored)


class _PerThreadStdout:
    """``sys.stdout`` while some thread captures its prints: each write goes to the writing thread's sink, or to
    the stream that was there before."""

    def __init__(self, original: TextIO):
        self.original = original
        self.sinks: dict[int, TextIO] = {}

    def _target(self) -> TextIO:
        return self.sinks.get(threading.get_ident(), self.original)

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, …: the real stream's
        return getattr(self.original, name)


@contextlib.contextmanager
def stdout_into(sink: TextIO) -> Iterator[None]:
    """This thread's ``print`` output goes to ``sink`` (a library that prints progress we do not want on the
    caller's stdout); other threads' output is untouched, and ``sys.stdout`` is the caller's again after."""
    me = threading.get_ident()
    with _lock:
        current = sys.stdout
        proxy = current if isinstance(current, _PerThreadStdout) else _PerThreadStdout(current)
        sys.stdout = proxy  # type: ignore[assignment]  # a TextIO in all but name (__getattr__ does the rest)
        before = proxy.sinks.get(me)
        proxy.sinks[me] = sink
    try:
        yield
    finally:
        with _lock:
            if before is None:
                proxy.sinks.pop(me, None)
            else:
                proxy.sinks[me] = before
            if not proxy.sinks and sys.stdout is proxy:  # unless the caller set another stdout meanwhile
                sys.stdout = proxy.original
