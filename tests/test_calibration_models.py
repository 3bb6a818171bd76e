"""Calibration-driven compression of the real rapidocr models, judged on held-out images it never saw.

Detector (PP-OCRv4, 640×640): 36 real-looking images (rendered text pages and photo crops) in a folder, 4 of
them held out by compress() itself, budget --macs-ratio 0.5; judged by binarized (> 0.3) probability-map IoU on
8 more rendered pages. Classifier (0°/180°): 272 rendered text lines in a .npy file, --params-ratio 0.3 and 0.5;
judged by top-1 agreement on 400 other lines, both orientations.

Both runs compensate (issue 7, :mod:`ttgraph.compensate`: the compressed layers refitted level by level to the
original outputs given the compressed network's inputs; by default, on 28 of the detector's 32 calibration
images, spread over them, and on all 256 of the classifier's lines); "uncompensated" is the same allocation
rewritten without the refit. The absolute targets that are still out of reach (issue 3: IoU ≥ 0.95 at half the
MACs, agreement ≥ 98 % at 0.3 of the params; issue 7: 0.97 and 99 %) are kept as strict xfails with the measured
values in their reasons, so that the work that reaches them turns them into failures to update. Measured values
are in the assertions' comments.
"""

from __future__ import annotations

import numpy as np
import pytest

import ttgraph
from tests.calib_material import (
    binary_iou,
    det_image,
    heldout_lines,
    heldout_pages,
    material_preset,
    text_line_image,
    write_images,
)
from tests.conftest import CLS_SHAPE, DET_SHAPE
from ttgraph.allocate import uniform_allocation_reaching
from ttgraph.api import _analyse, rewrite_allocation
from ttgraph.calibration import PRESETS, collect_statistics
from ttgraph.decompose import build_candidates
from ttgraph.model_io import load_model
from ttgraph.verify import session

# ------------------------------------------------------------------------------------------------ detector


@pytest.fixture(scope="module")
def det_run(det_path, tmp_path_factory):
    folder = write_images([det_image("calib", i) for i in range(36)], tmp_path_factory.mktemp("det_calib"))
    result = ttgraph.compress(
        det_path,
        calibration=folder,
        preprocess="paddleocr-det",
        input_shapes={"x": DET_SHAPE},
        holdout=4,
        macs_ratio=0.5,
    )
    original = load_model(det_path, {"x": DET_SHAPE})
    pre = PRESETS["paddleocr-det"].with_size((640, 640))
    pages = [{"x": pre.apply(img)} for img in heldout_pages(8)]
    reference = [session(original).run(None, f)[0] for f in pages]

    def iou(model) -> float:
        sess = session(model)
        return binary_iou(reference, [sess.run(None, f)[0] for f in pages])

    dec = result.decomposition
    uniform = uniform_allocation_reaching(dec.layers, dec.allocation.cost_after, "macs", by="rank")
    run = {
        "result": result,
        "original": original,
        "pages": pages,
        "iou": iou(result.model),
        "iou_uncompensated": iou(rewrite_allocation(original, dec.layers, dec.allocation)),
        "uniform": uniform,
        "uniform_iou": iou(rewrite_allocation(original, dec.layers, uniform)),
    }
    print(f"\ndetector held-out IoU: compensated {run['iou']:.4f}, uncompensated {run['iou_uncompensated']:.4f}, "
          f"uniform ranks {run['uniform_iou']:.4f}")  # fmt: skip
    return run


def test_detector_budget_is_met_in_emitted_macs_and_reported_per_layer(det_run):
    report = det_run["result"].report
    assert len(report.layers) == 42
    assert report.totals["macs_ratio"] <= 0.5 + 1e-9
    assert report.allocation["macs_ratio"] == pytest.approx(report.totals["macs_ratio"])
    assert report.calibration["samples"] == 32 and report.calibration["heldout_samples"] == 4
    for layer in report.layers:
        assert layer.curve and layer.curve[-1]["format"] == "dense"
        assert sum(p["chosen"] for p in layer.curve) == 1
        if layer.format == "dense":
            assert layer.kept_dense_reason
        else:
            assert 0 < layer.calibration_error < 1 and layer.heldout_error is not None
    # the 20 squeeze-excite convs on 1×1 maps hold almost no MACs: cheaper to keep dense
    se = [layer for layer in report.layers if layer.pixels == 1]
    assert len(se) == 20 and all(layer.format == "dense" for layer in se)
    held = report.verification["outputs"][0]
    assert "binary_iou" in held and report.verification["samples"] == 4
    # the scale beside it: ±1 grey level moves the original's map, less than half the 1×1 MACs do
    moved = report.verification["original_under_input_noise"]["outputs"][0]["binary_iou"]
    assert held["binary_iou"] < moved < 1  # measured: 0.944 vs 0.992


def test_detector_data_aware_beats_weight_only_at_equal_macs_on_held_out_data(det_run):
    result, original = det_run["result"], det_run["original"]
    _, found, _ = _analyse(original)
    held = collect_statistics(original, found.candidates, det_run["pages"])
    better = 0
    for data, conv in zip(result.decomposition.layers, found.candidates, strict=True):
        weight = build_candidates(conv, None, method="weight", cores=(1, 2), metric="macs")
        limit = 0.5 * data.dense.macs
        d_err = min(data.errors_on(held.layers[conv.label], [c for c in data.candidates if c.macs <= limit]).values())
        w_pool = [c for c in weight.candidates if c.macs <= limit]
        w_err = min(weight.errors_on(held.layers[conv.label], w_pool).values())
        better += d_err < w_err
    assert better >= 0.9 * len(found.candidates)  # measured: 42 of 42


def test_detector_allocation_beats_uniform_ranks_at_the_same_macs(det_run):
    alloc = det_run["result"].decomposition.allocation
    assert det_run["uniform"].cost_after >= alloc.cost_after  # the baseline gets at least as many MACs
    # both without compensation: the allocation alone
    assert det_run["iou_uncompensated"] > det_run["uniform_iou"] + 0.01  # measured: 0.89 vs 0.86
    assert det_run["iou_uncompensated"] >= 0.85


def test_detector_compensation_strictly_improves_held_out_iou_at_the_same_macs(det_run):
    result = det_run["result"]
    comp = result.report.compensation
    assert comp["applied"] and comp["samples"] == 28  # the default: 2^25 input values of 640×640 images
    assert det_run["iou"] > det_run["iou_uncompensated"] + 0.01  # measured: 0.925 vs 0.889
    # the report's own held-out numbers (4 held-out calibration images) say the same, before → after
    before, after = comp["end_to_end"]["before"][0], comp["end_to_end"]["after"][0]
    assert after["binary_iou"] > before["binary_iou"] and comp["kept"]
    # the written model is the compensated one (after exact lowering, which moves the last digits)
    written = result.report.verification["outputs"][0]
    assert after["binary_iou"] == pytest.approx(written["binary_iou"], abs=1e-4)
    assert after["rel_l2"] == pytest.approx(written["rel_l2"], rel=1e-4)
    rows = comp["layers"]
    assert {row["name"] for row in rows} >= {layer.name for layer in result.report.layers if layer.format != "dense"}
    improved = sum(row["heldout_error_after"] < row["heldout_error_before"] for row in rows)
    assert improved >= 0.8 * len(rows)


@pytest.mark.xfail(strict=True, reason="issue 3 target not met: measured IoU 0.925 with compensation (0.889 without)")
def test_detector_iou_reaches_the_acceptance_target_at_half_the_macs(det_run):
    assert det_run["iou"] >= 0.95


@pytest.mark.xfail(strict=True, reason="issue 7 target not met: measured IoU 0.925 with compensation (0.889 without)")
def test_detector_compensated_iou_reaches_the_issue_7_target_at_half_the_macs(det_run):
    assert det_run["iou"] >= 0.97


# ---------------------------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    pre = material_preset("paddleocr-cls").with_size((48, 192))
    calib = np.concatenate([pre.apply(text_line_image(i, i % 2 == 1)) for i in range(272)])
    path = tmp_path_factory.mktemp("cls_calib") / "lines.npy"
    np.save(path, calib)
    held = [{"x": pre.apply(img)} for img in heldout_lines(400)]
    return path, held


def agreement(original, model, feeds) -> float:
    a, b = session(original), session(model)
    return float(np.mean([a.run(None, f)[0].argmax() == b.run(None, f)[0].argmax() for f in feeds]))


@pytest.fixture(scope="module")
def cls_runs(cls_path, cls_data):
    path, held = cls_data
    original = load_model(cls_path, {"x": CLS_SHAPE})
    runs = {}
    for ratio in (0.3, 0.5):
        result = ttgraph.compress(  # compensation (on 0.3 only, to keep the suite short) reads all 256 lines
            cls_path,
            calibration=path,
            input_shapes={"x": CLS_SHAPE},
            holdout=16,
            params_ratio=ratio,
            compensate=ratio == 0.3,
        )
        weight = ttgraph.compress(cls_path, input_shapes={"x": CLS_SHAPE}, params_ratio=ratio, method="weight")
        dec = result.decomposition
        runs[ratio] = {
            "result": result,
            "agreement": agreement(original, result.model, held),
            "uncompensated": agreement(original, rewrite_allocation(original, dec.layers, dec.allocation), held),
            "weight_agreement": agreement(original, weight.model, held),
        }
    dec = runs[0.3]["result"].decomposition
    uniform = uniform_allocation_reaching(dec.layers, dec.allocation.cost_after, "params", by="cost")
    runs["uniform_0.3"] = agreement(original, rewrite_allocation(original, dec.layers, uniform), held)
    print(f"\nclassifier held-out agreement: 0.3 compensated {runs[0.3]['agreement']:.4f}, uncompensated "
          f"{runs[0.3]['uncompensated']:.4f}; 0.5 {runs[0.5]['agreement']:.4f}")  # fmt: skip
    return runs


def test_classifier_meets_the_params_budget_and_beats_weight_only_and_uniform(cls_runs):
    for ratio in (0.3, 0.5):
        report = cls_runs[ratio]["result"].report
        assert report.totals["params_ratio"] <= ratio + 1e-9
        assert report.calibration["samples"] == 256
    assert cls_runs[0.5]["uncompensated"] >= 0.95  # measured 0.97
    assert cls_runs[0.3]["uncompensated"] >= 0.65  # measured 0.73
    assert cls_runs[0.3]["uncompensated"] > cls_runs[0.3]["weight_agreement"] + 0.1  # weight-only: 0.56
    assert cls_runs[0.3]["uncompensated"] > cls_runs["uniform_0.3"] + 0.1  # uniform: 0.50 (one class everywhere)


def test_classifier_compensation_strictly_improves_held_out_agreement(cls_runs):
    comp = cls_runs[0.3]["result"].report.compensation
    assert comp["applied"] and comp["samples"] == 256  # the default reads every line (2^25 values ≥ 256 lines)
    assert cls_runs[0.3]["agreement"] > cls_runs[0.3]["uncompensated"] + 0.1  # measured: 0.9325 vs 0.735


@pytest.mark.xfail(strict=True, reason="issue 3 target not met: measured 0.9325 with compensation (0.735 without)")
def test_classifier_agreement_reaches_the_acceptance_target_at_three_tenths_of_the_params(cls_runs):
    assert cls_runs[0.3]["agreement"] >= 0.98


@pytest.mark.xfail(strict=True, reason="issue 7 target not met: measured 0.9325 with compensation (0.735 without)")
def test_classifier_compensated_agreement_reaches_the_issue_7_target_at_three_tenths_of_the_params(cls_runs):
    assert cls_runs[0.3]["agreement"] >= 0.99


def test_calibrated_compression_is_deterministic(cls_path, cls_data):
    path, _ = cls_data
    runs = [
        ttgraph.compress(
            cls_path,
            calibration=path,
            input_shapes={"x": CLS_SHAPE},
            holdout=16,
            params_ratio=0.5,
            compensate_samples=16,  # determinism does not need many; compensation runs, as by default
        )
        for _ in range(2)
    ]
    assert runs[0].report.compensation["applied"]
    assert runs[0].model.SerializeToString() == runs[1].model.SerializeToString()
    reports = [r.report.to_dict() for r in runs]
    for report in reports:
        report["calibration"].pop("seconds")  # wall time is the one thing allowed to differ
        report["compensation"].pop("seconds")
    assert reports[0] == reports[1]
