"""Layer signal: how strongly each layer's alignment subspace separates pos from neg.

`layer_signal` answers "which layers should I steer?" with numbers that can be read
against depth. It captures the last-token activations of every pair once, at every
layer of the subspace and at the subspace's hook site (one forward pass per batch of
texts, `alignez_tl.activations.capture`); everything after that is linear algebra.

Per layer it reports

* what the subspace is: its rank and the variance its kept directions explain;
* how much preference signal the pairs carry there: how many pass the cosine filter,
  and the mean and spread of `cos(pos, neg)`;
* whether the subspace separates positive from negative answers it has not seen:
  held-out AUROC along the first direction and of a small linear probe on the
  projection coordinates, over a seeded split of the pairs (the same split at every
  layer), with the subspace refitted on the training pairs only (`refit=True`);
* the mean preference gap along θ_1 in units of its spread (`gap_z`);
* whether the layer beats chance: permutation p-values of the held-out AUROCs and of
  the gap along θ_1, from refits with pos and neg swapped inside random pairs, and how
  many directions beat the sign-flip null (`null_rank`);
* with `queries`, the per-query layer scores of `Steerer.select` and how often each
  layer lands in a query's top n;

and recommends layers by a rule stated in words in `LayerSignal.rule`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from alignez_tl.errors import ArgumentTypeError, InvalidArgumentError
from alignez_tl.hooks import SITES
from alignez_tl.models import model_signature, require_tokenizer
from alignez_tl.pairs import check_pair_data, embed_pairs
from alignez_tl.steering import Steerer
from alignez_tl.subspace import (
    AlignmentSubspace,
    LayerSubspace,
    check_rank_args,
    fit_layer,
    null_signs,
    quantile_rows,
)
from analyses._common import clean, single_thread

logger = logging.getLogger(__name__)

__all__ = ["LayerSignal", "auroc", "auroc_null_sd", "layer_signal"]

PROBE_L2 = 1.0  # L2 penalty of the probe: sum of log-losses + (PROBE_L2 / 2)·‖w‖²
_FIT_DEFAULTS = {
    "tau": 0.8,
    "variance": 0.90,
    "rank": None,
    "max_rank": None,
    "n_null": 200,
    "null_quantile": 0.95,
    "null_seed": 0,
}
N_PERM = 100  # default number of pos/neg swap patterns for the per-layer p-values


# --------------------------------------------------------------------------- AUROC


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    n = len(values)
    while start < n:
        stop = start + 1
        while stop < n and sorted_vals[stop] == sorted_vals[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + 1 + stop)  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Computed as the Mann-Whitney U statistic divided by `n_pos · n_neg`, with ties between
    a positive and a negative counted as one half. 1 means every positive scores above
    every negative, 0 the reverse, 0.5 no separation (or all scores tied).

    Args:
        scores: 1-D numbers (higher means "more positive").
        labels: 1-D, same length, 1/True for positives and 0/False for negatives.

    Raises:
        ValueError: lengths differ, labels are not 0/1, a score is not finite, or one of
            the two classes is empty.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise InvalidArgumentError(f"scores and labels must have the same length; got {s.size} and {y.size}")
    if not np.isin(y, (0, 1)).all():
        raise InvalidArgumentError("labels must be 0/1 (or False/True)")
    if not np.isfinite(s).all():
        raise InvalidArgumentError("scores must be finite")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InvalidArgumentError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- probe


def _fit_probe(x: np.ndarray, y: np.ndarray, l2: float = PROBE_L2, iters: int = 100) -> tuple:
    """L2-regularised logistic regression by Newton's method (deterministic, float64).

    Features are standardised with the training mean and standard deviation; the loss is
    the summed log-loss plus `(l2 / 2)·‖w‖²` (the intercept is not penalised). Returns
    `(mean, std, w, b)` so that the score of a row z is `((z - mean) / std) @ w + b`.
    """
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    xs = np.concatenate([(x - mean) / std, np.ones((x.shape[0], 1))], axis=1)
    k = xs.shape[1]
    beta = np.zeros(k)
    penalty = np.full(k, float(l2))
    penalty[-1] = 1e-9  # the intercept: a tiny ridge only for numerical safety
    for _ in range(iters):
        logits = np.clip(xs @ beta, -50.0, 50.0)
        p = 1.0 / (1.0 + np.exp(-logits))
        grad = xs.T @ (p - y) + penalty * beta
        hess = (xs * (p * (1.0 - p))[:, None]).T @ xs + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return mean, std, beta[:-1], beta[-1]


def _probe_scores(model: tuple, x: np.ndarray) -> np.ndarray:
    mean, std, w, b = model
    return ((x - mean) / std) @ w + b


# --------------------------------------------------------------------------- result


@dataclass
class LayerSignal:
    """Per-layer signal of an alignment subspace; every array is over `layers`, in order.

    What the subspace is (as given, fitted on whatever it was fitted on):

    Attributes:
        layers: the subspace's layers, ascending.
        rank: number of kept directions θ_j at each layer.
        explained_variance: share of the pair-difference variance the kept directions
            explain, `Σ_{j ≤ rank} σ_j² / Σ σ²` (0 where rank is 0).
        spectrum: per layer, every explained-variance ratio `σ_j² / Σ σ²` (descending),
            kept or not.

    How much preference signal the pairs carry (over the pairs passed in):

    Attributes:
        n_pairs: pairs analysed (the same at every layer).
        n_kept: pairs with `cos(pos, neg) ≤ tau` (tau from the subspace's settings): the
            pairs the cosine filter keeps for a fit.
        cos_mean: mean over pairs of `cos(pos, neg)` of the last-token activations.
        cos_std: their standard deviation (population, ddof = 0).

    Separability on held-out pairs (a seeded split of pairs, the same at every layer;
    a pair's pos and neg rows are always on the same side; with `repeats > 1`, the
    mean over that many seeded splits). The directions used are
    those of `evaluation`: with `settings["refit"]` true, a subspace refitted at every
    layer on the training pairs only (same tau / variance / rank / max_rank as the
    subspace), else the subspace as given:

    Attributes:
        eval_rank: rank of the directions used for the held-out numbers.
        auroc_first: AUROC of `⟨Φ, θ_1⟩` over the held-out rows (pos = 1, neg = 0).
            θ_1 points from negative to positive, so 0.5 is chance and 1 is perfect.
        auroc_probe: AUROC of a logistic-regression probe (L2, `C = 1` on standardised
            features, fitted on the training pairs' rows) on the projection coordinates
            `⟨Φ, θ_j⟩` of all kept directions, scored on the held-out rows.
        pair_acc_first: share of held-out pairs whose gap `⟨pos − neg, θ_1⟩` is > 0.
        gap_z: `mean_k ⟨pos_k − neg_k, θ_1⟩ / std_k ⟨pos_k − neg_k, θ_1⟩` over **all**
            `n_pairs` pairs, with θ_1 the first direction of the subspace as given and
            the sample standard deviation (ddof = 1): the mean preference gap along θ_1
            in units of its pair-to-pair spread. In-sample (descriptive), not held-out.
        auroc_first_sd, auroc_probe_sd: standard deviation of those AUROCs over the
            `repeats` splits (0 for one split).
        train_pairs, test_pairs: indices of the pairs in each side of the (first) split.
        splits: the held-out pair indices of every split (`repeats` lists).
        evaluation: in words, which directions the held-out numbers used.

    Does the layer beat chance? A permutation null: in each of `n_perm` seeded draws,
    pos and neg swap places inside a random subset of the pairs (all of them, training
    and held-out), everything above is recomputed (refit included), and
    `p = (1 + #{draws ≥ real}) / (1 + n_perm)`. NaN with `n_perm=0`:

    Attributes:
        p_auroc_first, p_auroc_probe: p-values of the held-out AUROCs (their mean over
            the splits; a split whose fit keeps no direction counts as 0.5).
        p_gap: in-sample p-value of the mean gap `|mean_k ⟨pos_k − neg_k, θ_1⟩|` along the
            subspace's θ_1 over all pairs (NaN where the subspace has no direction).
        null_rank: directions that beat the sign-flip null (`fit_layer(rank="null")` on
            all the pairs, with the subspace's tau / n_null / null_quantile / null_seed).

    The explained variance of the kept directions has no p-value: swapping pos and neg
    multiplies rows of `D` by −1, which leaves its singular values, and so every
    explained-variance ratio, exactly unchanged.

    Per-query layer selection (`None` without `queries`):

    Attributes:
        queries: the queries.
        query_scores: `[n_queries, n_layers]`, `Steerer.select`'s score
            `s_l(q) = sqrt(Σ_{θ kept} ⟨q̂, θ⟩²)` (NaN where a layer has no direction).
        query_layers: per query, the layers its top n chose (best first).
        chosen_frequency: per layer, the share of queries whose top n includes it.

    Recommendation and provenance:

    Attributes:
        recommended: the recommended layers (ascending).
        rule: the rule that picked them, in one sentence with its numbers.
        site: hook site of the subspace (and of the captured activations).
        objective: the subspace's objective (`to_dict()` form).
        model: the model signature the subspace recorded (`{}` for bare activations).
        settings: holdout, seed, refit, top_n, min_kept, n_train, n_test, n_perm, fit settings,
            probe L2, batch size, `n_capture_batches` (forward passes for the pairs),
            `pairs_match_fit` (whether these pairs give the subspace's own pair cosines:
            True means the subspace saw every held-out pair).
    """

    layers: list[int]
    rank: np.ndarray
    explained_variance: np.ndarray
    spectrum: list[np.ndarray]
    n_pairs: np.ndarray
    n_kept: np.ndarray
    cos_mean: np.ndarray
    cos_std: np.ndarray
    eval_rank: np.ndarray
    auroc_first: np.ndarray
    auroc_probe: np.ndarray
    pair_acc_first: np.ndarray
    gap_z: np.ndarray
    auroc_first_sd: np.ndarray
    auroc_probe_sd: np.ndarray
    train_pairs: list[int]
    test_pairs: list[int]
    splits: list[list[int]]
    evaluation: str
    recommended: list[int]
    rule: str
    site: str
    objective: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    queries: Optional[list[str]] = None
    query_scores: Optional[np.ndarray] = None
    query_layers: Optional[list[list[int]]] = None
    chosen_frequency: Optional[np.ndarray] = None
    p_auroc_first: Optional[np.ndarray] = None
    p_auroc_probe: Optional[np.ndarray] = None
    p_gap: Optional[np.ndarray] = None
    null_rank: Optional[np.ndarray] = None

    _ARRAYS = (
        "rank",
        "explained_variance",
        "n_pairs",
        "n_kept",
        "cos_mean",
        "cos_std",
        "eval_rank",
        "auroc_first",
        "auroc_probe",
        "pair_acc_first",
        "gap_z",
        "auroc_first_sd",
        "auroc_probe_sd",
        "p_auroc_first",
        "p_auroc_probe",
        "p_gap",
        "null_rank",
    )

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (lists, floats, ints, str; NaN becomes None)."""
        out: dict[str, Any] = {"layers": list(self.layers)}
        for name in self._ARRAYS:
            out[name] = getattr(self, name)
        out.update(
            spectrum=self.spectrum,
            train_pairs=self.train_pairs,
            test_pairs=self.test_pairs,
            splits=self.splits,
            evaluation=self.evaluation,
            recommended=self.recommended,
            rule=self.rule,
            site=self.site,
            objective=self.objective,
            model=self.model,
            settings=self.settings,
            queries=self.queries,
            query_scores=self.query_scores,
            query_layers=self.query_layers,
            chosen_frequency=self.chosen_frequency,
        )
        return clean(out)

    def summary(self) -> str:
        """A text table, one row per layer (`*` marks recommended layers)."""
        head = (
            f"layer signal ({self.objective.get('name', 'custom')}, site {self.site}, "
            f"{int(self.n_pairs[0]) if len(self.n_pairs) else 0} pairs, "
            f"{len(self.test_pairs)} held out; {self.evaluation})"
        )
        with_p = self.p_auroc_probe is not None and bool(np.isfinite(self.p_auroc_probe).any())
        lines = [
            head,
            "layer  rank    EV  kept  cos(mean±std)  AUROC θ1  AUROC probe  gap_z"
            + ("  p θ1  p probe  p gap  null-rank" if with_p else "")
            + ("  chosen" if self.chosen_frequency is not None else ""),
        ]

        def f(v: float, w: int, p: int = 3) -> str:
            return f"{v:>{w}.{p}f}" if math.isfinite(v) else f"{'-':>{w}}"

        for i, layer in enumerate(self.layers):
            mark = "*" if layer in self.recommended else " "
            row = (
                f"{layer:>4}{mark}  {int(self.rank[i]):>4}  {f(self.explained_variance[i], 4, 2)}  "
                f"{int(self.n_kept[i]):>4}  {f(self.cos_mean[i], 6)}±{f(self.cos_std[i], 5)}  "
                f"{f(self.auroc_first[i], 8)}  {f(self.auroc_probe[i], 11)}  {f(self.gap_z[i], 5, 2)}"
            )
            if with_p:  # the p-values and null ranks are computed together (n_perm > 0)
                assert self.p_auroc_first is not None and self.p_auroc_probe is not None
                assert self.p_gap is not None and self.null_rank is not None
                row += (
                    f"  {f(self.p_auroc_first[i], 4, 2)}  {f(self.p_auroc_probe[i], 7, 3)}  "
                    f"{f(self.p_gap[i], 5, 3)}  {int(self.null_rank[i]):>9}"
                )
            if self.chosen_frequency is not None:
                row += f"  {f(self.chosen_frequency[i], 6, 2)}"
            lines.append(row)
        lines.append(f"recommended: {self.recommended}  ({self.rule})")
        if with_p:
            lines.append(
                f"p: permutation p-values over {self.settings.get('n_perm')} random pos/neg swaps "
                f"(smallest possible {1 / (1 + int(self.settings.get('n_perm', 0))):.3g}); "
                "null-rank: directions above the sign-flip null"
            )
        return "\n".join(lines)

    def plot(self, *, title: Optional[str] = None):
        """One matplotlib `Figure`, panels against depth, recommended layers shaded.

        Panels: explained variance (rank on a right axis); share of pairs kept and
        cos(pos, neg) mean ± std (count kept on a right axis); held-out AUROC along θ_1
        and of the probe (with `n_perm > 0`, a star at AUROC 1 marks the layers whose
        probe p-value is at most 0.05); gap_z; and, when queries were given, the share of
        queries whose top n chose each layer. Built on `matplotlib.figure.Figure`, so it needs
        no display and leaves the global backend alone: save it with `fig.savefig(...)`.
        """
        from matplotlib.figure import Figure

        x = np.asarray(self.layers)
        with_p = self.p_auroc_probe is not None and bool(np.isfinite(self.p_auroc_probe).any())
        n_panels = 5 if self.chosen_frequency is not None else 4
        fig = Figure(figsize=(8.0, 1.9 * n_panels + 0.6), layout="constrained")
        axes = fig.subplots(n_panels, 1, sharex=True)

        def mark(ax):
            for layer in self.recommended:
                ax.axvspan(layer - 0.5, layer + 0.5, color="tab:green", alpha=0.15, lw=0)
            ax.grid(alpha=0.3)

        ax = axes[0]
        ax.plot(x, self.explained_variance, "o-", color="tab:blue", ms=3, label="explained variance (kept)")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("EV")
        twin = ax.twinx()
        twin.bar(x, self.rank, color="tab:gray", alpha=0.35, width=0.6, label="rank")
        twin.set_ylabel("rank")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=7)
        mark(ax)

        ax = axes[1]
        ax.plot(x, self.cos_mean, "o-", color="tab:purple", ms=3, label="cos(pos, neg) mean ± std")
        ax.fill_between(
            x, self.cos_mean - self.cos_std, self.cos_mean + self.cos_std, color="tab:purple", alpha=0.2, lw=0
        )
        tau = self.settings.get("fit", {}).get("tau")
        if tau is not None:
            ax.axhline(tau, color="tab:purple", ls=":", lw=1, label=f"tau = {tau}")
        ax.set_ylabel("cos")
        lo = float(np.nanmin(self.cos_mean - self.cos_std)) if len(self.layers) else 0.0
        ax.set_ylim(max(-1.02, min(0.0, lo) - 0.05), 1.02)
        twin = ax.twinx()
        twin.step(x, self.n_kept, where="mid", color="tab:orange", label="pairs kept")
        twin.set_ylim(0, max(1, int(np.max(self.n_pairs))) * 1.05)
        twin.set_ylabel("pairs kept")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=7)
        mark(ax)

        ax = axes[2]
        ax.plot(x, self.auroc_first, "o-", ms=3, color="tab:red", label="AUROC along θ1")
        ax.plot(x, self.auroc_probe, "s-", ms=3, color="tab:brown", label="AUROC probe")
        if len(self.splits) > 1:
            ax.fill_between(
                x,
                self.auroc_probe - self.auroc_probe_sd,
                self.auroc_probe + self.auroc_probe_sd,
                color="tab:brown",
                alpha=0.15,
                lw=0,
            )
        if with_p:  # layers whose probe AUROC beats the permutation null
            assert self.p_auroc_probe is not None  # with_p
            hit = np.isfinite(self.p_auroc_probe) & (self.p_auroc_probe <= 0.05)
            ax.plot(
                x[hit],
                np.full(int(hit.sum()), 1.0),
                "*",
                ms=7,
                color="tab:green",
                label=f"p probe ≤ 0.05 ({self.settings.get('n_perm')} swaps)",
            )
        bar = self.settings.get("auroc_bar")
        if bar is not None:
            ax.axhline(bar, color="tab:green", ls="--", lw=1, label=f"bar {bar:.3f}")
        ax.axhline(0.5, color="k", ls=":", lw=1)
        ax.set_ylim(-0.02, 1.02)
        reps = f", mean of {len(self.splits)} splits" if len(self.splits) > 1 else ""
        ax.set_ylabel(f"held-out AUROC\n({len(self.test_pairs)} pairs{reps})")
        ax.legend(loc="lower right", fontsize=7)
        mark(ax)

        ax = axes[3]
        ax.plot(x, self.gap_z, "o-", ms=3, color="tab:cyan")
        ax.axhline(0.0, color="k", ls=":", lw=1)
        ax.set_ylabel("gap_z")
        mark(ax)

        if self.chosen_frequency is not None:
            ax = axes[4]
            ax.bar(x, self.chosen_frequency, color="tab:olive", width=0.6)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"chosen by\nqueries (top {self.settings.get('top_n')})")
            mark(ax)
        axes[-1].set_xlabel("layer")
        if title is None:
            name = self.model.get("model_id", "activations") if self.model else "activations"
            title = (
                f"Layer signal: {name}, {self.objective.get('name', 'custom')}, {self.site}; "
                f"{int(self.n_pairs[0])} pairs; shaded: recommended"
            )
        fig.suptitle(title, fontsize=10)
        return fig


# --------------------------------------------------------------------------- inputs


def _check_args(holdout: Any, seed: Any, top_n: Any, batch_size: Any, min_kept: Any) -> None:
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not (0.0 < holdout < 1.0):
        raise InvalidArgumentError(f"holdout must be a number strictly between 0 and 1; got {holdout!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ArgumentTypeError(f"seed must be an int; got {seed!r}")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InvalidArgumentError(f"top_n must be a positive int or None; got {top_n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int; got {batch_size!r}")
    if isinstance(min_kept, bool) or not isinstance(min_kept, (int, float)) or not (0.0 <= min_kept <= 1.0):
        raise InvalidArgumentError(f"min_kept must be a share in [0, 1]; got {min_kept!r}")


def _splits(n: int, holdout: float, seed: int, repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`repeats` (train, test) splits of pair indices, successive permutations of one rng."""
    n_test = int(math.floor(holdout * n + 0.5))
    n_test = min(max(n_test, 1), n - 2)
    rng = np.random.default_rng(int(seed))
    out = []
    for _ in range(repeats):
        perm = rng.permutation(n)
        out.append((np.sort(perm[n_test:]), np.sort(perm[:n_test])))
    return out


# --------------------------------------------------------------------------- analysis


def _held_out(
    theta: Tensor, pos: np.ndarray, neg: np.ndarray, train: np.ndarray, test: np.ndarray
) -> tuple[float, float, float]:
    """(AUROC along θ_1, probe AUROC, pair accuracy along θ_1) on the held-out pairs."""
    if theta.shape[0] == 0:
        return math.nan, math.nan, math.nan
    th = theta.double().numpy()
    zp, zn = pos @ th.T, neg @ th.T  # [n, k] projection coordinates
    labels = np.concatenate([np.ones(len(test)), np.zeros(len(test))])
    first = np.concatenate([zp[test, 0], zn[test, 0]])
    a_first = auroc(first, labels)
    acc = float(np.mean(zp[test, 0] - zn[test, 0] > 0))
    x_train = np.concatenate([zp[train], zn[train]])
    y_train = np.concatenate([np.ones(len(train)), np.zeros(len(train))])
    probe = _fit_probe(x_train, y_train)
    scores = _probe_scores(probe, np.concatenate([zp[test], zn[test]]))
    return a_first, auroc(scores, labels), acc


# --------------------------------------------------------------------------- permutation null


def _perm_signs(n: int, n_perm: int, seed: int) -> np.ndarray:
    """`[n_perm, n]` float ±1: in draw b, pair k's pos and neg swap places where it is −1.

    From `numpy.random.default_rng([seed, 1])`, a stream separate from the splits'; the
    same draws serve every layer and every split.
    """
    rng = np.random.default_rng([int(seed), 1])
    return rng.integers(0, 2, size=(n_perm, n)).astype(np.float64) * 2.0 - 1.0


def _auroc_rows(sp: np.ndarray, sn: np.ndarray) -> np.ndarray:
    """Row-wise AUROC: `sp` `[B, m]` scores of the positives, `sn` `[B, m']` of the
    negatives; ties count one half (the same number as `auroc`)."""
    b, m = sp.shape
    m2 = sn.shape[1]
    out = np.empty(b)
    step = max(1, 4_000_000 // max(1, m * m2))  # bound the [step, m, m'] comparison arrays
    for a in range(0, b, step):
        x, y = sp[a : a + step, :, None], sn[a : a + step, None, :]
        out[a : a + step] = ((x > y).sum((1, 2)) + 0.5 * (x == y).sum((1, 2))) / (m * m2)
    return out


def _fit_probe_batch(x: np.ndarray, y: np.ndarray, mask: np.ndarray, l2: float = PROBE_L2, iters: int = 100) -> tuple:
    """`_fit_probe` for B label vectors at once, by batched Newton steps.

    `x` `[m, k]` rows shared by every draw, `y` `[B, m]` labels, `mask` `[B, k]` the
    features each draw uses (the others are zeroed, which gives exactly the fit on the
    used ones). Returns `(mean, std, w [B, k], b [B])`.
    """
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    xs = ((x - mean) / std)[None] * mask[:, None, :]
    xs = np.concatenate([xs, np.ones(xs.shape[:2] + (1,))], axis=2)  # [B, m, k + 1]
    k = xs.shape[2]
    beta = np.zeros((y.shape[0], k))
    penalty = np.full(k, float(l2))
    penalty[-1] = 1e-9
    for _ in range(iters):
        logits = np.clip(np.einsum("bmk,bk->bm", xs, beta), -50.0, 50.0)
        p = 1.0 / (1.0 + np.exp(-logits))
        grad = np.einsum("bmk,bm->bk", xs, p - y) + penalty * beta
        hess = np.matmul(xs.transpose(0, 2, 1) * (p * (1.0 - p))[:, None, :], xs) + np.diag(penalty)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta = beta - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return mean, std, beta[:, :-1], beta[:, -1]


def _null_rule_ranks(
    z: Tensor, flips: Tensor, n_null: int, quantile: float, seed: int, numerical_rank: int
) -> np.ndarray:
    """The rank `fit_layer(rank="null")` gives on each of B sign-flipped copies of D.

    `z` `[n, r]` are the coordinates `D Vᵀ` of the unflipped fit and `flips` `[B, n]` the
    swaps. Flipping rows leaves V unchanged, so fit_layer on `diag(s) D` sees `diag(s) z`
    (up to column signs, which the absolute gaps ignore) and draws the same null signs.
    """
    n = z.shape[0]
    zb = flips[:, :, None] * z[None]  # [B, n, r]
    gaps = zb.mean(1).abs()  # [B, r]
    s_null = null_signs(n, n_null, seed)  # [n_null, n]
    null = torch.matmul(s_null[None], zb).abs_().div_(n)  # [B, n_null, r]
    thr = quantile_rows(null, quantile, dim=1)  # [B, r]
    gaps[:, numerical_rank:] = 0.0
    thr[:, numerical_rank:] = 0.0
    above = (gaps.float() > thr.float()).long().cumprod(1).sum(1)
    return above.clamp(max=numerical_rank).numpy()


def _held_out_perm(
    P: Tensor,
    N: Tensor,
    cos: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    flips: np.ndarray,
    fit: dict[str, Any],
    theta: Optional[Tensor],
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out AUROC along θ_1 and of the probe for B relabelled copies of the pairs.

    In copy b, pos and neg swap places in pair k wherever `flips[b, k] = −1`, in the
    training and the held-out pairs alike. With `theta=None` the subspace is refitted on
    the swapped training pairs as `fit_layer` would do it: the cosine filter and the
    right singular vectors do not change under swaps, so one SVD serves every copy, and
    only the orientation (and, for `rank="null"`, the rank) depends on b. With a given
    `theta` the directions stay fixed. A copy whose fit keeps no direction scores 0.5.
    Returns two `[B]` arrays; with `flips` all +1 they equal `_held_out`'s numbers.
    """
    n_b = flips.shape[0]
    if theta is None:
        keep = train[cos[train] <= float(fit["tau"])]
        if len(keep) == 0:
            return np.full(n_b, 0.5), np.full(n_b, 0.5)
        diffs = P[keep] - N[keep]
        u, sigma, vh = torch.linalg.svd(diffs, full_matrices=False)
        energy = sigma.square()
        if float(energy.sum()) <= 0:
            return np.full(n_b, 0.5), np.full(n_b, 0.5)
        numerical_rank = int((sigma > 1e-6 * sigma[0]).sum())
        z = u * sigma  # [n_keep, r] = diffs @ vh.T
        rank = fit["rank"]
        if rank == "null":
            ranks = _null_rule_ranks(
                z,
                torch.from_numpy(flips[:, keep]),
                int(fit["n_null"]),
                float(fit["null_quantile"]),
                int(fit["null_seed"]),
                numerical_rank,
            )
        elif rank is not None:
            ranks = np.full(n_b, min(int(rank), numerical_rank))
        else:
            cumulative = torch.cumsum(energy / energy.sum(), 0)
            k = int((cumulative < float(fit["variance"]) - 1e-12).sum()) + 1
            ranks = np.full(n_b, min(k, numerical_rank))
        if fit["max_rank"] is not None:
            ranks = np.minimum(ranks, int(fit["max_rank"]))
        k_max = int(ranks.max())
        # orientation of copy b: the sign of ⟨mean_k s_k D_k, v_j⟩ (+1 on a tie, as fit_layer)
        gap = flips[:, keep] @ z[:, :k_max].numpy() / len(keep)  # [B, k_max]
        orient = np.where(gap < 0, -1.0, 1.0)
        basis = vh[:k_max]
    else:
        k_max = int(theta.shape[0])
        ranks = np.full(n_b, k_max)
        orient = np.ones((n_b, k_max))
        basis = theta.double()
    if k_max == 0:
        return np.full(n_b, 0.5), np.full(n_b, 0.5)
    zp, zn = (P @ basis.T).numpy(), (N @ basis.T).numpy()  # [n, k_max], unoriented
    has = ranks > 0
    s_te, s_tr = flips[:, test] > 0, flips[:, train] > 0  # True: the pair keeps its labels
    # along θ_1 (oriented per copy): the relabelled positive of pair k is pos_k where s_k = +1
    first_pos = np.where(s_te, zp[test, 0], zn[test, 0]) * orient[:, :1]
    first_neg = np.where(s_te, zn[test, 0], zp[test, 0]) * orient[:, :1]
    a_first = np.where(has, _auroc_rows(first_pos, first_neg), 0.5)
    # the probe on the first ranks[b] coordinates (orientation does not change its scores)
    x_train = np.concatenate([zp[train], zn[train]])
    y_train = np.concatenate([s_tr, ~s_tr], axis=1).astype(np.float64)
    mask = (np.arange(k_max)[None, :] < ranks[:, None]).astype(np.float64)
    mean, std, w, b = _fit_probe_batch(x_train, y_train, mask)
    score_p = ((zp[test] - mean) / std) @ (w * mask).T + b  # [m, B]
    score_n = ((zn[test] - mean) / std) @ (w * mask).T + b
    probe_pos = np.where(s_te, score_p.T, score_n.T)
    probe_neg = np.where(s_te, score_n.T, score_p.T)
    a_probe = np.where(has, _auroc_rows(probe_pos, probe_neg), 0.5)
    return a_first, a_probe


def _p_value(real: float, null: np.ndarray) -> float:
    """`(1 + #{null ≥ real}) / (1 + B)` (ties, to 1e-12, count against the real value)."""
    if not math.isfinite(real) or len(null) == 0:
        return math.nan
    return float((1 + int(np.sum(null >= real - 1e-12))) / (1 + len(null)))


def _gap_z(theta1: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    gaps = (pos - neg) @ theta1
    sd = float(np.std(gaps, ddof=1)) if len(gaps) > 1 else math.nan
    mean = float(np.mean(gaps))
    if not sd > 0:
        return math.nan if mean == 0 or not math.isfinite(sd) else math.copysign(math.inf, mean)
    return mean / sd


def auroc_null_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUROC of uninformative scores (no ties): the spread of
    chance, `sqrt((n_pos + n_neg + 1) / (12 · n_pos · n_neg))` (Mann-Whitney null)."""
    return math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


def _recommend(
    sig: dict[str, np.ndarray],
    layers: list[int],
    n_pairs: int,
    n_train: int,
    n_test: int,
    top_n: int,
    min_kept: float,
    refit: bool,
    repeats: int = 1,
) -> tuple[list[int], str, float]:
    need = max(2, math.ceil(min_kept * n_pairs))
    bar = 0.5 + auroc_null_sd(n_test, n_test)
    probe, gap = sig["auroc_probe"], sig["gap_z"]
    eligible = [
        i
        for i in range(len(layers))
        if sig["n_kept"][i] >= need and sig["rank"][i] > 0 and math.isfinite(probe[i]) and probe[i] >= bar - 1e-12
    ]

    def key(i: int) -> tuple:
        g = gap[i] if not math.isnan(gap[i]) else -math.inf
        return (-probe[i], -g, layers[i])

    chosen = sorted(layers[i] for i in sorted(eligible, key=key)[:top_n])
    where = f"the subspace refitted on the {n_train} training pairs" if refit else "the subspace as given"
    if repeats > 1:
        where += f"; mean over {repeats} seeded splits"
    rule = (
        f"the (up to) {top_n} layers with the highest held-out probe AUROC ({where}, scored "
        f"on {n_test} held-out pairs), among layers where the subspace has at least one "
        f"direction, at least {need} of {n_pairs} pairs pass the cosine filter (min_kept = "
        f"{min_kept:g}), and the probe AUROC is at least {bar:.3f} (0.5 plus one standard "
        f"deviation of chance for {n_test} + {n_test} held-out rows); ties broken by the "
        f"larger gap_z, then the shallower layer"
    )
    if not chosen:
        rule += ". No layer qualified, so nothing is recommended: keep per-query selection or use more pairs"
    elif len(chosen) < top_n:
        rule += f". {len(chosen)} layer(s) qualified"
    return chosen, rule, bar


def layer_signal(
    model: Any,
    subspace: AlignmentSubspace,
    prefs: Any,
    queries: Optional[Sequence[str]] = None,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    top_n: Optional[int] = None,
    refit: bool = True,
    min_kept: float = 0.5,
    repeats: int = 1,
    n_perm: int = N_PERM,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = False,
) -> LayerSignal:
    """Measure, layer by layer, how much preference signal an alignment subspace carries.

    Args:
        model: the TransformerLens model the subspace was fitted on; may be None when
            `prefs` are precomputed activations and no `queries` are given.
        subspace: the fitted `AlignmentSubspace` to analyse (all its layers).
        prefs: the pairs to analyse, normally the ones the subspace was fitted on:
            a `PreferenceSet` (embedded exactly as `fit_subspace` embeds it), a list of
            `(positive_text, negative_text)` pairs (texts used as they are), a
            `(pos, neg)` pair of integer token tensors `[n, seq]`, or a `(pos, neg)` pair
            of float activations `[n, n_layers, d_model]` in the subspace's layer order
            (`[n, d_model]` for a one-layer subspace), or a `PairActivations` (from
            `alignez_tl.embed_pairs`) holding the subspace's layers at its site: anything
            `embed_pairs` takes, embedded by it. Needs at least 4 pairs.
        queries: optional queries: adds `Steerer.select`'s per-query layer scores and
            how often each layer is chosen (needs `model`).
        holdout: share of the pairs held out, in (0, 1): `round(holdout · n)` pairs,
            clipped so that at least 1 is held out and at least 2 train.
        seed: seed of the split (numpy `default_rng`); same seed, same result.
        top_n: layers per query for `queries` and the number of recommended layers
            (default 5, the paper's n).
        refit: refit the subspace on the training pairs only, at each layer, for the
            held-out numbers (default). With False the given subspace's directions are
            used; if it was fitted on these pairs the held-out numbers are optimistic.
        min_kept: a layer is recommended only when at least this share of the pairs
            (and at least 2) pass the cosine filter there.
        repeats: number of seeded splits (successive permutations of one
            `default_rng(seed)`); the held-out numbers are their mean. 1 (default) is one
            split; with few pairs, 10-20 smooth the curves at no extra forward pass.
        n_perm: number of random pos/neg swap patterns for the per-layer p-values
            (`p_auroc_first`, `p_auroc_probe`, `p_gap`); 0 skips them. Seeded by `seed`
            (a stream separate from the splits'). The cost is linear algebra only, about
            `n_perm · repeats` batched probe fits per layer, vectorised over the swaps.
        batch_size: texts per forward pass.
        chat: as in `fit_subspace` (None: the chat template when the model has one).
        verbose: progress bar and a summary table.

    Returns:
        A `LayerSignal` (see its docstring for what every number means).

    The pairs are run once: one forward pass per batch of texts captures the last-token
    activation at every subspace layer (stopping after the deepest one). The queries, if
    any, take one more pass per batch. The rest is linear algebra.
    """
    if not isinstance(subspace, AlignmentSubspace):
        raise ArgumentTypeError(f"layer_signal needs an AlignmentSubspace, got {type(subspace).__name__}")
    if not subspace.layers:
        raise InvalidArgumentError("the subspace has no layers")
    if subspace.site not in SITES:
        raise InvalidArgumentError(f"unknown site {subspace.site!r}")
    _check_args(holdout, seed, top_n, batch_size, min_kept)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"repeats must be a positive int; got {repeats!r}")
    if isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 0:
        raise InvalidArgumentError(f"n_perm must be an int >= 0 (0 skips the p-values; e.g. 100); got {n_perm!r}")
    if seed < 0:
        raise InvalidArgumentError(f"seed must be >= 0 (numpy seeds are non-negative); got {seed}")
    kind, n = check_pair_data(prefs, subspace.layer_indices, d_model=subspace.d_model, caller="layer_signal")
    if n < 4:
        raise InvalidArgumentError(
            f"a held-out split needs at least 4 pairs (at least 2 to train on and 1 held out); got {n}"
        )
    if queries is not None:
        if isinstance(queries, str):
            raise ArgumentTypeError("queries must be a list of strings, not a single string")
        queries = list(queries)
        if not queries:
            raise InvalidArgumentError("queries is empty: pass None to skip per-query selection")
    needs_model = kind in ("prefs", "texts", "tokens") or queries is not None
    if needs_model:
        if model is None:
            raise InvalidArgumentError(
                "a model is needed to run texts, tokens or queries; pass the model "
                "(or precomputed activations and no queries)"
            )
        subspace.check_model(model, strict=False)
        if kind in ("prefs", "texts") or queries is not None:
            require_tokenizer(model, "layer_signal on text")
    top_n = 5 if top_n is None else top_n
    layers = subspace.layer_indices
    fit_settings: dict[str, Any] = {k: subspace.settings.get(k, v) for k, v in _FIT_DEFAULTS.items()}
    tau = float(fit_settings["tau"])
    try:
        check_rank_args(
            fit_settings["rank"],
            fit_settings["max_rank"],
            fit_settings["n_null"],
            fit_settings["null_quantile"],
            fit_settings["null_seed"],
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"the subspace's fit settings cannot be used for the refit: {exc}") from None

    t0 = time.perf_counter()
    acts = embed_pairs(
        model, prefs, layers, subspace.site, batch_size=batch_size, chat=chat, verbose=verbose, caller="layer_signal"
    )
    pos_t, neg_t = acts.pos.double(), acts.neg.double()
    n_batches = 0 if kind == "acts" else acts.n_batches
    if pos_t.shape[0] != n or not (torch.isfinite(pos_t).all() and torch.isfinite(neg_t).all()):
        raise InvalidArgumentError("the activations contain NaN or inf")
    splits = _splits(n, float(holdout), int(seed), int(repeats))
    train, test = splits[0]

    L = len(layers)
    sig: dict[str, np.ndarray] = {
        name: np.full(L, np.nan)
        for name in (
            "explained_variance",
            "cos_mean",
            "cos_std",
            "auroc_first",
            "auroc_probe",
            "pair_acc_first",
            "gap_z",
            "auroc_first_sd",
            "auroc_probe_sd",
            "p_auroc_first",
            "p_auroc_probe",
            "p_gap",
        )
    }
    flips = _perm_signs(n, n_perm, int(seed))
    for name in ("rank", "n_pairs", "n_kept", "eval_rank", "null_rank"):
        sig[name] = np.zeros(L, dtype=np.int64)
    spectrum: list[np.ndarray] = []
    matches = []
    with single_thread():
        for i, layer in enumerate(layers):
            sub: LayerSubspace = subspace.layers[layer]
            P, N = pos_t[:, i], neg_t[:, i]
            cos = torch.nn.functional.cosine_similarity(P, N, dim=-1, eps=1e-12).numpy()
            sig["rank"][i] = sub.rank
            sig["explained_variance"][i] = sub.kept_variance
            spectrum.append(sub.explained_variance.double().numpy().copy())
            sig["n_pairs"][i] = n
            sig["n_kept"][i] = int((cos <= tau).sum())
            sig["cos_mean"][i] = float(cos.mean())
            sig["cos_std"][i] = float(cos.std())
            if sub.pair_cos.numel() == n:
                matches.append(bool(np.allclose(sub.pair_cos.double().numpy(), cos, atol=1e-4)))
            else:
                matches.append(False)
            p_np, n_np = P.numpy(), N.numpy()
            if sub.rank > 0:
                sig["gap_z"][i] = _gap_z(sub.directions[0].double().numpy(), p_np, n_np)
            per_split = []
            null_first, null_probe = np.zeros(n_perm), np.zeros(n_perm)
            for r, (tr, te) in enumerate(splits):
                if refit:
                    theta = fit_layer(P[tr], N[tr], layer=layer, **fit_settings).directions
                else:
                    theta = sub.directions
                if r == 0:
                    sig["eval_rank"][i] = int(theta.shape[0])
                per_split.append(_held_out(theta, p_np, n_np, tr, te))
                if n_perm:
                    a_first, a_probe = _held_out_perm(
                        P, N, cos, tr, te, flips, fit_settings, None if refit else sub.directions
                    )
                    null_first += a_first / len(splits)
                    null_probe += a_probe / len(splits)
            vals = np.array(per_split)  # [repeats, 3]
            if n_perm:
                # the statistic of the test: the mean over splits, a split without direction = 0.5
                real = np.where(np.isfinite(vals[:, :2]), vals[:, :2], 0.5).mean(0)
                sig["p_auroc_first"][i] = _p_value(float(real[0]), null_first)
                sig["p_auroc_probe"][i] = _p_value(float(real[1]), null_probe)
                if sub.rank > 0:
                    z = (p_np - n_np) @ sub.directions[0].double().numpy()
                    sig["p_gap"][i] = _p_value(abs(float(z.mean())), np.abs(flips @ z) / n)
            vals = vals[np.isfinite(vals).all(1)]  # splits where the refit kept no direction drop out
            if len(vals):
                sig["auroc_first"][i], sig["auroc_probe"][i], sig["pair_acc_first"][i] = vals.mean(0)
                sig["auroc_first_sd"][i], sig["auroc_probe_sd"][i] = vals[:, 0].std(), vals[:, 1].std()
            null_fit = fit_layer(
                P,
                N,
                layer=layer,
                tau=tau,
                rank="null",
                n_null=int(fit_settings["n_null"]),
                null_quantile=float(fit_settings["null_quantile"]),
                null_seed=int(fit_settings["null_seed"]),
            )
            sig["null_rank"][i] = null_fit.rank

    query_scores = query_layers = freq = None
    n_query_batches = 0
    if queries is not None:
        [selections] = Steerer(subspace, top_n=top_n).select(model, queries, chat=chat, batch_size=batch_size)
        n_query_batches = math.ceil(len(queries) / batch_size)
        query_scores = np.array(
            [[sel.scores.get(layer, math.nan) for layer in layers] for sel in selections], dtype=np.float64
        )
        query_layers = [list(sel.layers) for sel in selections]
        freq = np.array([np.mean([layer in sel.layers for sel in selections]) for layer in layers])

    pairs_match_fit = bool(all(matches))
    if refit:
        evaluation = (
            f"refit: held-out numbers use a subspace refitted at each layer on the "
            f"{len(train)} training pairs only (tau/variance/rank/max_rank as the subspace)"
        )
    else:
        evaluation = "as given: held-out numbers use the subspace's own directions" + (
            "; it was fitted on these pairs, held-out ones included, so they are optimistic" if pairs_match_fit else ""
        )
    recommended, rule, bar = _recommend(
        sig, layers, n, len(train), len(test), top_n, float(min_kept), bool(refit), int(repeats)
    )
    settings = {
        "holdout": float(holdout),
        "seed": int(seed),
        "refit": bool(refit),
        "top_n": int(top_n),
        "min_kept": float(min_kept),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "repeats": int(repeats),
        "n_perm": int(n_perm),
        "fit": fit_settings,
        "probe_l2": PROBE_L2,
        "auroc_bar": float(bar),
        "batch_size": int(batch_size),
        "input": kind,
        "n_capture_batches": int(n_batches),
        "n_query_batches": int(n_query_batches),
        "pairs_match_fit": pairs_match_fit,
    }
    result = LayerSignal(
        layers=layers,
        spectrum=spectrum,
        train_pairs=train.tolist(),
        test_pairs=test.tolist(),
        splits=[te.tolist() for _, te in splits],
        evaluation=evaluation,
        recommended=recommended,
        rule=rule,
        site=subspace.site,
        objective=dict(subspace.objective),
        model=dict(subspace.model) if subspace.model else (model_signature(model) if model is not None else {}),
        settings=settings,
        queries=queries,
        query_scores=query_scores,
        query_layers=query_layers,
        chosen_frequency=freq,
        **sig,
    )
    if verbose:
        logger.info(
            "%s\nlayer_signal: %.1fs, %d capture forward passes",
            result.summary(),
            time.perf_counter() - t0,
            n_batches + n_query_batches,
        )
    return result
