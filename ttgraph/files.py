"""Output files are written atomically and never over the input: a crash leaves the old file or none."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeGuard

from ttgraph.errors import TTGraphError


def check_output_path(path: str | os.PathLike[str], inputs: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """Fail early, before any work, if ``path`` cannot be written or would overwrite one of ``inputs``. The path to
    write: a symbolic link's target, as ``open()`` would write (a rename over the link replaced "latest.onnx →
    v3.onnx" by a plain file and left v3.onnx old)."""
    target = Path(path)
    for source in inputs:
        if _same_file(Path(source), target):
            raise TTGraphError(target, f"output path is the input file {source}; choose another output file")
    parent = target.parent
    if not parent.is_dir():
        raise TTGraphError(target, f"output directory {os.fspath(parent)!r} does not exist")
    limit = _name_max(parent)
    if len(os.fsencode(target.name)) > limit:  # else OSError "File name too long" from the first stat
        size = len(os.fsencode(target.name))
        raise TTGraphError(target, f"the file name is {size} bytes; this file system allows {limit}")
    if target.is_symlink():  # after the length check: an over-long name's lstat fails
        real = Path(os.path.realpath(target))
        if real.is_symlink():
            raise TTGraphError(target, "output path is a symbolic link that loops; choose a file to write")
        return check_output_path(real, inputs)
    if target.is_dir():
        raise TTGraphError(target, "output path is a directory")
    if target.exists() and not target.is_file():  # the rename would replace a device or FIFO (as root: /dev/null)
        raise TTGraphError(target, "output path is a device, FIFO or socket, not a file; choose a file to write")
    try:  # os.access says yes to root everywhere; only a real file tells whether we can write here
        with tempfile.NamedTemporaryFile(dir=parent, prefix=temp_prefix(target, "probe.")):
            pass
    except OSError as err:
        raise TTGraphError(target, f"output directory {os.fspath(parent)!r} is not writable ({err.strerror})") from err
    return target


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def temp_prefix(target: Path, tag: str = "") -> str:
    """``.<name>.<tag>`` for a temporary file beside ``target``, the name cut to 100 bytes: a legal 250-byte
    output name plus the temporary's suffix went over the file system's limit (and read as "not writable")."""
    name = os.fsencode(target.name)[:100].decode(errors="ignore")
    return f".{name}.{tag}"


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (:func:`staged_writes` of one file)."""
    target = check_output_path(path)
    with staged_writes([(target, data)]):
        pass
    return target


def usual_permissions(path: str | os.PathLike[str], executable: bool = False, replacing: Path | None = None) -> None:
    """The mode a plain ``open()`` (or a linker) would give ``path``: the mode of the file it is ``replacing``,
    else the default under the current umask. A file staged with ``mkstemp`` is 0600, which a service reading the
    output as another user cannot open."""
    if replacing is not None and replacing.is_file():
        os.chmod(path, stat.S_IMODE(replacing.stat().st_mode))
        return
    os.chmod(path, (0o777 if executable else 0o666) & ~_umask())


def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every thread for a moment)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only portable way, briefly
    os.umask(mask)
    return mask


class Staging:
    """Files written beside their targets, waiting for :func:`staged_writes` to rename them all into place."""

    def __init__(self) -> None:
        self.renames: list[tuple[Path, Path]] = []
        self.folders: list[Path] = []

    def write(self, target: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target))
            self.renames.append((Path(tmp), target))
            usual_permissions(tmp, replacing=target)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as err:
            raise TTGraphError(target, f"cannot write: {err.strerror or err}") from err

    def folder(self, target: Path) -> Path:
        """A temporary folder beside ``target`` (same file system, so the renames are atomic), removed after."""
        try:
            folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target)))
        except OSError as err:
            raise TTGraphError(target, f"cannot write: {err.strerror or err}") from err
        self.folders.append(folder)
        return folder


@contextmanager
def staged_writes(files: Sequence[tuple[str | os.PathLike[str], bytes]]) -> Iterator[Staging]:
    """Write every file to a temporary beside it, run the body (which may stage more, e.g. the model with its
    external data), then rename them all into place with Ctrl-C and SIGTERM held: a full disk, a body that
    fails or a signal leaves all of the old files or all of the new ones, never a new model beside an old
    report."""
    staging = Staging()
    try:
        for path, data in files:
            staging.write(check_output_path(path), data)
        yield staging
        with held_signals():
            for tmp, target in staging.renames:
                os.replace(tmp, target)
            staging.renames = []
    finally:
        for tmp, _ in staging.renames:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for folder in staging.folders:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP for a few renames that must happen together: a signal arriving meanwhile
    is handled, as it would have been, once they are done. (Python runs handlers in the main thread only, so
    elsewhere nothing is deferred.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, lambda signum, _frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for number in caught:
            later = previous[signal.Signals(number)]
            if callable(later):
                later(number, None)
            elif later in (signal.SIG_DFL, None):
                os.kill(os.getpid(), number)


def distinct_outputs(paths: Sequence[str | os.PathLike[str] | None]) -> None:
    """Two outputs of one run (model, report, HTML) must not be the same file: the last would replace the first."""
    given = [Path(p) for p in paths if p]
    for i, a in enumerate(given):
        for b in given[:i]:
            if _same_file(a, b):
                raise TTGraphError(
                    a, "the same file is given for two outputs (model, report, HTML report); give each its own name"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False


def default_cache_dir() -> Path:
    """Where measured tables (the planner's op costs, the latency budget's conv timings) live:
    ``$TTGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/ttgraph``, else ``~/.cache/ttgraph``."""
    if os.environ.get("TTGRAPH_CACHE_DIR"):
        return Path(os.environ["TTGRAPH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttgraph"


_UNWRITABLE_CACHES: set[Path] = set()


def is_seconds(value: object) -> TypeGuard[int | float]:
    """Whether a value read back from a timing cache is a time: a finite number ≥ 0 (not a bool, a string or NaN
    from an edited or damaged file)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def write_cache(path: Path, data: bytes) -> None:
    """Write a cache file atomically, creating its folder. A cache that cannot be written (a read-only home in a
    container) costs one warning per file and the next run's measuring, not the measurements in hand and the run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except (OSError, TTGraphError) as err:
        if path not in _UNWRITABLE_CACHES:
            _UNWRITABLE_CACHES.add(path)
            logging.getLogger("ttgraph.compress").warning(
                "measurements not cached in %s (%s); set $TTGRAPH_CACHE_DIR to a writable folder to keep them",
                path,
                err,
            )
