"""The subspace lens: what a fitted alignment subspace is.

`subspace_lens` looks at every layer of an `AlignmentSubspace` (or the chosen ones) in
three ways, from one embedding of the pairs (`embed_pairs`, one capture pass; nothing
when the pairs are a `PairActivations` already):

* **Vocabulary view.** Each direction θ_j through the final norm and the unembedding,
  `frozen_norm_readout(model, θ_j, σ) @ W_U` (the map `attribute_steering` uses, the
  final norm's scale frozen at σ): the tokens adding θ_j to the final residual stream
  promotes and suppresses most. σ is the mean final-norm scale of the pair texts' last
  tokens, computed from the last layer's `resid_post` (captured in the same pass when
  the subspace's site is `resid_post`); when it cannot be computed, σ = 1 and only the
  ranking (which σ does not change) means anything (`scale_source` says which).
* **Stability.** `n_splits` seeded draws split the pairs into two disjoint random halves;
  each half is refitted (`fit_layer`, the subspace's tau, at the subspace's rank k at
  that layer or a fixed `k`) from the stored activations, never running the model
  again. Reported per draw: the principal cosines between the halves' k-dimensional
  subspaces (`principal_cosines`: the singular values of `Q_A Q_Bᵀ`), the signed cosine
  of the halves' oriented θ_1, and the cosine of the halves' DiffMean vectors.
  Two references:

  - the **sign-flip null** (pos and neg swapped inside a random half of the pairs,
    independently in each half, then the same refits): the "shuffled labels" null. It
    destroys the *signed* agreement (θ_1's orientation, the DiffMean direction), but it
    cannot move the principal angles: flipping rows of `D = P − N` leaves `DᵀD`, and so
    the fitted subspace, exactly unchanged. The lens computes and reports them anyway
    (`null_subspace_cos` equals `subspace_cos`), so that nobody reads "the halves agree
    more than the null" into a number that no label shuffle can change.
  - the **random-subspace reference**: the principal cosines of two random
    k-dimensional subspaces of the d_model-dimensional space (what isotropic noise gives,
    about `sqrt(k / d_model)`).

* **Relations.** The cosine of each direction with the DiffMean vector
  (`mean_k (pos_k − neg_k)` over all the pairs, `alignez_tl.baselines.diffmean_vector`)
  and the share of DiffMean's squared norm inside the subspace; the principal cosines
  between adjacent analysed layers' subspaces; and, with `others`, the principal cosines
  and the θ_1 cosine between this subspace and other objectives' at every shared layer
  (the AlignEZ paper reports cosines of about −0.2 to +0.25 between its helpful, humor
  and harmless directions).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from alignez_tl.baselines import diffmean_vector
from alignez_tl.errors import ArgumentTypeError, InvalidArgumentError
from alignez_tl.pairs import PairActivations, embed_pairs
from alignez_tl.subspace import AlignmentSubspace, fit_layer
from analyses._common import clean, single_thread
from analyses.attribution import final_norm_scale, frozen_norm_readout

logger = logging.getLogger(__name__)

__all__ = ["SubspaceLens", "principal_cosines", "subspace_lens"]


# --------------------------------------------------------------------------- linear algebra


def principal_cosines(a: Tensor, b: Tensor) -> np.ndarray:
    """Cosines of the principal angles between the row spaces of `a` `[ka, d]` and `b` `[kb, d]`.

    The rows are orthonormalised first (QR, float64), then the cosines are the singular
    values of `Q_a Q_bᵀ`, descending, clipped to [0, 1]: `min(ka, kb)` values. 1 means a
    shared direction, 0 an orthogonal one (a principal angle of 90°). Empty when either
    is empty.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidArgumentError(
            f"need two [k, d] matrices of the same width; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros(0)
    qa = torch.linalg.qr(a.detach().to(torch.float64).cpu().T).Q  # [d, ka]
    qb = torch.linalg.qr(b.detach().to(torch.float64).cpu().T).Q
    return torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0).numpy()


def _cos(u: Tensor, v: Tensor) -> float:
    nu, nv = float(u.norm()), float(v.norm())
    if nu == 0 or nv == 0:
        return math.nan
    return float(u @ v) / (nu * nv)


# --------------------------------------------------------------------------- result


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(x)
    n = ok.sum(axis)
    total = np.where(ok, x, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


@dataclass
class SubspaceLens:
    """What a fitted subspace is, per layer: vocabulary, stability, relations.

    Every per-layer array is over `layers`, in order; per-draw arrays are
    `[n_layers, n_splits]` (NaN where a half kept no pair or the layer has rank 0).

    Attributes:
        layers: the analysed layers, ascending.
        ranks: the subspace's rank at each layer.
        vocab: per layer, one entry per direction θ_j: `{"direction": j, "promoted":
            [[token, id, logit], ...], "suppressed": [...], "step": s_j}`, `top_k_tokens`
            each: the logit change of adding θ_j (unit norm) to the final norm's input,
            the norm's scale frozen at `norm_scale` (multiply by `step`, the fitted scale
            s_j = `proj_rms`, for the change of a typical-size step along θ_j).
        norm_scale: the frozen final-norm scale σ (mean over the pair texts' last tokens),
            or None when it could not be computed (then σ = 1: rankings only).
        scale_source: how σ was obtained, in words.
        k: the rank compared by the stability refits at each layer (0: not computed).
        subspace_cos: mean principal cosine between the two halves' k-dim subspaces, per draw.
        subspace_first_cos: the largest principal cosine, per draw.
        null_subspace_cos: the same under the sign-flip null (equal to `subspace_cos`:
            row sign flips leave the fitted subspace unchanged; see the module docstring).
        random_cos: mean principal cosine of two random k-dim subspaces, per draw.
        theta1_cos: signed cosine of the halves' oriented θ_1, per draw.
        null_theta1_cos: the same under the sign-flip null.
        diffmean_split_cos: cosine of the halves' DiffMean vectors, per draw.
        null_diffmean_split_cos: the same under the sign-flip null.
        diffmean_cos: per layer, `cos(θ_j, DiffMean)` for every direction.
        diffmean_share: per layer, `‖Θ m‖² / ‖m‖²`, the share of the DiffMean vector m
            (all pairs) inside the subspace.
        diffmean_norm: per layer, `‖m‖`.
        adjacent: per pair of consecutive analysed layers with directions,
            `{"layers": [l, l'], "cosines": [...]}`.
        objectives: per other objective's name, per shared layer,
            `{"cosines": [...], "theta1_cos": signed cos of the two θ_1}`.
        objective: this subspace's objective name.
        site: its hook site.
        model: the model signature the subspace recorded.
        settings: n_splits, seed, top_k_tokens, k, tau, n_pairs, half, n_capture_batches,
            timing.
    """

    layers: list[int]
    ranks: list[int]
    vocab: dict[int, list[dict[str, Any]]]
    norm_scale: Optional[float]
    scale_source: str
    k: list[int]
    subspace_cos: np.ndarray
    subspace_first_cos: np.ndarray
    null_subspace_cos: np.ndarray
    random_cos: np.ndarray
    theta1_cos: np.ndarray
    null_theta1_cos: np.ndarray
    diffmean_split_cos: np.ndarray
    null_diffmean_split_cos: np.ndarray
    diffmean_cos: list[list[float]]
    diffmean_share: np.ndarray
    diffmean_norm: np.ndarray
    adjacent: list[dict[str, Any]]
    objectives: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    objective: str = "custom"
    site: str = "resid_post"
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    _SPLIT_ARRAYS = (
        "subspace_cos",
        "subspace_first_cos",
        "null_subspace_cos",
        "random_cos",
        "theta1_cos",
        "null_theta1_cos",
        "diffmean_split_cos",
        "null_diffmean_split_cos",
    )

    # ------------------------------------------------------------------ views

    def mean(self, name: str) -> np.ndarray:
        """The per-layer mean over draws of one per-draw array (NaN draws skipped)."""
        if name not in self._SPLIT_ARRAYS:
            raise InvalidArgumentError(f"{name!r} is not a per-draw array; one of {self._SPLIT_ARRAYS}")
        return _nanmean(getattr(self, name), axis=1)

    def top_tokens(self, layer: int, direction: int = 0, *, suppressed: bool = False) -> list[str]:
        """The token strings direction θ_`direction` promotes (or suppresses) most at `layer`."""
        entries = self.vocab.get(layer, [])
        if direction >= len(entries):
            return []
        return [t for t, _, _ in entries[direction]["suppressed" if suppressed else "promoted"]]

    # ------------------------------------------------------------------ export

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types (NaN becomes None); per-layer means included."""
        out: dict[str, Any] = {
            "layers": list(self.layers),
            "ranks": list(self.ranks),
            "vocab": {str(k): v for k, v in self.vocab.items()},
            "norm_scale": self.norm_scale,
            "scale_source": self.scale_source,
            "k": list(self.k),
        }
        for name in self._SPLIT_ARRAYS:
            out[name] = getattr(self, name)
            out[f"{name}_mean"] = self.mean(name)
        out.update(
            diffmean_cos=self.diffmean_cos,
            diffmean_share=self.diffmean_share,
            diffmean_norm=self.diffmean_norm,
            adjacent=self.adjacent,
            objectives={name: {str(k): v for k, v in per.items()} for name, per in self.objectives.items()},
            objective=self.objective,
            site=self.site,
            model=self.model,
            settings=self.settings,
        )
        return clean(out)

    def summary(self, *, vocab_layers: Optional[Sequence[int]] = None, n_tokens: int = 6) -> str:
        """A text table, one row per layer, then θ_1's top tokens at a few layers."""
        n_splits = int(self.settings.get("n_splits", 0))
        lines = [
            f"subspace lens ({self.objective}, site {self.site}, {self.settings.get('n_pairs')} pairs, "
            f"{n_splits} half splits of {self.settings.get('half')} pairs, seed {self.settings.get('seed')})",
            "layer  rank   k  halves: subspace cos (null, random)  θ1 cos (null)  DiffMean cos (null)"
            "  cos(θ1,DM)  DM share  adjacent",
        ]

        def f(v: float, w: int = 5, p: int = 2) -> str:
            return f"{v:>{w}.{p}f}" if math.isfinite(v) else f"{'-':>{w}}"

        means = {name: self.mean(name) for name in self._SPLIT_ARRAYS}
        adjacent = {a["layers"][0]: a["cosines"] for a in self.adjacent}
        for i, layer in enumerate(self.layers):
            dm = self.diffmean_cos[i][0] if self.diffmean_cos[i] else math.nan
            adj = adjacent.get(layer)
            adj_mean = float(np.mean(adj)) if adj else math.nan
            lines.append(
                f"{layer:>5}  {self.ranks[i]:>4}  {self.k[i]:>2}  "
                f"{f(means['subspace_cos'][i], 21)} ({f(means['null_subspace_cos'][i], 4)}, "
                f"{f(means['random_cos'][i], 4)})  "
                f"{f(means['theta1_cos'][i], 6)} ({f(means['null_theta1_cos'][i], 5)})  "
                f"{f(means['diffmean_split_cos'][i], 12)} ({f(means['null_diffmean_split_cos'][i], 5)})  "
                f"{f(dm, 10)}  {f(self.diffmean_share[i], 8)}  {f(adj_mean, 8)}"
            )
        lines.append(
            "halves: means over the draws. subspace cos: mean principal cosine of the halves' k-dim "
            "subspaces (the sign-flip null cannot change it; random: two random k-dim subspaces). "
            "θ1 / DiffMean cos: signed agreement of the halves (null: pos/neg swapped in random pairs). "
            "DM share: ‖Θ·DiffMean‖²/‖DiffMean‖². adjacent: mean principal cosine with the next layer."
        )
        for name, per in self.objectives.items():
            row = ", ".join(
                f"L{layer} {float(np.mean(v['cosines'])) if v['cosines'] else math.nan:.2f}/{v['theta1_cos']:+.2f}"
                for layer, v in sorted(per.items())
            )
            lines.append(f"vs {name} (mean principal cos / θ1 cos): {row}")
        shown = list(vocab_layers) if vocab_layers is not None else self._vocab_layers()
        if self.norm_scale is not None:
            lines.append(
                f"top tokens of θ1 (logit change per unit of θ1, final-norm scale frozen at {self.norm_scale:.3g}):"
            )
        else:
            lines.append("top tokens of θ1 (final-norm scale not known: σ = 1, ranking only):")
        for layer in shown:
            entries = self.vocab.get(layer, [])
            if not entries:
                continue
            up = ", ".join(f"{t!r} {v:+.2f}" for t, _, v in entries[0]["promoted"][:n_tokens])
            down = ", ".join(f"{t!r} {v:+.2f}" for t, _, v in entries[0]["suppressed"][:n_tokens])
            lines.append(f"  L{layer} + {up}")
            lines.append(f"  L{layer} − {down}")
        return "\n".join(lines)

    def _vocab_layers(self, n: int = 3) -> list[int]:
        with_dirs = [layer for layer in self.layers if self.vocab.get(layer)]
        if len(with_dirs) <= n:
            return with_dirs
        idx = np.linspace(0, len(with_dirs) - 1, n).round().astype(int)
        return [with_dirs[i] for i in sorted(set(idx.tolist()))]

    def plot(self, *, title: Optional[str] = None) -> Any:
        """A `matplotlib.figure.Figure` (no pyplot state), panels against depth.

        1. Stability of the subspace: the halves' mean principal cosine (the mean over the
           draws, band: their 10–90 % range), the sign-flip null (the same, by
           construction) and two random k-dim subspaces.
        2. Stability of the signal: the halves' signed θ_1 cosine and DiffMean cosine,
           real vs the sign-flip null.
        3. Relations: cos(θ_1, DiffMean), the share of DiffMean inside the subspace, and
           the mean principal cosine with the next layer (and with other objectives).
        """
        from matplotlib.figure import Figure

        x = np.asarray(self.layers, dtype=float)
        fig = Figure(figsize=(8.0, 7.4), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)

        def band(ax, name, colour, label, style="o-"):
            data = np.asarray(getattr(self, name), dtype=float)
            if data.size == 0 or not np.isfinite(data).any():
                return
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    centre = _nanmean(data, axis=1)  # the mean: signed cosines can be bimodal (±)
                    lo = np.nanpercentile(data, 10, axis=1)
                    hi = np.nanpercentile(data, 90, axis=1)
            ax.plot(x, centre, style, ms=3, lw=1.2, color=colour, label=label)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)

        ax = axes[0]
        band(ax, "subspace_cos", "tab:blue", "halves (real)")
        band(ax, "null_subspace_cos", "tab:orange", "halves, sign-flip null (= real)", style="x--")
        band(ax, "random_cos", "tab:gray", "two random k-dim subspaces", style=".:")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("mean principal\ncosine")
        ax.set_title("stability of the subspace (rank k per layer)", fontsize=9)
        ax.legend(fontsize=7, loc="best")

        ax = axes[1]
        band(ax, "theta1_cos", "tab:red", "θ1 of the halves (real)")
        band(ax, "null_theta1_cos", "tab:red", "θ1, sign-flip null", style="x:")
        band(ax, "diffmean_split_cos", "tab:green", "DiffMean of the halves (real)")
        band(ax, "null_diffmean_split_cos", "tab:green", "DiffMean, sign-flip null", style="x:")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylim(-1.02, 1.02)
        ax.set_ylabel("signed cosine")
        ax.set_title("stability of the preference signal (halves vs pos/neg swapped in random pairs)", fontsize=9)
        ax.legend(fontsize=7, loc="best", ncol=2)

        ax = axes[2]
        dm = np.array([row[0] if row else np.nan for row in self.diffmean_cos], dtype=float)
        ax.plot(x, dm, "o-", ms=3, color="tab:purple", label="cos(θ1, DiffMean)")
        ax.plot(x, self.diffmean_share, "s-", ms=3, color="tab:brown", label="share of DiffMean in subspace")
        if self.adjacent:
            ax_x = [a["layers"][0] + 0.5 for a in self.adjacent]
            ax_y = [float(np.mean(a["cosines"])) if a["cosines"] else np.nan for a in self.adjacent]
            ax.plot(ax_x, ax_y, "^-", ms=3, color="tab:cyan", label="mean principal cos, next layer")
        for (name, per), style in zip(sorted(self.objectives.items()), ("d--", "v--", "p--", "h--")):
            ox = sorted(per)
            oy = [float(np.mean(per[layer]["cosines"])) if per[layer]["cosines"] else np.nan for layer in ox]
            ax.plot(ox, oy, style, ms=3, label=f"mean principal cos with {name}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylim(-1.02, 1.02)
        ax.set_ylabel("cosine / share")
        ax.set_title("relations", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        axes[-1].set_xlabel("layer")
        for ax in axes:
            ax.grid(alpha=0.3)
        if title is None:
            name = self.model.get("model_id", "activations") if self.model else "activations"
            title = (
                f"Subspace lens: {name}, {self.objective}, {self.site}; {self.settings.get('n_pairs')} pairs, "
                f"{self.settings.get('n_splits')} half splits"
            )
        fig.suptitle(title, fontsize=10)
        return fig


# --------------------------------------------------------------------------- analysis


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidArgumentError(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def _others(others: Any, sub: AlignmentSubspace) -> dict[str, AlignmentSubspace]:
    if others is None:
        return {}
    if isinstance(others, AlignmentSubspace):
        others = [others]
    if isinstance(others, Mapping):
        items = [(str(k), v) for k, v in others.items()]
    else:
        items = []
        for o in others:
            name = getattr(o, "objective_name", "other")
            base, i = name, 2
            while name in {n for n, _ in items}:
                name, i = f"{base}#{i}", i + 1
            items.append((name, o))
    out = {}
    for name, o in items:
        if not isinstance(o, AlignmentSubspace):
            raise ArgumentTypeError(f"others[{name!r}] must be an AlignmentSubspace, got {type(o).__name__}")
        if o.d_model != sub.d_model:
            raise InvalidArgumentError(f"others[{name!r}] has d_model {o.d_model}, this subspace {sub.d_model}")
        out[name] = o
    return out


def _vocab(model: Any, sub: AlignmentSubspace, layers: list[int], sigma: float, top_k: int) -> dict:
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        return {layer: [] for layer in layers}
    W_U = W_U.detach().to(torch.float32).cpu()  # float32: ~2x faster than float64, ranks unchanged
    tok = getattr(model, "tokenizer", None)
    k = min(top_k, int(W_U.shape[1]))

    def name(i: int) -> str:
        return tok.decode([i]) if tok is not None else str(i)

    out: dict[int, list[dict[str, Any]]] = {}
    for layer in layers:
        theta = sub.layers[layer].directions
        if theta.shape[0] == 0:
            out[layer] = []
            continue
        logits = frozen_norm_readout(model, theta, sigma).to(torch.float32) @ W_U  # [r, vocab]
        entries = []
        for j in range(theta.shape[0]):
            up = torch.topk(logits[j], k)
            down = torch.topk(-logits[j], k)
            entries.append(
                {
                    "direction": j,
                    "step": float(sub.layers[layer].proj_rms[j]),
                    "promoted": [[name(int(i)), int(i), float(v)] for v, i in zip(up.values, up.indices)],
                    "suppressed": [[name(int(i)), int(i), -float(v)] for v, i in zip(down.values, down.indices)],
                }
            )
        out[layer] = entries
    return out


def subspace_lens(
    model: Any,
    subspace: AlignmentSubspace,
    pairs: Any,
    *,
    layers: Optional[Sequence[int]] = None,
    top_k_tokens: int = 10,
    n_splits: int = 20,
    seed: int = 0,
    others: Union[None, AlignmentSubspace, Sequence[AlignmentSubspace], Mapping[str, AlignmentSubspace]] = None,
    k: Optional[int] = None,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = False,
) -> SubspaceLens:
    """What a fitted subspace is: vocabulary view, stability over half splits, relations.

    Args:
        model: the TransformerLens model the subspace was fitted on (its final norm and
            `W_U` give the vocabulary view; None only with a `PairActivations`, then
            without a vocabulary view).
        subspace: the `AlignmentSubspace`.
        pairs: whatever `embed_pairs` accepts (a `PreferenceSet`, text pairs, token
            tensors, a `PairActivations`): embedded once, at the subspace's site, at the
            analysed layers (and the last layer, for the final-norm scale, when the site
            is `resid_post`). Usually the pairs the subspace was fitted on.
        layers: the layers to analyse (default: all of the subspace's).
        top_k_tokens: tokens listed per direction and side.
        n_splits: random half splits for the stability refits (0: none).
        seed: seed of the splits, the sign-flip null and the random subspaces
            (`numpy.random.default_rng(seed)` and a `torch.Generator` seeded `seed`).
        others: other objectives' subspaces (one, a list, or a name → subspace mapping),
            compared at every shared layer.
        k: compare the halves at this rank (default: the subspace's rank at each layer).
        batch_size, chat, verbose: passed to `embed_pairs`.

    Returns:
        A `SubspaceLens`. Cost: one capture pass over the pair texts (none for a
        `PairActivations`); the refits are linear algebra on the stored activations.
    """
    t0 = time.perf_counter()
    if not isinstance(subspace, AlignmentSubspace):
        raise ArgumentTypeError(f"subspace_lens needs an AlignmentSubspace, got {type(subspace).__name__}")
    top_k_tokens = _check_int("top_k_tokens", top_k_tokens, 1)
    n_splits = _check_int("n_splits", n_splits, 0)
    seed = _check_int("seed", seed, 0)
    if k is not None:
        k = _check_int("k", k, 1)
    chosen = subspace.layer_indices if layers is None else sorted({int(layer) for layer in layers})
    missing = [layer for layer in chosen if layer not in subspace.layers]
    if missing:
        raise InvalidArgumentError(f"layers {missing} are not in the subspace (it has {subspace.layer_indices})")
    if not chosen:
        raise InvalidArgumentError("no layers to analyse")
    other_subs = _others(others, subspace)
    if model is not None:
        subspace.check_model(model, strict=False)

    # ---- one embedding of the pairs
    site = subspace.site
    last = int(model.cfg.n_layers) - 1 if model is not None else None
    if isinstance(pairs, PairActivations):
        acts = embed_pairs(model, pairs, site=site)
        if any(layer not in acts.layers for layer in chosen):
            raise InvalidArgumentError(f"the pair activations have layers {list(acts.layers)}; the lens needs {chosen}")
    else:
        wanted = list(chosen)
        if site == "resid_post" and last is not None and last not in wanted:
            wanted.append(last)
        options: dict[str, Any] = dict(batch_size=batch_size, chat=chat, verbose=verbose, caller="subspace_lens")
        acts = embed_pairs(model, pairs, sorted(wanted), site, **options)
    n_capture = int(acts.n_batches) if not isinstance(pairs, PairActivations) else 0
    acts = acts.float()
    t_embed = time.perf_counter() - t0

    # ---- the frozen final-norm scale
    sigma: Optional[float] = None
    if model is None:
        source = "no model: no vocabulary view"
    elif site == "resid_post" and last in acts.layers:
        pos, neg = acts.at(last)
        sigma = float(final_norm_scale(model, torch.cat([pos, neg])).mean())
        source = f"mean final-norm scale of the {2 * acts.n_pairs} pair texts' last tokens (layer {last} resid_post)"
    else:
        source = "unknown (site is not resid_post or the last layer was not embedded): sigma = 1, ranking only"

    with single_thread():
        vocab = {} if model is None else _vocab(model, subspace, chosen, 1.0 if sigma is None else sigma, top_k_tokens)
        for layer in chosen:
            vocab.setdefault(layer, [])
        t_vocab = time.perf_counter() - t0 - t_embed

        # ---- relations: DiffMean, adjacent layers, other objectives
        ranks = [subspace.layers[layer].rank for layer in chosen]
        dm_cos, dm_share, dm_norm = [], [], []
        for layer in chosen:
            m = diffmean_vector(*acts.at(layer)).to(torch.float64)
            theta = subspace.layers[layer].directions.to(torch.float64)
            norm = float(m.norm())
            dm_norm.append(norm)
            dm_cos.append([_cos(t, m) for t in theta])
            dm_share.append(float((theta @ m).square().sum()) / norm**2 if norm > 0 and theta.shape[0] else math.nan)
        with_dirs = [layer for layer in chosen if subspace.layers[layer].rank > 0]
        adjacent = [
            {
                "layers": [a, b],
                "cosines": principal_cosines(subspace.layers[a].directions, subspace.layers[b].directions).tolist(),
            }
            for a, b in zip(with_dirs, with_dirs[1:])
        ]
        objectives: dict[str, dict[int, dict[str, Any]]] = {}
        for name, other in other_subs.items():
            per = {}
            for layer in chosen:
                if layer not in other.layers:
                    continue
                a, b = subspace.layers[layer].directions, other.layers[layer].directions
                if a.shape[0] == 0 or b.shape[0] == 0:
                    continue
                per[layer] = {
                    "cosines": principal_cosines(a, b).tolist(),
                    "theta1_cos": _cos(a[0].double(), b[0].double()),
                }
            objectives[name] = per

        # ---- stability over half splits
        tau = float(subspace.settings.get("tau", 0.8))
        n = acts.n_pairs
        half = n // 2
        n_l = len(chosen)
        arrays = {name: np.full((n_l, n_splits), np.nan) for name in SubspaceLens._SPLIT_ARRAYS}
        ks = [0] * n_l
        if n_splits and half >= 2:
            rng = np.random.default_rng(seed)
            gen = torch.Generator().manual_seed(seed)
            perms = [rng.permutation(n) for _ in range(n_splits)]
            flips = [rng.integers(0, 2, size=n) * 2 - 1 for _ in range(n_splits)]
            for li, layer in enumerate(chosen):
                target = k if k is not None else subspace.layers[layer].rank
                ks[li] = int(target)
                if target == 0:
                    continue
                P, N = acts.at(layer)
                P, N = P.double(), N.double()
                for s in range(n_splits):
                    halves = (perms[s][:half], perms[s][half : 2 * half])
                    fits, null_fits, means, null_means = [], [], [], []
                    for h in halves:
                        idx = torch.as_tensor(h)
                        sign = torch.as_tensor(flips[s][h], dtype=torch.float64)[:, None]
                        p, q = P[idx], N[idx]
                        # the null: pos and neg swapped where sign = −1
                        p_null, q_null = torch.where(sign > 0, p, q), torch.where(sign > 0, q, p)
                        fits.append(fit_layer(p, q, layer=layer, tau=tau, rank=target))
                        null_fits.append(fit_layer(p_null, q_null, layer=layer, tau=tau, rank=target))
                        means.append((p - q).mean(0))
                        null_means.append((p_null - q_null).mean(0))
                    arrays["diffmean_split_cos"][li, s] = _cos(*means)
                    arrays["null_diffmean_split_cos"][li, s] = _cos(*null_means)
                    a, b = fits[0].directions, fits[1].directions
                    kk = min(a.shape[0], b.shape[0])
                    if kk == 0:
                        continue
                    cos = principal_cosines(a[:kk], b[:kk])
                    arrays["subspace_cos"][li, s] = float(cos.mean())
                    arrays["subspace_first_cos"][li, s] = float(cos[0])
                    arrays["theta1_cos"][li, s] = _cos(a[0].double(), b[0].double())
                    na, nb = null_fits[0].directions, null_fits[1].directions
                    nk = min(na.shape[0], nb.shape[0], kk)
                    if nk:
                        arrays["null_subspace_cos"][li, s] = float(principal_cosines(na[:nk], nb[:nk]).mean())
                        arrays["null_theta1_cos"][li, s] = _cos(na[0].double(), nb[0].double())
                    r1 = torch.randn(kk, acts.d_model, generator=gen, dtype=torch.float64)
                    r2 = torch.randn(kk, acts.d_model, generator=gen, dtype=torch.float64)
                    arrays["random_cos"][li, s] = float(principal_cosines(r1, r2).mean())
        elif n_splits:
            logger.warning("subspace_lens: %d pairs are too few for half splits (need >= 4); no stability", n)

    elapsed = time.perf_counter() - t0
    return SubspaceLens(
        layers=chosen,
        ranks=ranks,
        vocab=vocab,
        norm_scale=sigma,
        scale_source=source,
        k=ks,
        diffmean_cos=dm_cos,
        diffmean_share=np.asarray(dm_share, dtype=float),
        diffmean_norm=np.asarray(dm_norm, dtype=float),
        adjacent=adjacent,
        objectives=objectives,
        objective=subspace.objective_name,
        site=site,
        model=dict(subspace.model),
        settings={
            "n_splits": n_splits,
            "seed": seed,
            "top_k_tokens": top_k_tokens,
            "k": k,
            "tau": tau,
            "n_pairs": n,
            "half": half,
            "n_capture_batches": n_capture,
            "seconds": {
                "embed": round(t_embed, 3),
                "vocab": round(t_vocab, 3),
                "total": round(elapsed, 3),
            },
        },
        **arrays,
    )
