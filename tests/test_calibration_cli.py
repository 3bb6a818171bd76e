"""``ttgraph compress --calib … --macs-ratio/--params-ratio/--max-error … --html``, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.test_cli import assert_clean_error, ttgraph_cli
from ttgraph.report_html import render_html


def stacked_model(path: Path, hw=(24, 24)) -> Path:
    """x(3ch) → 1×1 conv 3→32 → Relu → 1×1 conv 32→48 → Relu → 1×1 conv 48→32 → y: three candidates."""
    rng = np.random.default_rng(0)
    chans = [3, 32, 48, 32]
    nodes, inits, prev = [], [], "x"
    for k, (cin, cout) in enumerate(zip(chans, chans[1:], strict=False)):
        w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{k}")]
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", kernel_shape=[1, 1]),
            helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"),
        ]
        prev = f"r{k}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 32, *hw])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    return path


@pytest.fixture
def setup(tmp_path):
    model = stacked_model(tmp_path / "m.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        base = rng.integers(0, 256, (1, 1, 3))
        img = np.clip(base + rng.normal(0, 30, (30, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    return model, folder


def test_budget_from_an_image_folder_writes_model_report_and_html(setup, tmp_path):
    model, folder = setup
    out, report, page = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "r.html"
    proc = ttgraph_cli(
        "compress", model, "-o", out, "--calib", folder, "--preprocess", "imagenet", "--holdout", "3",
        "--macs-ratio", "0.6", "--report", report, "--html", page, "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["calibration"]["samples"] == 9 and data["calibration"]["heldout_samples"] == 3
    assert data["allocation"]["metric"] == "macs" and data["totals"]["macs_ratio"] <= 0.6 + 1e-9
    layer = data["layers"][0]
    for key in ("name", "format", "ranks", "params_before", "params_after", "macs_before", "macs_after",
                "calibration_error", "heldout_error", "kept_dense_reason", "curve"):  # fmt: skip
        assert key in layer
    assert data["verification"]["samples"] == 3 and data["verification"]["outputs"][0]["rel_l2"] < 1
    # for scale, the original against itself under ±1 grey level of noise on the held-out images: small, not nil
    moved = data["verification"]["original_under_input_noise"]
    assert moved["samples"] == 3 and 0 < moved["outputs"][0]["rel_l2"] < 0.05
    text = page.read_text()
    assert "the original under ±1 grey level" in text
    assert text.count("<img") >= 3 and "conv1" in text
    onnx.checker.check_model(onnx.load(out))
    comp = data["compensation"]  # on by default
    assert comp["applied"] and comp["samples"] == 9 and "Error compensation" in text
    for row in comp["layers"]:
        assert set(row) == {
            "name", "calibration_error_before", "calibration_error_after", "heldout_error_before", "heldout_error_after"
        }  # fmt: skip
    written = "after" if comp["kept"] else "before"  # kept only if not worse on the held-out images
    assert comp["end_to_end"][written] == data["verification"]["outputs"], comp


def test_no_compensate_and_compensate_samples_options(setup, tmp_path):
    model, folder = setup
    common = ["compress", model, "--calib", folder, "--holdout", "3", "--macs-ratio", "0.6"]
    proc = ttgraph_cli(*common, "-o", tmp_path / "a.onnx", "--report", tmp_path / "a.json", "--no-compensate")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a.json").read_text())["compensation"] is None and "compensated" not in proc.stdout
    proc = ttgraph_cli(*common, "-o", tmp_path / "b.onnx", "--report", tmp_path / "b.json", "--compensate-samples", "4")
    assert proc.returncode == 0, proc.stderr
    comp = json.loads((tmp_path / "b.json").read_text())["compensation"]
    assert comp["samples"] == 4 and "compensated" in proc.stdout and "held out" in proc.stdout
    # every level after the first runs from the values kept at the one before
    assert comp["passes"] > 1 and comp["passes_from_cut"] == comp["passes"] - 1 and comp["largest_cut_mib"] > 0
    assert f"{comp['passes'] - 1} of {comp['passes']} passes from the kept cut" in proc.stdout
    assert "for scale, the original under ±1 grey level" in proc.stdout


def test_params_budget_from_npy_and_error_cap(setup, tmp_path):
    model, _ = setup
    arr = np.random.default_rng(2).standard_normal((10, 3, 24, 24)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    out = tmp_path / "out.onnx"
    proc = ttgraph_cli(
        "compress", model, "-o", out, "--calib", tmp_path / "x.npy", "--params-ratio", "0.7", "--report",
        tmp_path / "r.json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "budget params ratio 0.7: " in proc.stdout and "held-out" in proc.stdout
    # samples that are not images have no grey level: no yardstick rather than a made-up one
    assert "original_under_input_noise" not in json.loads((tmp_path / "r.json").read_text())["verification"]
    report = tmp_path / "cap.json"
    proc = ttgraph_cli(
        "compress", model, "-o", out, "--calib", tmp_path / "x.npy", "--max-error", "0.2", "--no-compensate",
        "--report", report,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(report.read_text())["layers"]
    compressed = [layer for layer in layers if layer["format"] != "dense"]
    assert compressed and all(layer["calibration_error"] <= 0.2 for layer in layers)
    assert "budget max error 0.2 (each layer's cheapest form in macs within it): " in proc.stdout  # was "budget macs"


def test_a_model_onnxruntime_cannot_run_is_named_by_its_file(tmp_path):
    """Calibration runs the model in onnxruntime, which has no float64 Conv: the one line names the file
    (not the in-memory copy, "<model>")."""
    model = stacked_model(tmp_path / "m.onnx")
    proto = onnx.load(model)
    for init in proto.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.save(proto, model)
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 24, 24)))
    proc = ttgraph_cli(
        "compress", model, "-o", tmp_path / "o.onnx", "--calib", tmp_path / "x.npy", "--macs-ratio", "0.5"
    )
    assert_clean_error(proc, f"{model}: onnxruntime cannot load the model")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--macs-ratio", "0.5"], "--calib"),
        (
            ["--latency-ratio", "0.9", "--latency-threads", "0", "--calib", "IMGS"],
            "--latency-threads: expected ≥ 1, got 0",
        ),
        (["--rank", "2", "--macs-ratio", "0.5", "--calib", "IMGS"], "not both"),
        ([], "not both and not neither"),
        (["--rank", "2", "--calib", "IMGS"], "go with a budget"),
        (["--macs-ratio", "1.5", "--calib", "IMGS"], "budget: --macs-ratio must be in (0, 1]"),
        # options that would be dropped without a word
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--distill-lr", "0.5"], "--distill-lr goes with --distill EPOCHS"),
        (
            ["--rank", "2", "--distill-batch", "3", "--distill-all"],
            "--distill-batch and --distill-all go with --distill",
        ),
        (["--macs-ratio", "0.5", "--method", "weight", "--holdout", "3"], "--holdout goes with calibration data"),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--latency-threads", "4"], "--latency-threads goes with --latency"),
        (
            ["--macs-ratio", "0.5", "--calib", "IMGS", "--no-compensate", "--compensate-samples", "8"],
            "--compensate-samples and --no-compensate contradict",
        ),
        (["--rank", "2", "--plan-cost", "roofline"], "--plan-cost: --plan-cost orders TT cores' contractions"),
        (["--rank", "2", "--no-compensate"], "--no-compensate: --no-compensate goes with a budget"),  # as typed
        (["--rank-ratio", "2"], "--rank-ratio: expected a fraction of full rank in (0, 1], got 2.0"),
        (["--latency-ratio", "0.5", "--cores", "3", "--calib", "IMGS"], "--cores: a latency budget times low-rank"),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--sensitivity", "-1"], "--sensitivity: expected a sample count"),
        # a property of the model's input: the error names the model file, the input inside it
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--preprocess", "channels=gray"], "m.onnx: input 'x' has 3 chan"),
        (["--macs-ratio", "0.01", "--calib", "IMGS"], "out of reach"),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--preprocess", "nosuch"], "unknown preset"),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--holdout", "-1"], "--holdout"),
        (["--macs-ratio", "0.5", "--calib", "nothere"], "no such file"),
        # each was run and then dropped: the same model, a report saying it was used, or nothing kept
        (
            ["--max-error", "0.1", "--calib", "IMGS", "--sensitivity", "2"],
            "--sensitivity: weights the layers' errors against each other in a ratio budget; --max-error alone",
        ),
        (
            ["--macs-ratio", "0.5", "--calib", "IMGS", "--holdout", "0", "--distill", "1"],
            "--distill: keeps the epoch that does best on held-out samples, and none is held out (--holdout)",
        ),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--method", "weight", "--compensate"], "--compensate goes with"),
        (
            ["--macs-ratio", "0.5", "--calib", "IMGS", "--method", "weight", "--compensate-samples", "8"],
            "--compensate-samples goes with --method data",
        ),
        (["--macs-ratio", "0.5", "--calib", "IMGS", "--holdout", "1.0"], "a fraction in [0, 1) (0.1), got '1.0'"),
    ],
)
def test_bad_budget_options_are_one_line_errors(setup, tmp_path, args, needle):
    model, folder = setup
    args = [str(folder) if a == "IMGS" else a for a in args]
    assert_clean_error(ttgraph_cli("compress", model, "-o", tmp_path / "o.onnx", "--quiet", *args), needle)


def test_a_npy_file_of_the_wrong_sample_shape_is_a_one_line_error(setup, tmp_path):
    model, _ = setup
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 20, 24), np.float32))
    out = tmp_path / "o.onnx"
    proc = ttgraph_cli("compress", model, "-o", out, "--calib", tmp_path / "x.npy", "--macs-ratio", "0.5")
    assert_clean_error(proc, "x.npy, sample 0: input 'x' has shape 1×3×20×24, the model expects 1×3×24×24")
    assert not out.exists()


@pytest.mark.parametrize(
    ("samples", "needle"),
    [
        (np.full((4, 3, 24, 24), np.nan, np.float32), "x.npy, sample 0: input 'x' holds NaN or infinite values"),
        (np.zeros((4, 3, 24, 24), np.uint8), "x.npy: array 'x' is uint8, the model input is float32"),
    ],
)
def test_calibration_samples_that_cannot_be_right_are_one_line_errors(setup, tmp_path, samples, needle):
    """NaNs would stop the whitening's eigensolver with a traceback; raw uint8 pixels would be cast silently."""
    model, _ = setup
    np.save(tmp_path / "x.npy", samples)
    proc = ttgraph_cli(
        "compress", model, "-o", tmp_path / "o.onnx", "--calib", tmp_path / "x.npy", "--macs-ratio", "0.5"
    )
    assert_clean_error(proc, needle)


def test_the_model_and_its_reports_are_distinct_files_written_all_or_none(setup, tmp_path):
    model, folder = setup
    out = tmp_path / "o.onnx"
    budget = ["--calib", folder, "--macs-ratio", "0.7"]
    assert_clean_error(ttgraph_cli("compress", model, "-o", out, *budget, "--report", out), "two outputs")
    assert_clean_error(
        ttgraph_cli("compress", model, "-o", out, *budget, "--html", tmp_path / "." / "o.onnx"), "two outputs"
    )
    assert not out.exists()
    # the HTML report cannot be written (its name is taken by a folder): found before any work, nothing written
    (tmp_path / "r.html").mkdir()
    proc = ttgraph_cli(
        "compress", model, "-o", out, *budget, "--report", tmp_path / "r.json", "--html", tmp_path / "r.html"
    )
    assert_clean_error(proc, "r.html")
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_html_renders_from_the_json_report_alone(setup, tmp_path):
    model, folder = setup
    report = tmp_path / "r.json"
    proc = ttgraph_cli(
        "compress", model, "-o", tmp_path / "o.onnx", "--calib", folder, "--macs-ratio", "0.7", "--report", report
    )
    assert proc.returncode == 0, proc.stderr
    text = render_html(json.loads(report.read_text()))
    assert "<table" in text and "Error vs cost" in text


def test_dynamic_input_dims_are_fixed_from_the_calibration_data_for_mac_counting_only(tmp_path):
    from tests.conftest import conv_model

    onnx.save_model(conv_model(16, 24, hw=("h", "w"), batch="n"), tmp_path / "m.onnx")
    arr = np.random.default_rng(3).standard_normal((8, 16, 10, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    proc = ttgraph_cli(
        "compress", tmp_path / "m.onnx", "-o", out, "--calib", tmp_path / "x.npy", "--macs-ratio", "0.6",
        "--holdout", "2", "--report", report,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "MACs counted at the first calibration sample's size, x=1,16,10,12" in proc.stdout
    data = json.loads(report.read_text())
    assert data["options"]["input_shapes"] == {"x": [1, 16, 10, 12]}
    assert data["totals"]["macs_before"] == 16 * 24 * 10 * 12
    assert data["totals"]["macs_ratio"] <= 0.6
    dims = [d.dim_param or d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["n", 16, "h", "w"]


def test_no_verify_says_so(setup, tmp_path):
    model, _ = setup
    proc = ttgraph_cli("compress", model, "-o", tmp_path / "out.onnx", "--rank", "4", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert "not verified (--no-verify)" in proc.stdout
    assert "dynamic input dims" not in proc.stdout


def test_a_rank_rule_that_costs_more_than_the_original_says_so(setup, tmp_path):
    model, _ = setup
    proc = ttgraph_cli("compress", model, "-o", tmp_path / "tt.onnx", "--cores", "2", "--rank-ratio", "1")
    assert proc.returncode == 0, proc.stderr
    assert "note: these ranks cost more than the original 1×1 convs (MACs" in proc.stdout
    proc = ttgraph_cli("compress", model, "-o", tmp_path / "lr.onnx", "--rank", "2")
    assert proc.returncode == 0 and "cost more" not in proc.stdout


def test_no_output_may_replace_the_calibration_data(setup, tmp_path):
    model, folder = setup
    np.save(tmp_path / "c.npy", np.zeros((4, 3, 24, 24), np.float32))
    for calib, victim in ((tmp_path / "c.npy", tmp_path / "c.npy"), (folder, folder / "3.png")):
        before = victim.read_bytes()
        for option in ("--report", "--html"):
            proc = ttgraph_cli(
                "compress", model, "-o", tmp_path / "o.onnx", "--calib", calib, "--macs-ratio", "0.5", option, victim
            )
            assert_clean_error(proc, "output path is the input file")
        assert victim.read_bytes() == before


def test_with_nothing_held_out_a_dynamic_model_is_smoke_tested_at_the_calibration_shape(tmp_path):
    """--holdout 0 leaves no samples to verify on; the random-input check used to give up on the model's dynamic
    dims ("not verified: the model has dynamic input dims") though the calibration samples had fixed them."""
    model = onnx.load(stacked_model(tmp_path / "m.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    onnx.save(model, tmp_path / "dyn.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((6, 3, 16, 20)).astype(np.float32))
    report = tmp_path / "r.json"
    proc = ttgraph_cli(
        "compress", tmp_path / "dyn.onnx", "-o", tmp_path / "o.onnx", "--calib", tmp_path / "x.npy",
        "--holdout", "0", "--params-ratio", "0.5", "--report", report,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "not verified" not in proc.stdout
    verification = json.loads(report.read_text())["verification"]
    assert verification["inputs"].startswith("one random input at the calibration samples' shape")
    assert verification["outputs"][0]["rel_l2"] < 1


def test_the_html_draws_the_costliest_layers_curves_of_a_big_model(tmp_path):
    """301 layers took 56 s and 2.7 MB of PNG for the error-vs-cost grid: it draws the MAX_CURVES costliest and
    says so; every curve stays in the JSON report."""
    import ttgraph
    from ttgraph.report_html import MAX_CURVES

    model = stacked_model(tmp_path / "m.onnx")
    calib = np.random.default_rng(0).standard_normal((8, 3, 24, 24)).astype(np.float32)
    report = ttgraph.compress(model, calibration=calib, params_ratio=0.5, holdout=2).report.to_dict()
    layer = report["layers"][0]
    report["layers"] = [
        {**layer, "name": f"conv{i}", "params_before": layer["params_before"] + i} for i in range(MAX_CURVES + 12)
    ]
    text = render_html(report)
    assert f"the {MAX_CURVES} costliest of {MAX_CURVES + 12} layers (every curve is in the JSON report)" in text
    report["layers"] = report["layers"][:MAX_CURVES]
    assert "costliest" not in render_html(report)


def test_on_a_terminal_the_steps_without_a_bar_say_what_they_do(setup, tmp_path):
    """On a 301-layer model, allocating and rewriting (21 s) and writing (44 s) left the terminal still: on a
    terminal each such step prints one line on stderr; in a pipe (every other test here) nothing."""
    import os
    import pty
    import subprocess
    import sys

    model, folder = setup
    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "ttgraph", "compress", str(model), "-o", str(tmp_path / "o.onnx"), "--calib"]
    cmd += [str(folder), "--holdout", "3", "--macs-ratio", "0.6", "--report", str(tmp_path / "r.json")]
    out = (tmp_path / "stdout.txt").open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=follower)
    os.close(follower)
    err = b""
    while True:  # read as it comes: a full terminal buffer would stop the process
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the terminal's other side is closed: all read
            break
        if not chunk:
            break
        err += chunk
    os.close(leader)
    text = err.decode(errors="replace")
    assert proc.wait(timeout=300) == 0, text
    out.close()
    assert "wrote" in (tmp_path / "stdout.txt").read_text()
    for step in ("allocating the budget over 3 layers", "rewriting", "lowering", f"writing {tmp_path / 'o.onnx'}"):
        assert f"ttgraph: {step}" in text, text
