"""Run aarch64 libraries on this x86 machine: an aarch64 Python + TVM runtime under ``qemu-aarch64``.

The environment is a folder made by ``.ci/install-tvm-cross.sh DEST`` (default ``$TTGRAPH_A64_HOME``,
else ``~/.cache/ttgraph-a64``); its ``bin/python3-a64`` launcher runs the Debian arm64 Python under
qemu-user with the aarch64 TVM runtime wheel. Timings under qemu say nothing about a phone: this is
for correctness (and for exercising the RPC path end to end).

>>> outs = run_under_qemu("det.a64.so", [x])  # doctest: +SKIP
>>> with qemu_rpc_server() as (host, port):  # doctest: +SKIP
...     bench("det.onnx", "arm64-linux", rpc=f"{host}:{port}")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ttgraph.errors import TTGraphError

from .run import Inputs, ordered_inputs

ENV_VAR = "TTGRAPH_A64_HOME"
INSTALL_SCRIPT = ".ci/install-tvm-cross.sh"
_RUNNER = Path(__file__).with_name("_device_run.py")


def a64_home() -> Path:
    """Where the aarch64 environment is (or would be) installed."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "ttgraph-a64")


def find_a64_python() -> Path | None:
    """The ``python3-a64`` launcher of a complete installation, or None."""
    home = a64_home()
    launcher = home / "bin" / "python3-a64"
    if (home / ".complete").is_file() and os.access(launcher, os.X_OK):
        return launcher
    return None


def require_a64_python() -> Path:
    launcher = find_a64_python()
    if launcher is None:
        raise TTGraphError(
            a64_home(), f"no aarch64 Python + TVM runtime here; run {INSTALL_SCRIPT} {a64_home()} (as root)"
        )
    return launcher


def run_under_qemu(
    library: str | os.PathLike[str],
    inputs: Inputs,
    *,
    names: Sequence[str] | None = None,
    timeout: float = 900.0,
    threads: int | None = None,
) -> list[np.ndarray]:
    """Run an ``arm64-linux`` ``.so`` once under qemu-aarch64; the outputs come back as numpy arrays."""
    python = require_a64_python()
    if not os.path.isfile(library):
        raise TTGraphError(library, "no such library")
    env = dict(os.environ)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="ttgraph-qemu-") as tmp:
        in_path, out_path = Path(tmp, "in.npz"), Path(tmp, "out.npz")
        np.savez(in_path, *ordered_inputs(inputs, names))
        cmd = [os.fspath(python), os.fspath(_RUNNER), os.fspath(library), os.fspath(in_path), os.fspath(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise TTGraphError(library, f"the aarch64 run under qemu took longer than {timeout:.0f}s") from err
        if proc.returncode != 0 or not out_path.is_file():
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
            raise TTGraphError(library, f"the aarch64 run under qemu failed: {tail[0]}")
        with np.load(out_path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def qemu_rpc_server(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    tracker: str | None = None,
    key: str = "",
    startup_timeout: float = 180.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[str, int]]:
    """A TVM RPC server for aarch64 under qemu, yielding ``(host, port)``; always stopped on exit.

    With ``tracker="HOST:PORT"`` it registers there under ``key`` (and then only accepts sessions the
    tracker hands out).
    """
    python = require_a64_python()
    port = port or free_port(host)
    cmd = [
        os.fspath(python),
        "-m",
        "tvm.exec.rpc_server",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]
    if tracker:
        cmd += ["--tracker", tracker, "--key", key]
    with serving_process(cmd, host, port, startup_timeout=startup_timeout, log_path=log_path):
        yield host, port


@contextlib.contextmanager
def serving_process(
    cmd: Sequence[str],
    host: str,
    port: int,
    *,
    startup_timeout: float = 180.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (a server that will listen on ``host:port``) and wait until it does; on exit stop it.

    The process gets its own process group, so whatever it starts (RPC session workers, each another
    qemu process) is stopped with it: SIGTERM to the group, SIGKILL after 10 s.
    """
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "w")) if log_path else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop_group, proc)
        what = next((c for c in cmd if c.startswith("tvm.exec.")), os.path.basename(cmd[0]))
        _wait_listening(proc, host, port, startup_timeout, what)
        yield proc


def _wait_listening(proc: subprocess.Popen, host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TTGraphError(what, f"exited with status {proc.returncode} before listening on {host}:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return  # a bare connection is dropped by the server's accept loop (it expects a magic)
        time.sleep(0.5)
    raise TTGraphError(what, f"did not listen on {host}:{port} within {timeout:.0f}s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of it is left (workers included), and return
    only once none of it runs: the tracker's listening socket lives in a child process, which can outlive
    the parent by a moment."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_running(proc.pid):
            return


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for a reaper do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc: ask the kernel about the whole group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and (fields[0] != "Z" or _threads_alive(entry)):  # after "(comm)": state, ppid, pgrp
            return True
    return False


def _threads_alive(pid: str) -> bool:
    """Whether a zombie thread-group leader still has live threads: the leader shows ``Z`` as soon as it
    exits, while its other threads (the tracker's accept loop) keep the shared file table, and so the
    listening socket, open until they are torn down too."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
        except OSError:
            continue
    return False
