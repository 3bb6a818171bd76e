"""What the OCR pipeline the test models ship in (rapidocr) makes of their outputs — text boxes, rotate-or-not
decisions — so that fidelity can also be stated at the level a deployment engineer acts on, beside the raw
metrics of the issues (probability-map IoU, top-1 agreement).

Everything uses rapidocr's own post-processing and its own settings (its ``config.yaml``): the detector's map
goes through its DB post-processing (threshold, box score, unclip ratio, dilation), and a text line is turned
over only when the classifier says "180" with a score above its ``cls_thresh``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import cv2
import numpy as np
import yaml


@cache
def rapidocr_config() -> dict[str, Any]:
    """rapidocr's settings, read from the installed wheel."""
    return yaml.safe_load(files("rapidocr_onnxruntime").joinpath("config.yaml").read_text())


@cache
def _db_postprocess() -> Any:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    det = rapidocr_config()["Det"]
    keys = ("thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode")
    return DBPostProcess(**{k: det[k] for k in keys})


def text_boxes(prob_map: np.ndarray) -> list[np.ndarray]:
    """The text boxes rapidocr reads off a detector output (``1×1×H×W`` probabilities): 4×2 float polygons in
    the map's pixels."""
    pred = np.asarray(prob_map, np.float32)
    boxes, _ = _db_postprocess()(pred, pred.shape[-2:])
    return [np.asarray(b, np.float32) for b in boxes]


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex polygons (``k×2``)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter, _ = cv2.intersectConvexConvex(a, b)
    union = cv2.contourArea(a) + cv2.contourArea(b) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class BoxScore:
    """Boxes matched one to one (greedily, highest IoU first, IoU ≥ the threshold) against reference boxes."""

    matched: int
    reference: int
    found: int

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def box_score(reference: list[list[np.ndarray]], found: list[list[np.ndarray]], iou: float = 0.5) -> BoxScore:
    """Pooled over images: how many of ``found``'s boxes match ``reference``'s (one list of boxes per image)."""
    matched = 0
    for ref, got in zip(reference, found, strict=True):
        pairs = sorted(((polygon_iou(r, g), i, j) for i, r in enumerate(ref) for j, g in enumerate(got)), reverse=True)
        used_r: set[int] = set()
        used_g: set[int] = set()
        for value, i, j in pairs:
            if value < iou:
                break
            if i not in used_r and j not in used_g:
                used_r.add(i)
                used_g.add(j)
                matched += 1
    return BoxScore(matched, sum(map(len, reference)), sum(map(len, found)))


def sure(probs: np.ndarray) -> np.ndarray:
    """Per text line (rows of the classifier's ``N×C`` softmax): whether its top score is above rapidocr's
    ``cls_thresh`` — the only lines rapidocr acts on."""
    probs = np.asarray(probs).reshape(len(probs), -1)
    return probs.max(axis=1) > float(rapidocr_config()["Cls"]["cls_thresh"])


def says_upside_down(probs: np.ndarray) -> np.ndarray:
    """Per text line: whether the classifier's top label is rapidocr's "180"."""
    probs = np.asarray(probs).reshape(len(probs), -1)
    flip = [i for i, label in enumerate(rapidocr_config()["Cls"]["label_list"]) if "180" in str(label)]
    return np.isin(probs.argmax(axis=1), flip)


def turned_over(probs: np.ndarray) -> np.ndarray:
    """Per text line: whether rapidocr rotates it — label "180" and score above ``cls_thresh``."""
    return says_upside_down(probs) & sure(probs)
