"""ttgraph called from a pipeline: plain values in its reports, TTGraphError for what the caller got wrong,
no comparison that reads as perfect when nothing was compared, outputs readable by another user."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from importlib import resources

import numpy as np
import onnx
import pytest

import ttgraph
from tests.conftest import conv_model


def test_numpy_scalars_and_arrays_as_options_give_a_plain_json_report(tmp_path):
    result = ttgraph.compress(
        conv_model(16, 16, hw=(6, 6), batch="n"),
        rank_ratio=np.float32(0.5),
        input_shapes={"x": np.array([1, 16, 6, 6])},
    )
    result.save(tmp_path / "m.onnx", report_path=tmp_path / "m.json")
    written = json.loads((tmp_path / "m.json").read_text())
    options = written["options"]
    assert options["rank_ratio"] == 0.5 and options["input_shapes"] == {"x": [1, 16, 6, 6]}
    assert written["ttgraph_version"] == ttgraph.__version__  # a report says which release made its choices


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"rank_ratio": "0.5"}, "rank_ratio: expected a finite number, got '0.5'"),
        ({"rank": 2.5}, "rank: expected an integer, got 2.5"),
        ({"rank": True}, "rank: expected an integer, got True"),
        ({"rank": 2, "cores": "2"}, "cores: expected an integer"),
        ({"rank": 2, "input_shapes": ["x=1,16,6,6"]}, "input_shapes: expected a dict"),
        ({"rank": 2, "input_shapes": {"x": [1, 16, 0, 6]}}, "input_shapes: 'x': dims must be positive"),
        ({"rank": 2, "input_shapes": {"x": [1, 16, 10**23, 6]}}, "input_shapes: 'x': dims must be positive and below"),
        ({"rank": 2, "plan_cost": "bogus"}, "plan_cost: unknown cost model 'bogus'"),
        ({"macs_ratio": 0.5, "calibration": [np.zeros((1, 16, 6, 6), np.float32)]}, "item 0 is a ndarray"),
        ({"macs_ratio": 0.5, "calibration": [], "compensate_samples": 0}, "compensate_samples: expected ≥ 1"),
        ({"rank": 2, "input_shapes": {"x": 3}}, "input_shapes: expected a list of integer dims per input"),
        ({"rank": 2, "layers": 5}, "layers: expected conv names"),
        ({"rank": 2, "layers": [5]}, "layers: expected conv names"),
        ({"rank": 2, "layers": []}, "layers: names no conv"),  # every conv was skipped without a word
        ({"max_error": 0.1, "calibration": [], "sensitivity": 2}, "sensitivity: weights the layers' errors"),
        ({"macs_ratio": 0.5, "method": "weight", "compensate_samples": 8}, "compensate_samples: goes with method"),
        ({"macs_ratio": 0.5, "method": "weight", "compensate": True}, "compensate: goes with method='data'"),
        (  # a one-pass stream is refused for what it is, not as "none is held out"
            {
                "macs_ratio": 0.5,
                "calibration": (f for f in [{"x": np.ones((1, 16, 6, 6), np.float32)}] * 4),
                "distill": 1,
            },
            "distill: distillation reads the calibration samples once per epoch",
        ),
        ({"rank": 2, "lower": 5}, "lower: expected True, False or pass names"),
        ({"rank": 2, "verify_feeds": 5}, "verify_feeds: expected a list of feed dicts, got int"),
        ({"macs_ratio": 0.5, "calibration": [], "latency_threads": 0}, "latency_threads: expected ≥ 1, got 0"),
        ({"macs_ratio": 0.5, "calibration": [], "latency_threads": 2}, "latency_threads: times a latency budget"),
        ({"rank": 2, "plan_cost": "measured"}, "plan_cost: orders TT cores' contractions: 'measured' goes with cores"),
        ({"macs_ratio": 0.5, "compensate": False, "compensate_samples": 8}, "set with compensate=False"),
        ({"macs_ratio": 0.5, "calibration": "READER"}, "get_next.. returned int, expected a dict"),
        ({"macs_ratio": 0.5, "calibration": [], "holdout": None}, "holdout: expected a count"),
        ({"rank": 2, "plan_cost": None}, "plan_cost: unknown cost model None"),
        ({"rank": 2, "plan_cost": len}, "plan_cost: unknown cost model"),
    ],
)
def test_wrong_option_types_and_values_are_ttgraph_errors_before_any_work(options, needle):
    if options.get("calibration") == "READER":  # a CalibrationDataReader whose get_next() gives no dicts
        items = iter([1, 2])
        options["calibration"] = type("Reader", (), {"get_next": lambda self: next(items, None)})()
    with pytest.raises(ttgraph.TTGraphError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        ttgraph.compress(conv_model(16, 16, hw=(6, 6)), **options)


def test_one_name_where_a_list_goes_is_that_name():
    model = conv_model(16, 16, hw=(6, 6))
    conv = ttgraph.inspect(model).layers[0].name
    result = ttgraph.compress(model, rank=4, layers=conv, lower="fold-affine")
    assert [layer.name for layer in result.report.layers] == [conv]


def test_layers_from_a_one_pass_iterable_are_the_ones_rewritten_and_the_rest_are_reported_as_left():
    """A filter over inspect()'s names was read empty by the type check: nothing was rewritten, without a word,
    even for a name the model lacks; the report listed the unselected convs nowhere."""
    from tests.test_compensate import feeds, stacked_convs

    model = stacked_convs()
    first, second = (layer.name for layer in ttgraph.inspect(model).layers)
    for options in ({"rank_ratio": 0.5}, {"calibration": feeds(12, seed=1), "params_ratio": 0.75}):
        result = ttgraph.compress(model, layers=filter(lambda n: n != second, [first, second]), **options)
        assert [layer.name for layer in result.report.layers] == [first]
        assert result.report.options["layers"] == [first]
        assert [(s.label, s.reason) for s in result.report.skipped] == [
            (second, "not among the layers selected (layers=, --layer)")
        ]
        assert result.report.options["lower"] == list(ttgraph.api._pass_names(True))
    with pytest.raises(ttgraph.TTGraphError, match="nonexistent .no conv of that name."):
        ttgraph.compress(model, rank_ratio=0.5, layers=iter(["nonexistent"]))
    with pytest.raises(ttgraph.TTGraphError, match="layers: names no conv"):  # a filter that matched nothing
        ttgraph.compress(model, rank_ratio=0.5, layers=filter(lambda n: n.startswith("head"), [first, second]))
    unlowered = ttgraph.compress(model, rank_ratio=0.5, lower=(n for n in ["fold-affine"]))
    assert unlowered.report.options["lower"] == ["fold-affine"] and [
        p["pass"] for p in unlowered.report.lowering["passes"]
    ] == ["fold-affine"]


def test_an_array_in_memory_calibrates_like_a_npy_file():
    model = conv_model(16, 16, hw=(6, 6))
    samples = np.random.default_rng(0).standard_normal((10, 16, 6, 6)).astype(np.float32)
    result = ttgraph.compress(model, calibration=samples, holdout=2, macs_ratio=0.5)
    assert result.report.calibration["samples"] == 8 and "10 samples in an array" in result.report.calibration["source"]


def test_a_generator_calibrates_with_the_default_holdout():
    model = conv_model(16, 16, hw=(6, 6))
    rng = np.random.default_rng(1)
    feeds = ({"x": rng.standard_normal((1, 16, 6, 6)).astype(np.float32)} for _ in range(20))
    report = ttgraph.compress(model, calibration=feeds, macs_ratio=0.5).report  # holdout 0.1: samples 9 and 19
    assert report.calibration["samples"] == 18 and report.calibration["heldout_samples"] == 2
    assert report.verification["samples"] == 2
    assert report.compensation["applied"] and report.compensation["samples"] == 18  # kept from the one pass


def test_verification_needs_real_inputs():
    model = conv_model(16, 16, hw=(6, 6))
    result = ttgraph.compress(model, rank=4)
    with pytest.raises(ttgraph.TTGraphError, match="no verification inputs"):
        result.verify([])
    with pytest.raises(ttgraph.TTGraphError, match="verification input 0: input 'x' holds NaN"):
        result.verify([{"x": np.full((1, 16, 6, 6), np.nan, np.float32)}])
    with pytest.raises(ttgraph.TTGraphError, match="verification input 0: expected a feed dict"):
        result.verify([np.zeros((1, 16, 6, 6), np.float32)])
    assert result.verify([{"x": np.ones((1, 16, 6, 6), np.float32)}])[0].rel_l2 < 1


def test_verify_refuses_to_compare_with_an_original_file_replaced_since(tmp_path):
    """verify() reads the original from its path: a pipeline that deployed the result over that path then got
    a perfect score, comparing the result with itself."""
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(conv_model(16, 16, hw=(6, 6)), src)
    result = ttgraph.compress(src, rank=4)
    feed = [{"x": np.ones((1, 16, 6, 6), np.float32)}]
    assert result.verify(feed)[0].rel_l2 > 1e-3
    result.save(tmp_path / "out.onnx")
    (tmp_path / "out.onnx").replace(src)
    with pytest.raises(ttgraph.TTGraphError, match="m.onnx: the original model file has changed since"):
        result.verify(feed)


def test_a_result_keeps_its_source_by_absolute_path_so_a_chdir_cannot_save_over_it(tmp_path, monkeypatch):
    """compress("m.onnx") kept the relative path: after the pipeline changed directory, save("A/m.onnx") wrote
    over the input (the guard compared "m.onnx" in the new directory) and verify() said the file had changed."""
    import onnx

    (tmp_path / "A").mkdir()
    src = tmp_path / "A" / "m.onnx"
    onnx.save(conv_model(16, 16, hw=(6, 6)), src)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path / "A")
    result = ttgraph.compress("m.onnx", rank=4)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ttgraph.TTGraphError, match="output path is the input file"):
        result.save("A/m.onnx")
    assert src.read_bytes() == before
    feed = [{"x": np.ones((1, 16, 6, 6), np.float32)}]
    assert result.verify(feed)[0].rel_l2 > 1e-3
    src.rename(tmp_path / "moved.onnx")
    with pytest.raises(ttgraph.TTGraphError, match=r"A/m.onnx: the original model file is gone \(moved or deleted\)"):
        result.verify(feed)


def test_one_feed_dict_where_a_list_goes_says_to_wrap_it(tmp_path):
    import onnx

    onnx.save(conv_model(16, 16, hw=(6, 6)), tmp_path / "m.onnx")
    result = ttgraph.compress(tmp_path / "m.onnx", rank=4)
    feed = {"x": np.ones((1, 16, 6, 6), np.float32)}
    for call in (lambda: result.verify(feed), lambda: ttgraph.compress(tmp_path / "m.onnx", rank=4, verify_feeds=feed)):
        with pytest.raises(ttgraph.TTGraphError, match=r"got dict \(one feed dict: wrap it in a list\)"):
            call()
    # compare_outputs takes paths and bytes as compress does, not only ModelProtos
    errors = ttgraph.compare_outputs(tmp_path / "m.onnx", result.model.SerializeToString(), [feed])
    assert errors == result.verify([feed])


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"compensate": "false"}, "compensate: expected True or False, got 'false'"),
        ({"progress": 1}, "progress: expected True or False, got 1"),
    ],
)
def test_flags_that_are_not_bools_are_refused(options, needle):
    with pytest.raises(ttgraph.TTGraphError, match=needle):
        ttgraph.compress(conv_model(16, 16, hw=(6, 6)), rank=4, **options)
    assert ttgraph.compress(conv_model(16, 16, hw=(6, 6)), rank=4, progress=np.bool_(False)).report.layers


def test_holding_out_all_of_a_generators_samples_says_so():
    """It said "the calibration data gave no samples (a generator or reader already read to its end?)"."""
    samples = np.random.default_rng(0).standard_normal((6, 1, 16, 6, 6)).astype(np.float32)
    for holdout, gave in ((6, 6), (9, 6)):
        with pytest.raises(ttgraph.TTGraphError, match=f"holding out {holdout} samples leaves none .* gave {gave}$"):
            ttgraph.compress(
                conv_model(16, 16, hw=(6, 6)),
                calibration=({"x": x} for x in samples),
                params_ratio=0.5,
                holdout=holdout,
            )


def test_input_shapes_from_one_string_as_the_docstring_shows():
    assert ttgraph.parse_input_shapes("x=1,3,64,64") == {"x": [1, 3, 64, 64]}
    assert ttgraph.parse_input_shapes(["x = 1,3,64,64", "s=2"]) == {"x": [1, 3, 64, 64], "s": [2]}
    assert ttgraph.parse_input_shapes(["scale=a=2"]) == {"scale=a": [2]}  # an exporter's name may hold "="


def test_a_tolerance_of_one_or_more_is_refused():
    """Every rank-1 truncation is within a relative error of 1: such a tolerance bounds nothing."""
    with pytest.raises(ttgraph.TTGraphError, match="^tolerance: a relative error: it must be below 1, got 5.0$"):
        ttgraph.compress(conv_model(16, 16), tolerance=5)


def test_outputs_get_the_permissions_a_plain_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        result = ttgraph.compress(conv_model(16, 16, hw=(6, 6)), rank=4)
        result.save(tmp_path / "m.onnx", report_path=tmp_path / "m.json", html_path=tmp_path / "m.html")
    finally:
        os.umask(old)
    for name in ("m.onnx", "m.json", "m.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    old = os.umask(0o077)
    try:
        (tmp_path / "m.onnx").chmod(0o640)  # replacing a file keeps its mode, as open() would
        result.save(tmp_path / "m.onnx", report_path=tmp_path / "new.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o600


def test_the_package_says_it_is_typed():
    assert resources.files("ttgraph").joinpath("py.typed").is_file()


def test_ttgraph_compile_is_the_typed_tvm_entry_point_loaded_on_use():
    from targets.compile import compile_model

    assert ttgraph.compile is compile_model
    assert {"tune_minutes", "tune_tracker", "tune_key"} <= set(compile_model.__annotations__)


@pytest.mark.parametrize("first", ["passes", "passes.lower", "passes.rewrite_tt", "targets", "ttgraph.planner"])
def test_any_package_can_be_imported_first(first):
    # a pipeline that only lowers (``from passes import Lower``) imports passes before ttgraph; passes uses
    # ttgraph's own modules, and ttgraph's pipeline uses passes: neither order may meet a half-built module
    code = f"import {first}; import ttgraph; from passes import Lower; print(ttgraph.compress.__name__, Lower.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert done.stdout.split() == ["compress", "Lower"]


def test_inspect_checks_its_arguments_like_compress():
    with pytest.raises(ttgraph.TTGraphError, match="model: expected a path, bytes or an onnx.ModelProto, got int"):
        ttgraph.inspect(3)  # type: ignore[arg-type]
    with pytest.raises(ttgraph.TTGraphError, match="input_shapes: expected a list of integer dims"):
        ttgraph.inspect(conv_model(16, 16, batch="n"), input_shapes={"x": None})  # type: ignore[dict-item]


def test_an_empty_verify_feeds_is_an_error_with_a_budget_too():
    model = conv_model(16, 16, hw=(6, 6))
    calib = [{"x": np.random.default_rng(s).standard_normal((1, 16, 6, 6)).astype(np.float32)} for s in range(8)]
    with pytest.raises(ttgraph.TTGraphError, match="no verification inputs"):
        ttgraph.compress(model, calibration=calib, macs_ratio=0.5, verify_feeds=[])


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"x": np.zeros((1, 16, 6, 6))}, r"verify_feeds\[1\]: input 'x' is float64, the model expects float32"),
        ({"y": np.zeros((1, 16, 6, 6), np.float32)}, r"verify_feeds\[1\]: a feed needs the model inputs \['x'\]"),
        ({"x": np.zeros((1, 16, 5, 6), np.float32)}, r"verify_feeds\[1\]: input 'x' has shape 1×16×5×6"),
        (np.zeros((1, 16, 6, 6), np.float32), r"verify_feeds\[1\]: expected a feed dict"),
    ],
)
@pytest.mark.parametrize("options", [{"macs_ratio": 0.5}, {"macs_ratio": 0.5, "compensate": False}, {"rank": 2}])
def test_verify_feeds_the_model_cannot_take_are_named_before_any_work(bad, needle, options):
    """Found calling the API as a pipeline would: with compensation on, such a feed failed after calibration and
    compensation, as onnxruntime's own error from inside the compensation's judgement."""
    model = conv_model(16, 16, hw=(6, 6))
    read = []

    def calib():
        for s in range(8):
            read.append(s)
            yield {"x": np.random.default_rng(s).standard_normal((1, 16, 6, 6)).astype(np.float32)}

    good = {"x": np.ones((1, 16, 6, 6), np.float32)}
    data = {"calibration": calib(), "holdout": 2} if "rank" not in options else {}
    with pytest.raises(ttgraph.TTGraphError, match=needle):
        ttgraph.compress(model, verify_feeds=[good, bad], **data, **options)  # type: ignore[list-item]
    assert read == []


def test_the_callers_matplotlib_backend_and_graphsurgeon_logging_are_left_alone(tmp_path):
    import matplotlib
    from onnx_graphsurgeon.logger import G_LOGGER

    matplotlib.use("svg")
    G_LOGGER.severity = G_LOGGER.VERBOSE
    try:
        model = conv_model(16, 16, hw=(6, 6))
        calib = [{"x": np.random.default_rng(s).standard_normal((1, 16, 6, 6)).astype(np.float32)} for s in range(8)]
        result = ttgraph.compress(model, calibration=calib, macs_ratio=0.5)
        result.save(tmp_path / "m.onnx", html_path=tmp_path / "m.html")
        assert "data:image/png;base64," in (tmp_path / "m.html").read_text()
        assert matplotlib.get_backend().lower() == "svg"
        assert G_LOGGER.severity == G_LOGGER.VERBOSE
    finally:
        G_LOGGER.severity = G_LOGGER.INFO


def test_locating_an_example_model_leaves_the_callers_process_alone():
    """example_model finds the file without importing the wheel's package: importing rapidocr_onnxruntime loads
    OpenCV, adds a DEBUG logger with its own handler and rewrites environment variables."""
    import subprocess
    import sys

    code = (
        "import os, sys; env = dict(os.environ); from ttgraph.examples import example_model; "
        "paths = [example_model(n) for n in ('det', 'cls', 'layout')]; "
        "assert all(p.is_file() for p in paths), paths; "
        "assert env == dict(os.environ), set(os.environ.items()) ^ set(env.items()); "
        "assert not {'cv2', 'rapidocr_onnxruntime', 'rapid_layout'} & set(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_dir_lists_the_lazily_imported_api():
    assert {"compress", "inspect", "compile", "CompressionResult"} <= set(dir(ttgraph))


def test_inspect_counts_a_model_without_multiplies_as_zero_macs_not_unknown():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    report = ttgraph.inspect(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert report.model_macs == 0 and report.unknown_macs_nodes == 0


def test_naming_a_conv_that_stays_as_it_is_says_why():
    model = conv_model(8, 8, group=8, hw=(6, 6))  # depthwise
    (skipped,) = ttgraph.inspect(model).skipped
    with pytest.raises(ttgraph.TTGraphError) as err:
        ttgraph.compress(model, rank=2, layers=[skipped.label, "nope"])
    assert f"not a rewritable 1×1 conv: {skipped.label} ({skipped.reason}); nope (no conv of that name)" in str(
        err.value
    )


def test_library_errors_name_the_keyword_and_the_command_line_its_flag(tmp_path):
    """A library caller read "--lower: unknown lowering pass" about lower=[...], "--preprocess" about preprocess=."""
    import onnx

    model = conv_model(16, 16, hw=(6, 6))
    with pytest.raises(ttgraph.TTGraphError, match="^lower: unknown lowering pass 'bogus'"):
        ttgraph.compress(model, rank=4, lower=["bogus"])
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(ttgraph.TTGraphError, match="^preprocess: unknown preset 'nope'"):
        ttgraph.compress(model, calibration=tmp_path / "imgs", preprocess="nope", params_ratio=0.5)
    onnx.save(model, tmp_path / "m.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "ttgraph", "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--rank", "4"]
        + ["--lower", "bogus"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith("ttgraph: error: --lower: unknown pass 'bogus'")
    # the command line's flags replace keywords in the text, not inside a quoted name: an input named 'preprocess'
    named = ttgraph.TTGraphError("m.onnx", "the model's input 'preprocess' has rank 4, input_shapes gives 3 dims")
    assert named.one_line(flags=True) == "m.onnx: the model's input 'preprocess' has rank 4, --input-shape gives 3 dims"
    typed = ttgraph.TTGraphError("--holdout", "--holdout and --preprocess go with calibration data")
    assert typed.one_line(flags=True) == "--holdout: --holdout and --preprocess go with calibration data"  # not ----


def test_a_budgets_options_beside_a_rank_rule_are_refused_not_dropped(tmp_path):
    """`--rank 4 --rank-multiple 16` gave ranks 4 and exit 0, with no trace of the multiple in the report."""
    import onnx

    model = conv_model(16, 16, hw=(6, 6))
    for options in ({"rank_multiple": 16}, {"method": "weight"}):
        with pytest.raises(ttgraph.TTGraphError, match="rank_multiple and method shape a budget's candidates"):
            ttgraph.compress(model, rank=4, **options)
    onnx.save(model, tmp_path / "m.onnx")
    for extra, flag in ((["--rank-multiple", "16"], "--rank-multiple"), (["--holdout", "2"], "--holdout")):
        done = subprocess.run(
            [sys.executable, "-m", "ttgraph", "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--rank", "4"]
            + extra,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and done.stderr.startswith(f"ttgraph: error: {flag}: {flag} goes with a budget")
    assert not (tmp_path / "o.onnx").exists()


def test_progress_off_leaves_no_thread_behind():
    """tqdm starts a monitor thread with any bar, a disabled one too, that lives as long as the process: a
    pipeline that calls compress(progress=False) and then forks would fork a multi-threaded process."""
    code = (
        "import sys, threading, numpy as np, ttgraph\n"
        "from tests.conftest import conv_model\n"
        "x = np.random.default_rng(0).standard_normal((12, 1, 16, 9, 10)).astype(np.float32)\n"
        "for progress in (False, True):\n"
        "    ttgraph.compress(conv_model(16, 16), calibration=[{'x': a} for a in x], macs_ratio=0.5, holdout=4,\n"
        "                     progress=progress)\n"
        "    print(sorted(t.name for t in threading.enumerate()))\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert done.stdout.splitlines()[0] == "['MainThread']"
    off, on, _ = done.stderr.split("--\n")
    assert not off and "calibrate" in on  # the bars are still there when asked for


def test_a_model_with_no_conv_to_rewrite_says_why_beside_what_it_did(tmp_path):
    """A quantized model, or one whose convs sit inside an If, was written lowered but otherwise unchanged with
    exit 0 and "0 of 0 layers compressed": the skip reasons were only in inspect's table."""
    model = conv_model(16, 16, kernel=3, pads=1)
    result = ttgraph.compress(model, rank_ratio=1.0)  # the library: a result (the lowering passes still ran)
    assert result.report.layers == [] and result.report.skipped[0].reason.startswith("kernel 3×3 is not 1×1")
    onnx.save(model, tmp_path / "k3.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "ttgraph", "compress", tmp_path / "k3.onnx", "-o", tmp_path / "o.onnx", "--rank", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and (tmp_path / "o.onnx").exists()
    first = done.stdout.splitlines()[0]
    assert first == "no 1×1 conv to rewrite: 1 skipped (kernel 3×3 is not 1×1; inspect lists each); only the " + (
        "lowering passes ran"
    )


def test_a_feed_that_overrides_an_inputs_default_says_the_model_holds_it_fixed():
    """onnxruntime accepts a feed for an input with an initializer (a weight exported as an input); ttgraph holds it
    fixed and rewrites it, so it refuses the feed — saying why, not as if 'w' were no input of the model."""
    model = conv_model(16, 16, hw=(6, 6))
    weight = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(weight.shape)))
    feeds = [{"x": np.ones((1, 16, 6, 6), np.float32), "w": weight} for _ in range(4)]
    needle = "a feed needs the model inputs ['x'] ('w': a default the model holds fixed, leave it out), got 'x', 'w'"
    for call in (
        lambda: ttgraph.compress(model, calibration=feeds, macs_ratio=0.5),
        lambda: ttgraph.compress(model, rank_ratio=0.5, verify_feeds=feeds[:1]),
        lambda: ttgraph.compress(model, rank_ratio=0.5).verify(feeds[:1]),
    ):
        with pytest.raises(ttgraph.TTGraphError, match=re.escape(needle)):
            call()


def test_compare_outputs_refuses_outputs_of_other_shapes():
    """1×1×6×6 against 1×16×6×6 broadcast into a relative error (1.24 or 8.5 by argument order); 8 against 16
    channels was numpy's own ValueError."""
    feed = [{"x": np.ones((1, 16, 6, 6), np.float32)}]
    wide, narrow, thin = conv_model(16, 16, hw=(6, 6)), conv_model(16, 8, hw=(6, 6)), conv_model(16, 1, hw=(6, 6))
    pairs = [
        (wide, thin, "1×16×6×6 in the original, 1×1×6×6"),
        (thin, wide, "1×1×6×6 in the original, 1×16×6×6"),
        (wide, narrow, "1×16×6×6 in the original, 1×8×6×6"),
    ]
    for a, b, shapes in pairs:
        with pytest.raises(ttgraph.TTGraphError, match=f"verification input 0: output 'y' has shape {shapes} in"):
            ttgraph.compare_outputs(a, b, feed)


def test_a_results_repr_is_one_short_line():
    """A notebook or a pipeline's log printed the whole model's text form and every layer's curve (125 kB for
    the direction classifier)."""
    from tests.test_compensate import feeds, stacked_convs

    result = ttgraph.compress(stacked_convs(), calibration=feeds(12, seed=1), params_ratio=0.75)
    text = repr(result)
    assert "\n" not in text and len(text) < 300, text
    assert text.startswith("CompressionResult(model=<ModelProto: ") and "CompressionReport(model='<model>', " in text
    assert f"{result.report.totals['layers_rewritten']} of 2 layers rewritten" in text
    assert repr(ttgraph.inspect(stacked_convs())) == "InspectReport(model='<model>', 2 candidates, 0 skipped)"


def test_ttgraph_threads_caps_the_onnxruntime_sessions_it_opens(monkeypatch):
    """A pipeline converting several models side by side had no way to keep each conversion's onnxruntime
    sessions off every core."""
    from ttgraph.verify import session

    model = conv_model(16, 16, hw=(6, 6))
    monkeypatch.setenv("TTGRAPH_THREADS", "1")
    assert session(model).get_session_options().intra_op_num_threads == 1
    assert session(model, threads=2).get_session_options().intra_op_num_threads == 2  # an explicit count wins
    data = np.random.default_rng(0).standard_normal((6, 16, 6, 6)).astype(np.float32)
    assert ttgraph.compress(model, calibration=data, holdout=2, macs_ratio=0.5).report.layers
    monkeypatch.setenv("TTGRAPH_THREADS", "all")
    with pytest.raises(ttgraph.TTGraphError, match="TTGRAPH_THREADS: expected a thread count ≥ 1, got 'all'"):
        session(model)


def test_a_big_endian_feed_says_to_convert_its_byte_order():
    """A '>f4' array read "input 'x' is >f4, the model expects float32": the same type to a reader."""
    feeds = [{"x": np.ones((1, 16, 6, 6), ">f4")}] * 4
    with pytest.raises(ttgraph.TTGraphError, match=re.escape("is float32 in the other byte order (>f4): convert it")):
        ttgraph.compress(conv_model(16, 16, hw=(6, 6)), calibration=feeds, macs_ratio=0.5)
