"""Accuracy vs budget on the real rapidocr models: data-aware vs weight-only, allocated vs uniform.

Calibrates once (the original model over real-looking images from ``tests/calib_material.py``), builds every
layer's candidates twice (data-aware: whitened low-rank fitted to the calibration statistics; weight-only:
plain SVD, allocated by weight error, no data at all), then for each budget rewrites the model several ways —
allocated (:func:`ttgraph.allocate.allocate`), uniform cost (the same cost fraction in every layer, raised until
the total matches the allocated one) and, data-aware only, uniform rank (the same rank fraction everywhere) —
and measures on held-out inputs that took no part in calibration:

- ``det`` (PP-OCRv4 text detector, 640×640, budget = MACs ratio): IoU of the binarized (> 0.3) probability
  maps vs the original's on rendered text pages;
- ``cls`` (0°/180° direction classifier, 48×192, budget = params ratio): top-1 agreement with the original on
  rendered text lines, both orientations.

With compensation (:mod:`ttgraph.compensate`, "+comp" columns) the data-aware allocated and uniform-rank
rewrites are also refitted, in dependency order, on the first ``--comp-samples`` calibration inputs; the time it
took is printed per budget.

    python benchmarks/budget_sweep.py det [--calib 32] [--heldout 8] [--budgets 0.3,0.5,0.7] [--comp-samples 8]
    python benchmarks/budget_sweep.py cls [--calib 256] [--heldout 400] [--cores 4] [--no-compensate]
    python benchmarks/budget_sweep.py det --budgets 0.5 --sensitivity 4    # weighted vs unweighted allocation
    python benchmarks/budget_sweep.py cls --budgets 0.3 --distill 4 --distill-samples 4096   # + distillation

With ``--distill E`` the allocated and compensated rewrite is then distilled (:mod:`ttgraph.distill`, E epochs
over ``--distill-samples`` calibration inputs — the first ones of the same generated set, disjoint from the
held-out inputs; the keep-or-not decision reads further inputs of neither set) and scored in one more column.

With ``--task`` each budget also gets a line on what the OCR pipeline the models ship in (rapidocr, its own
post-processing and settings: ``tests/ocr_metrics.py``) would do with the allocated rewrite's outputs (and the
compensated and distilled ones'): for ``det`` the F1 of its text boxes (IoU ≥ 0.5) against the original's boxes
and against the rendered lines themselves; for ``cls`` how often it turns a line over exactly when the original
does (rapidocr turns one over on "180" above its ``cls_thresh``), how many lines end the right way up, its accuracy
against the rendered orientation, and its top-1 agreement on the lines the original is sure of (top score above
``cls_thresh``) and on the others.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.calib_material import (  # noqa: E402
    binary_iou,
    det_image,
    heldout_lines,
    heldout_page_lines,
    heldout_pages,
    material_preset,
    text_line_image,
    top1_agreement,
)
from tests.ocr_metrics import box_score, says_upside_down, sure, text_boxes, turned_over  # noqa: E402
from ttgraph.allocate import Budget, allocate, uniform_allocation_reaching  # noqa: E402
from ttgraph.api import _analyse, rewrite_allocation  # noqa: E402
from ttgraph.calibration import collect_statistics  # noqa: E402
from ttgraph.compensate import compensate  # noqa: E402
from ttgraph.decompose import build_candidates  # noqa: E402
from ttgraph.examples import example_model  # noqa: E402
from ttgraph.model_io import load_model  # noqa: E402
from ttgraph.sensitivity import measured_sensitivities  # noqa: E402
from ttgraph.verify import session  # noqa: E402

SETUPS = {
    # model, input shape, preprocessing, budget metric, calibration/held-out defaults
    "det": ("det", (1, 3, 640, 640), "paddleocr-det", "macs", 32, 8, 8),
    "cls": ("cls", (1, 3, 48, 192), "paddleocr-cls", "params", 256, 400, 256),
}


class PipelineView:
    """The ``--task`` view: what rapidocr would do with held-out outputs, against the original's and the truth."""

    def __init__(self, model: str, reference: list[np.ndarray], count: int) -> None:
        self.model = model
        if model == "det":
            self.lines = heldout_page_lines(count)
            self.boxes = [text_boxes(r) for r in reference]
            lines = box_score(self.lines, self.boxes)
            self.original = (
                f"{lines.found} text boxes on {count} pages, F1 {lines.f1:.3f} against the {lines.reference} "
                f"rendered lines (precision {lines.precision:.3f}, recall {lines.recall:.3f})"
            )
        else:
            self.probs = np.stack([np.ravel(r) for r in reference])
            self.truth = np.arange(count) % 2 == 1  # held-out line i is rendered upside down when i is odd
            self.turned = turned_over(self.probs)
            self.sure = sure(self.probs)
            self.original = (
                f"top-1 accuracy {self._accuracy(self.probs):.4f} against the rendered orientation, sure of "
                f"{self.sure.sum()} of {count} lines, turns over {self.turned.sum()} ({self.truth.sum()} are "
                f"upside down): {np.mean(self.turned == self.truth):.4f} of the lines end the right way up"
            )

    def _accuracy(self, probs: np.ndarray) -> float:
        return float(np.mean(says_upside_down(probs) == self.truth))

    def summary(self, outs: list[np.ndarray]) -> str:
        if self.model == "det":
            boxes = [text_boxes(o) for o in outs]
            same, lines = box_score(self.boxes, boxes), box_score(self.lines, boxes)
            return (
                f"box F1 {same.f1:.3f} against the original's boxes (precision {same.precision:.3f}, recall "
                f"{same.recall:.3f}), {lines.f1:.3f} against the rendered lines ({lines.found} boxes, precision "
                f"{lines.precision:.3f}, recall {lines.recall:.3f})"
            )
        probs = np.stack([np.ravel(o) for o in outs])
        agree = probs.argmax(axis=1) == self.probs.argmax(axis=1)
        turned = turned_over(probs)
        return (
            f"turns over as the original {np.mean(turned == self.turned):.4f}, right way up "
            f"{np.mean(turned == self.truth):.4f}, "
            f"accuracy {self._accuracy(probs):.4f}, top-1 agreement {agree[self.sure].mean():.4f} where the "
            f"original is sure, {agree[~self.sure].mean():.4f} on its other {int((~self.sure).sum())} lines"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(SETUPS))
    parser.add_argument("--calib", type=int, help="calibration images")
    parser.add_argument("--heldout", type=int, help="held-out images")
    parser.add_argument("--budgets", default="0.3,0.5,0.7")
    parser.add_argument("--cores", type=int, default=1, help="candidates of order d = 1..CORES (TT for d ≥ 2)")
    parser.add_argument("--comp-samples", type=int, help="calibration inputs the compensation reads")
    parser.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rank-multiple", type=int, default=1)
    parser.add_argument("--distill", type=int, default=0, metavar="E", help="also distill E epochs (needs torch)")
    parser.add_argument("--distill-samples", type=int, metavar="N", help="calibration inputs distillation reads")
    parser.add_argument("--distill-lr", type=float, default=1e-3)
    parser.add_argument("--distill-all", action="store_true", help="distill every conv weight, not only the factors")
    parser.add_argument(
        "--task", action="store_true", help="also what rapidocr would do with the outputs (boxes, rotations)"
    )
    parser.add_argument(
        "--sensitivity",
        type=int,
        metavar="N",
        help="instead of the usual columns: data-aware allocation weighted by end-to-end sensitivities measured on "
        "N calibration inputs, against unweighted (both ± compensation)",
    )
    args = parser.parse_args()
    name, shape, preset, metric, n_cal, n_held, n_comp = SETUPS[args.model]
    n_comp = args.comp_samples or n_comp
    n_cal, n_held = args.calib or n_cal, args.heldout or n_held
    model = load_model(example_model(name), {"x": list(shape)})
    _, found, _ = _analyse(model)
    pre = material_preset(preset).with_size(shape[2:])
    if args.model == "det":
        calib = (pre.apply(det_image("calib", i, shape[2])) for i in range(n_cal))
        held = [pre.apply(img) for img in heldout_pages(n_held, shape[2])]
    else:
        calib = (pre.apply(text_line_image(i, i % 2 == 1)) for i in range(n_cal))
        held = [pre.apply(img) for img in heldout_lines(n_held)]
    start = time.perf_counter()
    stats = collect_statistics(model, found.candidates, ({"x": x} for x in calib), progress=True, total=n_cal)
    print(f"{args.model}: calibrated on {stats.samples} images in {time.perf_counter() - start:.1f} s")
    cores = tuple(range(1, args.cores + 1))
    start = time.perf_counter()
    data = [
        build_candidates(c, stats.layers[c.label], metric=metric, cores=cores, rank_multiple=args.rank_multiple)  # type: ignore[arg-type]
        for c in found.candidates
    ]
    weight = [build_candidates(c, None, method="weight", metric=metric, cores=cores) for c in found.candidates]  # type: ignore[arg-type]
    print(f"candidates (d = 1..{args.cores}) built in {time.perf_counter() - start:.1f} s")
    original = session(model)
    reference = [original.run(None, {"x": x})[0] for x in held]

    def det_feeds(kind: str, count: int) -> list[dict[str, np.ndarray]]:
        return [{"x": pre.apply(det_image(kind, i, shape[2]))} for i in range(count)]

    def cls_feeds(first: int, count: int) -> list[dict[str, np.ndarray]]:
        return [{"x": pre.apply(text_line_image(first + i, i % 2 == 1))} for i in range(count)]

    n_distill = (args.distill_samples or n_cal) if args.distill else 0
    if args.model == "det":
        comp_feeds = det_feeds("calib", min(n_comp, n_cal))
        distill_feeds, keep_feeds = det_feeds("calib", n_distill), det_feeds("heldout", 4 if n_distill else 0)
    else:
        comp_feeds = cls_feeds(0, min(n_comp, n_cal))
        distill_feeds, keep_feeds = cls_feeds(0, n_distill), cls_feeds(2_000_000, 64 if n_distill else 0)

    def compensated(alloc, layers):
        start = time.perf_counter()
        comp = compensate(
            model,
            layers,
            alloc.choices,
            comp_feeds,
            build=lambda fits: rewrite_allocation(model, layers, alloc, fits, check=False),
            build_part=lambda fits, part: rewrite_allocation(part, layers, alloc, fits, check=False, part=True),
        )
        return comp.fits, time.perf_counter() - start

    def distilled(alloc, layers, fits):
        from ttgraph.distill import distill

        compressed = [lc.label for lc in layers if alloc.choices[lc.label].kind != "dense"]
        start = time.perf_counter()
        result = distill(
            model,
            rewrite_allocation(model, layers, alloc, fits),
            compressed,
            distill_feeds,
            keep_feeds,
            epochs=args.distill,
            lr=args.distill_lr,
            batch=16 if args.model == "cls" else 4,
            train="all" if args.distill_all else "factors",
        )
        return result.model, time.perf_counter() - start

    tasks: list[str] = []  # the --task summaries of the row being measured

    def score(alloc, layers, fits=None, rewritten=None, task: str | None = None) -> float:
        sess = session(rewritten if rewritten is not None else rewrite_allocation(model, layers, alloc, fits))
        outs = [sess.run(None, {"x": x})[0] for x in held]
        if args.task and task:
            tasks.append(f"{task}: {pipeline.summary(outs)}")
        if args.model == "det":
            return binary_iou(reference, outs)
        return top1_agreement(reference, outs)

    if args.task:
        pipeline = PipelineView(args.model, reference, n_held)
        print(f"task view (rapidocr's post-processing), original: {pipeline.original}")

    if args.sensitivity:
        feeds = comp_feeds[: args.sensitivity]
        print(f"{'budget':>6}  {'unweighted':>10}  {'+comp':>8}  {'weighted':>10}  {'+comp':>8}")
        for ratio in (float(b) for b in args.budgets.split(",")):
            weights = measured_sensitivities(model, data, feeds, ratio=ratio, metric=metric)
            cells = []
            for w in (None, weights):
                alloc = allocate(data, Budget(**{f"{metric}_ratio": ratio}), weights=w)
                fits, _ = compensated(alloc, data)
                cells += [f"{score(alloc, data):.4f}", f"{score(alloc, data, fits):.4f}"]
            print(f"{ratio:>6}  {cells[0]:>10}  {cells[1]:>8}  {cells[2]:>10}  {cells[3]:>8}", flush=True)
        return 0

    what = "IoU (>0.3) on held-out pages" if args.model == "det" else "top-1 agreement on held-out lines"
    print(f"{what}; budget = {metric} ratio of the 1×1 layers; achieved ratio in brackets")
    heads = ["data alloc", "data unif cost", "data unif rank", "weight alloc", "weight unif cost"]
    if args.compensate:
        heads[1:1] = ["data alloc+comp"]
        heads[4:4] = ["data u.rank+comp"]
        if args.distill:
            heads[2:2] = ["+distill"]
            print(f"distillation: {args.distill} epochs over {len(distill_feeds)} calibration inputs")
        print(f"compensation: {len(comp_feeds)} calibration inputs, layers refitted level by level")
    print(f"{'budget':>6}  " + "  ".join(f"{h:>16}" for h in heads) + ("  comp seconds" if args.compensate else ""))
    for ratio in (float(b) for b in args.budgets.split(",")):
        cells, seconds = [], []
        for layers in (data, weight):
            alloc = allocate(layers, Budget(**{f"{metric}_ratio": ratio}))
            picks = [alloc, uniform_allocation_reaching(layers, alloc.cost_after, metric, by="cost")]
            if layers is data:
                picks.append(uniform_allocation_reaching(layers, alloc.cost_after, metric, by="rank"))
            for k, chosen in enumerate(picks):
                shown = layers is data and k == 0  # the allocated data-aware rewrite: the --task view follows it
                cells.append(f"{score(chosen, layers, task='alloc' if shown else None):.4f} ({chosen.ratio:.3f})")
                if args.compensate and layers is data and k in (0, 2):
                    fits, took = compensated(chosen, layers)
                    got = score(chosen, layers, fits, task="+comp" if shown else None)
                    cells.append(f"{got:.4f} ({chosen.ratio:.3f})")
                    seconds.append(f"{took:.0f}")
                    if args.distill and k == 0:
                        rewritten, took = distilled(chosen, layers, fits)
                        got = score(chosen, layers, rewritten=rewritten, task="+distill")
                        cells.append(f"{got:.4f} ({chosen.ratio:.3f})")
                        seconds.append(f"{took:.0f}")
        tail = ("  " + "/".join(seconds)) if seconds else ""
        print(f"{ratio:>6}  " + "  ".join(f"{c:>16}" for c in cells) + tail, flush=True)
        for line in tasks:
            print(f"{'':>6}  task view, {line}", flush=True)
        tasks.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
