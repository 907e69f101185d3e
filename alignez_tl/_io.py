"""Atomic file writes: a temporary file in the target folder, then `os.replace`.

A reader (or a crash, or Ctrl-C) never sees a half-written file: the target either
keeps its old content or gets the whole new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def check_writable_folder(folder: PathLike) -> Path:
    """Raise a clear error unless `folder` exists (or can be created) and is writable."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"cannot write in {folder}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {folder}: {probe} is not writable")
    # os.access says yes to root everywhere, also in /sys or on a read-only mount: the
    # proof is a temporary file actually created (and removed) where the output goes.
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".alignez-probe.", suffix=".tmp")
    except OSError as exc:
        raise PermissionError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp)
    return folder


def resolve_output(path: PathLike) -> Path:
    """The file an output path really names: a symlink is written through to its target."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`.

    A `path` that is a symlink keeps its link: the new content replaces the link's target.
    """
    path = resolve_output(path)
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is not a folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600): give it the mode a plain open() would
        # (the old file's mode when overwriting, else 0666 minus the umask).
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 `text` atomically (flushed and fsynced before the rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def atomic_write_jsonl(path: PathLike, records: Iterable[dict]) -> Path:
    """One JSON object per line, UTF-8, written atomically."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


@contextlib.contextmanager
def staged_folder(final: PathLike) -> Iterator[Path]:
    """Yield a folder to write a run's files into; it becomes `final` when the block ends.

    A `final` that already exists (empty, or overwritten with --force) is written into
    directly. Otherwise the files go into a hidden sibling temporary folder, which is
    renamed to `final` at the end, also after an error once it holds files (each file in
    it was written atomically, so what is there is complete); one still empty is removed
    together with the parent folders this call created. So an interrupted run never
    leaves an empty or half-named output folder behind.
    """
    final = Path(final)
    if final.is_dir():
        yield final
        return
    created = [d for d in final.parents if not d.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private: give it a plain mkdir's mode
    try:
        yield staging
    finally:
        if any(staging.iterdir()):
            os.replace(staging, final)
        else:
            staging.rmdir()
            for folder in created:  # leaf first
                try:
                    folder.rmdir()
                except OSError:
                    break


LOCK_SUFFIX = ".alignez-lock"


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def output_lock(target: PathLike) -> Iterator[Optional[Path]]:
    """Hold `target` for one run: a second run writing to the same output is refused.

    A hidden lock file next to the target, created exclusively, holds this process's
    id; it is removed when the block ends. A lock left by a process that no longer runs
    (killed with SIGKILL) is taken over. Raises `FileExistsError` naming the running
    process. Yields None (no lock) when the target's folder does not exist yet.
    """
    target = resolve_output(target)
    if not target.parent.is_dir():
        yield None
        return
    lock = _lock_path(target)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and holder != os.getpid() and pid_alive(holder):
                raise FileExistsError(
                    f"{target} is being written by another alignez run (process {holder}); wait for it "
                    f"to finish, or, if no such run exists, remove {lock}"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)  # stale: its process is gone
            continue
        except OSError:  # not writable there: the command's own check says so, with the reason
            yield None
            return
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:  # pragma: no cover - lost the race for a stale lock twice
        raise FileExistsError(f"{target} is being written by another alignez run (lock {lock})")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def _lock_holder(lock: Path) -> Optional[int]:
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True
