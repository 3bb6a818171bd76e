"""ttgraph: rewrite the 1×1 convolutions of any ONNX model as Tensor-Train cores.

>>> import ttgraph
>>> result = ttgraph.compress("model.onnx", cores=2, rank_ratio=0.5)  # doctest: +SKIP
>>> result.save("model.tt.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ttgraph.errors import TTGraphError
from ttgraph.model_io import load_model, parse_input_shapes, save_model
from ttgraph.tt import TTFormat, tt_reconstruct, tt_svd
from ttgraph.verify import OutputError, compare_outputs

__all__ = [
    "CompressionReport",
    "CompressionResult",
    "InspectReport",
    "LayerReport",
    "OutputError",
    "TTFormat",
    "TTGraphError",
    "compare_outputs",
    "compile",
    "compress",
    "inspect",
    "load_model",
    "parse_input_shapes",
    "save_model",
    "tt_reconstruct",
    "tt_svd",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from targets.compile import compile_model as compile  # noqa: A004
    from ttgraph.api import CompressionReport, CompressionResult, InspectReport, LayerReport, compress, inspect

_API = ("CompressionReport", "CompressionResult", "InspectReport", "LayerReport", "compress", "inspect")


def check_companions(names: tuple[str, ...] = ("passes", "targets")) -> None:
    """ttgraph installs two more top-level packages, ``passes`` and ``targets``; a module of either name found
    first on ``sys.path`` (a ``targets.py`` beside the script that runs, or in the directory of ``python -m``) is
    imported in their place and fails deep inside. Raise a :class:`TTGraphError` naming it instead."""
    import importlib.util
    from pathlib import Path

    home = Path(__file__).resolve().parent.parent
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a broken module of that name already imported
            spec = None
        if spec is None:
            raise TTGraphError(name, f"ttgraph's own {name!r} package cannot be found: reinstall ttgraph")
        if spec.origin:
            origin = Path(spec.origin).resolve()
        else:  # a directory without __init__.py (a namespace package) found before ours
            origin = Path(next(iter(spec.submodule_search_locations or [name]))).resolve()
        if origin != home / name / "__init__.py":
            raise TTGraphError(
                origin,
                f"this module is imported as {name!r} in place of ttgraph's own {name!r} package "
                f"({home / name}): rename it, or run from another directory",
            )


def __getattr__(name: str) -> Any:
    """The pipeline (:mod:`ttgraph.api`) and ``ttgraph.compile`` (:func:`targets.compile.compile_model`, TVM) are
    imported on first use: ttgraph works without TVM, and ``passes`` and ``targets`` import ttgraph's own modules,
    so importing either of them first must not pull in the pipeline that imports them back."""
    if name == "compile":
        check_companions()
        from targets.compile import compile_model

        return compile_model
    if name in _API:
        check_companions(("passes",))
        from ttgraph import api

        return getattr(api, name)
    raise AttributeError(f"module 'ttgraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily imported names too: ``dir(ttgraph)`` and completion in a notebook list ``compress``."""
    return sorted(set(globals()) | set(__all__))
