"""Evaluation records: one judge verdict (`PairVerdict`), one base-vs-steered comparison
(`Comparison`) and their JSONL file (`save_comparisons` / `load_comparisons`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Union

from ..errors import ArgumentTypeError

__all__ = ["OUTCOMES", "Comparison", "PairVerdict", "load_comparisons", "save_comparisons"]

OUTCOMES = ("win", "lose", "tie")


@dataclass
class PairVerdict:
    """One judge verdict on a pair shown as (A, B).

    Attributes:
        verdict: `"A"`, `"B"` or `"tie"`; None only when the judge failed and the
            failure was recorded (`error` says why).
        judged: False when no judge was called (identical answers are ties).
        logprobs: `LogprobJudge`: the log-probability of each candidate verdict token.
        raw: `HTTPJudge`: the reply text the verdict was parsed from.
        attempts: `HTTPJudge`: how many requests it took.
        error: why the judge failed (never contains an API key).
    """

    verdict: Optional[str]
    judged: bool = True
    logprobs: Optional[dict[str, float]] = None
    raw: Optional[str] = None
    attempts: int = 1
    error: Optional[str] = None


@dataclass
class Comparison:
    """One base-vs-steered comparison of the answers to one prompt.

    Attributes:
        query: the prompt.
        base, steered: the two answers.
        outcome: from the steered answer's side: `"win"`, `"lose"`, `"tie"`, or
            `"error"` when the judge failed and `on_error="record"` kept going.
        base_first: True when the base answer was shown as A (None for scorer judges,
            which see one answer at a time).
        verdict: the judge's raw verdict about the order shown (`"A"`, `"B"`, `"tie"`).
        judged: False when the outcome needed no judge (identical answers).
        judge: the judge's name.
        objective: what was judged (e.g. "helpful", "harmless"), when known.
        detail: judge-specific numbers: log-probs, reply text, or both scores.
        error: why the judge failed, for `outcome == "error"`.
    """

    query: str
    base: str
    steered: str
    outcome: str
    base_first: Optional[bool]
    verdict: Optional[str]
    judged: bool
    judge: str
    objective: Optional[str] = None
    detail: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Comparison":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


def save_comparisons(path: Union[str, os.PathLike], comparisons: Iterable[Comparison]) -> None:
    """Write comparisons as JSONL (atomically). No judge credentials are in them."""
    from .._io import atomic_write_jsonl

    atomic_write_jsonl(path, [_as_comparison(c).to_dict() for c in comparisons])


def load_comparisons(path: Union[str, os.PathLike]) -> list[Comparison]:
    """Read comparisons written by `save_comparisons`."""
    with open(path, encoding="utf-8") as fh:
        return [Comparison.from_dict(json.loads(line)) for line in fh if line.strip()]


def _as_comparison(c: Any) -> Comparison:
    if isinstance(c, Comparison):
        return c
    if isinstance(c, dict):
        return Comparison.from_dict(c)
    raise ArgumentTypeError(f"expected a Comparison or its dict, got {type(c).__name__}")
