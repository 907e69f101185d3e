"""Component ablation: what each direction θ_j of the alignment subspace contributes.

`ablate_components` steers a few prompts with a `Steerer` and re-runs them with parts of
the steering switched off, one variant at a time, keeping every query's layer and
direction selection fixed (`Steerer.select` once, reused by every variant) so that only
the set of edited direction indices changes:

========================  ===================================================================
variant                   what it edits
========================  ===================================================================
``base``                  nothing (no hooks)
``full``                  the steering as configured
``drop:j``                everything but direction index j (`Steerer.without_components([j])`)
``only:j``                direction index j alone (`Steerer.only_components([j])`)
``top:k``                 direction indices 0..k-1 (`Steerer.only_components(range(k))`)
``projected_out``         no steering; the span of the subspace is removed at every
                          subspace layer and every position (`hooks.project_out_hook`)
========================  ===================================================================

Index j means θ_j at every layer (directions are sorted by singular value per layer),
as `Steerer.only_components` defines it.

Measures, per variant (each kept per prompt / per pair in `Ablation.per_prompt`):

* ``kl_vs_full`` / ``kl_vs_base``: KL(full ‖ variant) and KL(base ‖ variant) of the
  next-token distribution at the last prompt token (nats; log-softmax in float32);
* ``margin`` / ``delta_margin``: the preference margin
  ``log p(pos | q) − log p(neg | q)`` on held-out pairs (summed token log-probs of each
  response, teacher-forced after the rendered query) and its change vs ``base``;
* ``edit_norm`` / ``edit_norm_change``: Σ over layers of ‖hook output − hook input‖ at
  the last prompt token (recorded from the hooks themselves, so exact), and its
  difference from ``full``;
* ``tokens_changed_vs_full`` / ``tokens_changed_vs_base``: of ``greedy_tokens`` greedy
  tokens (`Steerer.generate`'s, cut at the end of turn), how many positions differ from
  the full-steering / unsteered continuation; a position one answer has and the other
  lacks (it ended sooner) counts as changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from alignez_tl.errors import ArgumentTypeError, InvalidArgumentError
from alignez_tl.generation import BACKENDS
from alignez_tl.generation import generate as generate_tokens
from alignez_tl.hooks import hook_name, project_out_hook
from alignez_tl.models import Encoded, encode, model_device, pad_id, padding_kwargs, render, require_tokenizer
from alignez_tl.steering import QuerySelection, Steerer
from analyses._common import theta_label

__all__ = ["Ablation", "ablate_components", "projection_hooks"]

METRICS = (
    "kl_vs_full",
    "kl_vs_base",
    "margin",
    "delta_margin",
    "edit_norm",
    "edit_norm_change",
    "tokens_changed_vs_full",
    "tokens_changed_vs_base",
)
_MARGIN_METRICS = ("margin", "delta_margin")


# --------------------------------------------------------------------------- result


@dataclass
class Ablation:
    """What switching single subspace components on and off does to the steering.

    Every number is a mean over prompts (margins: over pairs); `per_prompt` keeps the
    individual values.

    Attributes:
        components: the direction indices j studied (θ_j at every layer).
        top_k: the k of the cumulative variants ``top:k`` (edit θ_0..θ_{k-1}).
        base, full, projected_out: metric name → value for the unsteered model, the
            full steering, and the unsteered model with the subspace projected out.
        drop, only: metric name → one value per entry of `components`, for the
            variants that edit everything but θ_j / θ_j alone.
        cumulative: metric name → one value per entry of `top_k`.
        per_prompt: variant name (``"base"``, ``"full"``, ``"drop:j"``, ``"only:j"``,
            ``"top:k"``, ``"projected_out"``) → metric name → a list with one value per
            prompt (``margin`` / ``delta_margin``: one per pair).
        tokens: variant name → the greedy token ids of each prompt (cut at the first
            stop token, as `Steerer.generate` returns them).
        prompts: the prompts, as given.
        settings: the ablation settings and the steering's configuration.
        n_forward: model forward calls the analysis made, counting `greedy_tokens` calls
            per generation batch (fewer run when every row of a batch ends sooner).

    Metrics (each variant):
        kl_vs_full: KL(full ‖ variant) of the next-token distribution at the last
            prompt token, in nats. 0 for ``full``; small means the variant does what
            the full steering does.
        kl_vs_base: KL(base ‖ variant), same position. 0 for ``base``; small means the
            variant barely steers.
        margin: log p(pos | q) − log p(neg | q) on the held-out pairs (summed token
            log-probs of each response given the rendered query). Only with `pairs`.
        delta_margin: margin − base margin: positive means the variant moves the model
            toward the preferred answers. Only with `pairs`.
        edit_norm: Σ over edited layers of ‖edit‖ at the last prompt token, where the
            edit is the hook's output minus its input (for ``projected_out``: the norm
            of what was removed).
        edit_norm_change: edit_norm − full's edit_norm.
        tokens_changed_vs_full / tokens_changed_vs_base: how many of the
            ``greedy_tokens`` greedy tokens differ, position by position, from the
            full-steering / unsteered continuation (answers are cut at their first
            stop token; a position only one of the two has counts as changed).
    """

    components: list[int]
    top_k: list[int]
    base: dict[str, float]
    full: dict[str, float]
    projected_out: dict[str, float]
    drop: dict[str, list[float]]
    only: dict[str, list[float]]
    cumulative: dict[str, list[float]]
    per_prompt: dict[str, dict[str, list[float]]]
    tokens: dict[str, list[list[int]]] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    n_forward: int = 0

    @property
    def metrics(self) -> list[str]:
        """The metric names present (margins only when pairs were given)."""
        return list(self.full)

    def variant(self, name: str) -> dict[str, float]:
        """Mean metrics of one variant by name (``"drop:0"``, ``"top:2"``, ``"base"``, ...)."""
        if name not in self.per_prompt:
            raise KeyError(f"no variant {name!r}; have {', '.join(self.per_prompt)}")
        return {m: _mean(v) for m, v in self.per_prompt[name].items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (plain lists, floats and ints)."""
        return {
            "analysis": "ablation",
            "components": list(self.components),
            "top_k": list(self.top_k),
            "base": dict(self.base),
            "full": dict(self.full),
            "projected_out": dict(self.projected_out),
            "drop": {k: list(v) for k, v in self.drop.items()},
            "only": {k: list(v) for k, v in self.only.items()},
            "cumulative": {k: list(v) for k, v in self.cumulative.items()},
            "per_prompt": {n: {m: list(v) for m, v in d.items()} for n, d in self.per_prompt.items()},
            "tokens": {n: [list(r) for r in rows] for n, rows in self.tokens.items()},
            "prompts": list(self.prompts),
            "settings": dict(self.settings),
            "n_forward": int(self.n_forward),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Ablation":
        """Rebuild a result from `to_dict()` output (e.g. read back from JSON)."""
        if data.get("analysis") != "ablation":
            raise InvalidArgumentError("not an ablation result (its 'analysis' field is not 'ablation')")
        names = (
            "components",
            "top_k",
            "base",
            "full",
            "projected_out",
            "drop",
            "only",
            "cumulative",
            "per_prompt",
            "tokens",
            "prompts",
            "settings",
            "n_forward",
        )
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidArgumentError(f"ablation result is missing {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def summary(self) -> str:
        """A text table: one line per variant."""
        cols = [
            m
            for m in (
                "kl_vs_full",
                "kl_vs_base",
                "delta_margin",
                "edit_norm",
                "tokens_changed_vs_full",
                "tokens_changed_vs_base",
            )
            if m in self.full
        ]
        head = f"{'variant':<14}" + "".join(f"{c:>24}" for c in cols)
        lines = [head]
        for name in self.per_prompt:
            vals = self.variant(name)
            lines.append(f"{name:<14}" + "".join(f"{vals[c]:>24.4g}" for c in cols))
        return "\n".join(lines)

    def plot(self, title: Optional[str] = None) -> Any:
        """Bar charts of the ablation, as a `matplotlib.figure.Figure` (no pyplot state).

        Panels: KL(full ‖ ·) for drop-j and only-j; KL(base ‖ ·) for the same; Δmargin
        (when pairs were given, else the edit norm); greedy tokens changed vs full; the
        edit norm; and the cumulative top-k curve with the full / projected-out levels.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 7.2), dpi=100, layout="constrained")
        axes = fig.subplots(2, 3)
        x = list(range(len(self.components)))
        labels = [theta_label(j) for j in self.components]
        w = 0.38

        def bars(ax, metric, ylabel, ref=None, ref_label=None):
            ax.bar([i - w / 2 for i in x], self.drop[metric], w, label="drop θj", color="#c44e52")
            ax.bar([i + w / 2 for i in x], self.only[metric], w, label="only θj", color="#4c72b0")
            if ref is not None:
                ax.axhline(ref, color="black", lw=1, ls="--", label=ref_label)
            ax.set_xticks(x, labels)
            ax.set_xlabel("subspace component j")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)

        bars(axes[0, 0], "kl_vs_full", "KL(full ‖ variant) [nats]")
        axes[0, 0].set_title("distance from full steering (next token)")
        bars(axes[0, 1], "kl_vs_base", "KL(base ‖ variant) [nats]", self.full["kl_vs_base"], "full steering")
        axes[0, 1].set_title("steering effect left (next token)")
        if "delta_margin" in self.full:
            bars(axes[0, 2], "delta_margin", "Δ margin vs base [nats]", self.full["delta_margin"], "full steering")
            axes[0, 2].axhline(0, color="grey", lw=0.6)
            axes[0, 2].set_title("preference margin log p(pos) − log p(neg)")
        else:
            axes[0, 2].text(
                0.5, 0.5, "no held-out pairs given", ha="center", va="center", transform=axes[0, 2].transAxes
            )
            axes[0, 2].set_axis_off()
        g = self.settings.get("greedy_tokens", 0)
        if "tokens_changed_vs_full" in self.full:
            bars(
                axes[1, 0],
                "tokens_changed_vs_full",
                f"tokens differing (of {g})",
                self.full["tokens_changed_vs_base"],
                "full vs base",
            )
            axes[1, 0].set_title("greedy tokens changed vs full steering")
        else:
            axes[1, 0].text(
                0.5, 0.5, "greedy_tokens=0: no generation", ha="center", va="center", transform=axes[1, 0].transAxes
            )
            axes[1, 0].set_axis_off()
        bars(axes[1, 1], "edit_norm", "Σ_layers ‖edit‖ at last prompt token", self.full["edit_norm"], "full steering")
        axes[1, 1].set_title("edit norm")
        ax = axes[1, 2]
        if self.top_k:
            ax.plot(self.top_k, self.cumulative["kl_vs_base"], "o-", label="KL(base‖top-k)")
            ax.plot(self.top_k, self.cumulative["kl_vs_full"], "s-", label="KL(full‖top-k)")
            ax.axhline(self.full["kl_vs_base"], color="black", lw=1, ls="--", label="KL(base‖full)")
            ax.set_xticks(self.top_k)
            top = max(self.cumulative["kl_vs_base"] + self.cumulative["kl_vs_full"] + [self.full["kl_vs_base"]])
            ax.set_ylim(0, 1.8 * top if top > 0 else 1.0)  # room for the note and legend above the curves
        po = self.projected_out
        note = ["projected out, no steering:", f"KL(base‖·) {po['kl_vs_base']:.3g}"]
        if "delta_margin" in po:
            note.append(f"Δmargin {po['delta_margin']:+.3g}")
        if "tokens_changed_vs_base" in po:
            note.append(f"tokens changed {po['tokens_changed_vs_base']:.3g}/{g}")
        ax.text(
            0.02,
            0.97,
            "\n".join(note),
            transform=ax.transAxes,
            va="top",
            fontsize=7.5,
            bbox=dict(boxstyle="round", fc="#f2f0f7", ec="#8172b2"),
        )
        ax.set_xlabel("k (edit θ1..θk)")
        ax.set_ylabel("nats")
        ax.set_title("cumulative top-k components")
        ax.legend(fontsize=7.5, loc="upper right")
        if title is None:
            title = (
                f"component ablation: {len(self.prompts)} prompts, "
                f"α={self.settings.get('alpha')}, {self.settings.get('n_pairs', 0)} held-out pairs"
            )
        fig.suptitle(title)
        return fig


# --------------------------------------------------------------------------- checks


def _as_prompts(prompts: Any, what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        raise ArgumentTypeError(f"{what} must be a list of strings, got a single string: wrap it in a list")
    try:
        out = list(prompts)
    except TypeError:
        raise ArgumentTypeError(f"{what} must be a list of strings, got {type(prompts).__name__}") from None
    if not out:
        raise InvalidArgumentError(f"{what} is empty: give at least one query")
    for p in out:
        if not isinstance(p, str) or not p.strip():
            raise InvalidArgumentError(f"every entry of {what} must be a non-empty string; got {p!r}")
    return out


def _as_pairs(pairs: Any) -> list[tuple[str, str, str]]:
    from alignez_tl.preferences import PreferenceSet

    if isinstance(pairs, PreferenceSet):
        out = [(p.query, p.positive, p.negative) for p in pairs]
    else:
        if isinstance(pairs, (str, bytes)):
            raise ArgumentTypeError("pairs must be a PreferenceSet or a list of (query, positive, negative)")
        try:
            out = [tuple(p) for p in pairs]
        except TypeError:
            raise ArgumentTypeError("pairs must be a PreferenceSet or a list of (query, positive, negative)") from None
        for i, p in enumerate(out):
            if len(p) != 3 or not all(isinstance(t, str) for t in p):
                raise ArgumentTypeError(f"pair {i} is not a (query, positive, negative) triple of strings")
    if not out:
        raise InvalidArgumentError("pairs is empty: pass None to skip the margin, or at least one pair")
    for i, (q, _, _) in enumerate(out):
        if not q.strip():
            raise InvalidArgumentError(f"pair {i} has an empty query")
    return out


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _max_rank(steerer: Steerer, layers: Optional[set] = None) -> int:
    """The largest rank over the steerer's subspace layers (all of them, or `layers`)."""
    ranks = [
        sub.rank
        for term in steerer.terms
        for layer, sub in term.subspace.layers.items()
        if layers is None or layer in layers
    ]
    return max(ranks, default=0)


# --------------------------------------------------------------------------- model calls


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def _logits(model: Any, ids: Tensor, mask: Tensor, hooks: list, counter: _Counter) -> Tensor:
    """One forward pass with hooks: float32 logits `[batch, seq, vocab]`."""
    device = model_device(model)
    kwargs = padding_kwargs(model, mask)
    with model.hooks(fwd_hooks=hooks):
        out = model(ids.to(device), return_type="logits", **kwargs)
    counter.n += 1
    return out.to(torch.float32)


def _recording(hooks: list, store: list) -> list:
    """Wrap edit hooks so each appends `‖output − input‖` at the last position `[batch]`."""

    def wrap(fn: Callable) -> Callable:
        def inner(activation: Tensor, hook: object) -> Tensor:
            out = fn(activation, hook)
            delta = out[:, -1].to(torch.float32) - activation[:, -1].to(torch.float32)
            store.append(delta.norm(dim=-1).detach().cpu())
            return out

        return inner

    return [(name, wrap(fn)) for name, fn in hooks]


def _kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p ‖ q) per row, from logits `[batch, vocab]` (float32), clamped at 0."""
    lp = torch.log_softmax(p_logits.to(torch.float32), dim=-1)
    lq = torch.log_softmax(q_logits.to(torch.float32), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def projection_hooks(steerer: Steerer) -> list[tuple[str, Callable]]:
    """`(hook_name, project_out_hook)` pairs removing the subspace at every subspace layer.

    The layers are those the steerer may edit (every layer with directions, or its fixed
    `layers`); where several objectives share a layer, the union of their directions is
    orthonormalised first. The hooks act on every position and need no query.
    """
    site = steerer.terms[0].subspace.site
    by_layer: dict[int, list[Tensor]] = {}
    for term in steerer.terms:
        for layer in term.candidate_layers():
            by_layer.setdefault(layer, []).append(term.directions(layer))
    out = []
    for layer in sorted(by_layer):
        mats = by_layer[layer]
        if len(mats) == 1:
            basis = mats[0]
        else:
            stacked = torch.cat(mats).to(torch.float64)
            _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
            basis = vh[s > 1e-6 * s[0]].to(torch.float32)
        if basis.shape[0]:
            out.append((hook_name(site, layer), project_out_hook(basis)))
    return out


# --------------------------------------------------------------------------- variants


@dataclass
class _Variant:
    name: str
    steerer: Optional[Steerer]  # None: base / projected_out
    project: bool = False

    def key(self) -> Any:
        """The direction indices each objective edits, as a set: equal keys, equal edits."""
        if self.steerer is None:
            return self.name
        return tuple(t.component_indices() for t in self.steerer.terms)

    def hooks(self, model: Any, proj: list, selections: Optional[list], prompt_len: Optional[int]) -> list:
        if self.project:
            return list(proj)
        if self.steerer is None:
            return []
        return self.steerer.hooks(model, selections=selections, prompt_len=prompt_len)


def _slice_selections(sels: list[list[QuerySelection]], rows: Sequence[int]) -> list[list[QuerySelection]]:
    return [[per_obj[r] for r in rows] for per_obj in sels]


def _margin_batch(prompt_ids: list[list[int]], resp_ids: list[list[int]], pad: int) -> tuple[Tensor, Tensor, int]:
    """Prompts left-padded to a common width P, responses right-padded after them.

    Every row's prompt ends at column P-1, so `prompt_len=P` makes
    `positions="generated"` edit exactly each row's last prompt token and its response.
    """
    p = max(len(r) for r in prompt_ids)
    r_max = max(len(r) for r in resp_ids)
    ids = torch.full((len(prompt_ids), p + r_max), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (pr, rs) in enumerate(zip(prompt_ids, resp_ids)):
        ids[i, p - len(pr) : p] = torch.tensor(pr, dtype=torch.long)
        ids[i, p : p + len(rs)] = torch.tensor(rs, dtype=torch.long)
        mask[i, p - len(pr) : p + len(rs)] = 1
    return ids, mask, p


# --------------------------------------------------------------------------- entry point


def ablate_components(
    model: Any,
    steerer: Steerer,
    prompts: Sequence[str],
    components: Optional[Sequence[int]] = None,
    *,
    pairs: Any = None,
    queries: Optional[Sequence[str]] = None,
    max_components: Optional[int] = None,
    greedy_tokens: int = 16,
    batch_size: int = 8,
    backend: str = "auto",
    verbose: bool = False,
) -> Ablation:
    """Ablate single subspace components of a steering setup and measure what changes.

    Args:
        model: the TransformerLens model the steerer's subspace was fitted on.
        steerer: a `Steerer` (one or several objectives).
        prompts: the queries to steer; each is rendered with `models.render` (chat
            template for instruct models). With `queries`, `prompts` are instead exact
            prompt texts (not rendered; tokenised as given, as `Steerer.generate(...,
            prompts=...)` does) and `queries[i]` is the query whose selection row i gets.
        components: direction indices j to study (θ_j at every layer); each must be
            below the subspace's largest rank over all its layers (an index that exists
            only at layers the steering never edits is allowed: it changes nothing).
            Default: every j below the largest rank among the layers the prompts'
            selections steer, capped at `max_components`.
        pairs: held-out preference pairs for the margin: a `PreferenceSet` or a list of
            `(query, positive, negative)`. `None` skips the margin metrics.
        queries: see `prompts`.
        max_components: cap on the default component list.
        greedy_tokens: greedy tokens generated per variant and prompt (0 skips them).
            Generation is `Steerer.generate`'s own loop (`generation.generate`),
            so `full` gives exactly `Steerer.generate`'s tokens and `base` its
            `steer=False` tokens; rows are cut at the first stop token.
        batch_size: rows per forward pass / generate call.
        backend: generation backend of `generation.generate` (`"auto"`, `"hf"`, `"tl"`);
            the next-token and margin passes always run TransformerLens forward passes
            under `model.hooks(...)`.
        verbose: a progress bar over variants.

    Every variant reuses the same per-query selection (`Steerer.select`, computed once
    for the prompts and once for the pair queries), so only the edited components
    change. The margin is teacher-forced: prompt tokens (those of `render(model, q)`)
    followed by the response's own tokens (of the rest of `render(model, q, response)`,
    tokenised without special tokens), i.e. the response as if the model had generated
    it; prompts are left-padded and responses right-padded so all rows of a batch share
    `prompt_len` and `positions="generated"` edits exactly the last prompt token and the
    response tokens, as during generation.

    Returns:
        An `Ablation` (see its docstring for what each number means).

    Forward passes: with C components and K = max(components) + 1 cumulative variants
    there are 3 + 2C + K variants; those that edit the same set of indices are run once
    (``only:0`` = ``top:1``; with R the largest rank, ``top:R`` = ``full`` and
    ``drop:(R-1)`` = ``top:(R-1)``), leaving V ≤ 3 + 2C + K. Each costs
    `B_p · (1 + greedy_tokens) + B_m` forward calls, `B_p = ceil(n_prompts / batch_size)`,
    `B_m = ceil(2 · n_pairs / batch_size)` (a generated token is one call with the KV
    cache), plus one or two selection captures (stopped at the deepest subspace layer).
    `Ablation.n_forward` is the count actually made, `settings["n_variants_run"]` is V.
    """
    # ---------------------------------------------------------------- validate first
    if not isinstance(steerer, Steerer):
        raise ArgumentTypeError(f"ablate_components needs a Steerer, got {type(steerer).__name__}")
    prompts = _as_prompts(prompts)
    if queries is not None:
        queries = _as_prompts(queries, "queries")
        if len(queries) != len(prompts):
            raise InvalidArgumentError(f"{len(queries)} queries for {len(prompts)} prompts")
    greedy_tokens = _positive_int("greedy_tokens", greedy_tokens, 0)
    batch_size = _positive_int("batch_size", batch_size, 1)
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if max_components is not None:
        max_components = _positive_int("max_components", max_components, 1)
    pair_list = None if pairs is None else _as_pairs(pairs)
    all_rank = _max_rank(steerer)
    if all_rank == 0:
        raise InvalidArgumentError("the steerer's subspace has no directions at any layer")
    if components is not None:
        if isinstance(components, (str, bytes)) or not hasattr(components, "__iter__"):
            raise ArgumentTypeError(f"components must be a list of ints, got {type(components).__name__}")
        components = list(components)
        if not components:
            raise InvalidArgumentError("components is empty: pass None for the default or at least one index")
        for j in components:
            if isinstance(j, bool) or not isinstance(j, int):
                raise ArgumentTypeError(f"component indices must be ints, got {j!r}")
            if not 0 <= j < all_rank:
                raise InvalidArgumentError(
                    f"component {j} is out of range: the subspace has direction indices "
                    f"0..{all_rank - 1} (its largest rank over all layers is {all_rank})"
                )
        if len(set(components)) != len(components):
            raise InvalidArgumentError(f"components has duplicates: {components}")
    require_tokenizer(model, "component ablation")
    steerer.check_model(model)

    # ---------------------------------------------------------------- selections
    sel_queries = queries if queries is not None else prompts
    sels = steerer.select(model, sel_queries, batch_size=max(batch_size, 1))
    steered = {layer for per_obj in sels for s in per_obj for layer in s.layers}
    if components is None:
        k_default = _max_rank(steerer, steered)
        if max_components is not None:
            k_default = min(k_default, max_components)
        components = list(range(k_default))
        if not components:
            raise InvalidArgumentError(
                "no prompt's selection edits any layer (the direction filter kept nothing), so "
                "there is no steering to ablate; pass other prompts or direction_filter='all'"
            )
    top_k = list(range(1, max(components) + 2)) if components else []

    texts = [render(model, q) for q in prompts] if queries is None else list(prompts)
    text_chat = None if queries is None else False
    batches = []
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        batches.append((rows, encode(model, [texts[r] for r in rows], chat=text_chat)))

    margin_batches: list[tuple[list[int], Tensor, Tensor, int]] = []
    pair_sels = None
    n_dropped = 0
    kept_pairs: list[tuple[str, str, str]] = []
    if pair_list is not None:
        tok = model.tokenizer
        prompt_ids_all, resp_ids_all = [], []
        for q, pos, neg in pair_list:
            prefix = render(model, q)
            p_ids = encode(model, [prefix]).input_ids[0].tolist()
            r_ids = []
            for resp in (pos, neg):
                full_text = render(model, q, resp)
                rest = full_text[len(prefix) :] if full_text.startswith(prefix) else resp
                r_ids.append(list(tok(rest, add_special_tokens=False)["input_ids"]))
            if not r_ids[0] or not r_ids[1]:
                n_dropped += 1
                continue
            kept_pairs.append((q, pos, neg))
            prompt_ids_all += [p_ids, p_ids]
            resp_ids_all += r_ids
        if not kept_pairs:
            raise InvalidArgumentError("every pair has an empty positive or negative response: no margin to measure")
        uniq = list(dict.fromkeys(q for q, _, _ in kept_pairs))
        uniq_sels = steerer.select(model, uniq, batch_size=max(batch_size, 1))
        index = {q: i for i, q in enumerate(uniq)}
        row_q = [index[q] for q, _, _ in kept_pairs for _ in (0, 1)]
        pair_sels = [[per_obj[i] for i in row_q] for per_obj in uniq_sels]
        pad = pad_id(tok)
        for start in range(0, len(row_q), batch_size):
            rows = list(range(start, min(start + batch_size, len(row_q))))
            ids, mask, p = _margin_batch([prompt_ids_all[r] for r in rows], [resp_ids_all[r] for r in rows], pad)
            margin_batches.append((rows, ids, mask, p))
        resp_lens = [len(r) for r in resp_ids_all]

    # ---------------------------------------------------------------- variants
    variants = [_Variant("base", None), _Variant("full", steerer)]
    variants += [_Variant(f"drop:{j}", steerer.without_components([j])) for j in components]
    variants += [_Variant(f"only:{j}", steerer.only_components([j])) for j in components]
    variants += [_Variant(f"top:{k}", steerer.only_components(list(range(k)))) for k in top_k]
    variants.append(_Variant("projected_out", None, project=True))
    proj = projection_hooks(steerer)
    counter = _Counter()

    raw: dict[str, dict[str, Any]] = {}
    # variants that edit the same index sets are run once (only:0 = top:1, top:R = full, ...)
    done: dict[Any, str] = {}
    for var in tqdm(variants, desc="ablation variants", disable=not verbose, leave=False):
        key = var.key()
        if key in done:
            raw[var.name] = raw[done[key]]
            continue
        done[key] = var.name
        last_logits, norms, gen = [], [], []
        for rows, batch in batches:
            width = batch.input_ids.shape[1]
            bsel = _slice_selections(sels, rows)
            store: list[Tensor] = []
            hooks = _recording(var.hooks(model, proj, bsel, width), store)
            with torch.inference_mode():
                logits = _logits(model, batch.input_ids, batch.attention_mask, hooks, counter)
            last_logits.append(logits[:, -1].cpu())
            norms.append(torch.stack(store).sum(0) if store else torch.zeros(len(rows)))
        if greedy_tokens:

            def hooks_for(start: int, stop: int, batch: Encoded, var: _Variant = var) -> list:
                rows = list(range(start, stop))
                return var.hooks(model, proj, _slice_selections(sels, rows), batch.input_ids.shape[1])

            gen = generate_tokens(
                model,
                texts,
                hooks_for,
                chat=text_chat,
                max_new_tokens=greedy_tokens,
                do_sample=False,
                batch_size=batch_size,
                backend=backend,
            )
            counter.n += greedy_tokens * len(batches)
        entry: dict[str, Any] = {
            "logits": torch.cat(last_logits),
            "edit_norm": torch.cat(norms).tolist(),
            "tokens": gen,
        }
        if pair_sels is not None:
            logp = torch.zeros(len(resp_lens), dtype=torch.float64)
            for rows, ids, mask, p in margin_batches:
                bsel = _slice_selections(pair_sels, rows)
                with torch.inference_mode():
                    logits = _logits(model, ids, mask, var.hooks(model, proj, bsel, p), counter)
                lsm = torch.log_softmax(logits[:, p - 1 : -1], dim=-1)
                tok_lp = lsm.gather(-1, ids[:, p:, None].to(lsm.device))[..., 0]
                for bi, r in enumerate(rows):
                    logp[r] = float(tok_lp[bi, : resp_lens[r]].to(torch.float64).sum())
            entry["margin"] = (logp[0::2] - logp[1::2]).tolist()
        raw[var.name] = entry

    # ---------------------------------------------------------------- metrics
    base, full = raw["base"], raw["full"]
    per_prompt: dict[str, dict[str, list[float]]] = {}
    for var in variants:
        e = raw[var.name]
        m: dict[str, list[float]] = {
            "kl_vs_full": _kl(full["logits"], e["logits"]).tolist(),
            "kl_vs_base": _kl(base["logits"], e["logits"]).tolist(),
        }
        if pair_sels is not None:
            m["margin"] = list(e["margin"])
            m["delta_margin"] = [a - b for a, b in zip(e["margin"], base["margin"])]
        m["edit_norm"] = list(e["edit_norm"])
        m["edit_norm_change"] = [a - b for a, b in zip(e["edit_norm"], full["edit_norm"])]
        if greedy_tokens:
            m["tokens_changed_vs_full"] = [float(_n_diff(a, b)) for a, b in zip(e["tokens"], full["tokens"])]
            m["tokens_changed_vs_base"] = [float(_n_diff(a, b)) for a, b in zip(e["tokens"], base["tokens"])]
        per_prompt[var.name] = m

    def means(name: str) -> dict[str, float]:
        return {k: _mean(v) for k, v in per_prompt[name].items()}

    def series(prefix: str, keys: list[int]) -> dict[str, list[float]]:
        rows = [means(f"{prefix}:{k}") for k in keys]
        return {metric: [r[metric] for r in rows] for metric in per_prompt["full"]}

    term0 = steerer.terms[0]
    settings = {
        "n_prompts": len(prompts),
        "n_pairs": len(kept_pairs),
        "n_pairs_dropped_empty": n_dropped,
        "greedy_tokens": greedy_tokens,
        "batch_size": batch_size,
        "backend": backend,
        "max_components": max_components,
        "alpha": term0.alpha if len(steerer.terms) == 1 else [t.alpha for t in steerer.terms],
        "mode": term0.mode,
        "scale": term0.scale if isinstance(term0.scale, str) else float(term0.scale),
        "direction_filter": term0.direction_filter,
        "top_n": term0.top_n,
        "positions": steerer.positions,
        "site": term0.subspace.site,
        "objectives": [t.subspace.objective_name for t in steerer.terms],
        "steered_layers": sorted(steered),
        "projected_layers": [int(name.split(".")[1]) for name, _ in proj],
        "selections": [[s.to_dict() for s in per_obj] for per_obj in sels],
        "model": str(getattr(model.cfg, "model_name", type(model).__name__)),
        "explicit_prompts": queries is not None,
        "n_variants_run": len(done),
    }
    return Ablation(
        components=list(components),
        top_k=top_k,
        base=means("base"),
        full=means("full"),
        projected_out=means("projected_out"),
        drop=series("drop", list(components)),
        only=series("only", list(components)),
        cumulative=series("top", top_k),
        per_prompt=per_prompt,
        tokens={name: raw[name]["tokens"] for name in raw},
        prompts=list(prompts),
        settings=settings,
        n_forward=counter.n,
    )


def _n_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if len(values) else math.nan
