"""Every example in the docstrings runs and gives what it shows: docstring examples are documentation users
copy, so a stale one is a bug."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import passes
import targets
import ttgraph

MODULES = sorted(
    info.name
    for package in (ttgraph, passes, targets)
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_shown(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_examples_are_found():
    """A guard on the collection itself: the modules above hold dozens of examples, not none."""
    assert sum(doctest.testmod(importlib.import_module(name)).attempted for name in MODULES) > 40
