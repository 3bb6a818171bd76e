"""ttgraph called from several threads at once (a conversion service): the process-wide settings it changes
while it works — warnings filters, onnx-graphsurgeon's log level, sys.stdout — are the caller's again after,
whatever order overlapping calls leave in. Each test drives the order that broke: the first call in leaves
first, while the second is still inside."""

from __future__ import annotations

import io
import sys
import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

from onnx_graphsurgeon.logger import G_LOGGER

from passes import quiet_graphsurgeon
from ttgraph.process_state import quiet_warnings, stdout_into


def overlapped(context: Callable[[], AbstractContextManager], inside_second: Callable[[], None] = lambda: None):
    """Thread A enters, thread B enters, A leaves, B runs ``inside_second`` and leaves."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def first() -> None:
        with context():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        try:
            with context():
                b_in.set()
                a_out.wait(10)
                inside_second()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            failures.append(err)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not failures, failures


def test_graphsurgeons_level_is_restored_after_overlapping_calls():
    before = G_LOGGER.severity
    assert before < G_LOGGER.ERROR  # the default INFO: quieting changes it
    seen: list[int] = []
    overlapped(quiet_graphsurgeon, lambda: seen.append(G_LOGGER.severity))
    assert seen == [G_LOGGER.ERROR]  # still quiet for the call that is still working
    assert G_LOGGER.severity == before


def test_warnings_filters_are_restored_after_overlapping_calls():
    with warnings.catch_warnings():  # this test's own change stays in this test
        warnings.simplefilter("default")
        before = list(warnings.filters)
        overlapped(quiet_warnings)
        assert warnings.filters == before
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("the caller's own warning", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["the caller's own warning"]


def test_capturing_one_threads_prints_leaves_other_threads_and_stdout_alone():
    real = io.StringIO()
    saved, sys.stdout = sys.stdout, real
    captured = [io.StringIO(), io.StringIO()]
    try:
        sinks = iter(captured)
        overlapped(lambda: stdout_into(next(sinks)), lambda: print("from the second call"))
        inside = threading.Event()
        leave = threading.Event()

        def capturing() -> None:
            with stdout_into(io.StringIO()):
                inside.set()
                leave.wait(10)

        worker = threading.Thread(target=capturing)
        worker.start()
        inside.wait(10)
        print("the service's own line")  # another thread prints while one captures
        leave.set()
        worker.join(10)
        assert sys.stdout is real  # the caller's stream, not a capture left behind
    finally:
        sys.stdout = saved
    assert captured[1].getvalue() == "from the second call\n" and captured[0].getvalue() == ""
    assert real.getvalue() == "the service's own line\n"
