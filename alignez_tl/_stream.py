"""Streamed JSONL outputs that survive interruption, and `--resume`.

A long command (`alignez generate`, `prefs`, `eval`) writes its JSONL output as it goes:
a header line first (what a resume must match: format, model, objective, settings),
then whole rows after every batch. Each `RowWriter.write` is one `write` of whole lines,
then `flush` and `fsync`, so a kill (Ctrl-C, SIGTERM, even SIGKILL) leaves a file whose
complete lines are all valid JSON; at worst the last line is cut short.

`read_existing` reads such a file back for a resume: the complete lines, the byte
offset after each (so a writer can truncate to any of them), and whether a partial
last line was dropped. `compare_headers` refuses a file written with other settings,
naming the first field that differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence, Union

from .errors import ResumeError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["Existing", "RowWriter", "compare_headers", "dump_line", "read_existing", "resumed_rows"]


def dump_line(record: dict[str, Any]) -> str:
    """One JSONL line, as `atomic_write_jsonl` writes it (UTF-8 text kept readable)."""
    return json.dumps(record, ensure_ascii=False)


@dataclass
class Existing:
    """The complete lines of a streamed file: its header, its rows, and where each ends.

    `ends[i]` is the byte offset just after row `i`'s newline; `header_end` the one
    after the header's. `partial` is true when an incomplete last line was dropped.
    """

    header: dict[str, Any]
    rows: list[dict[str, Any]]
    header_end: int
    ends: list[int]
    partial: bool

    def end_of(self, n_rows: int) -> int:
        """The byte offset after the first `n_rows` rows (after the header for 0)."""
        return self.ends[n_rows - 1] if n_rows else self.header_end


def read_existing(path: PathLike) -> Optional[Existing]:
    """The complete lines of `path`; None when it is missing or holds no complete line.

    A complete line that is not a JSON object, or a first line that is not a header
    (``{"type": "header", ...}``), is a `ResumeError`: such a file was not left by an
    interrupted run, and nothing is guessed.
    """
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise ResumeError(f"cannot resume {path}: it is a folder; give the output file to continue")
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    records: list[dict[str, Any]] = []
    ends: list[int] = []
    pos = 0
    for lineno, line in enumerate(data[:cut].split(b"\n")[:-1], start=1):
        pos += len(line) + 1
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ResumeError(
                f"cannot resume {path}: line {lineno} is not a complete JSON line ({type(exc).__name__}); only "
                "the last line of an interrupted run can be cut short: start over (--force instead of --resume)"
            ) from None
        if not isinstance(record, dict):
            raise ResumeError(
                f"cannot resume {path}: line {lineno} is not a JSON object; start over (--force instead of --resume)"
            )
        records.append(record)
        ends.append(pos)
    if not records:
        return None
    if records[0].get("type") != "header":
        raise ResumeError(
            f"cannot resume {path}: it has no header line (it was not streamed by this version of "
            "alignez-tl); start over (--force instead of --resume)"
        )
    return Existing(records[0], records[1:], ends[0], ends[1:], cut < len(data))


def _differences(found: Any, expected: Any, prefix: str) -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for key in list(expected) + [k for k in found if k not in expected]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in found or key not in expected:
                out.append(name)
            else:
                out += _differences(found[key], expected[key], name)
        return out
    return [] if found == expected else [prefix]


def _lookup(record: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(record, dict) or key not in record:
            return "(absent)"
        record = record[key]
    return record


def compare_headers(found: dict[str, Any], expected: dict[str, Any], path: PathLike) -> None:
    """Refuse (`ResumeError`) a header that differs from `expected`, naming the first field."""
    diffs = _differences(found, expected, "")
    if not diffs:
        return
    field = diffs[0]
    more = f" (and {len(diffs) - 1} more field(s))" if len(diffs) > 1 else ""
    raise ResumeError(
        f"cannot resume {path}: it was written with another {field} ({_short(_lookup(found, field))} in the "
        f"file, {_short(_lookup(expected, field))} now){more}; rerun with the same model, objective and "
        "settings, or start over (--force instead of --resume)"
    )


def resumed_rows(
    path: PathLike, rows: Sequence[dict[str, Any]], queries: Sequence[str], batch_size: int
) -> list[dict[str, Any]]:
    """The rows of a resumed file, checked (`ResumeError`): row i answers query i, and they
    fill whole batches of `batch_size` (batch b is generated with seed + b) unless all done."""
    if len(rows) > len(queries):
        raise ResumeError(f"cannot resume {path}: it holds {len(rows)} rows, but {len(queries)} queries are given")
    for i, row in enumerate(rows):
        if row.get("query") != queries[i]:
            raise ResumeError(
                f"cannot resume {path}: row {i} answers {row.get('query')!r}, but query {i} is now "
                f"{queries[i]!r}: pass the same queries, or start over (--force instead of --resume)"
            )
    if len(rows) % batch_size and len(rows) < len(queries):
        raise ResumeError(
            f"cannot resume {path}: its {len(rows)} rows are not whole batches of {batch_size}; start over "
            "(--force instead of --resume)"
        )
    return list(rows)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) or value == "(absent)" else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RowWriter:
    """Appends whole lines to a streamed JSONL file; each `write` is one write + flush + fsync.

    Fresh (`keep=None`): the file is created (or emptied) and `header` is its first line.
    Resuming (`keep=n`): the file is cut to its first `n` bytes (its complete lines) and
    rows are appended after them.
    """

    def __init__(self, path: PathLike, header: str, keep: Optional[int] = None) -> None:
        self.path = Path(path)
        self._fh: BinaryIO
        self._fresh = keep is None
        self._rows = 0
        if keep is None:
            self._fh = open(self.path, "wb")
            self.write_lines([header])
            self._rows = 0  # the header is not a row
        else:
            self._fh = open(self.path, "r+b")
            self._fh.truncate(keep)
            self._fh.seek(keep)
            self._sync()

    def write_lines(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        self._fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
        self._sync()
        self._rows += len(lines)

    def write(self, rows: Sequence[dict[str, Any]], dump: Callable[[dict[str, Any]], str] = dump_line) -> None:
        self.write_lines([dump(r) for r in rows])

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close()
        if exc_type is not None and self._fresh and self._rows == 0:
            # failed before its first row: a header alone is nothing to keep or resume
            self.path.unlink(missing_ok=True)
