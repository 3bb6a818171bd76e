"""Progress bars (tqdm, on stderr) for the long steps, and none of tqdm's machinery when they are off.

tqdm starts a monitor thread with its first bar, even a disabled one, and the thread lives as long as the
process: a pipeline that calls ``ttgraph.compress(..., progress=False)`` and forks afterwards would fork a
multi-threaded process. A bar that is off is made from a subclass whose monitor interval is 0, so it starts none.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class _Off(tqdm):  # type: ignore[misc]  # tqdm.auto's class is untyped
    """A disabled bar: same interface, no monitor thread."""

    monitor_interval = 0


def progress_bar(iterable: Any = None, *, show: bool, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` when ``show``; otherwise a disabled bar that starts no thread."""
    return tqdm(iterable, **kwargs) if show else _Off(iterable, disable=True, **kwargs)
