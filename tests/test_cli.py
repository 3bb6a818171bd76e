"""The command line as a user meets it: the main jobs, and one clear line plus exit 2 for every bad input."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import conv_model, sha256
from ttgraph.errors import TTGraphError
from ttgraph.verify import session


def ttgraph_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttgraph", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ttgraph: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    path = tmp_path / "small.onnx"
    onnx.save_model(conv_model(24, 36, hw=(8, 8)), path)
    return path


def test_inspect_json_lists_layers_and_skipped(det_path):
    proc = ttgraph_cli("inspect", det_path, "--input-shape", "x=1,3,640,640", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["layers"]) == 42 and len(data["skipped"]) == 22
    first = data["layers"][0]
    assert {"name", "cin", "cout", "stride", "macs", "macs_share", "params"} <= set(first)
    assert data["pointwise_macs"] == sum(layer["macs"] for layer in data["layers"])


def test_inspect_table_names_the_skip_reasons(det_path):
    proc = ttgraph_cli("inspect", det_path, "--input-shape", "x=1,3,640,640")
    assert proc.returncode == 0, proc.stderr
    assert "42 rewritable 1×1 convs, 22 convs skipped" in proc.stdout
    assert "kernel 3×3 depthwise is not 1×1" in proc.stdout


def test_compress_writes_model_and_report_and_leaves_the_input_alone(small_model, tmp_path):
    before = sha256(small_model)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    proc = ttgraph_cli("compress", small_model, "-o", out, "--cores", "2", "--rank", "4", "--report", report)
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(report.read_text())
    layer = data["layers"][0]
    assert (layer["name"], layer["format"], layer["cores"], layer["ranks"]) == ("conv", "tt", 2, [1, 4, 1])
    assert {
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "weight_error",
        "modes_in",
        "modes_out",
    } <= set(layer)
    assert data["verification"]["outputs"][0]["name"] == "y"
    assert sha256(small_model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "report.json", "small.onnx"]
    # the HTML report too (the command line refused it for a rank rule, which the library wrote)
    page = tmp_path / "r.html"
    proc = ttgraph_cli("compress", small_model, "-o", out, "--rank", "4", "--html", page, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "<table" in page.read_text() and ">conv<" in page.read_text()


def test_full_rank_compress_from_the_cli_is_exact(small_model, tmp_path):
    """``--cores 3 --rank-ratio 1.0`` writes three TT cores at full rank: the model computes what the original
    does (checked here in onnxruntime, not by the command's own verification)."""
    out, report = tmp_path / "full.onnx", tmp_path / "full.json"
    proc = ttgraph_cli(
        "compress", small_model, "-o", out, "--cores", "3", "--rank-ratio", "1.0", "--quiet", "--report", report
    )
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()
    assert summary[0].startswith("1 layer rewritten;") and summary[-1] == f"wrote {out} and {report}"
    assert not any(line.startswith("layer ") for line in summary)  # --quiet: the summary without the table
    (layer,) = json.loads(report.read_text())["layers"]
    assert len(layer["modes_in"]) == 3 and layer["format"] == "tt"
    x = {"x": np.random.default_rng(5).standard_normal((1, 24, 8, 8)).astype(np.float32)}
    want = session(onnx.load(small_model)).run(None, x)[0]
    got = session(onnx.load(out)).run(None, x)[0]
    assert not any(n.op_type == "Conv" for n in onnx.load(out).graph.node)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_quiet_keeps_the_summary_and_leaves_per_layer_detail_to_the_report(small_model, tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    args = ["compress", small_model, "-o", out, "--cores", "8", "--rank-ratio", "1.0", "--report", report]
    loud, quiet = ttgraph_cli(*args), ttgraph_cli(*args, "--quiet")
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    (layer,) = json.loads(report.read_text())["layers"]
    assert layer["note"] and f"  {layer['name']}: {layer['note']}" in loud.stdout.splitlines()  # 24 ch: d = 4
    assert "notes:" not in quiet.stdout and "1 layer note in the report (and without --quiet)" in quiet.stdout
    assert len(quiet.stdout.splitlines()) < len(loud.stdout.splitlines())


def test_a_console_that_cannot_show_the_summary_characters_gets_escapes_not_a_traceback(small_model, tmp_path):
    """A Windows console (cp1252) has no "→" or "×": the summary raised UnicodeEncodeError after the model was
    written, exit 1."""
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    for args in (["inspect", small_model], ["compress", small_model, "-o", tmp_path / "o.onnx", "--rank-ratio", "1"]):
        proc = subprocess.run([sys.executable, "-m", "ttgraph", *map(str, args)], capture_output=True, env=env)
        stdout, stderr = proc.stdout.decode("cp1252"), proc.stderr.decode("cp1252")
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
        assert args[0] == "inspect" or "\\u2192" in stdout  # compress's "→", escaped; cp1252 has "×"


def test_inspect_at_a_shape_the_model_cannot_take_does_not_ask_for_the_shape_given(tmp_path):
    """A 9-pixel side pooled by 2 and resized back is 8 against 9: shape inference gives up there, and inspect said
    "fix dynamic dims with --input-shape" to a user who had just given them."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), n) for n in ("w1", "w2")]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["u"]),
        helper.make_node("Add", ["a", "u"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    fine = ttgraph_cli("inspect", tmp_path / "m.onnx", "--input-shape", "x=1,4,8,8")
    assert fine.returncode == 0 and "100.0% of the model's 2.05k" in fine.stdout
    odd = ttgraph_cli("inspect", tmp_path / "m.onnx", "--input-shape", "x=1,4,9,8")
    assert odd.returncode == 0 and "could not follow 1 compute node at x=1×4×9×8" in odd.stdout
    assert "--input-shape" not in odd.stdout
    dynamic = ttgraph_cli("inspect", tmp_path / "m.onnx")
    # the model's own input and its dynamic dims, not an image's NAME=1,3,H,W (silero-vad's audio read that)
    assert "fix them with --input-shape x=1,4,?,? (a size for each ?)" in dynamic.stdout
    onnx.save(conv_model(16, 16, batch="n"), tmp_path / "batch.onnx")
    batch = ttgraph_cli("inspect", tmp_path / "batch.onnx")
    assert batch.stdout.splitlines()[-1] == "MACs are per sample: a dynamic batch dim counts as 1"


def _bad_files(tmp_path: Path, det_path: Path) -> dict[str, tuple[Path, str]]:
    png = tmp_path / "photo.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    js = tmp_path / "config.onnx"
    js.write_text('{"model": "not really"}')
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(det_path.read_bytes()[: 1 << 20])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    invalid = tmp_path / "invalid.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    invalid.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    nodeless = tmp_path / "nodeless.onnx"
    graph = helper.make_graph([], "g", [], [])
    nodeless.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return {
        "png": (png, "cannot parse as an ONNX model"),
        "json": (js, "cannot parse as an ONNX model"),
        "truncated": (truncated, "cannot parse as an ONNX model (truncated"),
        "empty": (empty, "empty file"),
        "checker": (invalid, "fails onnx.checker"),
        "nodeless": (nodeless, "the graph has no nodes"),
    }


@pytest.mark.parametrize("case", ["png", "json", "truncated", "empty", "checker", "nodeless"])
@pytest.mark.parametrize("command", ["inspect", "compress"])
def test_bad_model_files_give_one_line_and_exit_2(tmp_path, det_path, case, command):
    path, message = _bad_files(tmp_path, det_path)[case]
    before = sha256(path)
    out = tmp_path / "out.onnx"
    extra = ["-o", out, "--rank", "2"] if command == "compress" else []
    assert_clean_error(ttgraph_cli(command, path, *extra), str(path), message)
    assert sha256(path) == before
    assert not out.exists()


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    assert_clean_error(ttgraph_cli("inspect", missing), str(missing), "no such file")


def test_unknown_input_name_in_input_shape(small_model, tmp_path):
    out = tmp_path / "out.onnx"
    proc = ttgraph_cli("compress", small_model, "-o", out, "--rank", "2", "--input-shape", "image=1,3,8,8")
    assert_clean_error(proc, str(small_model), "unknown input 'image'", "inputs: x")
    assert not out.exists()


@pytest.mark.parametrize("spec", ["x", "x=1,a,3", "x=1,0,8,8", "=1,2"])
def test_malformed_input_shape(small_model, spec):
    assert_clean_error(ttgraph_cli("inspect", small_model, "--input-shape", spec), "--input-shape", spec)


def test_an_input_shape_given_twice_differently_is_refused(small_model):
    proc = ttgraph_cli("inspect", small_model, "--input-shape", "x=1,3,8,8", "--input-shape", "x=1,3,16,16")
    assert_clean_error(proc, "--input-shape", "'x' is given twice, as [1, 3, 8, 8] and [1, 3, 16, 16]")


def test_output_path_equal_to_input_is_refused(small_model):
    before = sha256(small_model)
    assert_clean_error(
        ttgraph_cli("compress", small_model, "-o", small_model, "--rank", "2"), "output path is the input"
    )
    assert sha256(small_model) == before


@pytest.mark.parametrize("where", ["missing_dir", "parent_is_a_file", "proc"])
def test_unwritable_output_location_is_refused_before_any_work(small_model, tmp_path, where):
    out = {
        "missing_dir": tmp_path / "no" / "such" / "dir" / "out.onnx",
        "parent_is_a_file": small_model / "out.onnx",
        "proc": Path("/proc/ttgraph-out.onnx"),
    }[where]
    before = sha256(small_model)
    assert_clean_error(ttgraph_cli("compress", small_model, "-o", out, "--rank", "2"), str(out))
    assert sha256(small_model) == before
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_an_output_that_is_a_fifo_is_refused_and_left_a_fifo(small_model, tmp_path, flag):
    """The atomic rename would replace a special file with a regular one (run as root with ``-o /dev/null``,
    that is the machine's /dev/null); a FIFO stands in for it here."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    args = ["-o", fifo] if flag == "-o" else ["-o", tmp_path / "out.onnx", flag, fifo]
    assert_clean_error(ttgraph_cli("compress", small_model, *args, "--rank", "2"), "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "small.onnx"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    missing = tmp_path / "nope.onnx"
    args = ("--debug", "inspect", missing) if where == "before" else ("inspect", missing, "--debug")
    proc = ttgraph_cli(*args)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "no such file" in proc.stderr


def test_no_traceback_without_debug(tmp_path):
    proc = ttgraph_cli("inspect", tmp_path / "nope.onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_bad_rank_options_are_one_line_errors(small_model, tmp_path):
    out = tmp_path / "o.onnx"
    assert_clean_error(ttgraph_cli("compress", small_model, "-o", out, "--rank-ratio", "1.5"), "--rank-ratio: expected")
    assert_clean_error(ttgraph_cli("compress", small_model, "-o", out, "--rank", "2", "--cores", "9"), "--cores: expec")
    assert_clean_error(ttgraph_cli("compress", small_model, "-o", out), "--rank")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_unwinds_like_ctrl_c_and_leaves_no_staged_output(tmp_path, monkeypatch, capsys, signum):
    """kill, timeout or a CI cancel mid-save: the staged files are removed and one line says why."""
    import ttgraph.cli
    from ttgraph.files import staged_writes

    def saving_when_killed(args):
        with staged_writes([(tmp_path / "out.onnx", b"partial")]):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises before this ends
        return 0

    monkeypatch.setattr(ttgraph.cli, "build_parser", lambda: _OneCommand(saving_when_killed))
    before = signal.getsignal(signum)
    try:
        assert ttgraph.cli.main([]) == 128 + signum
    finally:
        signal.signal(signum, before)
    assert capsys.readouterr().err == f"ttgraph: terminated ({signal.Signals(signum).name})\n"
    assert list(tmp_path.iterdir()) == []


def _signalled_inside_a_library(signum: int):
    """A command that gets ``signum`` inside a C++ library's callback, which turns what the handler raises into
    its own error (as TVM's FFI does during tuning)."""

    def command(args):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises before this ends
        except BaseException as err:
            raise TTGraphError("model.onnx", f"TVM could not build it for x86_64: {type(err).__name__}") from err
        return 0

    return command


def test_termination_inside_a_library_that_turns_it_into_its_own_error_still_reads_as_termination(monkeypatch, capsys):
    """TVM's FFI catches what a Python callback raises and raises its own error: a SIGTERM during tuning read as
    "TVM could not build it for x86_64: 15". A later run in the same process is not taken for terminated."""
    import ttgraph.cli

    def failing(args):
        raise TTGraphError("model.onnx", "a plain error")

    before = signal.getsignal(signal.SIGTERM)
    try:
        monkeypatch.setattr(
            ttgraph.cli, "build_parser", lambda: _OneCommand(_signalled_inside_a_library(signal.SIGTERM))
        )
        assert ttgraph.cli.main([]) == 128 + signal.SIGTERM
        assert capsys.readouterr().err == "ttgraph: terminated (SIGTERM)\n"
        monkeypatch.setattr(ttgraph.cli, "build_parser", lambda: _OneCommand(failing))
        assert ttgraph.cli.main([]) == 2
        assert capsys.readouterr().err == "ttgraph: error: model.onnx: a plain error\n"
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_signal_between_the_renames_of_one_save_leaves_every_file_new(small_model, tmp_path, monkeypatch):
    """Model, report and HTML are renamed into place with signals held: Ctrl-C after the model's rename used to
    leave the new model beside the previous run's report."""
    import ttgraph
    import ttgraph.files

    out, report = tmp_path / "out.onnx", tmp_path / "out.json"
    out.write_bytes(b"old model")
    report.write_text("old report")
    result = ttgraph.compress(small_model, rank=2)
    real_replace = os.replace

    def replace_then_terminate(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGTERM)  # held until every rename is done, then handled

    class Terminated(Exception):
        pass

    def handler(signum, frame):
        raise Terminated

    monkeypatch.setattr(ttgraph.files.os, "replace", replace_then_terminate)
    before = signal.signal(signal.SIGTERM, handler)  # as the CLI does; a background job may inherit SIGINT ignored
    try:
        with pytest.raises(Terminated):
            result.save(out, report_path=report)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert onnx.load(out).graph.node and json.loads(report.read_text())["layers"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left behind


class _OneCommand:
    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        return argparse.Namespace(func=self.func, debug=False)


@pytest.mark.parametrize("shadow", ["passes.py", "targets/__init__.py", "targets/"])
def test_a_module_named_like_our_companion_packages_in_the_working_directory_is_named_not_a_traceback(tmp_path, shadow):
    """ttgraph installs top-level ``passes`` and ``targets`` packages; a user's ``targets.py`` (or package, or
    bare directory) where ``python -m ttgraph`` runs is imported in their place."""
    path = tmp_path / shadow
    if shadow.endswith("/"):
        path.mkdir()
    else:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x = 1\n")
    name = shadow.split("/")[0].removesuffix(".py")
    proc = subprocess.run(
        [sys.executable, "-m", "ttgraph", "inspect", "m.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_clean_error(proc, str(path).rstrip("/"), f"in place of ttgraph's own '{name}' package", "rename it")
    library = subprocess.run(
        [sys.executable, "-c", f"import ttgraph; ttgraph.{'compile' if name == 'targets' else 'compress'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert library.returncode == 1 and "TTGraphError" in library.stderr and "rename it" in library.stderr


def test_main_gives_the_callers_signal_handlers_back(monkeypatch):
    """A pipeline calling ttgraph.cli.main in-process had SIGTERM and SIGHUP left raising ttgraph's private
    exception inside its own work afterwards."""
    import ttgraph.cli

    def mine(signum, frame):  # the pipeline's own handlers
        pass

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        monkeypatch.setattr(ttgraph.cli, "build_parser", lambda: _OneCommand(lambda args: 0))
        assert ttgraph.cli.main([]) == 0
        monkeypatch.setattr(ttgraph.cli, "build_parser", lambda: _OneCommand(lambda args: os.kill(os.getpid(), 15)))
        assert ttgraph.cli.main([]) == 128 + signal.SIGTERM
        assert all(signal.getsignal(s) is mine for s in before)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_file_names_at_and_over_the_file_systems_limit(small_model, tmp_path):
    """A legal 250-byte output name was "not writable" (the temporary beside it went over 255 bytes); a name
    over the limit, as output, report, model or calibration file, was an OSError traceback."""
    legal = tmp_path / ("m" * 245 + ".onnx")
    done = ttgraph_cli(
        "compress", small_model, "-o", legal, "--rank", "2", "--report", tmp_path / ("r" * 240 + ".json")
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([legal.name, "r" * 240 + ".json", "small.onnx"])
    long = "h" * 251 + ".onnx"
    assert_clean_error(
        ttgraph_cli("compress", small_model, "-o", tmp_path / long, "--rank", "2"),
        "the file name is 256 bytes; this file system allows 255",
    )
    assert_clean_error(ttgraph_cli("inspect", tmp_path / long), f"{long}: File name too long")
    assert_clean_error(
        ttgraph_cli(
            "compress",
            small_model,
            "-o",
            tmp_path / "o.onnx",
            "--calib",
            tmp_path / (long + ".npy"),
            "--macs-ratio",
            "0.5",
        ),
        "File name too long",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([legal.name, "r" * 240 + ".json", "small.onnx"])


def test_ctrl_c_inside_a_library_that_turns_it_into_its_own_error_still_reads_as_interrupted(monkeypatch, capsys):
    """Ctrl-C during TVM's tuning came back as "TVM could not build it for x86_64 …: RuntimeError", exit 2."""
    import ttgraph.cli

    before = signal.getsignal(signal.SIGINT)
    assert before is signal.default_int_handler
    monkeypatch.setattr(ttgraph.cli, "build_parser", lambda: _OneCommand(_signalled_inside_a_library(signal.SIGINT)))
    assert ttgraph.cli.main([]) == 130
    assert capsys.readouterr().err == "ttgraph: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before
