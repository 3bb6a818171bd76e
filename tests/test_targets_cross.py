"""Libraries for other machines: arm64 run under qemu-aarch64 (directly and over TVM RPC), armv7 and
Android exports checked by their ELF headers, CUDA checked to hold (and, with nvcc, compile) kernels.

The aarch64 Python + TVM runtime comes from ``.ci/install-tvm-cross.sh``; these tests are skipped only
when it is absent (``TTGRAPH_REQUIRE_CROSS=1``, as in CI, turns the skip into a failure).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tvm_helpers import REQUIRE_CROSS, compressed, det_input, line_input, need_tool, pointwise_model, record

from targets.compile import compile_model
from targets.qemu import (
    _group_running,
    a64_home,
    find_a64_python,
    free_port,
    qemu_rpc_server,
    run_under_qemu,
    serving_process,
)
from targets.rpc import bench, connect, run_remote
from targets.run import onnxruntime_outputs, relative_errors
from ttgraph.errors import TTGraphError
from ttgraph.examples import example_model

pytestmark = pytest.mark.tvm

ARM64_TOLERANCE = 1e-3
EM_ARM, EM_AARCH64 = 40, 183
EF_ARM_ABI_FLOAT_HARD = 0x400

# name → (model source, feed). The acceptance case (the TT-compressed detector) is added here.
ARM64_CASES: dict[str, Callable[[], tuple[object, dict[str, np.ndarray]]]] = {
    # the TT-compressed detector (low-rank Conv pairs) and classifier (d = 2 Reshape/MatMul chains)
    "det-tt1": lambda: (compressed("det", [1, 3, 320, 320], cores=1, rank_ratio=0.5), {"x": det_input(320)}),
    "cls-tt2": lambda: (
        compressed("cls", [1, 3, 48, 192], cores=2, rank_ratio=0.5),
        {"x": line_input("Hello ttgraph 42", 192, rotate=True)},
    ),
}


def need_a64() -> None:
    if find_a64_python() is None:
        if REQUIRE_CROSS:
            pytest.fail(f"no aarch64 environment at {a64_home()} (TTGRAPH_REQUIRE_CROSS=1)")
        pytest.skip(f"no aarch64 environment at {a64_home()}; run .ci/install-tvm-cross.sh")
    need_tool("aarch64-linux-gnu-g++")


@contextlib.contextmanager
def local_tracker(tmp_path: Path) -> Iterator[str]:
    """A TVM RPC tracker on this machine for the test's duration, yielding its "HOST:PORT"."""
    port = free_port()
    cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--port-end", str(port + 1)]
    with serving_process(cmd, "127.0.0.1", port, log_path=tmp_path / "tracker.log"):
        yield f"127.0.0.1:{port}"


def elf_header(data: bytes) -> tuple[int, int, int]:
    """(ELF class: 1=32-bit 2=64-bit, e_machine, e_flags) of a little-endian ELF file."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    elf_class = data[4]
    machine = struct.unpack_from("<H", data, 18)[0]
    flags = struct.unpack_from("<I", data, 36 if elf_class == 1 else 48)[0]
    return elf_class, machine, flags


@pytest.mark.parametrize("case", list(ARM64_CASES))
def test_arm64_library_matches_onnxruntime_under_qemu(case, tmp_path):
    need_a64()
    model, feed = ARM64_CASES[case]()
    start = time.perf_counter()
    result = compile_model(model, "arm64-linux", tmp_path / f"{case}.so", {k: list(v.shape) for k, v in feed.items()})
    build_s = time.perf_counter() - start
    assert elf_header(result.output.read_bytes())[:2] == (2, EM_AARCH64)
    got = run_under_qemu(result.output, feed, names=result.input_names)
    errors = relative_errors(onnxruntime_outputs(model, feed), got)
    record(case, "arm64-linux (qemu)", built=True, ran=True, error=max(errors), build_s=build_s)
    assert max(errors) <= ARM64_TOLERANCE, errors


def test_bench_over_rpc_on_an_aarch64_server_under_qemu(tmp_path):
    """Direct (--rpc) with a fresh build, then through a tracker (--tracker/--key) with the same library."""
    need_a64()
    model = example_model("cls")
    feed = {"x": line_input("Hello ttgraph 42", 192, rotate=True)}
    with qemu_rpc_server(log_path=tmp_path / "rpc_server.log") as (host, port):
        result = bench(
            model, "arm64-linux", rpc=f"{host}:{port}", inputs=feed, number=2, repeat=2, library=tmp_path / "cls.so"
        )
    record(
        "cls",
        "arm64-linux (RPC, qemu)",
        built=True,
        ran=True,
        error=max(result.errors),
        build_s=result.compiled.build_seconds,
    )
    assert result.ok and max(result.errors) <= ARM64_TOLERANCE
    assert len(result.run.times_ms) == 2 and all(t > 0 for t in result.run.times_ms)
    assert "on cpu via RPC" in result.summary()

    with local_tracker(tmp_path) as tracker:
        with qemu_rpc_server(tracker=tracker, key="qemu-a64", log_path=tmp_path / "rpc_server2.log"):
            session = connect(tracker=tracker, key="qemu-a64")
            run = run_remote(session, tmp_path / "cls.so", feed, number=1, repeat=1)
    assert max(relative_errors(onnxruntime_outputs(model, feed), run.outputs)) <= ARM64_TOLERANCE


def test_bench_with_no_server_listening_is_a_one_line_error():
    with pytest.raises(TTGraphError) as info:
        bench(pointwise_model(), "x86_64", rpc=f"127.0.0.1:{free_port()}")
    assert "cannot open a TVM RPC session" in info.value.one_line()


def test_armv7_linux_library_links_with_the_hard_float_abi(tmp_path):
    need_tool("arm-linux-gnueabihf-g++")
    start = time.perf_counter()
    result = compile_model(example_model("cls"), "armv7-linux", tmp_path / "cls.so", {"x": [1, 3, 48, 192]})
    elf_class, machine, flags = elf_header(result.output.read_bytes())
    record("cls", "armv7-linux", built=True, ran=False, error=None, build_s=time.perf_counter() - start)
    assert (elf_class, machine) == (1, EM_ARM)
    assert flags & EF_ARM_ABI_FLOAT_HARD


@pytest.mark.parametrize(
    "preset, elf_class, machine, hard_float",
    [
        ("arm64-android", 2, EM_AARCH64, None),
        ("arm64-android-a76", 2, EM_AARCH64, None),
        ("armv7-android", 1, EM_ARM, False),
    ],
)
def test_android_presets_export_objects_for_the_ndk(preset, elf_class, machine, hard_float, tmp_path):
    result = compile_model(pointwise_model(), preset, tmp_path / "m.tar")
    with tarfile.open(result.output) as tar:
        names = sorted(tar.getnames())
        assert names == ["devc.o", "lib0.o"]
        header = elf_header(tar.extractfile("lib0.o").read())
    assert header[:2] == (elf_class, machine)
    if hard_float is not None:  # armeabi-v7a passes floats in core registers (softfp)
        assert bool(header[2] & EF_ARM_ABI_FLOAT_HARD) == hard_float


def test_cuda_sm80_library_holds_cuda_kernels(tmp_path):
    start = time.perf_counter()
    result = compile_model(example_model("cls"), "cuda-sm80", tmp_path / "cls.cuda.so", {"x": [1, 3, 48, 192]})
    build_s = time.perf_counter() - start
    assert result.cuda_source and result.cuda_source.count("__global__") >= 10
    assert b"__global__" in result.output.read_bytes()  # the source travels inside the library
    if shutil.which("nvcc"):
        assert result.cuda_fatbin_bytes and result.cuda_fatbin_bytes > 0
    record("cls", "cuda-sm80", built=True, ran=False, error=None, build_s=build_s, fatbin=result.cuda_fatbin_bytes)


def test_rpc_library_must_be_a_shared_object(tmp_path):
    lib = Path(tmp_path / "m.tar")
    lib.write_bytes(b"")
    with pytest.raises(TTGraphError, match="RPC loads shared libraries"):
        run_remote(None, lib, [])


def test_served_process_is_stopped_even_when_the_body_fails(tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tvm.exec.rpc_tracker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]
    with pytest.raises(RuntimeError, match="boom"):
        with serving_process(cmd, "127.0.0.1", port) as proc:
            raise RuntimeError("boom")
    assert proc.poll() is not None and not _group_running(proc.pid)  # the tracker's child process too
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_tuning_measures_candidates_on_the_device_through_a_tracker(tmp_path, monkeypatch):
    """``--tune --tracker --key``: candidates are cross-built here, linked, and timed on the aarch64 server."""
    need_a64()
    import targets.compile

    monkeypatch.setattr(targets.compile, "_physical_cores", lambda: 61)  # a build machine unlike the device
    model = pointwise_model()
    feed = {"x": np.random.default_rng(2).standard_normal((1, 16, 16, 16)).astype(np.float32)}
    db = tmp_path / "db"
    with local_tracker(tmp_path) as tracker:
        with qemu_rpc_server(tracker=tracker, key="qemu-a64", log_path=tmp_path / "rpc_server.log"):
            from targets.rpc import connect

            device_threads = int(connect(None, tracker, "qemu-a64").get_function("runtime.NumThreads")())
            result = compile_model(
                model, "arm64-linux", tmp_path / "pw.so", tune=4, tune_db=db, tune_tracker=tracker, tune_key="qemu-a64"
            )
    assert result.tuned_tasks == 2
    # the device's cores (the TVM runtime's threads there), not the build machine's
    assert result.tune_num_cores == device_threads and f"schedules for {device_threads} cores" in result.summary()
    lines = (db / "arm64-linux" / "database_tuning_record.json").read_text().splitlines()
    run_secs = [min(json.loads(line)[1][1]) for line in lines]
    assert any(s < 1.0 for s in run_secs), f"no candidate ran on the device: {run_secs}"  # failures record 1e10
    outputs = run_under_qemu(result.output, [feed["x"]])
    assert max(relative_errors(onnxruntime_outputs(model, feed), outputs)) <= ARM64_TOLERANCE


def test_tuning_a_device_needs_a_key_and_a_budget(tmp_path):
    with pytest.raises(TTGraphError, match="needs tune_key=KEY"):
        compile_model(pointwise_model(), "arm64-linux", tmp_path / "m.so", tune=4, tune_tracker="127.0.0.1:9190")
    with pytest.raises(TTGraphError, match="give tune=N or tune_minutes=M"):
        compile_model(pointwise_model(), "arm64-linux", tmp_path / "m.so", tune_tracker="127.0.0.1:9190", tune_key="k")
    assert list(tmp_path.iterdir()) == []
