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
from typing import Any, Callable, Iterable, Iterator, Union

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
    return folder


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`."""
    path = Path(path)
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
