"""Atomic file writes: a temporary file in the target folder, then `os.replace`.

A reader (or a crash, or Ctrl-C) never sees a half-written file: the target either
keeps its old content or gets the whole new one. Every file alignez-tl writes (subspaces,
preference sets, reports, result files) goes through these functions.
"""

from ._io import atomic_write, atomic_write_jsonl, atomic_write_text, check_writable_folder

__all__ = ["atomic_write", "atomic_write_jsonl", "atomic_write_text", "check_writable_folder"]
