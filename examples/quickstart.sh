#!/usr/bin/env bash
# The main job on a bundled example: inspect rapidocr's PP-OCRv4 text detector (a real trained model from
# the rapidocr-onnxruntime wheel), then rewrite its 1×1 convs as TT cores and write model + report to out/.
set -euo pipefail
model=$(python -m ttgraph.examples det)
mkdir -p out
ttgraph inspect "$model" --input-shape x=1,3,640,640
ttgraph compress "$model" -o out/det.tt.onnx --input-shape x=1,3,640,640 --cores 1 --rank-ratio 0.25 \
  --report out/det.tt.json
