"""Test material for the TVM suite: small models built with onnx.helper, and inputs for the rapidocr
models preprocessed the way rapidocr does it (real photos and rendered text, not noise: the detector's
map of random noise is ~1e-5 everywhere, which makes relative errors meaningless)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont

REQUIRE_CROSS = os.environ.get("TTGRAPH_REQUIRE_CROSS") == "1"


def need_tool(name: str) -> None:
    """Skip when a cross tool is missing, unless CI asked for everything (TTGRAPH_REQUIRE_CROSS=1)."""
    if shutil.which(name) is None and not REQUIRE_CROSS:
        pytest.skip(f"{name} not on PATH (run .ci/install-tvm-cross.sh)")


def record(model: str, target: str, **facts: object) -> None:
    """Append one row of the model × target table to ``$TTGRAPH_TVM_REPORT`` (JSON lines), if set."""
    path = os.environ.get("TTGRAPH_TVM_REPORT")
    print(f"[tvm] {model} x {target}: {facts}")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"model": model, "target": target, **facts}) + "\n")


def compressed(example: str, shape: list[int], **options: object) -> onnx.ModelProto:
    """A wheel-shipped example model with its 1×1 convs rewritten by ttgraph (the thing we compile)."""
    import ttgraph
    from ttgraph.examples import example_model

    return ttgraph.compress(example_model(example), input_shapes={"x": shape}, **options).model


def pointwise_model(cin: int = 16, cout: int = 32, hw: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x → 1×1 Conv (bias) → Relu → 1×1 Conv → y: a tiny model with the op the project rewrites."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
    b1 = rng.standard_normal(cout).astype(np.float32)
    w2 = (rng.standard_normal((cin, cout, 1, 1)) / np.sqrt(cout)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cin, hw, hw])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def resize_model(opset: int = 11) -> onnx.ModelProto:
    """An old-opset model in the exporters' style: dynamic H×W, a Resize with empty roi and scales
    and its sizes computed at run time from Shape, and a Squeeze with attribute axes."""
    c = 4
    w = (np.random.default_rng(1).standard_normal((c, 2, 1, 1)) * 0.5).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([], np.float32), "empty"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([2], np.int64), "start"),
        numpy_helper.from_array(np.array([4], np.int64), "end"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "start", "end", "axis0"], ["hw"], name="slice_hw"),
        helper.make_node("Mul", ["hw", "two"], ["hw2"], name="double"),
        helper.make_node("Slice", ["s", "axis0", "start", "axis0"], ["nc"], name="slice_nc"),
        helper.make_node("Concat", ["nc", "hw2"], ["sizes"], name="sizes", axis=0),
        helper.make_node(
            "Resize",
            ["c", "empty", "empty", "sizes"],
            ["r"],
            name="resize",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Squeeze", ["m"], ["y"], name="squeeze", axes=[1]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "h2", "w2"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------------ rapidocr-style inputs


def _font(size: int) -> ImageFont.ImageFont:
    folder = Path("/usr/share/fonts/truetype/dejavu")
    fonts = sorted(folder.glob("DejaVuSans*.ttf")) if folder.is_dir() else []
    return ImageFont.truetype(str(fonts[0]), size) if fonts else ImageFont.load_default(size)


def text_image(lines: list[str], width: int, height: int, seed: int = 0) -> np.ndarray:
    """Dark text lines on a light, slightly coloured background (RGB uint8)."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(180, 250, 3))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    step = height / max(1, len(lines))
    font = _font(max(10, int(step * 0.6)))
    for i, text in enumerate(lines):
        fg = tuple(int(v) for v in rng.integers(0, 80, 3))
        draw.text((int(width * 0.04), int(i * step + step * 0.15)), text, fill=fg, font=font)
    return np.asarray(img)


def det_input(size: int = 320) -> np.ndarray:
    """PP-OCR detector input: a page of text, BGR, ImageNet mean/std, NCHW float32."""
    img = text_image(
        ["Tensor-Train cores", "compile with TVM", "ARM phones 2024", "rapid OCR detector"], size, size, seed=1
    )
    x = np.asarray(img, np.float32)[:, :, ::-1] / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def line_input(text: str, width: int, rotate: bool = False, seed: int = 2) -> np.ndarray:
    """PP-OCR classifier/recognizer input: one text line, 48 px high, (x/255 − 0.5)/0.5, NCHW."""
    img = Image.fromarray(text_image([text], width * 2, 96, seed=seed))
    if rotate:
        img = img.rotate(180)
    img = img.resize((width, 48), Image.BILINEAR)
    x = (np.asarray(img, np.float32)[:, :, ::-1] / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
