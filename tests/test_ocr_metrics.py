"""The rapidocr view of the models' outputs (``tests/ocr_metrics.py``) that ``benchmarks/budget_sweep.py --task``
reports: box matching, turn-over decisions, and the rendered pages' ground-truth lines the boxes are judged by."""

from __future__ import annotations

import numpy as np
import pytest

from tests.calib_material import heldout_page_lines, heldout_pages
from tests.conftest import DET_SHAPE
from tests.ocr_metrics import box_score, polygon_iou, rapidocr_config, text_boxes, turned_over
from ttgraph.calibration import PRESETS
from ttgraph.model_io import load_model
from ttgraph.verify import session


def square(x: float, y: float, side: float = 10.0) -> np.ndarray:
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], np.float32)


def test_polygon_iou():
    assert polygon_iou(square(0, 0), square(0, 0)) == pytest.approx(1.0)
    assert polygon_iou(square(0, 0), square(5, 0)) == pytest.approx(1 / 3)  # 50 / (100 + 100 − 50)
    assert polygon_iou(square(0, 0), square(20, 0)) == 0.0


def test_box_score_matches_one_to_one():
    reference = [[square(0, 0), square(100, 0)], [square(0, 0)]]
    found = [[square(1, 0), square(2, 0), square(300, 0)], []]  # two boxes on one line, one stray, one page empty
    score = box_score(reference, found)
    assert (score.matched, score.reference, score.found) == (1, 3, 3)
    assert score.precision == pytest.approx(1 / 3) and score.recall == pytest.approx(1 / 3)
    assert box_score(reference, found, iou=0.95).matched == 0  # square(1, 0) overlaps square(0, 0) at 0.82


def test_turned_over_follows_rapidocrs_threshold():
    thresh = float(rapidocr_config()["Cls"]["cls_thresh"])
    assert rapidocr_config()["Cls"]["label_list"] == ["0", "180"]
    probs = np.array([[0.02, 0.98], [1 - (thresh - 0.05), thresh - 0.05], [0.97, 0.03]])
    assert turned_over(probs).tolist() == [True, False, False]


def test_rendered_lines_are_where_the_original_detector_finds_text(det_path):
    """The ground truth is right, rotated pages included: the original detector's boxes (rapidocr's
    post-processing) cover the rendered lines (measured: recall 0.95 at IoU ≥ 0.5 on the first 16 pages)."""
    pages, lines = heldout_pages(8), heldout_page_lines(8)
    rotated = [i for i, page in enumerate(lines) if any(abs(b[0, 1] - b[1, 1]) > 1 for b in page)]
    assert rotated, "the first 8 held-out pages should include a rotated one"
    sess = session(load_model(det_path, {"x": DET_SHAPE}))
    pre = PRESETS["paddleocr-det"].with_size((640, 640))
    boxes = [text_boxes(sess.run(None, {"x": pre.apply(p)})[0]) for p in pages]
    assert box_score(lines, boxes).recall >= 0.9
    assert box_score([lines[i] for i in rotated], [boxes[i] for i in rotated]).recall >= 0.75
