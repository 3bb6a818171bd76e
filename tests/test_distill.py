"""Distillation on the real rapidocr direction classifier: the compressed layers' factors are fitted to the original
model's outputs on calibration lines, judged on held-out lines, and only those factors change."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch  # noqa: E402, F401  (the test extra pins it: a broken install fails here, it does not skip)
from onnx import numpy_helper

import ttgraph  # noqa: E402
import ttgraph.api  # noqa: E402
import ttgraph.torch_graph  # noqa: E402
from tests.calib_material import material_preset, text_line_image  # noqa: E402
from tests.conftest import conv_model  # noqa: E402
from ttgraph.distill import distill, distill_targets, factor_initializers  # noqa: E402
from ttgraph.errors import TTGraphError  # noqa: E402
from ttgraph.model_io import load_model  # noqa: E402
from ttgraph.verify import session  # noqa: E402

SHAPE = [1, 3, 48, 192]


def _lines(first: int, count: int) -> list[dict[str, np.ndarray]]:
    pre = material_preset("paddleocr-cls").with_size((48, 192))
    return [{"x": pre.apply(text_line_image(first + i, i % 2 == 1))} for i in range(count)]


@pytest.fixture(scope="module")
def small(cls_path):
    """The classifier at 0.3 of its 1×1 params, compensated on 256 lines, before lowering."""
    original = load_model(cls_path, {"x": SHAPE})
    result = ttgraph.compress(original, calibration=_lines(0, 256), holdout=0, params_ratio=0.3, lower=False)
    layers = [layer.name for layer in result.report.layers if layer.format != "dense"]
    return original, result.model, layers


def _agreement(original: onnx.ModelProto, model: onnx.ModelProto, feeds) -> float:
    a, b = session(original), session(model)
    return float(np.mean([a.run(None, f)[0].argmax() == b.run(None, f)[0].argmax() for f in feeds]))


def test_distillation_raises_held_out_top1_agreement(small):
    """Fitted on 1024 calibration lines, kept or not on 64 other lines, judged on 400 lines of neither set.
    Measured: 0.9275 → 0.97 with 4096 lines and 4–6 epochs (benchmarks/budget_sweep.py cls --distill)."""
    original, compressed, layers = small
    held = _lines(1_000_000, 400)
    result = distill(original, compressed, layers, _lines(0, 1024), _lines(2_000_000, 64), epochs=3, batch=16, lr=2e-3)
    before, after = _agreement(original, compressed, held), _agreement(original, result.model, held)
    print(f"\nclassifier held-out agreement at 0.3 of the params: {before:.4f} → {after:.4f} distilled")
    assert result.kept and after >= before + 0.02


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_distillation_lowers_held_out_loss_and_changes_only_the_factors(small):
    # 64 lines overfit at the default step size (held-out loss 0.153 → 0.16 at 1e-4, kept=False); 1e-5 is cautious
    original, compressed, layers = small
    frozen = compressed.SerializeToString()
    result = distill(original, compressed, layers, _lines(0, 64), _lines(500_000, 32), epochs=2, batch=16, lr=1e-5)
    assert compressed.SerializeToString() == frozen  # the input model is not modified
    assert result.kept and result.stacked
    assert result.heldout_after < result.heldout_before
    assert result.train_after < result.train_before
    # the epoch returned is the one with the lowest held-out loss
    assert result.heldout_after == min(result.heldout_curve)
    assert result.best_epoch == 1 + result.heldout_curve.index(result.heldout_after)
    assert result.steps == 2 * 4 and result.samples == 64 and result.heldout_samples == 32
    factors = set(factor_initializers(compressed, layers))
    before, after = _initializers(compressed), _initializers(result.model)
    assert before.keys() == after.keys()
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed and changed <= factors  # every other weight is the original's
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in compressed.graph.node]
    assert result.parameters == sum(before[n].size for n in factors)


def test_train_all_frees_the_weights_the_exporter_put_in_constant_nodes(small):
    """The classifier (like the detector and recognizer) holds every weight of its kept-dense convs in Constant
    nodes, not initializers: ``train="all"`` trained the factors alone (as many parameters either way)."""
    original, compressed, layers = small
    frozen = compressed.SerializeToString()
    every = distill(original, compressed, layers, _lines(0, 16), _lines(500_000, 16), epochs=1, lr=1e-5, train="all")
    assert compressed.SerializeToString() == frozen
    consts = {i.name: i.dims for i in compressed.graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t.dims for n in compressed.graph.node if n.op_type == "Constant"})
    picked = {
        name
        for node in compressed.graph.node
        if node.op_type in ("Conv", "MatMul", "Gemm", "BatchNormalization")
        for name in node.input[1:3]
        if name in consts
    }
    assert every.parameters == sum(int(np.prod(consts[name])) for name in picked)
    factors = set(factor_initializers(compressed, layers))
    from_nodes = picked - factors - {i.name for i in compressed.graph.initializer}
    assert from_nodes and from_nodes <= set(_initializers(every.model))  # Constant nodes' weights: initializers now
    assert not {n.output[0] for n in every.model.graph.node if n.op_type == "Constant"} & from_nodes


def test_a_softmax_output_is_distilled_on_its_centred_logits(cls_path):
    model = onnx.load(cls_path)
    (target,) = distill_targets(model)
    producer = next(n for n in model.graph.node if target.tensor in n.output)
    assert target.output == model.graph.output[0].name and target.tensor != target.output
    assert producer.op_type != "Softmax" and target.centre == (1,)  # opset 11: axis 1 of a 2-D output


def test_a_single_step_run_from_a_reiterable_source(small):
    """One epoch of fewer samples than a batch is one step (the schedule has no decay phase; it divided by
    zero), from a re-iterable source that is not a list."""
    original, compressed, layers = small
    lines = _lines(0, 40)

    class Source:
        def __iter__(self):
            yield from (dict(f) for f in lines)

    result = distill(original, compressed, layers, Source(), None, epochs=1, batch=64, lr=1e-5)
    assert result.steps == 1 and result.samples == 40


def test_a_diverging_fit_backs_off_and_is_not_kept(small):
    """Each epoch that makes the held-out loss worse sends the factors back and divides the step size by ten;
    when no epoch beats the start, the input model is returned."""
    original, compressed, layers = small
    result = distill(original, compressed, layers, _lines(0, 32), _lines(500_000, 16), epochs=2, lr=1e3)
    assert not result.kept and result.best_epoch == 0
    assert result.model is compressed
    assert result.step_size_reductions == 2 and len(result.heldout_curve) == 2
    assert result.heldout_after == result.heldout_before
    # the reports give each epoch's held-out loss: "held-out loss 5.5e-05 → 5.5e-05, not kept" hid a 1.21
    from ttgraph.commands.compress import render
    from ttgraph.report_html import render_html

    report = ttgraph.compress(conv_model(8, 8), rank_ratio=1.0).report
    report.distillation = {**result.to_dict(), "applied": True}
    epochs = ", ".join(f"{v:.4g}" for v in result.heldout_curve)
    assert f"not kept (no better on held-out samples: after each epoch {epochs})" in render(report)
    assert "not kept: no epoch lowered the held-out loss (after each: " in render_html(report)
    assert "2 epochs, " in render_html(report)


def test_compress_distills_and_reports_on_held_out_lines(cls_path, tmp_path):
    """The CLI end to end: the report's distillation section, the summary line, the HTML section."""
    lines = tmp_path / "lines.npy"
    np.save(lines, np.concatenate([f["x"] for f in _lines(0, 80)]))
    out, report, page = tmp_path / "cls.tt.onnx", tmp_path / "r.json", tmp_path / "r.html"
    cmd = [sys.executable, "-m", "ttgraph", "compress", str(cls_path), "-o", str(out), "--calib", str(lines)]
    cmd += ["--holdout", "16", "--params-ratio", "0.3", "--distill", "2", "--report", str(report), "--html", str(page)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    dist = data["distillation"]
    assert dist["epochs"] == 2 and dist["samples"] == 64 and dist["heldout_samples"] == 16
    assert dist["kept"] == (dist["heldout_loss_after"] < dist["heldout_loss_before"])
    assert data["options"]["distill"] == 2
    ends = dist["end_to_end"]
    assert ends["after"] == data["verification"]["outputs"]
    comp = data["compensation"]  # distillation starts from the compensated model, or without it if not kept
    assert ends["before"] == comp["end_to_end"]["after" if comp["kept"] else "before"]
    assert "distilled" in done.stdout and "Distillation" in page.read_text()


_TEXT = {"capture_output": True, "text": True, "timeout": 300}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank-ratio", "0.5", "--distill", "2"], "--distill go with a budget"),
        (["--params-ratio", "0.3", "--calib", "{lines}", "--distill", "-1"], "epochs ≥ 0"),
        (["--params-ratio", "0.3", "--calib", "{lines}", "--distill", "1", "--distill-batch", "0"], "a batch ≥ 1"),
        (["--params-ratio", "0.3", "--calib", "{lines}", "--distill", "1", "--distill-lr", "0"], "learning rate > 0"),
    ],
)
def test_bad_distillation_options_are_one_line_errors(cls_path, tmp_path, extra, message):
    lines = tmp_path / "lines.npy"
    np.save(lines, np.concatenate([f["x"] for f in _lines(0, 4)]))
    cmd = [sys.executable, "-m", "ttgraph", "compress", str(cls_path), "-o", str(tmp_path / "o.onnx")]
    done = subprocess.run(cmd + [a.format(lines=lines) for a in extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_a_one_pass_source_is_refused_before_the_statistics(cls_path):
    feeds = (f for f in _lines(0, 8))
    with pytest.raises(TTGraphError, match="once per epoch"):
        ttgraph.compress(cls_path, calibration=feeds, params_ratio=0.3, distill=1, holdout=2)


def test_without_pytorch_the_error_says_how_to_install_it(cls_path, tmp_path):
    """In a process where ``import torch`` fails (as without the extra): the CLI's one line and exit 2. Patching
    the module after import hid a crash while it was first imported without PyTorch."""
    lines = tmp_path / "lines.npy"
    np.save(lines, np.concatenate([f["x"] for f in _lines(0, 4)]))
    blocked = "import sys; sys.modules['torch'] = None; from ttgraph.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", blocked, "compress", str(cls_path), "-o", str(tmp_path / "o.onnx")]
    done = subprocess.run([*cmd, "--calib", str(lines), "--params-ratio", "0.3", "--distill", "1"], **_TEXT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "needs PyTorch: pip install 'torch>=2.2'" in done.stderr


def test_a_model_it_cannot_run_is_refused_before_any_work(tmp_path):
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Erf", ["c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    calib = np.random.default_rng(1).standard_normal((4, 8, 4, 4)).astype(np.float32)
    with pytest.raises(TTGraphError, match=r"erf\.onnx: distillation cannot run operator\(s\) Erf"):
        ttgraph.compress(str(path), calibration=calib, params_ratio=0.5, distill=1, holdout=1)


def test_a_float16_model_is_refused_before_any_work():
    """Its factors trained in float32 beside float16 values: PyTorch's dtype error about ttgraph's own factor
    node, after calibration, fitting and compensation had run."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    def never():
        raise AssertionError("calibration was read")
        yield

    with pytest.raises(TTGraphError, match=r"distillation trains float32 models; 'w' is float16"):
        ttgraph.compress(model, calibration=never(), params_ratio=0.5, distill=1, holdout=1)


def _conv_then(op: str, opset: int, **attrs) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node(op, ["c"], ["y"], name="after", **attrs),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_model_pytorch_runs_differently_is_refused_before_any_work(monkeypatch):
    """A translation that differs from onnxruntime's would be fitted and kept: it is caught on the first sample."""
    model = _conv_then("AveragePool", 13, kernel_shape=[3, 3], pads=[1, 1, 0, 0])  # asymmetric pads
    calib = np.random.default_rng(1).standard_normal((4, 8, 6, 6)).astype(np.float32)
    monkeypatch.setattr(ttgraph.api, "collect_statistics", lambda *a, **k: pytest.fail("ran the statistics pass"))
    with pytest.raises(TTGraphError, match=r"differently from onnxruntime .* first at node 'after' \(AveragePool\)"):
        ttgraph.compress(model, calibration=calib, params_ratio=0.5, distill=1, holdout=1)


def test_a_softmax_before_opset_13_flattens_like_onnxruntime():
    x = np.random.default_rng(2).standard_normal((1, 8, 6, 6)).astype(np.float32)
    ttgraph.torch_graph.check_agrees(_conv_then("Softmax", 11, axis=1), {"x": x})  # raises if they differ
    pool = _conv_then("AveragePool", 13, kernel_shape=[3, 3], pads=[1, 1, 0, 0])
    with pytest.raises(TTGraphError, match="differently"):
        ttgraph.torch_graph.check_agrees(pool, {"x": x})


def test_distillation_leaves_the_callers_torch_random_state_and_threads_alone():
    calib = np.random.default_rng(1).standard_normal((8, 8, 6, 6)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    result = ttgraph.compress(_conv_then("Relu", 13), calibration=calib, params_ratio=0.5, distill=1, holdout=2)
    assert result.report.distillation is not None and result.report.distillation["applied"]
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
