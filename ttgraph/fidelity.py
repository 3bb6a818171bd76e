"""End-to-end fidelity of a rewritten model on held-out inputs: output errors plus task-shaped agreement.

:func:`heldout_fidelity` runs the original and the rewritten model side by side (onnxruntime) over feeds that
took no part in calibration and reports, per model output,

- ``rel_l2`` (``‖a − b‖ / ‖a‖`` over everything compared) and ``max_abs``;
- ``top1_agreement`` for outputs shaped like class scores (``N × K``, K ≥ 2): the share of samples whose
  arg-max class is unchanged;
- ``binary_iou`` for outputs shaped like probability maps (``N × 1 × H × W`` with values in [0, 1]): the
  pooled IoU of ``map > threshold`` (Σ intersections / Σ unions), as a text or segmentation map is judged;
  None when no pixel of either map is above the threshold (then ``rel_l2`` judges);
- ``match`` for integer and boolean outputs (an ArgMax's labels, a mask): the share of elements that are equal —
  a label off by one is as wrong as one off by ten, which ``rel_l2`` of the values would not say.

Those are guesses from an output's shape and values. ``judge`` (CLI ``--judge OUTPUT=METRIC``) says instead how
an output is judged: ``rel-l2`` alone (a gain mask in [0, 1] is no text map), ``iou`` or ``iou@T`` (any output,
thresholded at T), ``top1`` (the arg-max over axis 1 of any N × K × … output: per pixel for a class map) or
``match`` (equal elements, of any output).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.model_io import graph_inputs
from ttgraph.progress import progress_bar
from ttgraph.verify import Feed, abs_difference, check_feed, check_same_shape, feed_count, run_session, session

__all__ = [
    "IOU_THRESHOLD",
    "FidelityTally",
    "OriginalOutputs",
    "binary_iou",
    "heldout_fidelity",
    "METRIC_LABELS",
    "higher_is_better",
    "judged_change",
    "judged_metric",
    "parse_judge",
    "worse_and_better",
]

IOU_THRESHOLD = 0.3


def binary_iou(a: np.ndarray, b: np.ndarray, threshold: float = IOU_THRESHOLD) -> tuple[int, int]:
    """(intersection, union) pixel counts of ``a > threshold`` and ``b > threshold``.

    >>> binary_iou(np.array([0.9, 0.9, 0.1]), np.array([0.9, 0.1, 0.1]))
    (1, 2)
    """
    ba, bb = np.asarray(a) > threshold, np.asarray(b) > threshold
    return int(np.logical_and(ba, bb).sum()), int(np.logical_or(ba, bb).sum())


JUDGE_METRICS = ("iou", "top1", "match", "rel-l2")


def parse_judge(judge: Mapping[str, str] | Sequence[str] | None, model: onnx.ModelProto) -> dict[str, str]:
    """``{output: "iou@0.3" | "top1" | "rel-l2"}`` from a mapping or ``["OUTPUT=METRIC", …]`` (the CLI's
    ``--judge``), checked against ``model``'s outputs before any work: a typo must not leave an output judged by
    its guess without a word, nor a top-1 on a vector fail after the compression."""
    if judge is None:
        return {}
    if isinstance(judge, Mapping):
        items = list(judge.items())
    elif isinstance(judge, str) or not isinstance(judge, Iterable):
        raise TTGraphError("judge", f"expected {{output: metric}} or ['OUTPUT=METRIC', ...], got {judge!r}")
    else:
        items = []
        for text in judge:
            name, eq, metric = str(text).rpartition("=")
            if not eq or not name:
                raise TTGraphError("judge", f"expected OUTPUT=METRIC ({', '.join(JUDGE_METRICS)}), got {text!r}")
            items.append((name, metric))
    dims = {o.name: _dims(o) for o in model.graph.output}
    names = list(dims)
    out: dict[str, str] = {}
    for name, metric in items:
        if name not in names:
            raise TTGraphError("judge", f"the model has no output {name!r} (its outputs: {', '.join(names)})")
        kind, at, threshold = str(metric).strip().lower().replace("_", "-").partition("@")
        kind = {"top-1": "top1"}.get(kind, kind)
        if kind not in JUDGE_METRICS or (at and kind not in ("iou", "top1")):
            raise TTGraphError("judge", f"{name}: unknown metric {metric!r} (known: {KNOWN_METRICS})")
        shape = dims[name]
        if kind == "top1":
            kind = _top1(name, metric, threshold if at else "1", shape)
        elif at:
            try:
                value = float(threshold)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise TTGraphError("judge", f"{name}: expected a number after iou@, got {metric!r}")
            kind = f"iou@{repr(value).removesuffix('.0')}"  # as given: 0.123456789 is not 0.123457
        if out.get(name, kind) != kind:  # the last one winning would drop the other without a word
            raise TTGraphError("judge", f"{name}: judged twice, by {out[name]} and by {kind}: give one")
        out[name] = kind
    return out


KNOWN_METRICS = "iou, iou@THRESHOLD, top1, top1@AXIS, match, rel-l2"


def _top1(name: str, metric: str, axis_text: str, shape: list[int | None] | None) -> str:
    """``top1`` (class scores on axis 1) or ``top1@AXIS``: a recognizer's N×T×C scores have their classes last
    (``top1@-1``), and an arg-max over its time steps agreed 0.70 where its characters agreed 0.99."""
    try:
        axis = int(axis_text)
    except ValueError:
        raise TTGraphError("judge", f"{name}: expected an axis (an integer) after top1@, got {metric!r}") from None
    rank = len(shape) if shape is not None else None
    if rank is not None and rank >= 2 and not -rank <= axis < rank:
        raise TTGraphError("judge", f"{name}: top1@{axis} is past the output's {rank} axes")
    if shape is not None and (len(shape) < 2 or shape[axis] == 1):
        raise TTGraphError(
            "judge",
            f"{name}: top1 needs N × K scores along axis {axis} (K ≥ 2), the output is "
            f"{'×'.join('?' if d is None else str(d) for d in shape or []) or 'a scalar'}",
        )
    if rank is not None and rank >= 2:
        axis %= rank  # top1@-1 on N×K is top1: not "judged twice" beside it
    return "top1" if axis == 1 else f"top1@{axis}"


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """An output's declared dims (None where dynamic), or None when its shape is not declared."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]


class FidelityTally:
    """The per-output sums :func:`heldout_fidelity` reports, added one sample's outputs at a time: a caller that
    runs the models itself (judging compensation runs several beside the original) tallies them alike.
    ``judge`` (:func:`parse_judge`'s result) replaces the shape-based guess for the outputs it names."""

    def __init__(
        self, names: Sequence[str], iou_threshold: float = IOU_THRESHOLD, judge: Mapping[str, str] | None = None
    ) -> None:
        self.names, self.iou_threshold, self.samples = list(names), iou_threshold, 0
        zero = {"diff_sq": 0.0, "ref_sq": 0.0, "max_abs": 0.0, "peak": 0.0, "agree": 0, "count": 0, "inter": 0}
        zero |= {"same": 0, "elements": 0, "pixels": 0}
        self.acc: dict[str, dict[str, Any]] = {n: {**zero, "union": 0, "ref_sum": None} for n in self.names}
        self.kinds: dict[str, set[str]] = {n: {"scores", "map", "labels"} for n in self.names}
        self.thresholds = {n: iou_threshold for n in self.names}
        self.axes = {n: 1 for n in self.names}  # the class axis of top-1 agreement
        self.judge = dict(judge or {})
        for name, metric in self.judge.items():
            kind, _, at = metric.partition("@")
            self.kinds[name] = {"iou": {"map"}, "top1": {"scores"}, "match": {"labels"}}.get(kind, set())
            self.thresholds[name] = float(at) if at and kind == "iou" else iou_threshold
            self.axes[name] = int(at) if at and kind == "top1" else 1

    def add(self, refs: Sequence[Any], gots: Sequence[Any]) -> None:
        """One sample: the original's outputs and the other model's, in :attr:`names` order."""
        self.samples += 1
        for name, ref, got in zip(self.names, refs, gots, strict=True):
            integer = np.asarray(ref).dtype.kind in "biu"
            r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
            check_same_shape(name, r, g, f"sample {self.samples - 1}")
            s = self.acc[name]
            diff, finite = abs_difference(r, g), np.where(np.isfinite(r), r, 0.0)
            s["diff_sq"] += float(np.sum(diff**2))
            s["ref_sq"] += float(np.sum(finite**2))
            s["max_abs"] = max(s["max_abs"], float(np.max(diff, initial=0.0)))
            s["peak"] = max(s["peak"], float(np.max(np.abs(finite), initial=0.0)))
            if s["ref_sum"] is None:  # the original's mean output, for the part of it that varies between samples
                s["ref_sum"] = finite.copy()
            elif s["ref_sum"] is not False and s["ref_sum"].shape == finite.shape:
                s["ref_sum"] += finite
            else:
                s["ref_sum"] = False  # outputs of several shapes: no mean to measure a spread from
            chosen = name in self.judge
            if not chosen and integer:  # labels or a mask: their values are names, not magnitudes
                self.kinds[name] &= {"labels"}
            if not chosen and not integer:
                self.kinds[name].discard("labels")
            axis = self.axes[name]
            if (
                chosen
                and "scores" in self.kinds[name]
                and (r.ndim < 2 or not -r.ndim <= axis < r.ndim or r.shape[axis] < 2)
            ):
                raise TTGraphError(
                    "judge",
                    f"{name}: top1 needs N × K scores (K ≥ 2 along axis {axis}), the output has shape {r.shape}",
                )
            if not chosen and (r.ndim != 2 or r.shape[1] < 2):
                self.kinds[name].discard("scores")
            if not chosen and (r.ndim != 4 or r.shape[1] != 1 or r.min(initial=0) < 0 or r.max(initial=0) > 1):
                self.kinds[name].discard("map")
            if "scores" in self.kinds[name]:
                s["agree"] += int(np.sum(r.argmax(axis=axis) == g.argmax(axis=axis)))
                s["count"] += r.size // r.shape[axis]
            if "labels" in self.kinds[name]:
                s["same"] += int(np.sum(r == g))
                s["elements"] += r.size
            if "map" in self.kinds[name]:
                inter, union = binary_iou(r, g, self.thresholds[name])
                s["inter"] += inter
                s["union"] += union
                s["pixels"] += r.size

    def result(self, source: str = "<model>") -> dict[str, Any]:
        """``{"samples": n, "outputs": [per-output dict]}``; no samples is an error, not a perfect score."""
        if not self.samples:
            raise TTGraphError(source, "no verification inputs: nothing was compared")
        outputs = []
        for name in self.names:
            s = self.acc[name]
            diff = float(np.sqrt(s["diff_sq"] / s["ref_sq"])) if s["ref_sq"] > 0 else float(np.sqrt(s["diff_sq"]))
            entry: dict[str, Any] = {
                "name": name,
                "rel_l2": diff,
                "max_abs": s["max_abs"],
                "max_rel": s["max_abs"] / s["peak"] if s["peak"] > 0 else s["max_abs"],  # as compare_outputs has it
                "max_original": s["peak"],  # 0: the original's output was zero everywhere, the comparison says nothing
            }
            if "scores" in self.kinds[name]:
                entry["top1_agreement"] = s["agree"] / max(s["count"], 1)
            if "labels" in self.kinds[name]:
                entry["match"] = s["same"] / max(s["elements"], 1)
            if "map" in self.kinds[name]:
                entry["binary_iou"] = s["inter"] / s["union"] if s["union"] else None
                entry["iou_threshold"] = self.thresholds[name]
                # 0/0 (no pixel above the threshold in either map; a map 86 % off read 1.0), or both maps above it
                # everywhere (iou@-1 on a sigmoid scored a broken model 1.0): the IoU says nothing
                undefined = None if s["union"] and s["inter"] < s["pixels"] else IOU_UNDEFINED[bool(s["union"])]
                if undefined:
                    entry["binary_iou"], entry["binary_iou_undefined"] = None, undefined
            if self.axes[name] != 1:
                entry["top1_axis"] = self.axes[name]
            entry |= _against_spread(s, self.samples)
            if name in self.judge:
                entry["judged_by"] = self.judge[name]  # the user's choice, not the guess from its shape
            outputs.append(entry)
        return {"samples": self.samples, "outputs": outputs}


def _against_spread(s: dict[str, Any], samples: int) -> dict[str, float]:
    """The error against the part of the original's output that changes between samples (``spread``: that part's
    size over the output's): box coordinates that are mostly their anchors, or logits that barely move, read a
    small rel L2 however wrong the part that depends on the input is."""
    ref_sum = s["ref_sum"]
    if samples < 2 or not isinstance(ref_sum, np.ndarray) or s["ref_sq"] <= 0:
        return {}
    spread_sq = s["ref_sq"] - float(np.sum(ref_sum**2)) / samples
    if spread_sq <= 1e-12 * s["ref_sq"]:  # constant (to rounding): nothing varies to measure against
        return {}
    return {"spread": math.sqrt(spread_sq / s["ref_sq"]), "rel_l2_of_spread": math.sqrt(s["diff_sq"] / spread_sq)}


STEADY_SPREAD, STEADY_ERROR = 0.1, 0.5  # an output that varies this little, wrong by this much of its variation


def steady_output(out: dict[str, Any]) -> str | None:
    """A warning where the rel L2 reads small only because the original's output barely changes between samples
    (random-weight logits near their mean: rel L2 0.0007, 96 % of the part that depends on the input lost)."""
    spread, error = out.get("spread"), out.get("rel_l2_of_spread")
    if spread is None or error is None or spread >= STEADY_SPREAD or error <= STEADY_ERROR:
        return None
    return (
        f"{out['name']} changes little between samples (by {spread:.2g} of its size), and the error is {error:.2g} "
        f"of that change: the rel L2 of {out['rel_l2']:.2g} hides it; check the model on its task before deploying"
    )


REFERENCE_BYTES = 256 << 20  # the original's held-out outputs kept for the next pass over the same inputs


class OriginalOutputs:
    """The original model's outputs on one sequence of held-out feeds, kept by the first pass that computes them:
    judging compensation, verifying the written model and the input-noise yardstick each compare against them,
    and rerunning the original for each was most of their time. Kept up to ``limit`` bytes; past that every pass
    runs the original itself, as before."""

    def __init__(self, limit: int = REFERENCE_BYTES) -> None:
        self.limit, self.size = limit, 0
        self.values: list[list[np.ndarray]] | None = []  # None: over the limit, nothing kept
        self.complete = False

    def get(self, index: int) -> list[np.ndarray] | None:
        """The outputs of feed ``index`` once a whole pass is kept, else None (run the original)."""
        return self.values[index] if self.complete and self.values is not None else None

    def keep(self, index: int, outputs: Sequence[Any]) -> None:
        """Outputs of feed ``index`` from a pass that ran the original (ignored once a pass is kept)."""
        if self.complete or self.values is None or index != len(self.values):
            return
        arrays = [np.asarray(o) for o in outputs]
        self.size += sum(a.nbytes for a in arrays)
        if self.size > self.limit:
            self.values = None
            return
        self.values.append(arrays)

    def done(self, samples: int) -> None:
        """A pass over all ``samples`` feeds ended: what it kept is the reference from now on."""
        if self.values is not None and len(self.values) == samples and samples:
            self.complete = True


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
    reference: OriginalOutputs | None = None,
    judge: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Compare both models on ``feeds``: ``{"samples": n, "outputs": [per-output dict]}`` (module docstring).

    With ``perturb`` the second model reads every input array changed by it: the original against itself under
    input noise is the yardstick :func:`ttgraph.api.compress` reports beside the rewritten model's fidelity.
    ``reference`` keeps (or, kept by an earlier pass over the same feeds, gives) the original's outputs.
    ``progress`` shows a bar: on the detector's held-out images this is minutes of work. ``judge``: which metric
    judges the outputs it names (:func:`parse_judge`)."""
    b = session(rewritten, name=source if rewritten is original else f"{source} (rewritten)")
    a = b if rewritten is original else None  # the original's session: made only if its outputs are not kept
    names = [o.name for o in original.graph.output]
    tally = FidelityTally(names, iou_threshold, judge)
    inputs = graph_inputs(original)
    total = feed_count(feeds)
    bar = progress_bar(feeds, total=total, desc=desc, unit="img", show=progress, leave=False, dynamic_ncols=True)
    for index, feed in enumerate(bar):
        check_feed(inputs, feed, f"{source}: held-out input {index}")
        refs = reference.get(index) if reference is not None else None
        if refs is None:
            a = a or session(original, name=source)
            refs = run_session(a, names, feed, source)
            if reference is not None:
                reference.keep(index, refs)
        gots = run_session(b, names, {k: perturb(v) for k, v in feed.items()} if perturb else feed, source)
        tally.add(refs, gots)
    if reference is not None:
        reference.done(tally.samples)
    return tally.result(source)


IOU_UNDEFINED = ("no pixel above it in either map", "every pixel of both maps is above it")
SAME = 1e-6  # relative difference below which a measure counts as unchanged (one pixel of a 640×640 map's IoU: ~1e-5)

#: per-output measures a step is judged by, the first one an output has: task-shaped ones before the raw error
_JUDGED_BY = {"binary_iou": True, "top1_agreement": True, "match": True, "rel_l2": False}  # True: higher is better
METRIC_LABELS = {"binary_iou": "IoU", "top1_agreement": "top-1 agreement", "match": "exact match", "rel_l2": "rel L2"}


def judged_metric(*outputs: dict[str, Any]) -> str | None:
    """The metric an output is judged by: its IoU, else its top-1 agreement, else its relative L2 error — the
    first that every one of ``outputs`` (the same output measured before and after a step, say) has."""
    return next((k for k in _JUDGED_BY if all(o.get(k) is not None for o in outputs)), None)


def higher_is_better(metric: str) -> bool:
    return _JUDGED_BY[metric]


def judged_change(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, int] | None:
    """The metric one output is judged by (its IoU, top-1 agreement or else relative L2 error) and whether a step
    made it better (1), worse (−1) or left it alone (0: within rounding); None when neither side measured one.
    Where that metric ties and the relative L2 error moved, the error is the one returned and it decides.

    >>> judged_change({"binary_iou": 0.9, "rel_l2": 0.2}, {"binary_iou": 0.95, "rel_l2": 0.3})
    ('binary_iou', 1)
    """
    key = judged_metric(old, new)
    if key is None:
        return None
    if _same(old[key], new[key]):  # rounding, not a change (an unchanged model may differ in the last bits)
        if key in ("rel_l2", "match") or None in (old.get("rel_l2"), new.get("rel_l2")):
            return key, 0  # labels (match): the distance between two class numbers means nothing
        if _same(old["rel_l2"], new["rel_l2"]):
            return key, 0
        key = "rel_l2"  # a coarse measure's tie (top-1 on 8 samples) hid a raw error 0.57 → 0.69: that decides
    return key, 1 if (new[key] > old[key]) == _JUDGED_BY[key] else -1


def _same(a: float, b: float) -> bool:
    return abs(b - a) <= SAME * max(abs(a), abs(b))


def worse_and_better(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[int, int]:
    """How many outputs a step (compensation) made worse and how many better, each judged by
    :func:`judged_change` (``heldout_fidelity(...)["outputs"]`` before and after the step).

    >>> worse_and_better([{"rel_l2": 0.2}, {"binary_iou": 0.9}], [{"rel_l2": 0.3}, {"binary_iou": 0.95}])
    (1, 1)
    """
    changes = [judged_change(old, new) for old, new in zip(before, after, strict=True)]
    signs = [c[1] for c in changes if c is not None]
    return signs.count(-1), signs.count(1)
