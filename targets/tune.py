"""MetaSchedule tuning for a compiled model: a bounded number of trials, records kept in a database folder.

The Relax module is legalized and fused *before* tasks are extracted (on the raw imported module
MetaSchedule finds only the element-wise ops, none of the convolutions), with exactly the passes
``compile_relax`` applies when it reads the database back, so the records match at build time.

The database folder is reused across runs: a task (one fused TIR function of one shape) that already
has a record is not tuned again, so a second run of the same model, or of a model with TT cores of
equal shape, spends its trials only on what is new. Records are looked up by workload alone, not by
target, so a folder must hold one target's records (``compile_model`` uses a sub-folder per target).
Measuring runs the candidates on this machine — a target it executes (the host CPU, or CUDA on a machine with
a GPU) — or, through a TVM RPC tracker, on the device itself (a phone or board). Trials, minutes or both bound
a run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ttgraph.errors import TTGraphError

log = logging.getLogger("ttgraph.targets")

#: Per-candidate limits. Building a candidate takes seconds; a slow one is dropped, not waited for.
BUILD_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 60.0
#: Candidates per task and round when only time bounds the run, and the trial cap that stands for "no cap".
TIME_BOUNDED_BATCH = 16
UNBOUNDED_TRIALS = 1 << 30


@dataclass(frozen=True)
class TuneStats:
    """What a tuning run did."""

    tasks: int  # fused functions in the model
    reused: int  # of those, already in the database
    tuned: int  # of those, measured in this run (a trial budget below the task count leaves some untuned)
    trials: int  # the trial budget of this run (0: bounded by time only)
    database: Path
    seconds: float = 0.0  # wall time spent tuning
    timed_out: bool = False  # stopped by the time bound before the trials were spent


def fuse_passes(target: Any) -> list[Any]:
    """The passes that turn an imported module into the fused TIR functions MetaSchedule tunes.

    The same list, in the same order, as ``tvm.s_tir.meta_schedule.relax_integration.compile_relax``
    runs before ``MetaScheduleApplyDatabase``.
    """
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    return [
        *dispatch,
        relax.transform.LegalizeOps(enable_warning=False),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def _candidate_build(mod: Any, target: Any, _params: Any) -> Any:
    """Builder worker: compile one candidate without importing the tensor-intrinsic tables.

    MetaSchedule's default builder imports ``tvm.s_tir.tensor_intrin`` in every worker, which costs
    tens of seconds on a small machine; CPU candidates without tensorized intrinsics do not need it.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def load_tensor_intrinsics(target: Any) -> None:
    """Register the tensor intrinsics MetaSchedule may use for ``target``, and only those.

    ``TuneContext`` imports the whole ``tvm.s_tir.tensor_intrin`` package, whose CUDA, ROCm and Hexagon
    tables take ~45 s to build on a 2-core machine, on every tuning run, CPU or not. When the package is
    not loaded yet, a bare package entry (same path, so submodules still import normally) stands in for
    it and only the submodules for this target kind are imported. Any failure falls back to the full
    import. Pinned to TVM 0.27, where this layout was checked.
    """
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    kind = str(target.kind.name)
    wanted = {"llvm": ["x86", "arm_cpu"], "cuda": ["cuda"]}.get(kind)
    installed = False
    try:
        if wanted is None:
            raise LookupError(f"no intrinsic list for target kind {kind}")
        if name not in sys.modules:
            import tvm.s_tir

            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                raise LookupError(name)
            package = types.ModuleType(name)
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            package.__package__ = name
            sys.modules[name] = package
            tvm.s_tir.tensor_intrin = package
            installed = True
        for sub in wanted:
            importlib.import_module(f"{name}.{sub}")
    except Exception as err:  # unknown kind or another layout: pay for the full import
        log.debug("tensor intrinsics: full import (%s)", err)
        if installed:
            del sys.modules[name]
        importlib.import_module(name)


def open_database(db_dir: str | os.PathLike[str], *, write: bool = True) -> Any:
    """The JSON database kept in ``db_dir`` (created if missing). Only read (``write`` False: records applied,
    none added), it may sit on a read-only mount or a shared cache another user owns."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(db_dir)
    if write:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TTGraphError(folder, f"cannot create the tuning database folder: {err.strerror or err}") from err
        if not os.access(folder, os.W_OK):
            raise TTGraphError(folder, "tuning database folder is not writable")
    elif not all((folder / name).is_file() for name in DATABASE_FILES):
        raise TTGraphError(folder, "no tuning records for this target here (give tune=N to create them)")
    try:
        return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=write)
    except Exception as err:  # TVM's JSON reader: "parallel_for_dynamic error with Unexpected token …"
        raise TTGraphError(
            folder,
            "tuning database is damaged (a record file cut short by an interrupted run?): "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}; "
            "remove its .json files, or give another tune_db (or tune_db=False)",
        ) from err


DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")  # what JSONDatabase keeps in its folder
FAILED_RUN_S = 1e9  # MetaSchedule records a candidate that failed to build or run as taking 1e10 s


def _has_record(database: Any, mod: Any) -> bool:
    """Whether ``mod`` has a measured schedule in ``database`` (a record of failures only is none)."""
    if not database.has_workload(mod):
        return False
    top = database.get_top_k(database.commit_workload(mod), 1)
    return bool(top) and bool(top[0].run_secs) and min(float(t) for t in top[0].run_secs) < FAILED_RUN_S


#: MetaSchedule's XGBModel scores candidates at random until it has this many measurements (its
#: ``num_warmup_samples``); a learned model pays only with several times as many trials.
XGB_WARMUP_SAMPLES = 100
LEARNED_MIN_TRIALS = 2 * XGB_WARMUP_SAMPLES
LEARNED_MIN_MINUTES = 30.0


def check_minutes(minutes: float | None) -> None:
    """A time bound must be a positive, finite number of minutes (or None: no time bound)."""
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise TTGraphError("tune_minutes", f"expected a positive number of minutes, got {minutes}")


def describe_bound(trials: int, minutes: float | None) -> str:
    """ "64 trials", "20 min" or "64 trials and 20 min", for logs and summaries."""
    return " and ".join(([f"{trials} trials"] if trials else []) + ([f"{minutes:g} min"] if minutes else []))


def _have_xgboost() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def search_setup(trials: int, minutes: float | None, have_xgboost: bool) -> tuple[str, str]:
    """(cost model, search strategy) for a tuning budget.

    Evolutionary search ranks candidates with a cost model; MetaSchedule's xgboost model is random below its
    warm-up, and each evolutionary round (512 candidates, 4 mutation rounds) took 20–30 s per task on a 2-core
    machine, whatever the trial count. Measured with ``xgboost-cpu`` 3.2 on the rapidocr classifier (55 tasks,
    64 trials): 2111 s against 198 s sampling at random for the same trials. So the learned model is used
    only when xgboost is installed and the budget is large (``LEARNED_MIN_TRIALS`` trials, or a time bound of
    ``LEARNED_MIN_MINUTES`` or more); otherwise schedules are sampled (replay-trace, random scores).
    """
    big = trials >= LEARNED_MIN_TRIALS or (trials == 0 and minutes is not None and minutes >= LEARNED_MIN_MINUTES)
    return ("xgb", "evolutionary") if have_xgboost and big else ("random", "replay-trace")


def _deadline_callback(deadline: float) -> Any:
    """A measure callback that ends tuning once ``deadline`` (``time.monotonic()``) has passed.

    MetaSchedule bounds trials, not time. Its task scheduler calls the measure callbacks after every measured
    batch (after the default callbacks have written the batch to the database), so raising there stops the
    run with everything measured so far kept; :func:`tune` catches it.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class StopAt(PyMeasureCallback):
        def __init__(self) -> None:
            self.fired = False

        def apply(self, task_scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
            if time.monotonic() >= deadline:
                self.fired = True
                raise TimeoutError("ttgraph: the tuning time is up")

    return StopAt()


def tune(
    mod: Any,
    target: Any,
    trials: int,
    db_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    minutes: float | None = None,
    tracker: tuple[str, int] | None = None,
    key: str | None = None,
    linker: str | None = None,
) -> TuneStats:
    """Tune the fused functions of ``mod`` for ``target`` with at most ``trials`` measured candidates and, with
    ``minutes``, for at most about that long (the batch in flight when time is up is finished and kept).
    ``trials=0`` with ``minutes``: bounded by time only.

    Candidates are measured on this machine, or with ``tracker`` (host, port) and ``key`` on a device that
    registered with that TVM RPC tracker (a phone or board running ``python -m tvm.exec.rpc_server --tracker
    HOST:PORT --key KEY``): each candidate is then built here, linked into a shared library by ``linker`` (the
    target's cross compiler) and uploaded, so the device needs only the TVM runtime, no compiler."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    if trials == 0 and minutes is None:
        raise TTGraphError("tune", f"expected a positive number of trials, got {trials}")
    check_minutes(minutes)
    if trials < 0:
        raise TTGraphError("tune", f"expected a number of trials >= 0, got {trials}")
    start = time.monotonic()
    database = open_database(db_dir)
    with target:
        fused = tvm.transform.Sequential(fuse_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    todo = [t for t in tasks if not _has_record(database, t.dispatched[0])]
    stats = TuneStats(len(tasks), len(tasks) - len(todo), len(todo), trials, Path(db_dir))
    log.info(
        "tuning: %d tasks, %d already in %s, %s",
        stats.tasks,
        stats.reused,
        db_dir,
        describe_bound(trials, minutes),
    )
    if not todo:
        return stats
    cost_model, strategy = search_setup(trials, minutes, _have_xgboost())
    log.info("tuning: %s search, %s cost model", strategy, cost_model)
    load_tensor_intrinsics(target)
    console = Path(db_dir) / "logs" / "console.log"
    with _foreign_handlers_set_aside(), _stdout_into(console):  # the task contexts set up MetaSchedule's loggers
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work_dir=str(db_dir), strategy=strategy, seed=seed
        )
    with _private_tmpdir():  # the builder's workers stage every candidate in a temporary folder of their own
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        stop = None
        if minutes is not None:
            stop = _deadline_callback(start + 60.0 * minutes)
            callbacks.append(stop)
        # Time-bounded runs use small batches, so that every task gets a first round early and the bound is kept —
        # also when a trial count is given beside the time (1000 trials over 131 tasks made batches of 7 each).
        per_iter = max(1, min(64, trials // len(todo))) if trials else TIME_BOUNDED_BATCH
        if minutes is not None:
            per_iter = min(per_iter, TIME_BOUNDED_BATCH)
        workers = max(1, os.cpu_count() or 1)
        builder = ms.builder.LocalBuilder(
            max_workers=workers,
            timeout_sec=BUILD_TIMEOUT_S,
            f_build=_candidate_build,
            f_export=functools.partial(_export_shared, linker) if tracker is not None else None,
        )
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
        if tracker is not None:
            rpc = ms.runner.RPCConfig(
                tracker_host=tracker[0],
                tracker_port=tracker[1],
                tracker_key=key,
                session_timeout_sec=int(RUN_TIMEOUT_S),
            )
            runner = ms.runner.RPCRunner(
                rpc_config=rpc, evaluator_config=evaluator, f_alloc_argument=_alloc_uploaded_arguments, max_workers=1
            )
        else:
            runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator)
        with _foreign_handlers_set_aside(), _stdout_into(console):
            _run_tuning(
                ms, contexts, weights, db_dir, trials, per_iter, builder, runner, database, cost_model, callbacks, stop
            )
        if stop is not None and stop.fired:
            log.info("tuning: %g min are up; the measured records are kept", minutes)
        measured = sum(_has_record(database, t.dispatched[0]) for t in todo)
        if not measured:  # every candidate failed to build or run: what would be built is untuned
            raise TTGraphError(
                "tune",
                f"no candidate of the {len(todo)} tasks built and ran {'on the device' if tracker else 'here'} "
                f"(a CPU feature the target names and this machine lacks?); see {Path(db_dir) / 'logs'}",
            )
        return replace(
            stats, tuned=measured, seconds=time.monotonic() - start, timed_out=bool(stop is not None and stop.fired)
        )


def _run_tuning(
    ms: Any,
    contexts: Any,
    weights: Any,
    db_dir: str | os.PathLike[str],
    trials: int,
    per_iter: int,
    builder: Any,
    runner: Any,
    database: Any,
    cost_model: str,
    callbacks: list[Any],
    stop: Any,
) -> None:
    """``tune_tasks``; the exception of the deadline callback ``stop`` (if it fired) ends it quietly."""
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(db_dir),
            max_trials_global=trials or UNBOUNDED_TRIALS,
            num_trials_per_iter=per_iter,
            builder=builder,
            runner=runner,
            database=database,
            cost_model=cost_model,
            measure_callbacks=callbacks,
            # the gradient scheduler collects no measured batch (so runs no callback, and no deadline) until every
            # task has had its first: on a detector's 131 tasks, minutes past the bound; round-robin collects each
            # task's batch as it finishes
            task_scheduler="gradient" if stop is None else "round-robin",
        )
    except Exception:
        if stop is None or not stop.fired:
            raise


def _alloc_uploaded_arguments(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list[Any]:
    """Runner worker: the candidate's arguments, filled here at random and uploaded to the device.

    MetaSchedule fills them on the device with ``tvm.contrib.random.random_fill_for_measure``, which the
    runtime-only TVM builds that phones and boards run lack (measured: the aarch64 runtime wheel has no
    such function, and every candidate failed to run).
    """
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    rng = np.random.default_rng(0)

    def fill(tensor: Any) -> None:
        shape, dtype = tuple(int(d) for d in tensor.shape), str(tensor.dtype)
        if "float" in dtype:
            data = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        else:
            data = rng.integers(0, 8, size=shape).astype(dtype)
        tensor.copyfrom(data)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _export_shared(linker: str | None, mod: Any) -> str:
    """Builder worker: link a candidate into a shared library for a remote device (MetaSchedule's default
    exports a .tar, which the device would have to link itself)."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="ttgraph-candidate-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler(linker) if linker else cc.create_shared)
    return path


@contextlib.contextmanager
def _private_tmpdir() -> Iterator[None]:
    """TMPDIR (and :mod:`tempfile`'s) a fresh folder while tuning, removed after it however tuning ends: the
    builder's workers stage each candidate in a ``tmpXXXX`` folder of their own, which an interrupted run left in
    /tmp by the hundred."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="ttgraph-tune-")
    before_env, before_module = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before_env
        tempfile.tempdir = before_module
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _foreign_handlers_set_aside() -> Iterator[None]:
    """Detach foreign handlers from MetaSchedule's logger while it tunes, and put them back afterwards.

    ``tune_tasks`` rebuilds that logger with ``logging.config.dictConfig`` from the *names* of the handlers
    already on it, and fails on any it did not create: an unnamed one gives "'NoneType' object has no
    attribute 'format'" — e.g. the capture handler pytest attaches, or one the calling application added.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in logger.handlers if not (h.get_name() or "").startswith("tvm.s_tir.meta_schedule.")]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


@contextlib.contextmanager
def _stdout_into(path: Path) -> Iterator[None]:
    """MetaSchedule logs its progress tables through a handler on ``ext://sys.stdout``, which would break
    ``compile --json`` and make the library print: while it tunes, stdout goes to ``path`` beside its other logs,
    and the handlers it bound there are taken off its logger after."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as sink, contextlib.redirect_stdout(sink):
        try:
            yield
        finally:
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and handler.stream is sink:
                    logger.removeHandler(handler)


def records_for(mod: Any, target: Any, db_dir: str | os.PathLike[str]) -> TuneStats:
    """How many of ``mod``'s tasks the records in ``db_dir`` cover (no tuning): what a build that only applies
    a database says it applied."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    database = open_database(db_dir, write=False)
    with target:
        fused = tvm.transform.Sequential(fuse_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    covered = sum(_has_record(database, t.dispatched[0]) for t in tasks)
    return TuneStats(len(tasks), covered, 0, 0, Path(db_dir))


def build_with_database(mod: Any, target: Any, db_dir: str | os.PathLike[str]) -> Any:
    """``relax.build`` with the tuned schedules of ``db_dir`` applied (untuned functions stay default)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.compile_relax(open_database(db_dir, write=False), mod, target, params=None)
