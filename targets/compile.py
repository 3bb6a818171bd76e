"""ONNX model → TVM Relax → a library for a target preset, written atomically.

>>> from targets import compile_model
>>> result = compile_model("det.onnx", "arm64-linux", "det.a64.so", {"x": [1, 3, 640, 640]})  # doctest: +SKIP
>>> result.output.name, round(result.build_seconds)  # doctest: +SKIP
('det.a64.so', 14)

What is written, per preset kind:

- host (``x86_64``): a ``.so`` linked by the host C++ compiler; :func:`targets.run.run_library` runs it.
- cross (``arm64-linux``, ``armv7-linux``): a ``.so`` linked by the Debian cross ``g++``.
- Android (``arm64-android*``, ``armv7-android``): a ``.tar`` of object files (``lib0.o``, ``devc.o``)
  to link into an app with the NDK; or, with ``$TVM_NDK_CC`` set to the NDK's clang++, a ``.so``
  (what TVM RPC on a phone loads).
- CUDA (``cuda-sm*``): a ``.so`` whose device part is CUDA *source*, compiled at load time on the GPU
  machine. When ``nvcc`` is on PATH the source is also compiled to a fatbin here, as a check.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import numbers
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ttgraph.errors import TTGraphError
from ttgraph.files import check_output_path, default_cache_dir, temp_prefix, usual_permissions
from ttgraph.model_io import ModelSource, source_files, source_name
from ttgraph.process_state import quiet_warnings, stdout_into

from .frontend import UNUSED_INPUTS, PreparedModel, prepare_for_tvm
from .presets import TargetPreset, resolve_target
from .tune import DATABASE_FILES, check_minutes, describe_bound

log = logging.getLogger("ttgraph.targets")

MAX_TRIALS = 1_000_000  # far beyond any tuning run; TVM's trial counter is a 64-bit int

# nvcc flags TVM itself uses for its generated kernels (tvm.support.nvcc).
_NVCC_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
]


@dataclass
class CompileResult:
    """What :func:`compile_model` built, for logs, reports and the run/bench helpers."""

    output: Path
    target: str  # preset name, or "custom" for a JSON target
    target_dict: dict[str, Any]
    export_format: str
    input_shapes: dict[str, list[int]]
    input_dtypes: dict[str, str]
    output_names: list[str]
    frontend_steps: list[str]
    prepare_seconds: float
    build_seconds: float  # import + (tuning) + relax.build
    export_seconds: float
    tuned_tasks: int = 0
    reused_tasks: int = 0
    tune_tasks: int = 0  # fused functions the model has to tune
    tune_trials: int = 0
    tune_minutes: float | None = None
    tune_seconds: float = 0.0  # of build_seconds, the time spent tuning
    tune_timed_out: bool = False  # the time bound ended tuning before the trials were spent
    tune_db: Path | None = None
    cuda_source: str | None = field(default=None, repr=False)
    cuda_fatbin_bytes: int | None = None  # size of the offline nvcc check's fatbin; None: not checked
    tune_num_cores: int | None = None  # the cores a CPU target's tuned schedules parallelize over

    @property
    def input_names(self) -> list[str]:
        return list(self.input_shapes)

    def summary(self) -> str:
        """One line for the CLI."""
        size = self.output.stat().st_size if self.output.exists() else 0
        extra = ""
        if self.tune_trials or self.tune_minutes:
            bound = describe_bound(self.tune_trials, self.tune_minutes)
            extra += (
                f", {self.tuned_tasks} of {self.tune_tasks} tasks measured ({self.reused_tasks} reused) in "
                f"{self.tune_seconds:.0f}s"
                f" (bound: {bound}{'; time ran out' if self.tune_timed_out else ''})"
            )
            extra += f", schedules for {self.tune_num_cores} cores" if self.tune_num_cores else ""
        elif self.tune_db is not None and self.reused_tasks:
            extra += (
                f", tuning records of {self.reused_tasks} of its {self.tune_tasks} tasks applied from {self.tune_db}"
            )
        elif self.target_dict.get("kind") != "cuda":
            extra += ", untuned: TVM's default CPU schedules run on one thread (tune with --tune N or --tune-minutes M)"
            extra += f"; {self.tune_db} holds no records for its tasks" if self.tune_db is not None else ""
        extra += "".join(f"; {step}" for step in self.frontend_steps if step.startswith(UNUSED_INPUTS))
        if self.cuda_fatbin_bytes is not None:
            extra += f", nvcc fatbin check ok ({self.cuda_fatbin_bytes} bytes)"
        elif self.cuda_source is not None:
            extra += ", CUDA source not checked (no nvcc on PATH)"
        shapes = " ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" for k, v in self.input_shapes.items())
        return (
            f"wrote {self.output} ({size / 1e6:.1f} MB, {self.target}) from {shapes}: "
            f"prepare {self.prepare_seconds:.1f}s, build {self.build_seconds:.1f}s, "
            f"export {self.export_seconds:.1f}s{extra}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = os.fspath(self.output)
        data["tune_db"] = os.fspath(self.tune_db) if self.tune_db else None
        data.pop("cuda_source")
        return data


def compile_model(
    model: ModelSource,
    target: str | Mapping[str, Any],
    output: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tune: int = 0,
    tune_db: str | os.PathLike[str] | Literal[False] | None = None,
    tune_minutes: float | None = None,
    tune_tracker: str | None = None,
    tune_key: str | None = None,
) -> CompileResult:
    """Compile ``model`` for ``target`` (preset name, JSON text or dict) into the library ``output``.

    ``input_shapes`` fixes dynamic input dims (``{"x": [1, 3, 640, 640]}``). ``tune`` > 0 runs that many
    MetaSchedule trials first, with records kept in ``tune_db/<target>/`` (default ``tune-db`` in ttgraph's cache
    folder, :func:`ttgraph.files.default_cache_dir`); ``tune_minutes`` bounds the tuning time too (alone: time is
    the only bound); ``tune=0`` without it applies the records already in ``tune_db`` (by default, those in the
    default folder for this target, when it has any: hours of tuning are not lost to a later plain build; the
    summary says how many tasks they cover); ``tune_db=False`` builds without any. Tuning measures
    candidates on this machine, or with ``tune_tracker`` ("HOST:PORT" of a TVM RPC tracker) and ``tune_key`` on
    the device registered there under that key — how a phone's own schedules are found.
    Raises :class:`TTGraphError` for anything the user can fix: unknown target, wrong output suffix,
    missing cross compiler, a model TVM cannot import.
    """
    preset = resolve_target(target)
    out = _check_output(preset, output, model)
    make_target(preset)  # what the user wrote (a CPU name, a feature) is checked before this machine's toolchain
    linker = _check_linker(preset, out)
    if isinstance(tune, bool) or not isinstance(tune, numbers.Integral) or not 0 <= tune <= MAX_TRIALS:
        raise TTGraphError("tune", f"expected a number of trials from 0 to {MAX_TRIALS}, got {tune!r}")
    tune = int(tune)
    check_minutes(tune_minutes)
    tuning = bool(tune) or tune_minutes is not None
    tracker = None
    if tune_tracker is not None:
        from .rpc import parse_address

        if not tuning:
            raise TTGraphError("tune_tracker", "measures tuning candidates on a device: give tune=N or tune_minutes=M")
        if not tune_key:
            raise TTGraphError("tune_tracker", "needs tune_key=KEY (the device key the RPC servers registered)")
        tracker = parse_address(tune_tracker, "tune_tracker")
    why = cannot_run_here(preset) if tuning and tracker is None else None
    if why:
        raise TTGraphError(
            "tune",
            f"tuning measures candidates on this machine, which cannot run {preset.name} code ({why}); "
            "measure them on the device (tune_tracker=HOST:PORT tune_key=KEY) or apply existing records with tune_db",
        )
    if tracker is not None:
        from .rpc import check_tracker

        check_tracker(tracker)
    if tune_db is False and tuning:
        raise TTGraphError("tune_db=False", "tuning keeps its records in a database: leave it out")
    db_root = None if tune_db is False else Path(tune_db) if tune_db is not None else _default_tune_db()
    # MetaSchedule looks records up by workload only, not by target: a CPU schedule found for a CUDA
    # build would break it. So each target keeps its records in its own sub-folder.
    db_dir = db_root / _target_key(preset) if db_root is not None else None
    if (
        tune_db is None
        and not tuning
        and db_dir is not None
        and not all((db_dir / f).is_file() for f in DATABASE_FILES)
    ):
        db_dir = None  # the default folder holds nothing for this target: a plain build, without a warning
    if db_dir is not None and not tuning and not db_dir.is_dir():
        raise TTGraphError(db_dir, "no tuning records for this target here (give tune=N to create them)")

    tvm = _import_tvm()
    if tune_db is None and not tuning and db_dir is not None:  # records nobody asked for: a plain build if unreadable
        from .tune import open_database

        try:
            open_database(db_dir, write=False)
        except TTGraphError as err:
            log.warning("not applying the default tuning database: %s", err.one_line())
            db_dir = None
    cores = _device_cores(tune_tracker, tune_key) if tracker is not None else None
    tvm_target = make_target(preset, for_tuning=db_dir is not None, num_cores=cores)
    if tuning and tracker is None and preset.is_cuda and not tvm.cuda(0).exist:
        raise TTGraphError("tune", f"tuning for {preset.name} measures on a GPU, and this machine has none")

    log.info("preparing %s for %s", source_name(model), preset.name)
    start = time.perf_counter()
    prepared = prepare_for_tvm(model, input_shapes)
    prepare_s = time.perf_counter() - start
    name = source_name(model)

    log.info("building (%s)", "; ".join(prepared.steps) or "model already static")
    start = time.perf_counter()
    mod = import_relax(prepared, name)
    stats = None
    try:
        if tuning:
            from .tune import tune as run_tuning

            # A device loads each candidate as a shared library linked here (a .tar output still needs one).
            cand_linker = _check_linker(preset, out.with_suffix(".so")) if tracker is not None else None
            stats = run_tuning(
                mod, tvm_target, tune, db_dir, minutes=tune_minutes, tracker=tracker, key=tune_key, linker=cand_linker
            )
        if db_dir is not None:
            from .tune import build_with_database, records_for

            if stats is None:  # only applying the records: say how many of the tasks they cover
                stats = records_for(mod, tvm_target, db_dir)
            executable = build_with_database(mod, tvm_target, db_dir)
        else:
            executable = tvm.relax.build(mod, target=tvm_target)
    except TTGraphError:
        raise
    except Exception as err:  # TVM raises TVMError/ValueError/InternalError from C++ passes
        # the input size is named: a size smaller than the model's pooling and strides fail deep in TVM's passes
        # ("Divide by zero" at 8×8 on the direction classifier, which onnxruntime runs)
        at = "; ".join(f"{k} {'×'.join(map(str, v))}" for k, v in prepared.input_shapes.items())
        raise TTGraphError(name, f"TVM could not build it for {preset.name} at {at}: {_first_line(err)}") from err
    build_s = time.perf_counter() - start

    cuda_source = _cuda_source(executable) if preset.is_cuda else None
    if preset.is_cuda and not cuda_source:
        raise TTGraphError(name, f"the {preset.name} build holds no CUDA kernels (everything fell back to the host)")

    start = time.perf_counter()
    fatbin = None
    if cuda_source and shutil.which("nvcc"):
        log.info("checking the CUDA source with nvcc")  # tens of seconds on a detector: say what runs
        fatbin = check_cuda_source(cuda_source, str(preset.target.get("arch", "sm_80")), out)
    log.info("exporting %s", out)
    _export(executable, out, linker, preset)
    export_s = time.perf_counter() - start

    result = CompileResult(
        output=out,
        target=preset.name,
        target_dict=json.loads(preset.target_json()),
        export_format=out.suffix,
        input_shapes=prepared.input_shapes,
        input_dtypes=prepared.input_dtypes,
        output_names=prepared.output_names,
        frontend_steps=prepared.steps,
        prepare_seconds=prepare_s,
        build_seconds=build_s,
        export_seconds=export_s,
        tuned_tasks=stats.tuned if stats else 0,
        reused_tasks=stats.reused if stats else 0,
        tune_tasks=stats.tasks if stats else 0,
        tune_trials=tune,
        tune_minutes=tune_minutes,
        tune_seconds=stats.seconds if stats else 0.0,
        tune_timed_out=stats.timed_out if stats else False,
        tune_db=db_dir,
        cuda_source=cuda_source,
        cuda_fatbin_bytes=fatbin,
        tune_num_cores=int(tvm_target.attrs["num-cores"]) if "num-cores" in tvm_target.attrs else None,
    )
    log.debug("%s", result.summary())
    return result


# ---------------------------------------------------------------------------------------------- checks


def _check_output(preset: TargetPreset, output: str | os.PathLike[str], model: ModelSource) -> Path:
    out = check_output_path(output, source_files(model))  # a link's target: TVM exports by its suffix
    allowed = {preset.export_format}
    if preset.ndk:
        allowed.add(".so")  # linked by the NDK compiler in $TVM_NDK_CC
    if out.suffix not in allowed:
        hint = (
            "a .tar of objects to link with the Android NDK (or .so with $TVM_NDK_CC set)"
            if preset.ndk
            else f"a {preset.export_format} library"
        )
        raise TTGraphError(out, f"target {preset.name} exports {hint}; name the output *{preset.export_format}")
    return out


def _check_linker(preset: TargetPreset, out: Path) -> str | None:
    """The C++ driver that links the library (None for a .tar); a clear error when it is missing."""
    if out.suffix == ".tar":
        return None
    if preset.ndk:
        ndk_cc = os.environ.get("TVM_NDK_CC")
        triple = str(preset.target.get("mtriple", "aarch64-linux-android"))
        clang = f"{triple}28-clang++"  # the NDK names its drivers by triple and API level
        if not ndk_cc or not shutil.which(ndk_cc):
            given = f"TVM_NDK_CC={ndk_cc!r} is not found" if ndk_cc else "TVM_NDK_CC is not set"
            raise TTGraphError(
                out,
                f"a .so for {preset.name} must be linked by the Android NDK's clang++ and {given}: set it to "
                f"e.g. .../toolchains/llvm/prebuilt/linux-x86_64/bin/{clang}, or name the output *.tar for a .tar "
                "of objects",
            )
        name = Path(ndk_cc).name
        if "gnu" in name or name in ("g++", "c++", "gcc", "cc"):  # links for glibc (or the host): Android refuses it
            raise TTGraphError(
                "TVM_NDK_CC",
                f"{ndk_cc!r} is a GNU/host compiler, not the Android NDK's: a .so for {preset.name} needs e.g. {clang} "
                "(or name the output *.tar for a .tar of objects)",
            )
        return ndk_cc
    if preset.cross_compiler:
        if not shutil.which(preset.cross_compiler):
            package = preset.cross_package or preset.cross_compiler
            raise TTGraphError(
                preset.name,
                f"cross compiler {preset.cross_compiler!r} not found on PATH; "
                f"install the Debian package {package} (apt-get install {package})",
            )
        return preset.cross_compiler
    variable = "CXX" if os.environ.get("CXX") else "CC" if os.environ.get("CC") else None
    host = os.environ.get(variable, "") if variable else "g++"
    if len(host.split()) > 1:  # TVM runs it as one program name: the link would fail after the whole build
        raise TTGraphError(
            variable,
            f"{host!r}: TVM runs ${variable} as one program, without arguments; name the compiler alone (flags or "
            "ccache in a wrapper script)",
        )
    if not shutil.which(host.split()[0]):
        raise TTGraphError(
            preset.name, f"C++ compiler {host!r} not found on PATH to link the library (apt-get install g++)"
        )
    return None  # TVM's default: $CXX or g++


def _import_tvm() -> Any:
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as err:
        raise TTGraphError("tvm", f"Apache TVM is not installed ({err}); pip install 'ttgraph[tvm]'") from err
    return tvm


def make_target(preset: TargetPreset, *, for_tuning: bool = False, num_cores: int | None = None) -> Any:
    """The ``tvm.target.Target`` of a preset; TVM's complaint about a bad JSON target as one line.

    MetaSchedule needs a CPU target's ``num-cores`` (what its schedules parallelize over); tuning and building
    from a database use the same target: the target's own, else ``num_cores`` (the device's, when tuning on it
    over a tracker), else this machine's physical core count.
    """
    tvm = _import_tvm()
    spec = dict(preset.target)
    if for_tuning and spec.get("kind") == "llvm" and "num-cores" not in spec:
        spec["num-cores"] = num_cores or _physical_cores()
    try:
        target = tvm.target.Target(spec)
    except Exception as err:  # ValueError / TVMError from the target parser
        raise TTGraphError("target", f"TVM rejects the target {preset.target_json()}: {_first_line(err)}") from err
    _check_cpu(tvm, spec)
    _check_features(tvm, target, spec)
    return target


def _check_cpu(tvm: Any, spec: dict[str, Any]) -> None:
    """An ``mcpu`` LLVM does not know is only a warning to TVM, which then builds generic code: for a phone
    that silently loses the tuning the user asked for (a typo such as "cortex-a67"), so it is an error here."""
    cpu = spec.get("mcpu")
    if spec.get("kind") != "llvm" or not cpu:
        return
    codegen = tvm.target.codegen
    triple = str(spec.get("mtriple") or codegen.llvm_get_system_triple())
    if not codegen.llvm_is_valid_cpu(str(cpu), triple):
        raise TTGraphError(
            "target", f"LLVM knows no CPU {cpu!r} for {triple} (TVM would build generic code); check the name"
        )


def _check_features(tvm: Any, target: Any, spec: dict[str, Any]) -> None:
    """An ``mattr`` feature LLVM does not know ("+dotpord") is ignored with a warning per function, and the code
    is built without it: an error here, like an unknown CPU."""
    wanted = spec.get("mattr") or []
    if spec.get("kind") != "llvm" or not wanted:
        return
    known = set(tvm.target.codegen.llvm_get_cpu_features(target))
    unknown = [f for f in (str(a) for a in wanted) if f.startswith("+") and f[1:] not in known]
    if unknown:
        raise TTGraphError("target", f"LLVM knows no CPU feature {', '.join(unknown)} here; check the name")


#: CPU features whose instructions a library uses (not LLVM's tuning hints): one this machine lacks kills the
#: process with SIGILL, no message.
_ISA_FEATURE = re.compile(r"(avx|sse|fma|bmi|f16c|amx|vaes|vpclmul|gfni|sha|aes|adx|movbe|sve|dotprod|i8mm|bf16)")


def cannot_run_here(preset: TargetPreset) -> str | None:
    """Why a library built for ``preset`` cannot run on this machine's runtime, or None when it can."""
    tvm = _import_tvm()
    if preset.is_cuda:
        return None if tvm.cuda(0).exist else "it is CUDA code and this machine has no GPU"
    if not preset.runs_here:
        return f"it is {preset.target.get('mtriple') or preset.name} code and this machine is {platform.machine()}"
    cpu = preset.target.get("mcpu")
    if not cpu:
        return None
    codegen = tvm.target.codegen
    this_cpu = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    host = set(codegen.llvm_get_cpu_features(this_cpu))
    wanted = set(codegen.llvm_get_cpu_features(make_target(preset)))
    missing = sorted(f for f in wanted - host if _ISA_FEATURE.match(f))
    return f"it uses CPU features this machine lacks ({', '.join(missing)})" if missing else None


def import_relax(prepared: PreparedModel, name: str) -> Any:
    """``from_onnx`` on a prepared model; importer failures name the ONNX op that failed."""
    from tvm.relax.frontend.onnx import from_onnx

    printed = io.StringIO()
    try:
        with stdout_into(printed), quiet_warnings():
            return from_onnx(
                prepared.model,
                shape_dict=prepared.input_shapes,
                dtype_dict=prepared.input_dtypes,
                keep_params_in_input=False,
            )
    except Exception as err:  # the importer raises whatever its converters raise
        match = re.search(r"Error converting operator (\w+)", printed.getvalue())
        said = _first_line(err)
        listed = re.search(r"not supported for frontend ONNX: ([\w, ]+)|Operator (\w+) not implemented", said)
        if listed:  # which nodes: a model of a thousand nodes has a few of them, somewhere
            ops = {op.strip() for op in (listed.group(1) or listed.group(2)).split(",")}
            nodes = [n.name or n.op_type for n in prepared.model.graph.node if n.op_type in ops]
            more = f", … ({len(nodes)} in all)" if len(nodes) > 3 else ""
            said += f" (nodes {', '.join(nodes[:3])}{more}): this TVM cannot build them; run it in onnxruntime"
        raise TTGraphError(name, f"TVM's ONNX importer failed: {said}", node=match.group(1) if match else None) from err


# ---------------------------------------------------------------------------------------------- export


def _export(executable: Any, out: Path, linker: str | None, preset: TargetPreset) -> None:
    """Write the library through a temporary file beside ``out`` and an atomic rename."""
    kwargs: dict[str, Any] = {}
    if linker and preset.ndk:
        from tvm.support import ndk

        kwargs["fcompile"] = ndk.create_shared
    elif linker:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(linker)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out.with_suffix("")), suffix=out.suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="ttgraph-export-") as workspace:
            executable.export_library(os.fspath(tmp), workspace_dir=workspace, **kwargs)
        usual_permissions(tmp, executable=out.suffix == ".so", replacing=out)
        os.replace(tmp, out)
    except OSError as err:
        raise TTGraphError(out, f"cannot write the library: {err.strerror or err}") from err
    except Exception as err:  # linker failures come back as RuntimeError with the compiler output
        raise TTGraphError(out, f"linking the {preset.name} library failed: {_linker_reason(err)}") from err
    finally:
        tmp.unlink(missing_ok=True)


def _cuda_source(executable: Any) -> str | None:
    """The CUDA C source of the kernels inside a built executable, or None."""
    seen: list[Any] = [executable.mod]
    while seen:
        module = seen.pop()
        if module.kind == "cuda":
            return module.inspect_source("")
        seen.extend(module.imports)
    return None


def check_cuda_source(source: str, arch: str, where: str | os.PathLike[str] = "cuda") -> int:
    """Compile TVM's CUDA source with ``nvcc`` to a fatbin (a check only); returns its size in bytes.

    Runs nvcc directly rather than through ``tvm.support.nvcc``: importing that module registers a
    process-wide callback that makes every later CUDA build in the process compile (with NVRTC) at
    build time.
    """
    nvcc = shutil.which("nvcc")
    if not nvcc:
        raise TTGraphError("nvcc", "not found on PATH")
    suffix = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory(prefix="ttgraph-nvcc-") as tmp:
        src, fatbin = Path(tmp, "kernels.cu"), Path(tmp, "kernels.fatbin")
        src.write_text(source)
        cmd = [nvcc, "--fatbin", "-gencode", f"arch=compute_{suffix},code=sm_{suffix}", *_NVCC_FLAGS]
        proc = subprocess.run([*cmd, "-o", str(fatbin), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise TTGraphError(
                where,
                f"nvcc could not compile the generated CUDA source for {arch}: "
                f"{detail[0] if detail else proc.returncode}",
            )
        return fatbin.stat().st_size


def _device_cores(tracker: str | None, key: str | None) -> int | None:
    """The worker threads the TVM runtime on the tracker's device starts (its cores), so schedules tuned on a
    phone parallelize over the phone's cores, not the build machine's; None (this machine's) if it cannot say."""
    from .rpc import collect_sessions, connect

    session = None
    try:
        session = connect(None, tracker, key)
        return int(session.get_function("runtime.NumThreads")()) or None
    except Exception as err:  # an old runtime without the function: the build machine's count, as before
        log.warning("the device did not say how many cores it has (%s): tuning for this machine's", err)
        return None
    finally:  # the tuning that follows asks the tracker for this same device
        del session
        collect_sessions()


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return int(os.cpu_count() or 1)


def _target_key(preset: TargetPreset) -> str:
    """A folder name for a target: the preset name, or a digest of a custom target's JSON."""
    if preset.name != "custom":
        return preset.name
    return "custom-" + hashlib.sha1(preset.target_json().encode()).hexdigest()[:12]


def _default_tune_db() -> Path:
    """Beside ttgraph's other caches, so ``$TTGRAPH_CACHE_DIR`` moves them all."""
    return default_cache_dir() / "tune-db"


def _linker_reason(err: BaseException) -> str:
    """What a failed link says: the linker's own complaints (``ld: … uses VFP register arguments``), not only
    collect2's closing "ld returned 1 exit status"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if re.search(r"\bld(\.\w+)?: |undefined reference|cannot find -l", line)]
    # the errors, not the notes beside them (binutils' "missing .note.GNU-stack" warning comes first in any link)
    said = [line for line in said if not re.search(r"\b(warning|NOTE):", line)] or said
    said = [re.sub(r"\S*/(ld(\.\w+)?): ", r"\1: ", line) for line in said]  # the cross linker's long path
    if not said:
        return _first_line(err)
    reason = "; ".join(dict.fromkeys(said[:2]))
    if "VFP register arguments" in reason:
        reason += ' (an armv7 hard-float target needs "mfloat-abi": "hard")'
    return reason


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # TVM errors often end with the useful line after a C++ backtrace.
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()
    return lines[0].strip() if lines else type(err).__name__
