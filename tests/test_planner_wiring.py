"""The rewrite emits the order the DP planner chose, and its MACs are the plan's cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from tests.conftest import DET_SHAPE, conv_model, feed_for
from ttgraph.api import provenance
from ttgraph.planner import left_to_right_plan, plan_layer
from ttgraph.verify import compare_outputs


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttgraph", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def det_tt(det_path):
    return ttgraph.compress(det_path, cores=3, rank=8, input_shapes={"x": DET_SHAPE})


def test_every_layer_costs_what_its_plan_costs(det_tt):
    tt_layers = [layer for layer in det_tt.report.layers if layer.format == "tt"]
    assert tt_layers
    for layer in tt_layers:
        plan = plan_layer(
            layer.modes_in,
            layer.modes_out,
            layer.ranks,
            pixels=layer.pixels,
            allow_offline_merges=False,
            transpose_free_only=True,
        )
        assert layer.macs_after == plan.total_cost, layer.name
        assert (
            layer.macs_left_to_right
            == left_to_right_plan(layer.modes_in, layer.modes_out, layer.ranks, pixels=layer.pixels).total_cost
        )
        assert layer.macs_after <= layer.macs_left_to_right


def test_planner_changes_the_order_where_it_pays(det_tt):
    reordered = [layer for layer in det_tt.report.layers if layer.order != sorted(layer.order)]
    assert reordered, "the detector at d=3 rank 8 has layers whose best order is not left to right"
    assert all(layer.macs_after < layer.macs_left_to_right for layer in reordered)


def test_a_reordered_layer_is_still_exact_at_full_rank():
    # whatever order the planner picks for this layer, the emitted graph must compute the same product
    model = conv_model(64, 128, hw=(6, 6))
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    layer = result.report.layers[0]
    assert compare_outputs(model, result.model, [feed_for(model, [1, 64, 6, 6])])[0].max_rel < 1e-5
    assert layer.macs_after <= layer.macs_left_to_right


def test_compressed_model_records_its_layers_and_plan_reads_them(det_tt, tmp_path):
    path = tmp_path / "det.tt.onnx"
    det_tt.save(path)
    meta = provenance(onnx.load(path))
    assert [m["name"] for m in meta["layers"]] == [layer.name for layer in det_tt.report.layers]
    proc = cli("plan", path, "--json")
    assert proc.returncode == 0, proc.stderr
    planned = {p["name"]: p for p in json.loads(proc.stdout)["layers"]}
    for layer in det_tt.report.layers:
        if layer.format == "tt":
            assert planned[layer.name]["total_cost"] == layer.macs_after
            assert planned[layer.name]["emitted_order"] == layer.order


def test_plan_cli_single_layer_json():
    proc = cli(
        "plan",
        "--cin",
        "384",
        "--cout",
        "384",
        "--modes-in",
        "8,48",
        "--modes-out",
        "48,8",
        "--ranks",
        "8",
        "--hw",
        "80x80",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["dense_cost"] == 384 * 384 * 6400
    assert data["order"] == [1, 0]
    assert data["left_to_right_cost"] >= 2 * data["total_cost"]
    assert data["graph"]["nodes"] == 4


def test_plan_cli_prints_a_measured_left_to_right_cost_in_seconds(tmp_path):
    """Measured costs are seconds: printed like the plan's table does, not rounded to a whole 0."""
    env_cli = subprocess.run(
        [sys.executable, "-m", "ttgraph", "plan", "--modes-in", "4,4", "--modes-out", "4,4", "--ranks", "2"]
        + ["--hw", "4x4", "--cost", "measured"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TTGRAPH_CACHE_DIR": str(tmp_path)},
    )
    assert env_cli.returncode == 0, env_cli.stderr
    line = env_cli.stdout.strip().splitlines()[-1]
    seconds = float(line.removeprefix("left-to-right order: ").split(" ")[0])
    assert 0 < seconds < 1, line


def test_plan_cli_rejects_inconsistent_modes():
    proc = cli("plan", "--cin", "100", "--cout", "384", "--modes-in", "8,48", "--modes-out", "48,8", "--ranks", "8")
    assert proc.returncode == 2 and proc.stderr.startswith("ttgraph: error: --modes-in")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--modes-in", "8,48", "--modes-out", "48,8", "--ranks", "8", "--hw", "0x80"], "--hw: expected a positive"),
        (["--modes-in", "8,48", "--modes-out", "48,8", "--ranks", "8", "--batch", "0"], "--batch: expected a positive"),
        (
            ["MODEL", "--ranks", "8"],
            "--ranks: describes one layer, and a MODEL's layers come from its metadata: "
            "give either a MODEL or --modes-in, --modes-out and --ranks, not both\n",
        ),
        (["MODEL", "--hw", "0x0"], "--hw: describes one layer"),  # was ignored without a word
        (["MODEL", "--batch", "4"], "--batch: describes one layer"),  # so was this
        (["--modes-in", "64", "--modes-out", "32", "--ranks", "8"], "--ranks: one mode each side is one core"),
        (["--cin", "0", "--modes-in", "8,48", "--modes-out", "48,8", "--ranks", "8"], "--cin: expected a positive"),
        (
            ["--modes-in", ",".join(["2"] * 24), "--modes-out", ",".join(["2"] * 24), "--ranks", "2"],
            "--modes-in: at most 8",
        ),
        # a rank past exactness was planned (64 at a bond of 4: 48× the dense MACs); compress caps it there
        (
            ["--modes-in", "2,4", "--modes-out", "2,4", "--ranks", "64"],
            "--ranks: bond 1 has rank 64, above the 4 at which the TT is exact",
        ),
        (["--modes-in", "8,48", "--modes-out", "48,8,1", "--ranks", "8"], "--modes-in: 2 modes, --modes-out 3: give"),
    ],
)
def test_plan_cli_names_the_option_at_fault(tmp_path, args, needle):
    path = tmp_path / "tt.onnx"
    onnx.save(ttgraph.compress(conv_model(32, 32), cores=2, rank=4).model, path)
    proc = cli("plan", *[path if a == "MODEL" else a for a in args])
    assert proc.returncode == 2 and proc.stderr.startswith(f"ttgraph: error: {needle}"), proc.stderr


def test_compressing_a_lowrank_model_again_leaves_its_factors_alone(tmp_path):
    model = conv_model(32, 32)
    once = ttgraph.compress(model, cores=1, rank=4)
    twice = ttgraph.compress(once.model, cores=1, rank=2)
    assert twice.report.layers == []
    assert [s.reason for s in twice.report.skipped] == ["already a TT factor written by ttgraph"] * 2
    assert len(twice.model.graph.node) == len(once.model.graph.node)
    seen = ttgraph.inspect(once.model)  # inspect lists what compress would do
    assert seen.layers == [] and [s.reason for s in seen.skipped] == [s.reason for s in twice.report.skipped]


def test_compressing_other_layers_later_keeps_the_first_runs_layers_in_the_metadata():
    """A second run on other layers lists both runs' layers: a third must not factor the first's factors."""
    model = chain_model()
    names = [c.name for c in ttgraph.inspect(model).layers]
    once = ttgraph.compress(model, cores=2, rank_ratio=1.0, layers=names[:1])
    twice = ttgraph.compress(once.model, cores=1, rank=2, layers=names[1:2])
    assert [layer["name"] for layer in provenance(twice.model)["layers"]] == names[:2]
    seen = ttgraph.inspect(twice.model)
    assert [c.name for c in seen.layers] == names[2:]
    assert {s.reason for s in seen.skipped} == {"already a TT factor written by ttgraph"}


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda text: text[:40], "metadata 'ttgraph' is not valid JSON"),
        (lambda text: json.dumps({"version": "x", "layers": None}), "metadata 'ttgraph' has no list of layers"),
        (lambda text: text.replace('"pixels":', '"pixel":'), "layer 0 lacks or mistypes pixels"),
        (lambda text: text.replace('"name":"conv"', '"name":"ghost"'), "names layer 'ghost', whose factors are not"),
    ],
)
def test_damaged_ttgraph_metadata_is_a_one_line_error_for_plan_and_compress(tmp_path, damage, needle):
    """Metadata edited by hand or cut short: plan and a second compress say so instead of a KeyError."""
    model = ttgraph.compress(conv_model(32, 32), cores=2, rank=4).model
    prop = next(p for p in model.metadata_props if p.key == "ttgraph")
    assert '"name":"conv"' in prop.value
    prop.value = damage(prop.value)
    path = tmp_path / "damaged.onnx"
    onnx.save(model, path)
    proc = cli("plan", path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"ttgraph: error: {path}: ") and needle in proc.stderr
    if "ghost" not in needle:  # compress reads the metadata to leave its own factors alone
        proc = cli("compress", path, "-o", tmp_path / "again.onnx", "--rank", "2")
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_the_summaries_say_the_input_was_compressed_by_ttgraph_before(tmp_path):
    """A second compress of a written model leaves its factors alone and budgets the rest: the summary says so,
    instead of ratios that read as if they were the whole model's."""
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    names = [c.name for c in ttgraph.inspect(chain_model()).layers]
    ttgraph.compress(chain_model(), cores=1, rank=4, layers=names[:1]).save(once)
    proc = cli("compress", once, "-o", twice, "--rank", "2")
    assert proc.returncode == 0, proc.stderr
    assert "compressed by ttgraph before: its 2 factor convs stay as they are" in proc.stdout
    assert "cover the 2 other 1×1 convs" in proc.stdout
    proc = cli("inspect", once)
    assert "2 rewritable 1×1 convs, 2 convs skipped (2 of them factors of an earlier ttgraph compress)" in proc.stdout
    onnx.save(chain_model(), tmp_path / "c.onnx")
    proc = cli("compress", tmp_path / "c.onnx", "-o", twice, "--rank", "2")
    assert proc.returncode == 0 and "compressed by ttgraph before" not in proc.stdout


def chain_model() -> onnx.ModelProto:
    """t0 → three 16→16 1×1 convs → t3."""
    rng = np.random.default_rng(0)
    convs = [helper.make_node("Conv", [f"t{i}", f"w{i}"], [f"t{i + 1}"], name=f"c{i}") for i in range(3)]
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), f"w{i}") for i in range(3)
    ]
    graph = helper.make_graph(
        convs,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("t3", TensorProto.FLOAT, [1, 16, 8, 8])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_plan_of_a_model_with_dynamic_sizes_says_its_costs_are_per_pixel(tmp_path):
    path = tmp_path / "tt.onnx"
    onnx.save(ttgraph.compress(conv_model(32, 32, hw=("h", "w")), cores=2, rank=4).model, path)
    proc = cli("plan", path)
    assert proc.returncode == 0, proc.stderr
    assert "costs of 1 layer are per output pixel: the model's spatial sizes are dynamic" in proc.stdout


def test_compress_on_the_command_line_plans_under_the_cost_model_asked_for(tmp_path):
    """The library's plan_cost had no flag: the command line always planned by flops."""
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(conv_model(32, 32), path)
    proc = cli("compress", path, "-o", tmp_path / "o.onnx", "--cores", "2", "--rank", "4", "--plan-cost", "roofline",
               "--report", report)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["options"]["plan_cost"] == "roofline"
