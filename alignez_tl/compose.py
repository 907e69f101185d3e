"""Two objectives at once: the multi-objective trade-off (the paper's interpolation).

`run_compose(model, ("tone", "harmless"), out=folder)`:

1. the model writes preference pairs for each objective on the *same* held-out fit
   prompts (disjoint from the evaluation prompts), and one subspace is fitted per
   objective;
2. for each η, `Steerer.compose([s_a, s_b], weights=[η, 1 − η])` answers every evaluation
   prompt (greedy), as do the base model and each objective alone (η = 1: `a` only,
   η = 0: `b` only);
3. every answer set is scored by *both* objectives' offline scorers
   (`efficacy.score_answers`), with 95% bootstrap intervals over prompts, of the score and
   of its change from the base (paired by prompt).

Outputs in `out`: results.json, results.md, tradeoff.png (one score against the other,
one point per η), generations.jsonl, pairs-<objective>.jsonl. docs/evaluation.md, "Two
objectives at once: the trade-off".
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

import numpy as np

from ._io import atomic_write, atomic_write_jsonl, atomic_write_text
from .errors import InvalidArgumentError

__all__ = ["COMPOSE_TASKS", "DEFAULT_ETAS", "check_compose", "mix", "plot_tradeoff", "run_compose"]

# the tasks with an offline per-answer scorer (helpful is judged pairwise: no score of its own)
COMPOSE_TASKS = ("tone", "harmless", "math")
DEFAULT_ETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCORE_UNIT = {"tone": "VADER compound", "harmless": "0.5(1-p_offensive)+0.25(VADER+1)", "math": "pass@1"}


def check_compose(objectives: Any, etas: Any = DEFAULT_ETAS) -> tuple[tuple[str, str], tuple[float, ...]]:
    """The two objective names and the η grid, checked (raises ValueError), before model work.

    Objectives: two different names of `COMPOSE_TASKS`, case-insensitive. η: numbers
    strictly between 0 and 1 (the single objectives, η = 1 and 0, are always run).
    """
    if isinstance(objectives, str):
        objectives = [p for p in objectives.split(",")]
    names = tuple(str(o).strip().lower() for o in objectives)
    if len(names) != 2:
        raise InvalidArgumentError(f"compose takes exactly two objectives, got {len(names)}: {list(names)}")
    unknown = [n for n in names if n not in COMPOSE_TASKS]
    if unknown:
        raise InvalidArgumentError(
            f"unknown or unscorable objective(s) {unknown}: compose needs objectives with an offline "
            f"scorer, one of {COMPOSE_TASKS}"
        )
    if names[0] == names[1]:
        raise InvalidArgumentError(f"compose needs two different objectives, got {names[0]!r} twice")
    try:
        grid = tuple(float(e) for e in etas)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"etas must be numbers strictly between 0 and 1, got {etas!r}") from None
    bad = [e for e in grid if not (math.isfinite(e) and 0.0 < e < 1.0)]
    if bad or not grid:
        raise InvalidArgumentError(
            f"etas must be numbers strictly between 0 and 1 (0 and 1 are always run), got {bad or grid}"
        )
    return cast(tuple[str, str], names), tuple(sorted(set(grid), reverse=True))


def mix(steer_a: Any, steer_b: Any, eta: float) -> Any:
    """`Steerer.compose([steer_a, steer_b], weights=[η, 1 − η])`."""
    from .steering import Steerer

    return Steerer.compose([steer_a, steer_b], weights=[float(eta), 1.0 - float(eta)])


def _prompts(objectives: tuple[str, str], n_prompts: int, n_fit: int, seed: int) -> tuple[list[dict], list[str]]:
    """Evaluation prompts and the shared fit queries: math's problems when math is one of
    the two (its scorer needs the exact answers), else the built-in pool."""
    from .efficacy import SweepConfig, task_prompts

    task = "math" if "math" in objectives else objectives[0]
    return task_prompts(SweepConfig(task=task, n_prompts=n_prompts, n_fit=n_fit, seed=seed))


def run_compose(
    model: Any,
    objectives: Sequence[str] = ("tone", "harmless"),
    etas: Sequence[float] = DEFAULT_ETAS,
    *,
    out: Optional[Path] = None,
    n_prompts: int = 48,
    n_fit: int = 48,
    max_new_tokens: int = 48,
    seed: int = 0,
    alpha: Optional[float] = None,
    edit: str = "oriented",
    top_n: int = 5,
    n_characteristics: int = 3,
    elicit_tokens: int = 40,
    response_tokens: int = 64,
    elicit_prefill: str = "",
    batch_size: int = 16,
    n_boot: int = 2000,
    say: Callable[..., None] = lambda *a: None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Base, each objective alone and each η-weighted mix, scored by both scorers.

    Returns the results dict: `points` holds one entry per condition (`base`, then η
    from 1 down to 0), each with per-objective `scores` and `vs_base` (bootstrap means
    with 95% intervals) and `changed` (% of answers that differ from the base);
    `per_prompt` the answers and scores. With `out`, also writes the files (atomically).
    """
    from .baselines import NoSteerer
    from .efficacy import bootstrap_mean, score_answers
    from .preferences import generate_preferences
    from .steering import Steerer
    from .subspace import fit_subspace

    (obj_a, obj_b), grid = check_compose(objectives, etas)
    for name in ("n_prompts", "n_fit", "max_new_tokens", "batch_size", "n_boot", "top_n"):
        value = locals()[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    t0 = time.perf_counter()
    evals, fit_queries = _prompts((obj_a, obj_b), n_prompts, n_fit, seed)
    queries = [p["query"] for p in evals]
    gen: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, return_tokens=True, verbose=verbose
    )

    steerers: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    for i, obj in enumerate((obj_a, obj_b), 1):
        say(f"[{i}] {obj}: self-generating pairs from {len(fit_queries)} held-out fit prompts and fitting")
        prefs = generate_preferences(
            model,
            fit_queries,
            objective=obj,
            n_characteristics=n_characteristics,
            elicit_tokens=elicit_tokens,
            response_tokens=response_tokens,
            elicit_prefill=elicit_prefill,
            seed=seed,
            batch_size=batch_size,
            verbose=verbose,
        )
        sub = fit_subspace(model, prefs, batch_size=batch_size, verbose=False)
        steerers[obj] = Steerer(sub, alpha, edit=cast(Any, edit), top_n=top_n)
        pairs[obj] = prefs

    def scores_of(answers: list[str]) -> dict[str, list[float]]:
        return {obj: score_answers(obj, answers, evals) for obj in (obj_a, obj_b)}

    say("[3] base answers")
    _, base_text = cast(tuple[list[list[int]], list[str]], NoSteerer().generate(model, queries, **gen))
    base_scores = scores_of(base_text)
    answers: dict[str, list[str]] = {"base": base_text}
    per_prompt: dict[str, dict[str, list[float]]] = {"base": base_scores}

    def boot(values: Sequence[float]) -> dict[str, Any]:
        return bootstrap_mean(values, n_boot=n_boot, seed=seed)

    points: list[dict[str, Any]] = [
        {
            "name": "base",
            "eta": None,
            "scores": {obj: boot(v) for obj, v in base_scores.items()},
            "vs_base": None,
            "changed": 0.0,
        }
    ]
    for eta in (1.0, *grid, 0.0):
        name = f"eta={eta:g}"
        say(f"[4] {name}: {eta:g}·{obj_a} + {1 - eta:g}·{obj_b}")
        steerer = mix(steerers[obj_a], steerers[obj_b], eta)
        _, text = steerer.generate(model, queries, **gen)
        scores = scores_of(text)
        answers[name], per_prompt[name] = text, scores
        row: dict[str, Any] = {
            "name": name,
            "eta": eta,
            "weights": {obj_a: eta, obj_b: round(1.0 - eta, 10)},
            "scores": {obj: boot(v) for obj, v in scores.items()},
            "vs_base": {obj: boot([s - b for s, b in zip(v, base_scores[obj])]) for obj, v in scores.items()},
            "changed": 100.0 * float(np.mean([a != b for a, b in zip(text, base_text)])),
        }
        points.append(row)
        say(
            "    "
            + ", ".join(f"{obj} {_fmt(row['scores'][obj])} (Δ {_fmt(row['vs_base'][obj])})" for obj in scores)
            + f", changed {row['changed']:.0f}%"
        )

    results: dict[str, Any] = {
        "objectives": [obj_a, obj_b],
        "config": {
            "etas": list(grid),
            "n_prompts": n_prompts,
            "n_fit": n_fit,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "alpha": alpha,
            "edit": edit,
            "top_n": top_n,
            "n_characteristics": n_characteristics,
            "elicit_tokens": elicit_tokens,
            "response_tokens": response_tokens,
            "elicit_prefill": elicit_prefill,
            "batch_size": batch_size,
            "n_boot": n_boot,
        },
        "model": getattr(getattr(model, "cfg", None), "model_name", None),
        "n_prompts": len(queries),
        "n_fit_prompts": len(fit_queries),
        "score_unit": {obj: SCORE_UNIT[obj] for obj in (obj_a, obj_b)},
        "pairs": {obj: len(p) for obj, p in pairs.items()},
        "fallback": {obj: p.fallback_report()["overall"] for obj, p in pairs.items()},
        "steerers": {obj: s.describe() for obj, s in steerers.items()},
        "overlap": Steerer.compose([steerers[obj_a], steerers[obj_b]]).overlap()[0][1],
        "points": points,
        "per_prompt": {"queries": queries, "answers": answers, "scores": per_prompt},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if out is not None:
        write_outputs(results, Path(out), pairs)
    return results


def write_outputs(results: dict[str, Any], out: Path, pairs: Optional[dict[str, Any]] = None) -> None:
    """results.json, results.md, tradeoff.png, generations.jsonl (and the pairs), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for obj, prefs in (pairs or {}).items():
        prefs.save(out / f"pairs-{obj}.jsonl")
    pp = results["per_prompt"]
    atomic_write_jsonl(
        out / "generations.jsonl",
        [
            {
                "query": q,
                **{
                    name: {"answer": pp["answers"][name][i], **{o: s[i] for o, s in pp["scores"][name].items()}}
                    for name in pp["answers"]
                },
            }
            for i, q in enumerate(pp["queries"])
        ],
    )
    fig = plot_tradeoff(results)
    atomic_write(out / "tradeoff.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write_text(out / "results.md", markdown(results))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n")


def plot_tradeoff(results: dict[str, Any]) -> Any:
    """Objective a's score (x) against b's (y): one point per η, annotated, with 95% error
    bars; the base model and each single objective marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = results["objectives"]
    fig, ax = plt.subplots(figsize=(6.4, 5.0))

    def xy(p: dict) -> tuple[float, float, list[float], list[float]]:
        sa, sb = p["scores"][a], p["scores"][b]
        return (
            sa["mean"],
            sb["mean"],
            [sa["mean"] - sa["ci"][0], sa["ci"][1] - sa["mean"]],
            [sb["mean"] - sb["ci"][0], sb["ci"][1] - sb["mean"]],
        )

    steered = [p for p in results["points"] if p["eta"] is not None]
    line = [xy(p) for p in steered]
    ax.plot([v[0] for v in line], [v[1] for v in line], "-", color="#90caf9", lw=1, zorder=1)
    for p in steered:
        x, y, ex, ey = xy(p)
        if p["eta"] == 1.0:
            style: dict[str, Any] = dict(fmt="s", color="#c62828", ms=8, label=f"{a} only (η=1)")
        elif p["eta"] == 0.0:
            style = dict(fmt="D", color="#2e7d32", ms=8, label=f"{b} only (η=0)")
        else:
            style = dict(fmt="o", color="#1565c0", ms=5, ecolor="#90caf9")
        ax.errorbar(x, y, xerr=[[ex[0]], [ex[1]]], yerr=[[ey[0]], [ey[1]]], capsize=2, elinewidth=0.8, **style)
        ax.annotate(f"η={p['eta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    base = results["points"][0]
    x, y, ex, ey = xy(base)
    ax.errorbar(
        x, y, xerr=[[ex[0]], [ex[1]]], yerr=[[ey[0]], [ey[1]]], fmt="*", color="black", ms=12, capsize=2, label="base"
    )
    ax.set_xlabel(f"{a} score ({results['score_unit'][a]})")
    ax.set_ylabel(f"{b} score ({results['score_unit'][b]})")
    ax.set_title(f"η·{a} + (1−η)·{b}: {results.get('model')}, n={results['n_prompts']} prompts, 95% CI", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _fmt(stat: Optional[dict], digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = stat["ci"]
    return f"{stat['mean']:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def markdown(results: dict[str, Any]) -> str:
    """results.md: the setting and one row per condition."""
    a, b = results["objectives"]
    cfg = results["config"]
    alphas = ", ".join(f"{o} {results['steerers'][o]['alpha']:g}" for o in (a, b))
    lines = [
        f"# Trade-off: η·{a} + (1−η)·{b} on {results.get('model')}",
        "",
        f"{results['n_prompts']} held-out prompts; one subspace per objective, each fitted on the model's own "
        f"pairs from the same {results['n_fit_prompts']} fit prompts ({a}: {results['pairs'][a]} pairs, "
        f"{b}: {results['pairs'][b]}); edit {cfg['edit']}, α {alphas}, "
        f"seed {cfg['seed']}, greedy, {cfg['max_new_tokens']} new tokens. Scores: {a} = {results['score_unit'][a]}, "
        f"{b} = {results['score_unit'][b]}. Intervals: 95% percentile bootstrap over prompts ({cfg['n_boot']} "
        f"resamples); Δ is paired by prompt. Mean |cos| between the two objectives' directions: "
        f"{results['overlap']:.3f}.",
        "",
        "Characteristics on the fallback 'be {keyword}' (the elicitation gave none): "
        + ", ".join(
            f"{o} {results['fallback'][o]['fallback']} of {results['fallback'][o]['characteristics']}" for o in (a, b)
        )
        + ".",
        "",
        f"| condition | w({a}) | w({b}) | {a} [95% CI] | Δ{a} vs base | {b} [95% CI] | Δ{b} vs base | changed % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        w = p.get("weights") or {}
        vs = p.get("vs_base") or {}
        lines.append(
            f"| {p['name']} | {w.get(a, '–') if w else '–'} | {w.get(b, '–') if w else '–'} | {_fmt(p['scores'][a])} | "
            f"{_fmt(vs.get(a))} | {_fmt(p['scores'][b])} | {_fmt(vs.get(b))} | {p['changed']:.0f} |"
        )
    lines += ["", f"Wall time: {results['wall_seconds']:.0f} s", ""]
    return "\n".join(lines)
