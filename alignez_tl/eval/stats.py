"""Net-win statistics: Win / Lose / Tie %, net win and percentile bootstrap intervals
over prompts (`summarize`), and the per-prompt table (`per_prompt`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .records import OUTCOMES, Comparison, _as_comparison

__all__ = ["per_prompt", "summarize"]


def _rates(counts: np.ndarray) -> np.ndarray:
    """`[..., 3]` win/lose/tie counts -> `[..., 4]` win %, lose %, tie %, net win (pp)."""
    total = counts.sum(-1, keepdims=True).astype(np.float64)
    pct = 100.0 * counts / np.where(total > 0, total, 1)
    return np.concatenate([pct, pct[..., :1] - pct[..., 1:2]], axis=-1)


def _group_stats(comps: list[Comparison], n_boot: int, seed: int, level: float) -> dict[str, Any]:
    valid = [c for c in comps if c.outcome in OUTCOMES]
    n_errors = sum(1 for c in comps if c.outcome not in OUTCOMES)
    # Prompts are the resampling unit: all comparisons of one query go together.
    clusters: dict[str, list[int]] = {}
    for c in valid:
        row = clusters.setdefault(c.query, [0, 0, 0])
        row[OUTCOMES.index(c.outcome)] += 1
    prompts = np.array(list(clusters.values()), dtype=np.int64).reshape(-1, 3)
    out: dict[str, Any] = {
        "n": len(valid),
        "n_prompts": len(clusters),
        "n_errors": n_errors,
        "n_identical": sum(1 for c in valid if not c.judged),
    }
    keys = ("win", "lose", "tie", "net_win")
    if not valid:
        out.update({k: None for k in keys})
        out["ci"] = {k: None for k in keys}
        out["wrong_way"] = None
        return out
    point = _rates(prompts.sum(0))
    out.update({k: float(v) for k, v in zip(keys, point)})
    rng = np.random.default_rng(seed)
    m = len(prompts)
    reps = []
    chunk = max(1, min(n_boot, 4_000_000 // max(m, 1)))
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        weights = rng.multinomial(m, np.full(m, 1.0 / m), size=k)  # prompts drawn with replacement
        reps.append(_rates(weights @ prompts))
        done += k
    boot = np.concatenate(reps, axis=0) if n_boot > 0 else np.empty((0, 4))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    if n_boot > 0:
        lo, hi = np.percentile(boot, [lo_q, hi_q], axis=0)
        out["ci"] = {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}
    else:
        out["ci"] = {k: None for k in keys}
    net = prompts[:, 0] - prompts[:, 1]
    out["wrong_way"] = float(100.0 * (net < 0).mean())
    return out


def summarize(
    comparisons: Sequence[Any],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    by: Optional[Sequence[Any]] = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Win / Lose / Tie %, net win and bootstrap intervals, overall and per group.

    `win`, `lose`, `tie` are percentages of the valid comparisons (outcome not
    `"error"`); `net_win = win − lose` in percentage points. `ci` holds, for each, the
    percentile bootstrap interval at `level`: `n_boot` resamples of the *prompts* with
    replacement (all comparisons of one query move together), seeded with `seed`.
    `wrong_way` is the share of prompts whose comparisons have more losses than wins
    (with one comparison per prompt: the share where the steered answer lost).

    Args:
        comparisons: `Comparison`s (or their dicts, e.g. from `load_comparisons`).
        by: one label per comparison (e.g. the prompt's category): adds `by_group`.
        level: the interval's coverage (default 0.95).

    Returns:
        `{"overall": stats, "by_group": {label: stats}, "by_objective": {name: stats},
        "n_boot", "seed", "level"}`; `by_group` only with `by`, `by_objective` only when
        some comparison names an objective. Each `stats` has `n`, `n_prompts`,
        `n_errors`, `n_identical`, `win`, `lose`, `tie`, `net_win`, `ci`, `wrong_way`.
    """
    comps = [_as_comparison(c) for c in comparisons]
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise InvalidArgumentError(f"n_boot must be an int >= 0, got {n_boot!r}")
    if not 0 < level < 1:
        raise InvalidArgumentError(f"level must be in (0, 1), got {level}")
    result: dict[str, Any] = {"overall": _group_stats(comps, n_boot, seed, level)}
    if by is not None:
        by = list(by)
        if len(by) != len(comps):
            raise InvalidArgumentError(f"{len(by)} labels in `by` for {len(comps)} comparisons")
        groups: dict[Any, list[Comparison]] = {}
        for label, c in zip(by, comps):
            groups.setdefault(label, []).append(c)
        result["by_group"] = {str(k): _group_stats(v, n_boot, seed, level) for k, v in groups.items()}
    if any(c.objective is not None for c in comps):
        objs: dict[str, list[Comparison]] = {}
        for c in comps:
            objs.setdefault(str(c.objective), []).append(c)
        result["by_objective"] = {k: _group_stats(v, n_boot, seed, level) for k, v in objs.items()}
    result.update(n_boot=n_boot, seed=seed, level=level)
    return result


def per_prompt(comparisons: Sequence[Any]) -> list[dict[str, Any]]:
    """Per prompt (in first-seen order): wins, losses, ties, errors, net and `wrong_way`.

    `wrong_way` is True when steering made the judge prefer the base answer more often
    than the steered one on that prompt: the prompts to look at first.
    """
    rows: dict[str, dict[str, Any]] = {}
    for c in map(_as_comparison, comparisons):
        r = rows.setdefault(c.query, {"query": c.query, "win": 0, "lose": 0, "tie": 0, "error": 0})
        r[c.outcome if c.outcome in OUTCOMES else "error"] += 1
    for r in rows.values():
        r["net"] = r["win"] - r["lose"]
        r["wrong_way"] = r["net"] < 0
    return list(rows.values())
