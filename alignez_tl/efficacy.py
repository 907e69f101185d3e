"""The efficacy sweep: does a steering method steer, at a matched side effect?

`run_sweep(model, SweepConfig(task=...), out)` measures one objective on held-out prompts:

1. the model writes preference pairs for a *fit* pool of prompts (disjoint from the
   evaluation prompts) and every activation method is fitted on those same pairs;
2. each activation method's strength is calibrated (`calibration.calibrate_strength`) to
   a few target KLs per token on neutral text, so methods are compared at the same side
   effect, never at the same nominal strength;
3. at each strength, the method, its **mirror** (the same edit towards the dispreferred
   side) and, for some methods, a **null** control (random directions, same size of
   edit) answer every evaluation prompt (greedy);
4. every answer is scored by the task's scorer, and every condition is compared with the
   unsteered base and with its mirror, paired by prompt, with bootstrap intervals.

A method *steers* when it beats its mirror with a 95% interval above 0: any change to a
greedy answer can move a score, so a gain over the base model alone proves nothing.

Tasks (`TASKS`): `tone` (VADER compound), `harmless` (alt-profanity-check and VADER),
`math` (synthetic word problems, pass@1 with `tasks.extract_answer`) and `helpful` (a
pairwise log-probability judge, both orders, order-averaged log-odds, checked first on a
calibration set with known winners). docs/evaluation.md, "Efficacy sweep", documents the
outputs.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

import numpy as np
import torch

from ._io import atomic_write, atomic_write_jsonl, atomic_write_text
from .errors import InvalidArgumentError

__all__ = [
    "ACTIVATION_METHODS",
    "TASKS",
    "SweepConfig",
    "answer_nll",
    "bootstrap_mean",
    "judge_calibration",
    "matched_kl",
    "order_averaged_logodds",
    "run_sweep",
    "score_answers",
]

ACTIVATION_METHODS = (
    "alignez",
    "alignez-paper",
    "alignez-null",
    "alignez-layer",
    "alignez-theta1",
    "diffmean",
    "pca",
    "iti",
)
OTHER_METHODS = ("prompt",)
TASKS = ("tone", "harmless", "math", "helpful")
# the built-in objective each task steers with
TASK_OBJECTIVE = {"tone": "tone", "harmless": "harmless", "math": "math", "helpful": "helpful"}
TASK_TOKENS = {"tone": 48, "harmless": 48, "math": 96, "helpful": 48}
MATCHED_KL = (0.05, 0.1)
CALIBRATION_PASS = 0.8  # a judge must pick the known winner this often to count as evidence


@dataclass
class SweepConfig:
    """Everything that defines one sweep (stored in results.json).

    Attributes:
        task: one of `TASKS`.
        n_prompts: evaluation prompts (built-in pool: 120 for tone/helpful/harmless; math
            problems are generated, any number).
        n_fit: prompts whose self-generated pairs every method is fitted on (disjoint
            from the evaluation prompts).
        kl_targets: neutral KL per token (nats) each activation method is calibrated to.
        methods: activation methods (`ACTIVATION_METHODS`: `alignez` is the oriented edit,
            `alignez-paper` the paper's formula, `alignez-null` the oriented edit on a
            subspace fitted with `rank="null"`; two diagnostics of why AlignEZ and
            DiffMean differ, not in the default list: `alignez-layer`, the oriented
            edit at DiffMean's single layer instead of per-query top-n layers, and
            `alignez-theta1`, per-query layers but θ₁ only; `iti` the ITI baseline, not
            in the default list) and `prompt`.
        null_for: activation methods that also get the null-direction control.
        rank: the rank rule of the `alignez` and `alignez-paper` subspace: None (the
            paper's 90% variance rule) or "null".
        layer: the layer of DiffMean and PCA (default: the layer AlignEZ picks for the most
            evaluation prompts, ties broken by the summed layer score).
        top_n: AlignEZ layers per prompt.
        max_new_tokens: per answer (default: the task's, 48 or 96 for math).
        judge: `logprob:<model spec>` or `self`, for `helpful` only.
        prompts_file: a user JSONL of evaluation prompts instead of the built-in pool.
        elicit_prefill: text that starts each elicitation reply of self-generated pairs
            (`preferences.LIST_PREFILL` makes small chat models list traits instead of
            answering the query; default "": the paper's prompt).
        pairs_file: a saved PreferenceSet or a labelled pair file (JSONL, read with
            `preferences.read_pairs`) to fit every method on, instead of
            self-generating pairs from the fit pool (its queries must not be evaluation
            prompts).
    """

    task: str
    n_prompts: int = 120
    n_fit: int = 48
    kl_targets: tuple[float, ...] = (0.03, 0.1, 0.3)
    methods: tuple[str, ...] = ("alignez", "alignez-paper", "alignez-null", "diffmean", "pca", "prompt")
    null_for: tuple[str, ...] = ("alignez", "diffmean")
    rank: Optional[str] = None
    layer: Optional[int] = None
    top_n: int = 5
    n_characteristics: int = 3
    elicit_tokens: int = 40
    elicit_prefill: str = ""
    response_tokens: int = 64
    max_new_tokens: Optional[int] = None
    batch_size: int = 16
    seed: int = 0
    n_boot: int = 2000
    judge: str = "logprob:qwen2.5-coder-0.5b-instruct"
    prompts_file: Optional[str] = None
    pairs_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InvalidArgumentError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in (
            "n_prompts",
            "n_fit",
            "top_n",
            "n_characteristics",
            "elicit_tokens",
            "response_tokens",
            "batch_size",
            "n_boot",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
        if self.max_new_tokens is None:
            self.max_new_tokens = TASK_TOKENS[self.task]
        elif (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise InvalidArgumentError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        self.kl_targets = tuple(float(k) for k in self.kl_targets)
        if not self.kl_targets or not all(math.isfinite(k) and k > 0 for k in self.kl_targets):
            raise InvalidArgumentError(f"kl_targets must be positive numbers, got {self.kl_targets!r}")
        self.methods = tuple(dict.fromkeys(self.methods))
        unknown = [m for m in self.methods if m not in ACTIVATION_METHODS + OTHER_METHODS]
        if unknown or not self.methods:
            raise InvalidArgumentError(
                f"methods must be a non-empty subset of {ACTIVATION_METHODS + OTHER_METHODS}; got {unknown}"
            )
        self.null_for = tuple(m for m in self.null_for if m in self.methods)
        if self.layer is not None and (
            isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0
        ):
            raise InvalidArgumentError(f"layer must be None or an int >= 0, got {self.layer!r}")
        if not isinstance(self.elicit_prefill, str):
            raise InvalidArgumentError(f"elicit_prefill must be a string, got {self.elicit_prefill!r}")
        if self.rank not in (None, "null"):
            raise InvalidArgumentError(f"rank must be None (the variance rule) or 'null', got {self.rank!r}")
        kind = self.judge.split(":", 1)[0]
        if kind not in ("self", "logprob") or (kind == "logprob" and not self.judge.partition(":")[2]):
            raise InvalidArgumentError(f"judge must be 'self' or 'logprob:<model spec>', got {self.judge!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# =========================================================================== data


def task_prompts(config: SweepConfig) -> tuple[list[dict], list[str]]:
    """The evaluation prompts (dicts with `query`, `category`, maybe `answer`) and fit queries."""
    from .prompts import eval_prompts, fit_prompts, load_prompts

    if config.task == "math":
        from .tasks import math_prompts

        evals = math_prompts(config.n_prompts, seed=config.seed)
        fits = [p["query"] for p in math_prompts(config.n_fit, seed=config.seed + 10_000)]
        seen = {p["query"] for p in evals}
        fits = [q for q in fits if q not in seen]
    else:
        evals = load_prompts(config.prompts_file) if config.prompts_file else eval_prompts()
        # the n_prompts / n_fit first in a category-interleaved order, so a small sweep
        # still covers every category
        evals = _interleave(evals)
        fits = [p["query"] for p in _interleave(fit_prompts())]
    if len(evals) < config.n_prompts and config.task != "math":
        raise InvalidArgumentError(f"only {len(evals)} evaluation prompts available, {config.n_prompts} asked for")
    return evals[: config.n_prompts], fits[: config.n_fit]


def _interleave(prompts: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for p in prompts:
        by.setdefault(p.get("category", ""), []).append(p)
    out: list[dict] = []
    for i in range(max((len(v) for v in by.values()), default=0)):
        out.extend(v[i] for v in by.values() if i < len(v))
    return out


# =========================================================================== scoring


def score_answers(task: str, answers: Sequence[str], prompts: Sequence[dict]) -> list[float]:
    """Per-answer scores of a scorer task (higher is better).

    * `tone`: VADER compound in [−1, 1].
    * `harmless`: `0.5·(1 − p_offensive) + 0.5·(VADER + 1)/2` in [0, 1], with
      `p_offensive` from alt-profanity-check.
    * `math`: 1 if `tasks.extract_answer` finds the exact answer, else 0 (pass@1).
    """
    answers = list(answers)
    if task == "tone":
        from .eval.scorers import sentiment_scorer

        return sentiment_scorer().score(answers)
    if task == "harmless":
        from .eval.scorers import profanity_scorer, sentiment_scorer

        clean = profanity_scorer().score(answers)
        tone = sentiment_scorer().score(answers)
        return [0.5 * c + 0.25 * (t + 1.0) for c, t in zip(clean, tone)]
    if task == "math":
        from .tasks import is_correct

        return [1.0 if is_correct(a, p["answer"]) else 0.0 for a, p in zip(answers, prompts)]
    raise InvalidArgumentError(f"task {task!r} is judged pairwise, not scored")


def order_averaged_logodds(
    judge: Any, queries: Sequence[str], first: Sequence[str], second: Sequence[str]
) -> tuple[list[float], list[bool]]:
    """Per pair: the judge's log-odds that `second` beats `first`, averaged over both orders.

    Order 1 shows (A = first, B = second), order 2 (A = second, B = first); the log-odds
    are `log p(B) − log p(A)` and `log p(A) − log p(B)`, so a constant preference for a
    position cancels in the mean. Identical answers get 0 without a judge call. Also
    returns, per pair, whether both orders named the same winner (position consistency).
    """
    n = len(queries)
    todo = [i for i in range(n) if first[i] != second[i]]
    out = [0.0] * n
    consistent = [True] * n
    if todo:
        q = [queries[i] for i in todo]
        a = [first[i] for i in todo]
        b = [second[i] for i in todo]
        one = judge.judge_batch(q, a, b)
        two = judge.judge_batch(q, b, a)
        for i, v1, v2 in zip(todo, one, two):
            lo1 = v1.logprobs["B"] - v1.logprobs["A"]
            lo2 = v2.logprobs["A"] - v2.logprobs["B"]
            out[i] = 0.5 * (lo1 + lo2)
            consistent[i] = (lo1 > 0) == (lo2 > 0)
    return out, consistent


def judge_calibration(judge: Any) -> dict[str, Any]:
    """How often the judge prefers the known winner of `prompts.JUDGE_CALIBRATION`.

    Accuracy is the share of items whose order-averaged log-odds favour the good answer;
    consistency the share where both orders agree. `passed` when the accuracy is at least
    `CALIBRATION_PASS` (80%): a judge below that is reported, not used as evidence.
    """
    from .prompts import JUDGE_CALIBRATION

    items = list(JUDGE_CALIBRATION)
    lo, cons = order_averaged_logodds(
        judge, [i["query"] for i in items], [i["bad"] for i in items], [i["good"] for i in items]
    )
    by_kind: dict[str, list[bool]] = {}
    for item, v in zip(items, lo):
        by_kind.setdefault(item["kind"], []).append(v > 0)
    acc = float(np.mean([v > 0 for v in lo]))
    return {
        "n": len(items),
        "accuracy": acc,
        "consistency": float(np.mean(cons)),
        "by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()},
        "mean_logodds": float(np.mean(lo)),
        "passed": acc >= CALIBRATION_PASS,
        "threshold": CALIBRATION_PASS,
    }


# =========================================================================== statistics


def bootstrap_mean(
    values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mean, percentile bootstrap interval over items, and the minimum detectable effect.

    `mde` is the smallest true mean a two-sided test at 5% detects with 80% power at
    this n and spread: `(1.96 + 0.84) · sd / √n`.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "ci": None, "sd": None, "mde": None}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    return {
        "n": n,
        "mean": float(x.mean()),
        "ci": [float(lo), float(hi)],
        "sd": sd,
        "mde": float(2.8 * sd / math.sqrt(n)) if n > 1 else None,
    }


@torch.inference_mode()
def answer_nll(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    prompt_cache: Optional[dict] = None,
) -> tuple[float, int]:
    """Total negative log-likelihood of the answer tokens under the (unhooked) model.

    Each row is the prompt's tokens followed by the answer's ids, teacher-forced; only
    answer tokens count. Returns `(sum of NLL, number of tokens)`; the perplexity is
    `exp(sum / n)`. Rows are left-padded, so every answer ends at the right edge: only the
    last `longest answer + 1` positions need logits, and the bridge's view computes no
    others (the unembedding and log-softmax over the prompt positions: about 13% of this
    function's time on SmolLM2 at 32-token answers; the transformer body is the rest).

    `prompt_cache`: a dict kept by the caller across calls on the same prompts (a sweep
    scores every condition's answers to one prompt list). On the bridge's view the first
    call runs each batch's prompts once into a KV cache and stores it there; every call
    then runs only the answer tokens on top of it. The same NLL up to float rounding; the
    HookedTransformer path, and a model whose cache cannot be cropped exactly (a
    sliding-window layer), ignore it.
    """
    from .eval.effects import _log_probs
    from .fastpath import unwrapped_hf_model
    from .models import encode, model_device, pad_id, padding_kwargs

    view = unwrapped_hf_model(model)
    keep_kwarg = view is not None and "logits_to_keep" in inspect.signature(type(view).forward).parameters
    device = model_device(model)
    pad = pad_id(model.tokenizer)
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        batch_answers = [list(a) for a in answers[start : start + batch_size]]
        if view is not None and prompt_cache is not None:
            key = (start, tuple(batch))
            if key not in prompt_cache:
                prompt_cache[key] = _prompt_state(model, view, batch, keep_kwarg)
            if prompt_cache[key] is not None:
                nll, n = _answers_on_cache(view, prompt_cache[key], batch_answers, pad)
                total, count = total + nll, count + n
                continue
        rows, lengths = [], []
        enc = encode(model, batch)  # as generation encodes them
        for ids, mask, ans in zip(enc.input_ids, enc.attention_mask, batch_answers):
            rows.append(ids[mask.bool()].tolist() + ans)
            lengths.append(len(ans))
        width = max(len(r) for r in rows)
        keep = max(lengths) + 1  # the last `keep` columns: each answer token's predictor, and one more
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        if view is not None:  # the bridge's own weights, without the wrapper's overhead
            positions = (mask.cumsum(-1) - 1).clamp_min(0)  # left padding: each row counts from 0
            extra = {"logits_to_keep": keep} if keep_kwarg else {}
            logits = view(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **extra
            ).logits
        else:
            logits = model(ids.to(device), **padding_kwargs(model, mask.to(device)))
        logits = logits[:, -keep:]  # columns width-keep .. width-1
        lp = _log_probs(logits[:, :-1])
        targets = ids[:, width - keep + 1 :, None].to(lp.device)  # the tokens those columns predict
        token_lp = lp.gather(-1, targets)[..., 0].cpu()  # [rows, keep-1]
        for i, n in enumerate(lengths):  # row i's answer is its last n tokens: token_lp[i, keep-1-n:]
            total -= float(token_lp[i, keep - 1 - n :].sum())
            count += n
    return total, count


@torch.inference_mode()
def _prompt_state(model: Any, view: Any, prompts: list[str], keep_kwarg: bool) -> Optional[dict[str, Any]]:
    """One batch of prompts run into a KV cache: the cache, the mask, and the log-probs
    of the first answer token; None where the cache cannot be cropped back exactly."""
    from .eval.effects import _log_probs
    from .generation import croppable_cache
    from .models import encode, model_device

    cache = croppable_cache(view)
    if cache is None:
        return None
    device = model_device(model)
    enc = encode(model, prompts)
    mask = enc.attention_mask.long().to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    extra = {"logits_to_keep": 1} if keep_kwarg else {}
    out = view(
        input_ids=enc.input_ids.to(device),
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **extra,
    )
    return {
        "cache": cache,
        "mask": mask,
        "first_lp": _log_probs(out.logits[:, -1]),
    }


@torch.inference_mode()
def _answers_on_cache(view: Any, state: dict[str, Any], answers: list[list[int]], pad: int) -> tuple[float, int]:
    """The answers' NLL on top of `_prompt_state`'s cache (right-padded after the prompt);
    the cache is cropped back to the prompt afterwards."""
    from .eval.effects import _log_probs

    mask, first_lp = state["mask"], state["first_lp"]
    lengths = [len(a) for a in answers]
    longest = max(lengths)
    total = -sum(float(first_lp[i, a[0]]) for i, a in enumerate(answers) if a)
    if longest > 1:
        device = mask.device
        ids = torch.full((len(answers), longest), pad, dtype=torch.long)
        amask = torch.zeros((len(answers), longest), dtype=torch.long)
        for i, a in enumerate(answers):
            ids[i, : len(a)] = torch.tensor(a, dtype=torch.long)
            amask[i, : len(a)] = 1
        positions = mask.sum(-1, keepdim=True) + torch.arange(longest, device=device)
        try:
            logits = view(
                input_ids=ids.to(device),
                attention_mask=torch.cat([mask, amask.to(device)], dim=1),
                position_ids=positions,
                past_key_values=state["cache"],
                use_cache=True,
            ).logits
        finally:
            state["cache"].crop(-longest)  # back to the prompt alone, for the next call
        lp = _log_probs(logits[:, :-1])
        token_lp = lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0].cpu()  # column j predicts token j+1
        for i, n in enumerate(lengths):
            total -= float(token_lp[i, : max(n - 1, 0)].sum())
    return total, sum(lengths)


def matched_kl(points: Sequence[dict[str, Any]], key: str, targets: Sequence[float] = MATCHED_KL) -> dict[str, Any]:
    """Interpolate `point[key]` (a `bootstrap_mean` dict) at each target KL, linear in log KL.

    `points` are one method's conditions with a `kl`. Outside the measured KL range the
    value is None (no extrapolation). Mean and interval ends are interpolated alike.
    """
    pts = sorted(
        (p for p in points if p.get("kl") and p.get(key) and p[key].get("mean") is not None), key=lambda p: p["kl"]
    )
    out: dict[str, Any] = {}
    for target in targets:
        val = None
        for a, b in zip(pts, pts[1:]):
            if a["kl"] <= target <= b["kl"]:
                t = (
                    0.0
                    if b["kl"] == a["kl"]
                    else (math.log(target) - math.log(a["kl"])) / (math.log(b["kl"]) - math.log(a["kl"]))
                )
                mix = lambda u, v, t=t: u + t * (v - u)
                val = {
                    "mean": mix(a[key]["mean"], b[key]["mean"]),
                    "ci": [mix(a[key]["ci"][0], b[key]["ci"][0]), mix(a[key]["ci"][1], b[key]["ci"][1])],
                    "strength": mix(a["strength"], b["strength"]),
                }
                break
        if val is None:
            for p in pts:  # a point measured within 10% of the target counts as at it
                if abs(p["kl"] - target) <= 0.1 * target:
                    val = {"mean": p[key]["mean"], "ci": p[key]["ci"], "strength": p["strength"]}
        out[str(target)] = val
    return out


# =========================================================================== the sweep


def _fit_methods(model: Any, config: SweepConfig, prefs: Any, queries: list[str], say: Callable) -> tuple[dict, dict]:
    """The fitted activation methods at their own strengths, and the fit diagnostics.

    The pairs are embedded once (every layer, `resid_post`), and every method is fitted
    on those same activations.
    """
    from .baselines import DiffMeanSteerer, PCASteerer
    from .pairs import embed_pairs
    from .steering import Steerer
    from .subspace import EmptySubspaceError, fit_subspace

    layers = list(range(int(model.cfg.n_layers)))
    acts = embed_pairs(model, prefs, layers, "resid_post", batch_size=config.batch_size)
    pos, neg = acts.pos, acts.neg
    fit_kwargs: dict[str, Any] = {"verbose": False, "objective": prefs.objective}
    if config.rank is not None:
        fit_kwargs["rank"] = config.rank
    sub = fit_subspace(model, (pos, neg), **fit_kwargs)
    alignez = Steerer(sub, edit="oriented", top_n=config.top_n)
    [selections] = alignez.select(model, queries)
    counts = Counter(layer for sel in selections for layer in sel.layers)
    total: defaultdict[int, float] = defaultdict(float)  # summed float scores (a Counter's values are ints)
    for sel in selections:
        for sel_layer in sel.layers:
            total[sel_layer] += sel.scores[sel_layer]
    layer = config.layer
    if layer is None:
        layer = (
            min(counts, key=lambda layer: (-counts[layer], -total[layer], layer))
            if counts
            else sub.layer_indices[len(sub.layer_indices) // 2]
        )
    at_layer = (pos[:, layer], neg[:, layer])
    methods: dict[str, Any] = {}
    for name in config.methods:
        if name == "alignez":
            methods[name] = alignez
        elif name == "alignez-paper":
            methods[name] = Steerer(sub, edit="paper", top_n=config.top_n)
        elif name == "alignez-layer":  # top-n per-query layers vs DiffMean's one layer
            if layer not in sub.layers or not sub.layers[layer].rank:
                say(f"    the subspace keeps no direction at layer {layer}; alignez-layer skipped")
                continue
            methods[name] = Steerer(sub, edit="oriented", layers=[layer])
        elif name == "alignez-theta1":  # θ₁'s share of the effect (the ablation analysis' only_components)
            methods[name] = alignez.only_components([0])
        elif name == "alignez-null":
            try:
                null_sub = fit_subspace(model, (pos, neg), **{**fit_kwargs, "rank": "null"})
            except EmptySubspaceError:
                say("    rank='null': no direction beats the permutation null at any layer; alignez-null skipped")
                continue
            methods[name] = Steerer(null_sub, edit="oriented", top_n=config.top_n)
            say(
                f"    rank='null' keeps {sum(null_sub.ranks().values())} directions over "
                f"{sum(1 for r in null_sub.ranks().values() if r)} layers "
                f"(variance rule: {sum(sub.ranks().values())})"
            )
        elif name == "diffmean":
            methods[name] = DiffMeanSteerer.fit(model, at_layer, layer=layer, coef=1.0, objective=prefs.objective)
        elif name == "pca":
            methods[name] = PCASteerer.fit(
                model, at_layer, layer=layer, coef=1.0, coef_scale="rms", objective=prefs.objective
            )
        elif name == "iti":  # its own capture pass: per-head outputs (attn.hook_z), every head at once
            from .baselines import ITISteerer

            methods[name] = ITISteerer.fit(model, prefs, seed=config.seed, batch_size=config.batch_size)
    diag = _fit_diagnostics(sub, prefs, pos, neg, layer, counts)
    return methods, {"subspace": sub, "layer": layer, **diag}


def _fit_diagnostics(sub: Any, prefs: Any, pos: Any, neg: Any, layer: int, counts: Counter) -> dict:
    """Pair statistics, ranks, θ₁ vs the mean difference, and layer picks."""
    from .baselines import diffmean_vector

    cos_theta1 = {}
    for at in sub.layer_indices:  # not `layer`: that is the baseline layer reported below
        ls = sub.layers[at]
        if ls.rank:
            v = diffmean_vector(pos[:, at], neg[:, at]).to(torch.float64)
            cos_theta1[str(at)] = float(ls.directions[0].to(torch.float64) @ v / v.norm().clamp_min(1e-30))
    fallbacks = sum(
        1 for p in prefs if (p.meta or {}).get("fallback_positive") or (p.meta or {}).get("fallback_negative")
    )
    return {
        "pairs": {
            "n": len(prefs),
            "fallback_pairs": fallbacks,
            "fallback_share": fallbacks / len(prefs) if len(prefs) else None,
            "summary": prefs.summary(),
        },
        "ranks": {str(k): v for k, v in sub.ranks().items()},
        "kept_pairs": {str(k): sub.layers[k].n_kept for k in sub.layer_indices},
        "cos_theta1_diffmean": cos_theta1,
        "layer_picks": {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))},
        "baseline_layer": layer,
    }


class _Checkpoint:
    """A sweep's finished steps in `out/checkpoint/`, so that an interrupted sweep resumes.

    `header.json` holds what a resume must match (format, model, settings, a digest of the
    evaluation prompts and of the pairs file); every other file is one finished step (the
    judge's calibration, the pairs, the base answers, one condition), written atomically
    once the step is complete, so a kill leaves only whole steps. Every step is seeded and
    greedy, so a resumed sweep's results equal an uninterrupted one's. The folder is
    removed once the sweep has written its results.
    """

    def __init__(self, folder: Path, header: dict[str, Any], resume: bool) -> None:
        import shutil

        from ._stream import compare_headers

        self.folder = folder
        header = json.loads(json.dumps(header, ensure_ascii=False, default=str))  # as the file holds it
        self.started = time.perf_counter()
        self.earlier = 0.0  # seconds the interrupted runs spent, up to their last finished step
        self.resumed: set[str] = set()  # the steps read back
        head = folder / "header.json"
        if resume and head.is_file():
            compare_headers(json.loads(head.read_text(encoding="utf-8")), header, folder)
            clock = self.folder / "clock.json"
            if clock.is_file():
                self.earlier = float(json.loads(clock.read_text(encoding="utf-8"))["seconds"])
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        atomic_write_text(head, json.dumps(header, ensure_ascii=False, default=str) + "\n")

    def seconds(self) -> float:
        """Wall time of the sweep so far, over every run of it."""
        return self.earlier + time.perf_counter() - self.started

    def get(self, step: str) -> Optional[dict[str, Any]]:
        """The record of a finished step, or None."""
        path = self.folder / f"{step}.json"
        if not path.is_file():
            return None
        self.resumed.add(step)
        return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))

    def put(self, step: str, record: dict[str, Any]) -> None:
        atomic_write_text(self.folder / f"{step}.json", json.dumps(record, ensure_ascii=False, default=str) + "\n")
        atomic_write_text(self.folder / "clock.json", json.dumps({"seconds": self.seconds()}) + "\n")

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _digest(value: Any) -> str:
    import hashlib

    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_sweep(
    model: Any,
    config: SweepConfig,
    out: Path,
    *,
    judge_model: Any = None,
    say: Callable[..., None] = lambda *a: None,
    verbose: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run one objective's sweep into `out`; returns the results dict (also results.json).

    `judge_model` is the pairwise judge's model for the `helpful` task (None with
    `judge="self"`: the steered model judges). Each finished step is kept in
    `out/checkpoint/` until the results are written; `resume=True` continues from there
    (the pairs, the base answers and every finished condition are read back, not
    recomputed), and refuses (`ResumeError`, naming the field) a checkpoint written with
    another model or other settings. A resumed sweep's results equal an uninterrupted one's.
    """
    from .calibration import calibrate_strength
    from .eval.effects import generation_stats, is_degenerate, neutral_base, side_effects
    from .eval.logprob_judge import LogprobJudge
    from .models import render
    from .preferences import generate_preferences
    from .prompts import NEUTRAL_TEXTS_EXTENDED

    out = Path(out)
    evals, fit_queries = task_prompts(config)
    queries = [p["query"] for p in evals]
    categories = [p.get("category", "") for p in evals]
    file_prefs = None
    if config.pairs_file:  # read and checked before any work
        from .preferences import read_pairs

        file_prefs = read_pairs(config.pairs_file, objective=TASK_OBJECTIVE[config.task])
        overlap = set(file_prefs.queries) & set(queries)
        if overlap:
            raise InvalidArgumentError(
                f"{len(overlap)} queries of {config.pairs_file} are evaluation prompts: the "
                "evaluation must be on held-out prompts"
            )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = _Checkpoint(
        out / "checkpoint",
        {
            "type": "header",
            "format": "alignez-sweep-checkpoint/1",
            "model": getattr(model.cfg, "model_name", None),
            "judge_model": None if judge_model is None else getattr(judge_model.cfg, "model_name", None),
            "config": config.to_dict(),
            "prompts": _digest(evals),
            "pairs_file": _digest(Path(config.pairs_file).read_text(encoding="utf-8")) if config.pairs_file else None,
        },
        resume,
    )
    gen: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        return_tokens=True,
        verbose=verbose,
    )
    judge = None
    calibration = None
    if config.task == "helpful":
        judge = LogprobJudge(judge_model if judge_model is not None else model, name=config.judge)
        say("[0] judge calibration on the known-winner set")
        calibration = checkpoint.get("judge_calibration")
        if calibration is None:
            calibration = judge_calibration(judge)
            checkpoint.put("judge_calibration", calibration)

    pairs_done = checkpoint.get("pairs") is not None
    if file_prefs is not None:
        prefs = file_prefs
        fit_queries = prefs.queries
        say(f"[1] {len(prefs)} pairs from {config.pairs_file}")
    elif pairs_done:
        from .preferences import PreferenceSet

        prefs = PreferenceSet.load(out / "pairs.jsonl")
        say(f"[1] {len(prefs)} pairs generated before the interruption (resumed)")
    else:
        say(f"[1] self-generating {TASK_OBJECTIVE[config.task]} pairs from {len(fit_queries)} held-out fit prompts")
        prefs = generate_preferences(
            model,
            fit_queries,
            objective=TASK_OBJECTIVE[config.task],
            n_characteristics=config.n_characteristics,
            elicit_tokens=config.elicit_tokens,
            elicit_prefill=config.elicit_prefill,
            response_tokens=config.response_tokens,
            seed=config.seed,
            batch_size=config.batch_size,
            verbose=verbose,
        )
    if not pairs_done:
        prefs.save(out / "pairs.jsonl")
        checkpoint.put("pairs", {"n": len(prefs)})
    say("[2] fitting the methods on the same pairs")
    methods, fit = _fit_methods(model, config, prefs, queries, say)
    fit["subspace"].save(out / "subspace.safetensors")
    base_neutral = neutral_base(model, NEUTRAL_TEXTS_EXTENDED, batch_size=config.batch_size)
    prompts_text = [render(model, q) for q in queries]

    def score(answers: list[str], against: list[str]) -> list[float]:
        if judge is not None:
            return order_averaged_logodds(judge, queries, against, answers)[0]
        return score_answers(config.task, answers, evals)

    say("[3] base answers")
    from .baselines import NoSteerer

    nll_cache: dict = {}  # the prompts' KV, run once for every condition's answer_nll
    done = checkpoint.get("base")
    if done is None:
        base_ids, base_text = cast(  # return_tokens=True: (new token ids, texts)
            tuple[list[list[int]], list[str]], NoSteerer().generate(model, queries, **gen)
        )  # the shared loop, no hooks
        base_scores = score(base_text, base_text)
        base_nll = answer_nll(model, prompts_text, base_ids, batch_size=config.batch_size, prompt_cache=nll_cache)
        checkpoint.put("base", {"text": base_text, "scores": base_scores, "nll": list(base_nll)})
    else:
        base_text, base_scores, base_nll = done["text"], done["scores"], tuple(done["nll"])
    conditions: list[dict[str, Any]] = []
    answers: dict[str, list[str]] = {"base": base_text}
    per_prompt: dict[str, list[float]] = {"base": base_scores}

    def run_condition(
        name: str,
        method: str,
        control: Optional[str],
        steerer: Any,
        target: Optional[float],
        calib: Optional[dict],
        side: Optional[dict] = None,
    ) -> dict[str, Any]:
        """Generate, score and measure one condition; `side`: its side effects if already measured.

        A condition the checkpoint holds is read back instead."""
        done = checkpoint.get(name)
        if done is not None:
            answers[name], per_prompt[name] = done["answers"], done["scores"]
            say(f"    {name}: finished before the interruption (resumed)")
            return cast(dict[str, Any], done["row"])
        monitor: dict[str, int] = {}
        kwargs = dict(gen)
        if hasattr(steerer, "terms"):
            kwargs["monitor"] = monitor
        ids, text = steerer.generate(model, queries, **kwargs)
        scores = score(text, base_text)
        nll, ntok = answer_nll(model, prompts_text, ids, batch_size=config.batch_size, prompt_cache=nll_cache)
        row: dict[str, Any] = {
            "name": name,
            "method": method,
            "control": control,
            "target_kl": target,
            "strength": getattr(steerer, "strength", None),
            "calibration": calib,
            "score": bootstrap_mean(scores, n_boot=config.n_boot, seed=config.seed),
            "vs_base": bootstrap_mean(
                [s - b for s, b in zip(scores, base_scores)], n_boot=config.n_boot, seed=config.seed
            ),
            "changed": 100.0 * float(np.mean([a != b for a, b in zip(text, base_text)])),
            "degenerate": 100.0 * float(np.mean([is_degenerate(a) for a in text])),
            "answer_ppl": math.exp(nll / ntok) if ntok else None,
            "generation": generation_stats(base_text, text, tokenizer=model.tokenizer),
        }
        if hasattr(steerer, "hooks") and method != "prompt":
            if side is None:  # the calibrated strength's were measured by the calibration
                side = side_effects(model, steerer, base_neutral.texts, base=base_neutral)
            row["kl"] = side["kl"]
            row["neutral_ppl_ratio"] = side["ppl_ratio"]
        if monitor.get("edited"):
            row["negative_push_share"] = monitor["negative"] / monitor["edited"]
            row["edited_entries"] = monitor["edited"]
        if judge is not None:
            row["net_win"] = 100.0 * (float(np.mean([s > 0 for s in scores])) - float(np.mean([s < 0 for s in scores])))
        answers[name] = text
        per_prompt[name] = scores
        atomic_write_jsonl(
            out / "conditions" / f"{name}.jsonl",
            [{"query": q, "answer": a, "score": s} for q, a, s in zip(queries, text, scores)],
        )
        checkpoint.put(name, {"row": row, "answers": text, "scores": scores})
        say(
            f"    {name}: strength {row['strength']}, KL {row.get('kl', float('nan')):.4f}, "
            f"Δ vs base {row['vs_base']['mean']:+.4f} {row['vs_base']['ci']}, changed {row['changed']:.0f}%, "
            f"degenerate {row['degenerate']:.0f}%"
        )
        return row

    (out / "conditions").mkdir(exist_ok=True)
    for method, steerer in methods.items():
        say(f"[4] {method}: calibrating to KL {list(config.kl_targets)} and generating with controls")
        previous: Optional[tuple[float, float]] = None  # (strength, KL) of the last target
        for target in config.kl_targets:
            start: Optional[float] = None  # a later target starts from the last strength, scaled by KL ∝ s²
            if previous is not None and previous[0] != 0 and previous[1] > 0:
                start = abs(previous[0]) * math.sqrt(target / previous[1])
            tag = f"{method}@{target:g}"
            done = checkpoint.get(tag)
            if done is None:
                cal = calibrate_strength(model, steerer, target, texts=base_neutral, start=start)
                calib, effects, strength, reached_kl = cal.to_dict(), cal.effects, cal.strength, cal.kl
            else:  # finished before an interruption: its calibrated strength, read back
                calib, effects = done["row"]["calibration"], None
                strength, reached_kl = calib["strength"], calib["kl"]
            previous = (strength, reached_kl)
            at = steerer.with_strength(strength)
            row = run_condition(tag, method, None, at, target, calib, effects)
            mirror = run_condition(f"{tag}:mirror", method, "mirror", at.mirror(), target, None)
            row["vs_mirror"] = bootstrap_mean(
                [a - b for a, b in zip(per_prompt[tag], per_prompt[mirror["name"]])],
                n_boot=config.n_boot,
                seed=config.seed,
            )
            conditions += [row, mirror]
            if method in config.null_for:
                null = run_condition(f"{tag}:null", method, "null", at.null(seed=config.seed), target, None)
                row["vs_null"] = bootstrap_mean(
                    [a - b for a, b in zip(per_prompt[tag], per_prompt[null["name"]])],
                    n_boot=config.n_boot,
                    seed=config.seed,
                )
                conditions.append(null)
            lo = row["vs_mirror"]["ci"][0]
            row["steers"] = bool(lo > 0 and row["vs_base"]["ci"][0] > 0)
    if "prompt" in config.methods:
        from .baselines import PromptSteerer

        say("[5] prompt-only")
        conditions.append(run_condition("prompt", "prompt", None, PromptSteerer.fit(model, prefs), None, None))

    matched = {}
    for method in methods:
        rows = [c for c in conditions if c["method"] == method and c["control"] is None]
        matched[method] = {"vs_base": matched_kl(rows, "vs_base"), "vs_mirror": matched_kl(rows, "vs_mirror")}
    results = {
        "config": config.to_dict(),
        "model": getattr(model.cfg, "model_name", None),
        "n_prompts": len(queries),
        "n_fit_prompts": len(fit_queries),
        "categories": dict(Counter(categories)),
        "score_unit": {
            "tone": "VADER compound",
            "harmless": "0.5(1-p_offensive)+0.25(VADER+1)",
            "math": "pass@1",
            "helpful": "order-averaged judge log-odds vs base",
        }[config.task],
        "base": {
            "score": bootstrap_mean(base_scores, n_boot=config.n_boot, seed=config.seed),
            "answer_ppl": math.exp(base_nll[0] / base_nll[1]) if base_nll[1] else None,
            "degenerate": 100.0 * float(np.mean([is_degenerate(a) for a in base_text])),
        },
        "judge_calibration": calibration,
        "fit": {k: v for k, v in fit.items() if k != "subspace"},
        "methods": {m: s.describe() for m, s in methods.items()},
        "conditions": conditions,
        "matched_kl": matched,
        "per_prompt": {"queries": queries, "scores": per_prompt, "steerability": _steerability(conditions, per_prompt)},
        "wall_seconds": round(checkpoint.seconds(), 1),
        "resumed_steps": len(checkpoint.resumed),
    }
    atomic_write_jsonl(
        out / "generations.jsonl",
        [
            {"query": q, "category": c, **{k: v[i] for k, v in answers.items()}}
            for i, (q, c) in enumerate(zip(queries, categories))
        ],
    )
    fig = plot_frontier(results)
    atomic_write(out / "frontier.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write_text(out / "results.md", markdown(results))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n")
    checkpoint.close()
    return results


def _steerability(conditions: list[dict], per_prompt: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per method, per prompt: the mean over strengths of (method − its mirror)."""
    out: dict[str, list[float]] = {}
    for method in {c["method"] for c in conditions if c["control"] is None and c["method"] != "prompt"}:
        diffs = [
            np.asarray(per_prompt[c["name"]]) - np.asarray(per_prompt[f"{c['name']}:mirror"])
            for c in conditions
            if c["method"] == method and c["control"] is None
        ]
        out[method] = [float(v) for v in np.mean(diffs, axis=0)]
    return out


# =========================================================================== outputs

_COLOURS = {
    "alignez": "#1565c0",
    "alignez-paper": "#6a1b9a",
    "alignez-null": "#00838f",
    "alignez-layer": "#5d4037",
    "alignez-theta1": "#9e9d24",
    "diffmean": "#2e7d32",
    "pca": "#ef6c00",
    "iti": "#ad1457",
}


def plot_frontier(results: dict[str, Any]) -> Any:
    """Score change vs base against neutral KL: one line per method, mirrors dashed, nulls dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    conds = results["conditions"]
    for method, colour in _COLOURS.items():
        for control, style, label in (
            (None, "-o", method),
            ("mirror", "--x", f"{method} mirror"),
            ("null", ":^", f"{method} null"),
        ):
            pts = sorted(
                (c for c in conds if c["method"] == method and c["control"] == control and c.get("kl")),
                key=lambda c: c["kl"],
            )
            if not pts:
                continue
            x = [c["kl"] for c in pts]
            y = [c["vs_base"]["mean"] for c in pts]
            err = [
                [c["vs_base"]["mean"] - c["vs_base"]["ci"][0] for c in pts],
                [c["vs_base"]["ci"][1] - c["vs_base"]["mean"] for c in pts],
            ]
            ax.errorbar(
                x, y, yerr=err, fmt=style, color=colour, capsize=3, label=label, alpha=1.0 if control is None else 0.55
            )
    prompt = [c for c in conds if c["method"] == "prompt"]
    if prompt:
        ax.axhline(prompt[0]["vs_base"]["mean"], color="#757575", lw=1, ls="-.", label="prompt-only (no KL)")
    ax.axhline(0, color="black", lw=0.8)
    for k in MATCHED_KL:
        ax.axvline(k, color="#bdbdbd", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("KL per token on neutral text (nats, log scale)")
    ax.set_ylabel(f"Δ score vs base ({results['score_unit']})")
    ax.set_title(f"{results['config']['task']}: {results.get('model')}, n={results['n_prompts']} prompts, 95% CI")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def _fmt(stat: Optional[dict], digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci")
    return (
        f"{stat['mean']:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
        if ci
        else f"{stat['mean']:+.{digits}f}"
    )


def markdown(results: dict[str, Any]) -> str:
    """results.md: the setting, the conditions table and the matched-KL table."""
    cfg = results["config"]
    lines = [
        f"# Efficacy sweep: {cfg['task']} on {results.get('model')}",
        "",
        f"{results['n_prompts']} held-out prompts, pairs from {results['n_fit_prompts']} fit prompts "
        f"({results['fit']['pairs']['n']} pairs, {results['fit']['pairs']['fallback_pairs']} with a fallback "
        f"characteristic), seed {cfg['seed']}, greedy, {cfg['max_new_tokens']} new tokens. "
        f"Score: {results['score_unit']}. Intervals: 95% percentile bootstrap over prompts "
        f"({cfg['n_boot']} resamples); MDE: minimum detectable effect (80% power) of Δ vs base.",
        "",
        f"Base: score {_fmt(results['base']['score'])}, answer perplexity "
        f"{results['base']['answer_ppl']:.2f}, degenerate {results['base']['degenerate']:.1f}%.",
        "",
    ]
    cal = results.get("judge_calibration")
    if cal:
        lines += [
            f"Judge {cfg['judge']}: calibration accuracy {100 * cal['accuracy']:.0f}% "
            f"(n={cal['n']}, pass ≥ {100 * cal['threshold']:.0f}%), position consistency "
            f"{100 * cal['consistency']:.0f}%: **{'passed' if cal['passed'] else 'FAILED, not evidence'}**.",
            "",
        ]
    lines += [
        "| condition | strength | KL/token | Δ vs base [95% CI] | MDE | vs mirror [95% CI] | steers | "
        "changed % | degenerate % | answer ppl | p<0 share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["conditions"]:
        strength = "" if c["strength"] is None else f"{c['strength']:.4g}"
        kl = f"{c['kl']:.4f}" if c.get("kl") is not None else "–"
        mde = f"{c['vs_base']['mde']:.3f}" if c["vs_base"].get("mde") is not None else "n/a"
        neg = f"{100 * c['negative_push_share']:.0f}%" if c.get("negative_push_share") is not None else "–"
        ppl = f"{c['answer_ppl']:.2f}" if c.get("answer_ppl") else "n/a"
        steers = {True: "**yes**", False: "no"}.get(c.get("steers"), "")
        lines.append(
            f"| {c['name']} | {strength} | {kl} | {_fmt(c['vs_base'])} | {mde} | {_fmt(c.get('vs_mirror'))} | "
            f"{steers} | {c['changed']:.0f} | {c['degenerate']:.0f} | {ppl} | {neg} |"
        )
    lines += [
        "",
        "## At matched KL (interpolated in log KL between calibrated strengths)",
        "",
        "| method | "
        + " | ".join(f"Δ vs base @ KL {k}" for k in MATCHED_KL)
        + " | "
        + " | ".join(f"vs mirror @ KL {k}" for k in MATCHED_KL)
        + " |",
        "|---|" + "---|" * (2 * len(MATCHED_KL)),
    ]
    for method, m in results["matched_kl"].items():
        cells = [_fmt(m["vs_base"].get(str(k))) for k in MATCHED_KL] + [
            _fmt(m["vs_mirror"].get(str(k))) for k in MATCHED_KL
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    fit = results["fit"]
    lines += [
        "",
        "## Diagnostics",
        "",
        f"- baseline layer (AlignEZ's most frequent pick): {fit['baseline_layer']}; layer picks: {fit['layer_picks']}",
        f"- ranks per layer: {fit['ranks']}",
        "- cos(θ₁, mean difference) per layer: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in fit["cos_theta1_diffmean"].items()),
        f"- wall time: {results['wall_seconds']:.0f} s"
        + (
            f" (resumed after an interruption: {results['resumed_steps']} finished steps read back)"
            if results.get("resumed_steps")
            else ""
        ),
        "",
    ]
    return "\n".join(lines)
