"""The public API as a type checker sees it in a user's pipeline: typed (PEP 561), its calls checked.

Without a ``py.typed`` in ``passes/`` and ``targets/``, mypy took ``compress``, ``inspect`` and ``compile`` —
decorated or defined there — as ``Any`` and passed any call; ``calibration`` was ``Any`` too."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
from collections.abc import Iterator

import numpy as np

import ttgraph


def lines() -> Iterator[dict[str, np.ndarray]]:
    yield {"x": np.zeros((1, 3, 48, 192), np.float32)}


result = ttgraph.compress("m.onnx", calibration="pages/", macs_ratio=0.5)
ttgraph.compress("m.onnx", calibration=lines(), params_ratio=0.3)
ttgraph.compress("m.onnx", calibration=np.zeros((4, 3, 48, 192), np.float32), params_ratio=0.3)
path = result.save("out.onnx", report_path="r.json")
report = ttgraph.inspect("m.onnx")
reveal_type(ttgraph.compress)
reveal_type(ttgraph.compile)
ttgraph.compress("m.onnx", calibration=42, params_ratio=0.3)
ttgraph.compress("m.onnx", rank_ratio="half")
result.sav("out.onnx")
"""


def test_a_users_calls_are_type_checked(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "pipeline.py"
    script.write_text(USER_SCRIPT)
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", str(script)]
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # the checkout's sources, as a user's checker reads them
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    lines = done.stdout.splitlines()
    revealed = [line for line in lines if "Revealed type" in line]
    assert len(revealed) == 2 and not any('"Any"' in line for line in revealed), done.stdout
    assert "def (model:" in revealed[0] and "calibration:" in revealed[0], revealed[0]
    errors = [line.split(": error: ")[1] for line in lines if ": error: " in line]
    assert len(errors) == 3, done.stdout  # the three wrong calls at the end, and nothing else
    assert 'Argument "calibration" to "compress" has incompatible type "int"' in errors[0]
    assert 'Argument "rank_ratio" to "compress" has incompatible type "str"' in errors[1]
    assert '"CompressionResult" has no attribute "sav"' in errors[2]


def test_the_wheel_ships_every_packages_type_marker_and_the_license(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path)]
    if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
        cmd.append("--no-build-isolation")  # the build backend is here: no download
    done = subprocess.run([*cmd, str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("ttgraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ttgraph/py.typed", "passes/py.typed", "targets/py.typed"} <= set(names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith("/LICENSE") for name in names), names


def test_every_public_hint_resolves_at_run_time():
    """pydantic's validate_call, typer and sphinx read hints with typing.get_type_hints: a hint written as a
    string alias ("str | …" inside a TypeAlias) made that raise TypeError for compress()."""
    import inspect
    import typing

    import ttgraph

    checked = []
    for name in ttgraph.__all__:
        obj = getattr(ttgraph, name)
        functions = [obj] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            functions += [
                f for _, f in inspect.getmembers(obj, inspect.isfunction) if f.__module__.startswith("ttgraph")
            ]
        for function in functions:
            typing.get_type_hints(function)
            checked.append(function.__qualname__)
    assert "compress" in checked and "CompressionResult.save" in checked
    hints = typing.get_type_hints(ttgraph.compress)
    assert hints["calibration"] == ttgraph.calibration.CalibrationData | None


def test_the_package_itself_type_checks():
    """The internals too: mypy's findings there (an input that could be None among the arrays, a numpy call
    taking input names as its own keywords) were bugs; new ones should fail here, not pile up."""
    pytest.importorskip("mypy")
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "ttgraph", "passes", "targets"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:]
