"""Seeded synthetic arithmetic word problems with exact answers, and a documented answer extractor.

`math_problems(n, seed)` builds `n` distinct word problems from twelve templates
(shopping with change, splitting a bill, distance at two speeds, ages, floor area,
percentage discounts, saving, unit conversion, packing, stock keeping, proportional
distance, printing rate). Every problem takes two or three arithmetic steps and has an
exact whole-number answer: the numbers are drawn so that every division is exact.
The same seed always gives the same problems (a private `random.Random(seed)`; the
global random state is never touched).

`extract_answer(text)` reads a model's final number from free text and `is_correct`
compares it with the exact answer, so the benchmark scores pass@1 with one rule that
is written down once (see `extract_answer`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "MATH_KINDS",
    "MAX_MATH_PROBLEMS",
    "MathProblem",
    "extract_answer",
    "is_correct",
    "math_problems",
    "math_prompts",
]


@dataclass(frozen=True)
class MathProblem:
    """One word problem.

    Attributes:
        question: the problem in words, ending with a question mark.
        answer: the exact whole-number answer.
        kind: the template it came from (one of `MATH_KINDS`).
        steps: how many arithmetic operations the solution takes (2 or 3).
        operands: the numbers drawn for the template, as ``(name, value)`` pairs, so the
            answer can be recomputed independently (every value appears in `question`).
    """

    question: str
    answer: int
    kind: str
    steps: int
    operands: tuple[tuple[str, int], ...] = ()

    def operand(self, name: str) -> int:
        """The value of one named operand."""
        for key, value in self.operands:
            if key == name:
                return value
        raise KeyError(f"problem of kind {self.kind!r} has no operand {name!r}")


_Made = tuple[str, int, dict[str, int]]

_NAMES = (
    "Maya",
    "Tom",
    "Priya",
    "Leo",
    "Amara",
    "Jonas",
    "Sofia",
    "Kenji",
    "Lucia",
    "Omar",
    "Hana",
    "Ravi",
    "Elena",
    "Felix",
    "Nadia",
    "Sam",
    "Ines",
    "Kofi",
    "Greta",
    "Yusuf",
)
_RELATIVES = ("mother", "father", "aunt", "uncle")


def _shopping(rng: random.Random) -> _Made:
    name = rng.choice(_NAMES)
    item = rng.choice(("notebooks", "apples", "pencils", "mugs", "candles", "socks", "postcards"))
    extra_item = rng.choice(("pen", "bag", "bottle of water", "roll of tape", "bar of soap"))
    qty, price, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 9)
    cost = qty * price + extra
    note = next(v for v in (10, 20, 50, 100, 200) if v > cost)
    q = (
        f"{name} buys {qty} {item} at {price} dollars each and a {extra_item} for {extra} dollars. "
        f"{name} pays with a {note}-dollar note. How much change, in dollars, does {name} get back?"
    )
    return q, note - cost, {"qty": qty, "price": price, "extra": extra, "note": note}


def _split(rng: random.Random) -> _Made:
    while True:
        people, count, price = rng.randint(2, 8), rng.randint(2, 6), rng.randint(3, 40)
        if (count * price) % people == 0:
            break
    dish = rng.choice(("pizzas", "plates of noodles", "curries", "salads", "burgers", "fish dinners"))
    q = (
        f"A group of {people} friends orders {count} {dish} at {price} dollars each and splits the bill "
        f"equally. "
        f"How many dollars does each friend pay?"
    )
    return q, count * price // people, {"people": people, "count": count, "price": price}


def _speed(rng: random.Random) -> _Made:
    who, low, high = rng.choice((("cyclist", 10, 25), ("runner", 6, 14), ("truck driver", 40, 90), ("boat", 12, 30)))
    v1, v2 = rng.randint(low, high), rng.randint(low, high)
    t1, t2 = rng.randint(1, 5), rng.randint(1, 5)
    q = (
        f"A {who} travels at {v1} km per hour for {t1} hours and then at {v2} km per hour for {t2} hours. "
        f"How many kilometres does the {who} cover in total?"
    )
    return q, v1 * t1 + v2 * t2, {"v1": v1, "t1": t1, "v2": v2, "t2": t2}


def _ages(rng: random.Random) -> _Made:
    name, relative = rng.choice(_NAMES), rng.choice(_RELATIVES)
    while True:  # a plausible age for a parent, aunt or uncle
        factor, age = rng.randint(2, 5), rng.randint(4, 16)
        if 24 <= factor * age <= 70:
            break
    years = rng.randint(2, 15)
    q = (
        f"{name}'s {relative} is {factor} times as old as {name}, who is {age} years old. "
        f"How old will {name}'s {relative} be in {years} years?"
    )
    return q, factor * age + years, {"factor": factor, "age": age, "years": years}


def _area(rng: random.Random) -> _Made:
    room = rng.choice(("kitchen", "hallway", "bedroom", "classroom", "workshop", "garage"))
    length, width, cost = rng.randint(3, 12), rng.randint(2, 10), rng.randint(5, 40)
    q = (
        f"A rectangular {room} floor is {length} metres long and {width} metres wide. New tiles cost {cost} "
        f"dollars per square metre. How many dollars do the tiles for the whole floor cost?"
    )
    return q, length * width * cost, {"length": length, "width": width, "cost": cost}


def _percent(rng: random.Random) -> _Made:
    item = rng.choice(("jacket", "bicycle", "lamp", "pair of boots", "tent", "desk chair", "guitar", "kettle"))
    price = 20 * rng.randint(1, 25)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75))
    q = (
        f"A {item} costs {price} dollars. In a sale, its price is cut by {pct} percent. "
        f"What is the sale price in dollars?"
    )
    return q, price - price * pct // 100, {"price": price, "pct": pct}


def _saving(rng: random.Random) -> _Made:
    name = rng.choice(_NAMES)
    thing = rng.choice(("present", "concert ticket", "pair of trainers", "board game", "jacket"))
    start, weekly, weeks = rng.randint(5, 80), rng.randint(3, 25), rng.randint(2, 12)
    total = start + weekly * weeks
    spend = rng.randint(1, total - 1)
    q = (
        f"{name} has {start} dollars saved and adds {weekly} dollars every week. After {weeks} weeks, "
        f"{name} spends {spend} dollars on a {thing}. How many dollars does {name} have left?"
    )
    return q, total - spend, {"start": start, "weekly": weekly, "weeks": weeks, "spend": spend}


_CONVERSIONS = (
    (
        "Each lap of a running track is {per} metres. {name} runs {count} laps. How many kilometres does {name} run?",
        (200, 250, 400, 500),
    ),
    (
        "A recipe needs {per} grams of flour for one cake. {name} bakes {count} cakes. "
        "How many kilograms of flour does {name} use?",
        (125, 200, 250, 400, 500, 750),
    ),
    (
        "Each glass holds {per} millilitres of juice. {name} pours {count} full glasses. "
        "How many litres of juice is that?",
        (150, 200, 250, 300, 500),
    ),
)


def _conversion(rng: random.Random) -> _Made:
    template, sizes = rng.choice(_CONVERSIONS)
    name = rng.choice(_NAMES)
    while True:
        per, count = rng.choice(sizes), rng.randint(2, 40)
        if (per * count) % 1000 == 0:
            break
    return template.format(per=per, count=count, name=name), per * count // 1000, {"per": per, "count": count}


def _packing(rng: random.Random) -> _Made:
    name = rng.choice(_NAMES)
    food = rng.choice(("muffins", "cookies", "rolls", "cupcakes", "pastries"))
    while True:
        trays, per, box = rng.randint(2, 9), rng.randint(6, 24), rng.choice((4, 5, 6, 8, 10, 12))
        kept = rng.randint(1, 12)
        made = trays * per
        if kept < made and (made - kept) % box == 0:
            break
    q = (
        f"{name} bakes {trays} trays of {per} {food}, keeps {kept} of them and packs the rest into boxes of "
        f"{box}. How many boxes does {name} fill?"
    )
    return q, (made - kept) // box, {"trays": trays, "per": per, "kept": kept, "box": box}


def _inventory(rng: random.Random) -> _Made:
    goods = rng.choice(("apples", "loaves of bread", "newspapers", "light bulbs", "flower pots", "melons"))
    start = rng.randint(60, 300)
    sold_am = rng.randint(5, start // 2)
    sold_pm = rng.randint(5, start - sold_am - 1)
    delivery = rng.randint(10, 150)
    q = (
        f"A shop starts the day with {start} {goods}. It sells {sold_am} in the morning and {sold_pm} in the "
        f"afternoon, then receives a delivery of {delivery}. How many {goods} does the shop have at the end "
        f"of the day?"
    )
    return (
        q,
        start - sold_am - sold_pm + delivery,
        {"start": start, "sold_am": sold_am, "sold_pm": sold_pm, "delivery": delivery},
    )


def _proportion(rng: random.Random) -> _Made:
    vehicle = rng.choice(("train", "coach", "car", "ferry"))
    speed, hours = 5 * rng.randint(8, 24), rng.randint(2, 5)
    later = rng.choice([h for h in range(2, 10) if h != hours])
    distance = speed * hours
    q = (
        f"A {vehicle} travels {distance} km in {hours} hours. At the same steady speed, how many kilometres "
        f"does it travel in {later} hours?"
    )
    return q, speed * later, {"distance": distance, "hours": hours, "later": later}


def _rate(rng: random.Random) -> _Made:
    while True:
        ppm, copies, pages = rng.randint(6, 30), rng.randint(2, 12), rng.randint(5, 60)
        if (copies * pages) % ppm == 0:
            break
    q = (
        f"A printer prints {ppm} pages per minute. How many minutes does it take to print {copies} copies "
        f"of a {pages}-page report?"
    )
    return q, copies * pages // ppm, {"ppm": ppm, "copies": copies, "pages": pages}


_TEMPLATES: dict[str, tuple[Callable[[random.Random], _Made], int]] = {
    "shopping": (_shopping, 3),  # qty * price, + extra, note - cost
    "split": (_split, 2),  # count * price, / people
    "speed": (_speed, 3),  # v1 * t1, v2 * t2, sum
    "ages": (_ages, 2),  # factor * age, + years
    "area": (_area, 2),  # length * width, * cost
    "percent": (_percent, 2),  # price * pct / 100, price - discount
    "saving": (_saving, 3),  # weekly * weeks, + start, - spend
    "conversion": (_conversion, 2),  # per * count, / 1000
    "packing": (_packing, 3),  # trays * per, - kept, / box
    "inventory": (_inventory, 3),  # start - sold_am, - sold_pm, + delivery
    "proportion": (_proportion, 2),  # distance / hours, * later
    "rate": (_rate, 2),  # copies * pages, / ppm
}

MATH_KINDS = tuple(_TEMPLATES)
"""The template names, used as `MathProblem.kind` (and as ``math-<kind>`` categories)."""

MAX_MATH_PROBLEMS = 1200
"""The most problems one call makes: 100 per template, far below the number of distinct
questions each template can produce (thousands), so a call never runs out of new ones."""

_MAX_TRIES = 10_000


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgumentError(f"n must be a whole number of problems, got {n!r}")
    if n < 1:
        raise InvalidArgumentError(f"n must be at least 1, got {n}")
    if n > MAX_MATH_PROBLEMS:
        raise InvalidArgumentError(
            f"n={n} is more than the {MAX_MATH_PROBLEMS} distinct problems the {len(_TEMPLATES)} templates "
            f"are guaranteed to make in one call; ask for at most {MAX_MATH_PROBLEMS} (use several seeds "
            f"for more, and de-duplicate across them)"
        )
    return n


def math_problems(n: int, seed: int = 0) -> list[MathProblem]:
    """`n` distinct arithmetic word problems, the same for the same seed.

    The templates are taken in turn (in an order shuffled by the seed), so any 12
    consecutive problems cover all of `MATH_KINDS`; each problem's numbers are drawn
    from a private `random.Random(seed)`. Questions never repeat within one call.

    Args:
        n: how many problems, 1 to `MAX_MATH_PROBLEMS`.
        seed: the random seed (any int).

    Raises:
        ValueError: `n` is not an integer in that range.
    """
    n = _check_n(n)
    rng = random.Random(seed)
    kinds = list(_TEMPLATES)
    rng.shuffle(kinds)
    seen: set[str] = set()
    out: list[MathProblem] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        make, steps = _TEMPLATES[kind]
        for _ in range(_MAX_TRIES):
            question, answer, operands = make(rng)
            if question not in seen:
                break
        else:  # pragma: no cover - the templates' spaces are far larger than MAX_MATH_PROBLEMS
            raise RuntimeError(f"template {kind!r} ran out of distinct questions after {len(out)} problems")
        seen.add(question)
        out.append(MathProblem(question, answer, kind, steps, tuple(operands.items())))
    return out


def math_prompts(n: int, seed: int = 0) -> list[dict]:
    """`math_problems(n, seed)` as `{"query", "category", "answer"}` dicts.

    The category is ``"math-<kind>"``, e.g. ``"math-percent"``; the answer is the exact
    integer to score with `is_correct`.
    """
    return [{"query": p.question, "category": f"math-{p.kind}", "answer": p.answer} for p in math_problems(n, seed)]


# --------------------------------------------------------------------------- extraction

# A number: an optional sign written straight before it and not glued to a preceding
# word, digit or bracket (so the "-" in "10-4" or "10 - 4" is subtraction, not a sign),
# an optional "$", then digits with optional thousands separators and an optional
# decimal part. It may not start inside a word or after a decimal point ("H2O" and
# "v1.2" hold no number starting at "2").
_NUM = (
    r"(?:(?<![\w)\]])(?P<{g}sign>[-\u2212]))?\$?"
    r"(?<![\w.])(?P<{g}num>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?(?!\d))"
)
_NUMBER = re.compile(_NUM.format(g=""))
_MARKERS = [
    re.compile(p.format(n=_NUM.format(g="")), re.IGNORECASE | re.MULTILINE)
    for p in (
        r"\banswer\s*(?:is|:|=)\s*:?\s*(?:\*\*)?\s*{n}",  # "the answer is 12", "Answer: 12"
        r"\\boxed\{{\s*{n}\s*\}}",  # "\boxed{12}"
        r"\*\*\s*{n}(?:\s+[A-Za-z%]+){{0,2}}\s*\*\*",  # "**12**", "**12 apples**"
        r"^\s*####\s*{n}",  # "#### 12"
        r"=\s*{n}\s*[.!]?[ \t]*$",  # "... = 12" closing a line
    )
]


def _value(match: re.Match) -> Union[int, float]:
    digits = match.group("num").replace(",", "")
    value: Union[int, float] = float(digits) if "." in digits else int(digits)
    return -value if match.group("sign") else value


def extract_answer(text: str) -> Optional[Union[int, float]]:
    """The final numeric answer in a model's reply, or None if it has no number.

    The rule:

    1. If the text holds an explicit answer marker, the answer is the number of the
       marker that comes **last** in the text. Markers are ``answer is X`` /
       ``answer: X`` / ``answer = X`` (any case, so "The final answer is X" counts),
       ``\\boxed{X}``, a bold ``**X**`` (up to two unit words may follow X inside the
       bold, ``**12 apples**``), ``#### X`` at the start of a line, and ``= X`` closing a
       line (optionally followed by ``.`` or ``!``).
    2. Otherwise the answer is the last number in the text.

    Numbers may carry thousands separators (``1,200`` is 1200), a leading ``$``
    (``$45.50`` is 45.5), a decimal part and a minus sign written straight before the
    number (``-3``, ``$-3`` or ``-$3``; a ``-`` right after a digit, letter or bracket,
    or followed by a space, is subtraction, so ``10-4`` and ``10 - 4`` read as 10 and
    4). Digits inside words (``H2O``) are not numbers, and number words ("twelve") are
    not parsed. Integers come back as `int`, numbers written with a
    decimal point as `float`.
    """
    if not isinstance(text, str):
        raise ArgumentTypeError(f"extract_answer takes a string, got {type(text).__name__}")
    best: Optional[re.Match] = None
    for marker in _MARKERS:
        for m in marker.finditer(text):
            if best is None or m.start("num") > best.start("num"):
                best = m
    if best is not None:
        return _value(best)
    numbers = list(_NUMBER.finditer(text))
    return _value(numbers[-1]) if numbers else None


def is_correct(text: str, answer: Union[int, float]) -> bool:
    """Whether `extract_answer(text)` equals `answer` (within 1e-9); False when no number is found."""
    got = extract_answer(text)
    return got is not None and abs(got - answer) <= 1e-9
