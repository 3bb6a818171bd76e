#!/usr/bin/env bash
# The main job on a bundled example: rapidocr's PP-OCRv4 text detector (a real trained model from the
# rapidocr-onnxruntime wheel), calibrated on 40 generated images (rendered text pages and scikit-image photos):
# inspect it, then compress its 1×1 convs to half their MACs with ranks chosen from the calibration data, error
# compensation and exact lowering, and write the model, a JSON report and an HTML report to out/.
set -euo pipefail
model=$(python -m ttgraph.examples det)
mkdir -p out
python -m tests.calib_material out/calib 40 >/dev/null
ttgraph inspect "$model" --input-shape x=1,3,640,640
ttgraph compress "$model" -o out/det.tt.onnx --input-shape x=1,3,640,640 \
  --calib out/calib --preprocess paddleocr-det --holdout 8 --macs-ratio 0.5 \
  --report out/det.tt.json --html out/det.tt.html
