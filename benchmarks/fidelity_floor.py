"""How far the original rapidocr models move under changes nobody would call a loss of accuracy.

The fidelity metrics of ``budget_sweep.py`` (IoU of the detector's binarized map, top-1 agreement of the
classifier, both against the original model on held-out inputs) have a floor set by the original itself: how
much does its output change when the input changes imperceptibly, or when the model goes through the
deployment step users already accept? This script measures that on the same held-out inputs, with the same
preprocessing and the same metric, so a compressed model's figure can be read against it:

- the input with uniform integer noise of ±k grey levels added (:meth:`ttgraph.calibration.Preprocess.
  grey_level_noise`, seed 0; k = 1, what ``ttgraph compress`` reports for scale, is no visible change);
- the input re-encoded as JPEG at quality 95 and 90;
- the model quantized to int8 by onnxruntime's static quantization (QDQ, per-channel weights, calibrated on
  the same calibration images ``budget_sweep.py`` calibrates on).

    python benchmarks/fidelity_floor.py det [--heldout 8]
    python benchmarks/fidelity_floor.py cls [--heldout 400]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.calib_material import (  # noqa: E402
    binary_iou,
    det_image,
    heldout_lines,
    heldout_pages,
    material_preset,
    text_line_image,
    top1_agreement,
)
from ttgraph.examples import example_model  # noqa: E402
from ttgraph.model_io import load_model  # noqa: E402
from ttgraph.verify import session  # noqa: E402

SETUPS = {
    # input shape, preprocessing, calibration images, held-out images (budget_sweep.py's defaults)
    "det": ((1, 3, 640, 640), "paddleocr-det", 32, 8),
    "cls": ((1, 3, 48, 192), "paddleocr-cls", 256, 400),
}


def as_jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(img: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    return change


class Feeds(CalibrationDataReader):
    """onnxruntime's calibration protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(SETUPS))
    parser.add_argument("--heldout", type=int, help="held-out images")
    args = parser.parse_args()
    shape, preset, n_cal, n_held = SETUPS[args.model]
    n_held = args.heldout or n_held
    pre = material_preset(preset).with_size(shape[2:])
    model = load_model(example_model(args.model), {"x": list(shape)})
    if args.model == "det":
        held = heldout_pages(n_held, shape[2])
        calib = [det_image("calib", i, shape[2]) for i in range(n_cal)]
    else:
        held = heldout_lines(n_held)
        calib = [text_line_image(i, i % 2 == 1) for i in range(n_cal)]

    original = session(model)

    def outputs(sess, images: list[np.ndarray]) -> list[np.ndarray]:
        return [sess.run(None, {"x": pre.apply(img)})[0] for img in images]

    reference = outputs(original, held)

    def fidelity(outs: list[np.ndarray]) -> float:
        if args.model == "det":
            return binary_iou(reference, outs)
        return top1_agreement(reference, outs)

    what = "IoU (>0.3) on held-out pages" if args.model == "det" else "top-1 agreement on held-out lines"
    print(f"{args.model}: the original model's {what} ({n_held}) against itself, after")
    for k in (1, 2, 4, 8):  # what the report's yardstick does (k = 1, seed 0), on the preprocessed input
        add = pre.grey_level_noise(levels=k, seed=0)
        noisy = [original.run(None, {"x": add(pre.apply(img))})[0] for img in held]
        print(f"  {f'noise ±{k} grey level' + ('s' if k > 1 else ''):<24} {fidelity(noisy):.4f}", flush=True)
    for quality in (95, 90):
        label = f"JPEG quality {quality}"
        print(f"  {label:<24} {fidelity(outputs(original, [as_jpeg(quality)(img) for img in held])):.4f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / f"{name}.onnx" for name in ("model", "prepared", "int8"))
        # per-channel DequantizeLinear needs opset 13; the rapidocr models are older
        onnx.save(onnx.version_converter.convert_version(model, 13), source)
        start = time.perf_counter()
        # the step onnxruntime asks for (constants folded, shapes inferred; the shapes here are fixed already)
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            Feeds([{"x": pre.apply(img)} for img in calib]),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        score = fidelity(outputs(session(onnx.load(quantized)), held))
        seconds = time.perf_counter() - start
        print(f"  {'int8 (onnxruntime, static)':<24} {score:.4f}  ({n_cal} calibration images, {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
