"""Strength calibration: the step size that reaches a target side effect.

Strengths are not comparable across edits or methods: α = 0.1 of the oriented AlignEZ
boost, α = 1 of the paper's boost and `coef = 4` of DiffMean are different amounts of
change. What is comparable is what each one does to text it should leave alone: the KL
divergence of the next-token distributions on neutral text, per token
(`eval.side_effects`). `calibrate_strength` finds, for any steerer with a
`with_strength` copy method (`Steerer`, `DiffMeanSteerer`, `PCASteerer`), the strength
whose neutral KL is within a relative tolerance of a target, so that methods can be
compared at the same side effect (docs/evaluation.md, "Efficacy sweep").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from .errors import ArgumentTypeError, InvalidArgumentError
from .eval.effects import NeutralBase, neutral_base, side_effects

__all__ = ["Calibration", "calibrate_strength", "neutral_kl"]


@dataclass
class Calibration:
    """The outcome of `calibrate_strength`.

    Attributes:
        strength: the strength found (α for AlignEZ, `coef` for vector baselines), with the
            sign of the steerer's own strength.
        kl: its neutral KL per token (nats).
        target: the KL asked for.
        reached: True when `|kl − target| ≤ rel_tol · target`.
        limited: why the search stopped short, if it did (e.g. the oriented suppress is
            bounded by α = 1), else None.
        history: every `(strength, kl)` evaluated, in order.
        effects: the full `eval.side_effects` result at `strength` (KL, perplexity ratio,
            per text), so that a caller reporting it needs no second steered pass; left
            out of `to_dict`.
    """

    strength: float
    kl: float
    target: float
    reached: bool
    limited: Optional[str] = None
    history: list[tuple[float, float]] = field(default_factory=list)
    effects: Optional[dict[str, Any]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["effects"]
        return out


def neutral_kl(model: Any, steerer: Any, texts: Sequence[str] | NeutralBase, *, batch_size: int = 8) -> float:
    """Mean KL(base ‖ steered) per token on neutral text, every position edited (`side_effects`)."""
    base = texts if isinstance(texts, NeutralBase) else neutral_base(model, texts, batch_size=batch_size)
    return float(side_effects(model, steerer, base.texts, base=base)["kl"])


def _max_strength(steerer: Any) -> Optional[float]:
    """The largest magnitude a steerer accepts (the oriented suppress: α ≤ 1), else None."""
    terms = getattr(steerer, "terms", None)
    if terms and any(t.edit == "oriented" and t.mode == "suppress" for t in terms):
        return 1.0
    return None


def calibrate_strength(
    model: Any,
    steerer: Any,
    target_kl: float,
    *,
    texts: Optional[Sequence[str] | NeutralBase] = None,
    rel_tol: float = 0.1,
    start: Optional[float] = None,
    max_evals: int = 30,
    batch_size: int = 8,
) -> Calibration:
    """The strength at which `steerer`'s neutral KL per token is `target_kl` (±`rel_tol`).

    The KL grows with the strength's magnitude roughly as a power of it (KL ∝ s² at small
    strengths), so each step solves that law through the last measurements, starting from
    `start` (default: the steerer's own strength, or 1 when that is 0), and keeps inside
    the bracket once the target is bracketed: 2–4 evaluations on smooth laws. The sign of
    the steerer's strength is kept (the paper's suppress has α < 0). Each evaluation is one
    steered forward pass over the texts; the unsteered pass is computed once.

    Args:
        model: the model the steerer was fitted on.
        steerer: anything with `with_strength(x)` and `strength` (`Steerer`,
            `DiffMeanSteerer`, `PCASteerer`).
        target_kl: the KL per token on neutral text to reach, in nats (> 0).
        texts: neutral texts or a precomputed `eval.neutral_base` (default:
            `prompts.NEUTRAL_TEXTS_EXTENDED`).
        rel_tol: accept `|kl − target| ≤ rel_tol · target` (default 10%).
        max_evals: at most this many evaluations.

    Returns:
        A `Calibration`; `reached` is False when the tolerance was not met (the best
        strength seen is returned, and `limited` says why when the steerer is bounded).
    """
    if not hasattr(steerer, "with_strength") or not hasattr(steerer, "strength"):
        raise ArgumentTypeError(
            f"calibrate_strength needs a steerer with a strength to vary (Steerer, DiffMeanSteerer, "
            f"PCASteerer), got {type(steerer).__name__}"
        )
    for name, value, ok in (("target_kl", target_kl, lambda v: v > 0), ("rel_tol", rel_tol, lambda v: 0 < v < 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise InvalidArgumentError(
                f"{name} must be a finite number ({'> 0' if name == 'target_kl' else 'in (0, 1)'}), got {value!r}"
            )
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 2:
        raise InvalidArgumentError(f"max_evals must be an int >= 2, got {max_evals!r}")
    if start is not None and (not isinstance(start, (int, float)) or not math.isfinite(start) or start == 0):
        raise InvalidArgumentError(f"start must be a non-zero finite number, got {start!r}")
    if texts is None:
        from .prompts import NEUTRAL_TEXTS_EXTENDED

        texts = NEUTRAL_TEXTS_EXTENDED
    base = texts if isinstance(texts, NeutralBase) else neutral_base(model, texts, batch_size=batch_size)

    own = float(steerer.strength)
    sign = -1.0 if own < 0 else 1.0
    magnitude = abs(start) if start is not None else (abs(own) or 1.0)
    cap = _max_strength(steerer)
    if cap is not None:
        magnitude = min(magnitude, cap)
    history: list[tuple[float, float]] = []
    effects: list[dict[str, Any]] = []  # side_effects of each history entry

    def measure(m: float) -> float:
        effects.append(side_effects(model, steerer.with_strength(sign * m), base.texts, base=base))
        kl = float(effects[-1]["kl"])
        history.append((sign * m, kl))
        return kl

    def close(kl: float) -> bool:
        return abs(kl - target_kl) <= rel_tol * target_kl

    def result(limited: Optional[str] = None) -> Calibration:
        best = min(range(len(history)), key=lambda i: abs(math.log(max(history[i][1], 1e-300) / target_kl)))
        best_s, best_kl = history[best]
        return Calibration(best_s, best_kl, float(target_kl), close(best_kl), limited, list(history), effects[best])

    # The neutral KL grows like a power of the strength (KL ≈ c·s², the second-order term,
    # at small strengths; slower once an edit saturates). Each step solves that law in log
    # space through the two nearest measurements (slope 2 until there are two), then stays
    # inside the bracket once the target is bracketed.
    lo: Optional[tuple[float, float]] = None  # (magnitude, kl) below the target
    hi: Optional[tuple[float, float]] = None  # (magnitude, kl) above it
    m = magnitude
    while len(history) < max_evals:
        kl = measure(m)
        if close(kl):
            return result()
        if kl < target_kl:
            lo = (m, kl) if lo is None or m > lo[0] else lo
        else:
            hi = (m, kl) if hi is None or m < hi[0] else hi
        if hi is None:
            assert lo is not None
            if cap is not None and lo[0] >= cap:
                return result(f"the strength is bounded by {cap:g} and reaches KL {kl:.3g} < {target_kl:g} there")
        if m < 1e-12 or m > 1e12:
            return result("the KL does not respond to the strength")
        m = _next_magnitude(lo, hi, target_kl, [(abs(h_s), h_kl) for h_s, h_kl in history[-2:]])
        if cap is not None:
            m = min(m, cap)
    return result()


def _next_magnitude(
    lo: Optional[tuple[float, float]],
    hi: Optional[tuple[float, float]],
    target: float,
    last: list[tuple[float, float]],
) -> float:
    """The next strength magnitude to measure, from the nearest points below/above the target.

    Unbracketed: extrapolate from the nearest side with the power law read off the last two
    measurements (`last`; slope kept in [0.25, 4], and 2, KL ∝ s², until there are two),
    at most ×/÷ 16 per step; ×4 when the KL is 0, where no law can be read. Bracketed:
    interpolate the power law through both ends in log space, kept at least 10% of the
    log-width from either end so that a lopsided bracket still shrinks (the geometric mean
    when the slope is unusable).
    """
    if lo is not None and hi is not None:
        (m0, k0), (m1, k1) = lo, hi
        width = math.log(m1 / m0)
        if k0 > 0 and k1 > k0 and width > 0:
            frac = math.log(target / k0) / math.log(k1 / k0)  # where log target falls in log-KL
            frac = min(max(frac, 0.1), 0.9)
            return m0 * math.exp(frac * width)
        return math.sqrt(m0 * m1)
    m, kl = lo if lo is not None else hi  # type: ignore[misc]  # one of them is set
    if kl <= 0:
        return m * 4.0
    slope = 2.0  # KL ∝ s²
    if len(last) == 2:
        (ma, ka), (mb, kb) = last
        if ka > 0 and kb > 0 and ma != mb and ka != kb:
            slope = min(max(math.log(kb / ka) / math.log(mb / ma), 0.25), 4.0)
    step = (target / kl) ** (1.0 / slope)
    return m * min(max(step, 1.0 / 16.0), 16.0)
