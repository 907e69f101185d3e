"""The pairwise judge API: the judging prompt, the verdict parser, one or many verdicts
(`judge_pair`, `judge_pairs`) and base-vs-steered comparison in a seeded, balanced
A/B order (`pairwise_compare`, `balanced_order`).
"""

from __future__ import annotations

import random
import re
from typing import Any, Optional, Sequence

from ..errors import ArgumentTypeError, InvalidArgumentError, JudgeError
from .records import Comparison, PairVerdict
from .scorers import ScorerJudge

__all__ = [
    "ASPECTS",
    "VERDICTS",
    "balanced_order",
    "judge_pair",
    "judge_pairs",
    "judge_prompt",
    "pairwise_compare",
    "parse_verdict",
]

ASPECTS: tuple[str, ...] = ("helpfulness", "factuality", "clarity", "depth", "engagement")
VERDICTS = ("A", "B", "tie")


# =========================================================================== prompts


def judge_prompt(
    query: str,
    answer_a: str,
    answer_b: str,
    *,
    aspects: Sequence[str] = ASPECTS,
    tie: bool = True,
    reply: str = "prefill",
) -> str:
    """The pairwise judging instruction shared by `LogprobJudge` and `HTTPJudge`.

    One overall prompt names every aspect (the judge weighs them together); pass a
    single aspect to judge it alone. The last line fixes the reply format:
    `reply="prefill"` (the logprob judge) asks for `Better answer: A`, and the judge's
    reply is then started with `Better answer:` so the verdict token comes next;
    `reply="word"` (the HTTP judge) asks for the verdict as the reply's only word.
    """
    aspects = _check_aspects(aspects)
    options = "A, B or tie" if tie else "A or B"
    if reply == "prefill":
        last = f'Which answer is better? Reply with {options} only, in the form "Better answer: A".'
    elif reply == "word":
        last = f"Which answer is better? Reply with one word only: {options}."
    else:
        raise InvalidArgumentError(f"reply must be 'prefill' or 'word', got {reply!r}")
    return (
        "Compare two answers to the same question. Judge them on "
        f"{_english_list(aspects)}. Do not let the order of the answers or their "
        "length alone decide.\n\n"
        f"Question:\n{query}\n\n"
        f"Answer A:\n{answer_a}\n\n"
        f"Answer B:\n{answer_b}\n\n"
        f"{last}"
    )


def _english_list(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _check_aspects(aspects: Sequence[str]) -> tuple[str, ...]:
    if isinstance(aspects, str):
        aspects = (aspects,)
    aspects = tuple(aspects)
    if not aspects or not all(isinstance(a, str) and a.strip() for a in aspects):
        raise InvalidArgumentError(f"aspects must be a non-empty list of names, got {aspects!r}")
    return aspects


_VERDICT_RE = re.compile(r"""^[\s*_"'`(\[]*([A-Za-z]+)(?=$|[\s.,:;!)\]*_"'`])""")


def parse_verdict(text: Any) -> Optional[str]:
    """The verdict of a judge reply, or None for anything else.

    Strict rule: after leading whitespace and markdown/quote characters
    (`* _ " ' ` ( [`), the first word must be exactly `A` or `B` (upper case) or `tie`
    (any case), followed by the end, whitespace or punctuation (`. , : ; ! ) ] * _ " '`).
    So `"A"`, `"**B**"`, `"Tie."` and `"A is better"` parse; `"Answer A"`,
    `"a"`, `"A/B"` and `"Better answer: A"` do not.
    """
    if not isinstance(text, str):
        return None
    m = _VERDICT_RE.match(text)
    if not m:
        return None
    word = m.group(1)
    if word in ("A", "B"):
        return word
    if word.lower() == "tie":
        return "tie"
    return None


# =========================================================================== judge API


def _judge_name(judge: Any) -> str:
    return str(getattr(judge, "name", None) or type(judge).__name__)


def _call_judge(judge: Any, query: str, a: str, b: str, aspects: tuple[str, ...]) -> PairVerdict:
    if hasattr(judge, "judge"):
        out = judge.judge(query, a, b, aspects=aspects)
    elif callable(judge):
        out = judge(query, a, b)
    else:
        raise ArgumentTypeError(
            f"{type(judge).__name__} is not a judge: pass an object with "
            ".judge(query, a, b, aspects=...) or a callable (query, a, b) -> 'A'|'B'|'tie'"
        )
    if isinstance(out, str):
        if out not in VERDICTS:
            raise JudgeError(f"the judge returned {out!r}, not one of {VERDICTS}")
        out = PairVerdict(out)
    if not isinstance(out, PairVerdict) or out.verdict not in VERDICTS:
        raise JudgeError(f"the judge returned {out!r}, not a PairVerdict with a verdict in {VERDICTS}")
    return out


def judge_pair(
    judge: Any, query: str, answer_a: str, answer_b: str, *, aspects: Sequence[str] = ASPECTS
) -> PairVerdict:
    """One verdict on (A, B). Answers equal after stripping whitespace are a tie, no call.

    `judge` is a `LogprobJudge`, an `HTTPJudge`, any object with
    `.judge(query, a, b, aspects=...) -> PairVerdict`, or a plain callable
    `(query, a, b) -> "A" | "B" | "tie"`.
    """
    aspects = _check_aspects(aspects)
    if answer_a.strip() == answer_b.strip():
        return PairVerdict("tie", judged=False)
    return _call_judge(judge, query, answer_a, answer_b, aspects)


def judge_pairs(
    judge: Any,
    queries: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    *,
    aspects: Sequence[str] = ASPECTS,
    on_error: str = "raise",
) -> list[PairVerdict]:
    """`judge_pair` for many pairs (batched when the judge has `judge_batch`).

    `on_error="record"`: a `JudgeError` on one pair gives a `PairVerdict` with
    `verdict=None` and the error, and the rest go on; `"raise"` (default) stops.
    """
    if on_error not in ("raise", "record"):
        raise InvalidArgumentError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    queries, answers_a, answers_b = list(queries), list(answers_a), list(answers_b)
    if not len(queries) == len(answers_a) == len(answers_b):
        raise InvalidArgumentError(f"{len(queries)} queries, {len(answers_a)} A answers and {len(answers_b)} B answers")
    aspects = _check_aspects(aspects)
    out: list[Optional[PairVerdict]] = [None] * len(queries)
    todo = []
    for i, (a, b) in enumerate(zip(answers_a, answers_b)):
        if a.strip() == b.strip():
            out[i] = PairVerdict("tie", judged=False)
        else:
            todo.append(i)
    if todo and on_error == "raise" and hasattr(judge, "judge_batch"):
        got = judge.judge_batch(
            [queries[i] for i in todo],
            [answers_a[i] for i in todo],
            [answers_b[i] for i in todo],
            aspects=aspects,
        )
        for i, v in zip(todo, got):
            out[i] = v
    else:
        for i in todo:
            try:
                out[i] = _call_judge(judge, queries[i], answers_a[i], answers_b[i], aspects)
            except JudgeError as exc:
                if on_error == "raise":
                    raise
                out[i] = PairVerdict(None, error=str(exc))
    return out  # type: ignore[return-value]


def pairwise_compare(
    judge: Any,
    queries: Sequence[str],
    base_answers: Sequence[str],
    steered_answers: Sequence[str],
    *,
    seed: int = 0,
    aspects: Sequence[str] = ASPECTS,
    objective: Optional[str] = None,
    on_error: str = "raise",
) -> list[Comparison]:
    """Compare steered with base answers, prompt by prompt.

    The order shown to the judge is exactly balanced and seeded: `n // 2` prompts show
    the base answer first, the others the steered answer first (for odd `n` the extra
    prompt's side is a seeded coin), in a seeded random permutation. A judge that
    always prefers position A therefore gets a net win of 0 (±1 prompt), not a bias.
    The judge's A/B verdict is mapped back to the steered answer's side: `win`, `lose`
    or `tie`. Identical answers (after stripping whitespace) are ties with no judge
    call. A `ScorerJudge` is compared by scores instead (no order involved).
    """
    queries, base_answers, steered_answers = list(queries), list(base_answers), list(steered_answers)
    if not len(queries) == len(base_answers) == len(steered_answers):
        raise InvalidArgumentError(
            f"{len(queries)} queries, {len(base_answers)} base and {len(steered_answers)} steered answers"
        )
    named = (("queries", queries), ("base answers", base_answers), ("steered answers", steered_answers))
    for name, items in named:
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise ArgumentTypeError(f"{name} must be strings; item {bad[0]} is {type(items[bad[0]]).__name__}")
    if isinstance(judge, ScorerJudge):
        return judge.compare(queries, base_answers, steered_answers, objective=objective)
    aspects = _check_aspects(aspects)
    base_first = balanced_order(len(queries), seed)
    shown_a = [b if bf else s for b, s, bf in zip(base_answers, steered_answers, base_first)]
    shown_b = [s if bf else b for b, s, bf in zip(base_answers, steered_answers, base_first)]
    verdicts = judge_pairs(judge, queries, shown_a, shown_b, aspects=aspects, on_error=on_error)
    name = _judge_name(judge)
    out = []
    for q, b, s, bf, v in zip(queries, base_answers, steered_answers, base_first, verdicts):
        if v.verdict is None:
            outcome = "error"
        elif v.verdict == "tie":
            outcome = "tie"
        else:
            steered_side = "B" if bf else "A"
            outcome = "win" if v.verdict == steered_side else "lose"
        detail: dict[str, Any] = {}
        if v.logprobs is not None:
            detail["logprobs"] = v.logprobs
        if v.raw is not None:
            detail["raw"] = v.raw
            detail["attempts"] = v.attempts
        out.append(Comparison(q, b, s, outcome, bf, v.verdict, v.judged, name, objective, detail, v.error))
    return out


def balanced_order(n: int, seed: int = 0) -> list[bool]:
    """`n` seeded flags, True = base shown first: exactly `n // 2` True (plus a coin for odd n)."""
    rng = random.Random(seed)
    flags = [True] * (n // 2) + [False] * (n // 2)
    if n % 2:
        flags.append(rng.random() < 0.5)
    rng.shuffle(flags)
    return flags
