"""Output files are written atomically and never over the input: a crash leaves the old file or none."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ttgraph.errors import TTGraphError


def check_output_path(path: str | os.PathLike[str], inputs: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """Fail early, before any work, if ``path`` cannot be written or would overwrite one of ``inputs``."""
    target = Path(path)
    for source in inputs:
        if _same_file(Path(source), target):
            raise TTGraphError(target, f"output path is the input file {source}; choose another output file")
    parent = target.parent
    if not parent.is_dir():
        raise TTGraphError(target, f"output directory {os.fspath(parent)!r} does not exist")
    if target.is_dir():
        raise TTGraphError(target, "output path is a directory")
    if target.exists() and not target.is_file():  # the rename would replace a device or FIFO (as root: /dev/null)
        raise TTGraphError(target, "output path is a device, FIFO or socket, not a file; choose a file to write")
    try:  # os.access says yes to root everywhere; only a real file tells whether we can write here
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{target.name}.probe."):
            pass
    except OSError as err:
        raise TTGraphError(target, f"output directory {os.fspath(parent)!r} is not writable ({err.strerror})") from err
    return target


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system, so ``os.replace`` is atomic), removed after."""
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            yield Path(tmp)
    except OSError as err:
        raise TTGraphError(target, f"cannot write: {err.strerror or err}") from err


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


@contextmanager
def staged_writes(files: Sequence[tuple[str | os.PathLike[str], bytes]]) -> Iterator[None]:
    """Write every file to a temporary beside it, run the body (e.g. the model's own atomic write), then
    rename them all into place: a full disk, or a body that fails, leaves none of them behind."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            target = check_output_path(path)
            try:
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                staged.append((tmp, target))
                usual_permissions(tmp, replacing=target)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except OSError as err:
                raise TTGraphError(target, f"cannot write: {err.strerror or err}") from err
        yield
        for tmp, target in staged:
            os.replace(tmp, target)
        staged = []
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


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
    except OSError:
        return False
