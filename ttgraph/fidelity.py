"""End-to-end fidelity of a rewritten model on held-out inputs: output errors plus task-shaped agreement.

:func:`heldout_fidelity` runs the original and the rewritten model side by side (onnxruntime) over feeds that
took no part in calibration and reports, per model output,

- ``rel_l2`` (``‖a − b‖ / ‖a‖`` over everything compared) and ``max_abs``;
- ``top1_agreement`` for outputs shaped like class scores (``N × K``, K ≥ 2): the share of samples whose
  arg-max class is unchanged;
- ``binary_iou`` for outputs shaped like probability maps (``N × 1 × H × W`` with values in [0, 1]): the
  pooled IoU of ``map > threshold`` (Σ intersections / Σ unions), as a text or segmentation map is judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from ttgraph.errors import TTGraphError
from ttgraph.model_io import graph_inputs
from ttgraph.verify import Feed, check_feed, run_session, session

__all__ = ["IOU_THRESHOLD", "binary_iou", "heldout_fidelity", "worse_and_better"]

IOU_THRESHOLD = 0.3


def binary_iou(a: np.ndarray, b: np.ndarray, threshold: float = IOU_THRESHOLD) -> tuple[int, int]:
    """(intersection, union) pixel counts of ``a > threshold`` and ``b > threshold``.

    >>> binary_iou(np.array([0.9, 0.9, 0.1]), np.array([0.9, 0.1, 0.1]))
    (1, 2)
    """
    ba, bb = np.asarray(a) > threshold, np.asarray(b) > threshold
    return int(np.logical_and(ba, bb).sum()), int(np.logical_or(ba, bb).sum())


def heldout_fidelity(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    feeds: Iterable[Feed],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    source: str = "<model>",
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = False,
    desc: str = "verify",
) -> dict[str, Any]:
    """Compare both models on ``feeds``: ``{"samples": n, "outputs": [per-output dict]}`` (module docstring).

    With ``perturb`` the second model reads every input array changed by it: the original against itself under
    input noise is the yardstick :func:`ttgraph.api.compress` reports beside the rewritten model's fidelity.
    ``progress`` shows a bar: on the detector's held-out images this is minutes of work."""
    a = session(original, name=source)
    b = a if rewritten is original else session(rewritten, name=f"{source} (rewritten)")
    names = [o.name for o in a.get_outputs()]
    acc: dict[str, dict[str, Any]] = {
        n: {"diff_sq": 0.0, "ref_sq": 0.0, "max_abs": 0.0, "peak": 0.0, "agree": 0, "count": 0, "inter": 0, "union": 0}
        for n in names
    }
    kinds: dict[str, set[str]] = {n: {"scores", "map"} for n in names}
    samples = 0
    inputs = graph_inputs(original)
    total = getattr(feeds, "length", None) or (len(feeds) if isinstance(feeds, Sized) else None)
    bar = tqdm(feeds, total=total, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    for feed in bar:
        check_feed(inputs, feed, f"{source}: held-out input {samples}")
        refs = run_session(a, names, feed, source)
        gots = run_session(b, names, {k: perturb(v) for k, v in feed.items()} if perturb else feed, source)
        samples += 1
        for name, ref, got in zip(names, refs, gots, strict=True):
            r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
            s = acc[name]
            s["diff_sq"] += float(np.sum((r - g) ** 2))
            s["ref_sq"] += float(np.sum(r**2))
            s["max_abs"] = max(s["max_abs"], float(np.max(np.abs(r - g), initial=0.0)))
            s["peak"] = max(s["peak"], float(np.max(np.abs(r), initial=0.0)))
            if r.ndim != 2 or r.shape[1] < 2:
                kinds[name].discard("scores")
            if r.ndim != 4 or r.shape[1] != 1 or r.min(initial=0) < 0 or r.max(initial=0) > 1:
                kinds[name].discard("map")
            if "scores" in kinds[name]:
                s["agree"] += int(np.sum(r.argmax(axis=1) == g.argmax(axis=1)))
                s["count"] += r.shape[0]
            if "map" in kinds[name]:
                inter, union = binary_iou(r, g, iou_threshold)
                s["inter"] += inter
                s["union"] += union
    if not samples:  # not a perfect score
        raise TTGraphError(source, "no verification inputs: nothing was compared")
    outputs = []
    for name in names:
        s = acc[name]
        entry: dict[str, Any] = {
            "name": name,
            "rel_l2": float(np.sqrt(s["diff_sq"] / s["ref_sq"])) if s["ref_sq"] > 0 else float(np.sqrt(s["diff_sq"])),
            "max_abs": s["max_abs"],
            "max_rel": s["max_abs"] / s["peak"] if s["peak"] > 0 else s["max_abs"],  # the keys compare_outputs gives
        }
        if samples and "scores" in kinds[name]:
            entry["top1_agreement"] = s["agree"] / max(s["count"], 1)
        if samples and "map" in kinds[name]:
            entry["binary_iou"] = s["inter"] / s["union"] if s["union"] else 1.0
            entry["iou_threshold"] = iou_threshold
        outputs.append(entry)
    return {"samples": samples, "outputs": outputs}


SAME = 1e-6  # relative difference below which a measure counts as unchanged (one pixel of a 640×640 map's IoU: ~1e-5)

#: per-output measures a step is judged by, the first one an output has: task-shaped ones before the raw error
_JUDGED_BY = {"binary_iou": True, "top1_agreement": True, "rel_l2": False}  # True: higher is better


def worse_and_better(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[int, int]:
    """How many outputs a step (compensation) made worse and how many better, each judged by its IoU, top-1
    agreement or else relative L2 error (``heldout_fidelity(...)["outputs"]`` before and after the step).

    >>> worse_and_better([{"rel_l2": 0.2}, {"binary_iou": 0.9}], [{"rel_l2": 0.3}, {"binary_iou": 0.95}])
    (1, 1)
    """
    worse = better = 0
    for old, new in zip(before, after, strict=True):
        key = next((k for k in _JUDGED_BY if k in old and k in new), None)
        if key is None or abs(new[key] - old[key]) <= SAME * max(abs(old[key]), abs(new[key])):
            continue  # rounding, not a change (an unchanged model may differ in the last bits)
        if (new[key] > old[key]) == _JUDGED_BY[key]:
            better += 1
        else:
            worse += 1
    return worse, better
