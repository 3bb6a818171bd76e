"""Shared test material: the real rapidocr models, real photos (scikit-image) and rendered text lines,
and small synthetic models built with onnx.helper."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont

from ttgraph.examples import example_model

# ttgraph's caches (latency timings, the planner's measured tables, TVM tuning records, which every build applies)
# in a folder of this run: a developer's ~/.cache/ttgraph would make builds depend on what was tuned there before
os.environ["TTGRAPH_CACHE_DIR"] = tempfile.mkdtemp(prefix="ttgraph-test-cache-")

DET_SHAPE = [1, 3, 640, 640]
CLS_SHAPE = [1, 3, 48, 192]
FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype")]


@pytest.fixture(scope="session")
def det_path() -> Path:
    return example_model("det")


@pytest.fixture(scope="session")
def cls_path() -> Path:
    return example_model("cls")


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo bundled with scikit-image (no download)."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def det_input(img: np.ndarray, size: int = 640) -> np.ndarray:
    """PP-OCR detector preprocessing: resize, BGR, /255, ImageNet mean/std, NCHW."""
    im = Image.fromarray(img).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(im, np.float32)[:, :, ::-1] / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _font(size: int) -> ImageFont.ImageFont:
    for folder in FONT_DIRS:
        for path in sorted(folder.glob("*.ttf")) if folder.is_dir() else []:
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def text_line(text: str, seed: int, rotate: bool = False) -> np.ndarray:
    """A rendered text line (RGB uint8, 48×192-ish aspect), optionally rotated 180° (classifier input)."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(170, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (384, 96), bg)
    ImageDraw.Draw(img).text((8, 20), text, fill=fg, font=_font(44))
    if rotate:
        img = img.rotate(180)
    return np.asarray(img)


def cls_input(img: np.ndarray) -> np.ndarray:
    """PP-OCR direction-classifier preprocessing: resize to 48×192, (x/255 − 0.5)/0.5, NCHW."""
    im = Image.fromarray(img).convert("RGB").resize((192, 48), Image.BILINEAR)
    x = (np.asarray(im, np.float32)[:, :, ::-1] / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ synthetic models


def conv_model(
    cin: int,
    cout: int,
    *,
    kernel: int = 1,
    stride: int = 1,
    dilation: int = 1,
    pads: int = 0,
    group: int = 1,
    bias: bool = True,
    hw: tuple[int | str, int | str] = (9, 10),
    batch: int | str = 1,
    opset: int = 17,
    seed: int = 0,
    spatial_rank: int = 2,
    weight_as_input: bool = False,
    weight_as_constant_node: bool = False,
    auto_pad: str | None = None,
) -> onnx.ModelProto:
    """A model x → Conv → Relu → y with the given conv settings and random weights."""
    rng = np.random.default_rng(seed)
    ks = [kernel] * spatial_rank
    w = rng.standard_normal((cout, cin // group, *ks)).astype(np.float32)
    spatial = list(hw)[:spatial_rank] if spatial_rank <= 2 else [*hw, 4]
    attrs = {
        "kernel_shape": ks,
        "strides": [stride] * spatial_rank,
        "dilations": [dilation] * spatial_rank,
        "group": group,
    }
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = [pads] * (2 * spatial_rank)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, *spatial])]
    inits, nodes = [], []
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    elif weight_as_constant_node:
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w_value")))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes += [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", **attrs),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (2 + spatial_rank))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feed_for(model: onnx.ModelProto, shape: list[int], seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
