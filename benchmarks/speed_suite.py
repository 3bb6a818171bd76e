"""Speed suite: does compression make the real models faster, and how much of the MAC reduction turns into speed?

Per model (rapidocr's PP-OCRv4 text detector ``det``, its direction classifier ``cls`` and rapid-layout's PicoDet
document-layout detector ``layout``): compress with the calibrated API
(``ttgraph.compress(model, calibration=..., macs_ratio=R, rank_multiple=16)``, error compensation on, or with
``--budget latency`` a ``latency_ratio`` measured in onnxruntime, on real-looking images from
``tests/calib_material.py``), then time four models A/B alternated in onnxruntime at 1 and 2 threads:

- ``original``; ``lowered`` (the original after the exact fast-lowering passes only, :mod:`passes.lower`);
- ``compressed`` (factorized, no lowering); ``compressed+lowered`` (what ``ttgraph compress`` writes by default).

Reported: the 1×1 params and MACs ratios, the whole model's MACs ratio and the speedup bound it implies
(total MACs before / after), the measured speedups (median of pair-by-pair ratios), the share of the bound the
factorization achieved (``lowered`` → ``compressed+lowered``), and fidelity on held-out images that took no
part in calibration — ``det``: IoU of the binarized (> 0.3) maps; ``cls``: top-1 agreement; ``layout``: the
fraction of the original's detections (score ≥ 0.5, decoded and NMS-ed by rapid-layout's own post-processing)
that the compressed model reproduces (same class, IoU ≥ 0.9). Count-based fidelities (layout, cls) come with their
95 % Wilson interval: 12 held-out pages hold only ~76 detections, so 0.96 there is anything from 0.89 to 0.99 —
use ``--heldout`` to tighten it before reading a goal as met or missed. ``lost`` counts the layout detections not
matched, and how many of them the original scored within 0.05 of its threshold (borderline flips); ``extra``
the compressed model's detections with no original one of the same class at IoU ≥ 0.5 (the matched fraction alone
would not see spurious boxes). ``--distill E`` then distills the compressed layers (:mod:`ttgraph.distill`) on the
calibration images, the epoch kept chosen on ``--distill-holdout`` of them — more images help it: ``--calib``.

    python benchmarks/speed_suite.py [--models layout,det,cls] [--macs-ratios 0.5,0.7] [--budget macs|latency]
                                     [--no-compensate] [--comp-samples N] [--sensitivity N]
                                     [--distill E [--calib N]]
                                     [--out suite-out] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.calib_material import (  # noqa: E402
    HELDOUT_PHOTOS,
    binary_iou,
    det_image,
    document_page,
    heldout_pages,
    material_preset,
    text_line_image,
)
from ttgraph.api import _analyse, compress  # noqa: E402
from ttgraph.bench import compare  # noqa: E402
from ttgraph.costs import model_macs  # noqa: E402
from ttgraph.examples import example_model, example_shape  # noqa: E402
from ttgraph.lowering import lower_model  # noqa: E402
from ttgraph.model_io import graph_inputs, load_model  # noqa: E402
from ttgraph.verify import session  # noqa: E402


def _layout_pre():
    from rapid_layout.model_handler.pp.pre_process import PPPreProcess

    pre = PPPreProcess((800, 608))
    return lambda img: pre(np.ascontiguousarray(img[:, :, ::-1]))  # rapid-layout reads images as BGR (cv2)


def images(name: str, kind: str, count: int) -> list[np.ndarray]:
    if name == "det":
        return [det_image("calib", i) for i in range(count)] if kind == "calib" else heldout_pages(count)
    if name == "cls":
        base = 0 if kind == "calib" else 1_000_000
        return [text_line_image(base + i, i % 2 == 1) for i in range(count)]
    if kind == "calib":
        return [document_page(i) for i in range(count)]
    return [document_page(300_000 + i, photos=HELDOUT_PHOTOS) for i in range(count)]


def preprocess(name: str):
    if name == "layout":
        return _layout_pre()
    shape = example_shape(name)
    preset = material_preset("paddleocr-det" if name == "det" else "paddleocr-cls").with_size(shape[2:])
    return preset.apply


def layout_detections(img_shape, x, outs, threshold: float = 0.5):
    """(class, box, score) of every detection with score ≥ ``threshold``, decoded by rapid-layout's
    post-processing."""
    from rapid_layout.model_handler.pp.post_process import PPPostProcess

    post = PPPostProcess([str(k) for k in range(outs[0].shape[-1])], conf_thres=threshold, iou_thres=0.5)
    boxes, scores, names = post(img_shape, x, outs)
    return [
        (n, np.asarray(b, np.float64), float(s)) for n, b, s in zip(names, boxes, scores, strict=True) if s >= threshold
    ]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def unmatched(reference: list, candidate: list, iou: float = 0.9) -> list:
    """The reference detections with no unused candidate of the same class at IoU ≥ ``iou`` (greedy, in order)."""
    used: set[int] = set()
    missed = []
    for detection in reference:
        cls, box = detection[:2]
        best, best_j = 0.0, -1
        for j, (c2, b2, *_) in enumerate(candidate):
            if j not in used and c2 == cls:
                v = box_iou(box, b2)
                if v > best:
                    best, best_j = v, j
        if best >= iou:
            used.add(best_j)
        else:
            missed.append(detection)
    return missed


# lost detections the original scored below this sat within 0.05 of the 0.5 threshold: compressed PicoDet's score
# logits move by ±0.28 (std, time budget 0.75), enough to flip such a detection with no real loss behind it
BORDERLINE_SCORE = 0.55


def fidelity(name: str, original: onnx.ModelProto, model: onnx.ModelProto, held: list[np.ndarray]) -> dict:
    pre = preprocess(name)
    a, b = session(original), session(model)
    input_name = a.get_inputs()[0].name
    xs = [pre(img) for img in held]
    if name == "layout":
        lost, lost_loose, extra, total = [], 0, 0, 0
        for img, x in zip(held, xs, strict=True):
            ref = layout_detections(img.shape[:2], x, a.run(None, {input_name: x}))
            got = layout_detections(img.shape[:2], x, b.run(None, {input_name: x}))
            lost += unmatched(ref, got)
            lost_loose += len(unmatched(ref, got, iou=0.5))
            extra += len(unmatched(got, ref, iou=0.5))
            total += len(ref)
        hits = total - len(lost)
        return {
            "metric": "detections matched (score ≥ 0.5, IoU ≥ 0.9)",
            "value": hits / max(total, 1),
            "of": total,
            "interval_95": wilson_interval(hits, total),
            "matched_at_iou_0.5": (total - lost_loose) / max(total, 1),
            "lost": len(lost),
            f"lost_with_original_score_below_{BORDERLINE_SCORE}": sum(s < BORDERLINE_SCORE for *_, s in lost),
            "extra_at_iou_0.5": extra,  # the compressed model's detections the original has nothing like
        }
    ref = [a.run(None, {input_name: x})[0] for x in xs]
    got = [b.run(None, {input_name: x})[0] for x in xs]
    if name == "det":
        return {"metric": "binary map IoU (> 0.3)", "value": binary_iou(ref, got), "of": len(xs)}
    agree = sum(int(r.argmax() == g.argmax()) for r, g in zip(ref, got, strict=True))
    return {
        "metric": "top-1 agreement",
        "value": agree / len(xs),
        "of": len(xs),
        "interval_95": wilson_interval(agree, len(xs)),
    }


def wilson_interval(hits: int, total: int) -> list[float] | None:
    """The 95 % Wilson score interval of the fraction ``hits / total`` (None when ``total`` is 0)."""
    from scipy.stats import binomtest

    if total == 0:
        return None
    ci = binomtest(hits, total).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def total_macs(model: onnx.ModelProto) -> int:
    return model_macs(model, _analyse(model)[2])[0]


DEFAULT_COUNTS = {"det": (32, 8), "cls": (256, 200), "layout": (32, 12)}
# 1×1 MACs budgets: with ranks in multiples of 16 the classifier's thin layers cannot go below ≈0.74
DEFAULT_RATIOS = {"det": 0.5, "cls": 0.8, "layout": 0.5}
DEFAULT_RUNS = {"det": 15, "cls": 100, "layout": 15}  # the classifier takes ~2 ms: more rounds


def run_model(name: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """One row per budget, each compressed by ``ttgraph.compress`` (calibration, allocation and error
    compensation) on the same calibration images."""
    proto = onnx.load(str(example_model(name)))
    input_name = graph_inputs(proto)[0].name
    original = load_model(proto, {input_name: list(example_shape(name))})
    n_cal, n_held = DEFAULT_COUNTS[name]
    n_cal, n_held = args.calib or n_cal, args.heldout or n_held
    pre = preprocess(name)
    ratios = args.ratios or [DEFAULT_RATIOS[name]]
    feeds = [{input_name: pre(img)} for img in images(name, "calib", n_cal)]
    lowered, low_report = lower_model(original, check_error=False)
    held = images(name, "heldout", n_held)
    macs_before = total_macs(original)
    rows = []
    for ratio in ratios:
        start = time.perf_counter()
        result = compress(
            original,
            calibration=feeds,
            rank_multiple=16,
            # distillation picks its epoch on held-out calibration samples (spread through the calibration set;
            # the fidelity pages below are a third set)
            holdout=args.distill_holdout if args.distill else 0,
            lower=False,
            compensate=not args.no_compensate,
            compensate_samples=args.comp_samples,
            sensitivity=args.sensitivity,
            distill=args.distill,
            distill_lr=args.distill_lr,
            **{f"{args.budget}_ratio": ratio},  # type: ignore[arg-type]
        )
        seconds = time.perf_counter() - start
        compressed, totals = result.model, result.report.totals
        onnx.save(compressed, out / f"{name}.r{ratio}.compressed.onnx")
        both, _ = lower_model(compressed, check_error=False)
        macs_after = total_macs(compressed)
        bound = macs_before / macs_after
        models = {"original": original, "lowered": lowered, "compressed": compressed, "compressed+lowered": both}
        runs = args.runs or DEFAULT_RUNS[name]
        bench = compare(models, threads=args.threads, warmup=args.warmup, runs=runs, memory=False)
        row = {
            "model": name,
            "input": list(example_shape(name)),
            "budget": args.budget,
            "macs_ratio_budget": ratio,
            # asked for, and kept (compensation that leaves held-out outputs worse is not kept)
            "compensated": not args.no_compensate and (result.report.compensation or {}).get("kept") is not False,
            "compensation_samples": (result.report.compensation or {}).get("samples"),
            "sensitivity_samples": args.sensitivity,
            "distillation": {k: v for k, v in (result.report.distillation or {}).items() if k != "loss_curve"},
            "compress_seconds": round(seconds, 1),
            "calibration_images": n_cal,
            "heldout_images": n_held,
            "layers_rewritten": totals.get("layers_rewritten"),
            "candidate_layers": len(result.decomposition.layers),  # type: ignore[union-attr]
            "params_ratio_1x1": totals.get("params_ratio"),
            "macs_ratio_1x1": totals.get("macs_ratio"),
            "macs_total_before": macs_before,
            "macs_total_after": macs_after,
            "macs_ratio_total": macs_after / macs_before,
            "speedup_bound": bound,
            "lowering": low_report["passes"],
            "fidelity": fidelity(name, original, both, held),
            "fidelity_lowered_only": fidelity(name, original, lowered, held),
            "bench": bench.to_dict(),
        }
        for r in bench.rows:
            sp = r["speedup"]
            n = r["threads"]
            row[f"speedup_{n}t"] = sp["compressed+lowered"]["median"]
            row[f"speedup_lowering_only_{n}t"] = sp["lowered"]["median"]
            row[f"speedup_compression_only_{n}t"] = sp["compressed"]["median"]
            # what the factorization adds on top of lowering, against what its MAC reduction could give
            row[f"factorization_speedup_{n}t"] = sp["compressed+lowered"]["median"] / sp["lowered"]["median"]
            row[f"share_of_bound_{n}t"] = row[f"factorization_speedup_{n}t"] / bound
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("bench", "lowering")}), flush=True)
    return rows


def markdown(rows: list[dict], threads: list[int]) -> str:
    head = [
        "model",
        "1×1 params",
        "1×1 MACs",
        "total MACs",
        "bound",
        *[f"speedup {n}t (lowering only)" for n in threads],
        *[f"factorization {n}t (share of bound)" for n in threads],
        "fidelity (held-out)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"{r['model']} @{r['macs_ratio_budget']:g}",
            f"{r['params_ratio_1x1']:.2f}×",
            f"{r['macs_ratio_1x1']:.2f}×",
            f"{r['macs_ratio_total']:.2f}×",
            f"{r['speedup_bound']:.2f}×",
            *[f"{r[f'speedup_{n}t']:.2f}× ({r[f'speedup_lowering_only_{n}t']:.2f}×)" for n in threads],
            *[f"{r[f'factorization_speedup_{n}t']:.2f}× ({100 * r[f'share_of_bound_{n}t']:.0f} %)" for n in threads],
            _fidelity_cell(r["fidelity"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fidelity_cell(fidelity: dict) -> str:
    """``0.961 [0.89–0.99] <metric> (n=76)``: the value, its 95 % interval where it is a count, the sample size."""
    interval = fidelity.get("interval_95")
    spread = f" [{interval[0]:.2f}–{interval[1]:.2f}]" if interval else ""
    return f"{fidelity['value']:.3f}{spread} {fidelity['metric']} (n={fidelity['of']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="layout,det,cls")
    parser.add_argument(
        "--macs-ratios",
        dest="ratios",
        help="1×1 MACs budgets, comma-separated (default per model); "
        "one calibration per model, the other budgets re-allocate its candidates",
    )
    parser.add_argument("--budget", choices=("macs", "latency"), default="macs", help="what the ratios bound")
    parser.add_argument("--no-compensate", action="store_true", help="per-layer fits only (no error compensation)")
    parser.add_argument(
        "--comp-samples", type=int, metavar="N", help="calibration images compensation reads (default: automatic)"
    )
    parser.add_argument(
        "--sensitivity", type=int, default=0, metavar="N", help="weight the allocation by sensitivities on N images"
    )
    parser.add_argument(
        "--distill", type=int, default=0, metavar="E", help="distill E epochs over the calibration images (torch)"
    )
    parser.add_argument("--distill-lr", type=float, default=1e-3, help="distillation step size (default 1e-3)")
    parser.add_argument(
        "--distill-holdout", type=int, default=6, metavar="N", help="calibration images distillation judges epochs on"
    )
    parser.add_argument("--calib", type=int, help="calibration images (default per model)")
    parser.add_argument("--heldout", type=int, help="held-out images (default per model)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, help="timed rounds (default per model)")
    parser.add_argument("--out", default="suite-out", help="folder for compressed models, reports and suite.json")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        rows += run_model(name, args, out)
        (out / "suite.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        print(markdown(rows, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
