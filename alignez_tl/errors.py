"""The exceptions of evaluation (`alignez_tl.eval`).

They live outside the `eval` package so that every module of it can raise and catch
them without importing another.
"""

from __future__ import annotations

__all__ = ["JudgeError"]


class JudgeError(RuntimeError):
    """A judge could not give a verdict (unreachable, refused, or unparseable replies)."""
