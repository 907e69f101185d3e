"""Attribution of steered tokens: which tokens changed, and which edits moved their logits.

`attribute_steering` generates a greedy base answer and a greedy steered answer to one
prompt, then runs each sequence through the model once more (one forward pass each, two
in all) and asks, at every generated position `i`:

* did steering change the token (`changed`)?
* by how much does the steered token beat the base token, in the steered run
  (`logit_diff_steered`) and in the base run (`logit_diff_base`)?
* how much of the steered-run difference is written *directly* by each edit, split by
  edited layer and by subspace direction (direct logit attribution, DLA)?

The direct logit attribution of one edit term. The steering hook at layer `l` adds
`δ_{l,j}(x) = coef_j · s_j · σ(⟨x, θ_j⟩ / s_j) · θ_j` for every kept direction `θ_j`
(`Steerer.edit_terms`). Its direct contribution to `logit[a] − logit[b]` at position `p`
is what the final norm and the unembedding make of it, with the final norm's scale
*frozen* at the steered run's value `σ_p`:

    contribution_{l,j}(p) = (N(δ_{l,j}(p)) / σ_p) ⊙ w_ln · (W_U[:, a] − W_U[:, b])

where `N` is the final norm's centring (LayerNorm: subtract the mean; RMSNorm: none) and
`w_ln` its weight (bias and `b_U` cancel for a difference of edits). The bridge does not
fold the final norm's weight into `W_U`, so `w_ln` is applied here; the centring and the
division by the cached scale are done by TransformerLens'
`ActivationCache.apply_ln_to_stack`. (`ActivationCache.logit_attrs` does not fit:
it takes `W_U` columns from `tokens_to_residual_directions`, which ignore an unfolded
norm weight.)

What this is and is not. DLA counts only the direct path of each edit through the frozen
final norm into the logits. It ignores everything the edit does through the layers
after it (attention and MLPs reading the edited stream), the change of the norm's scale
that the edit causes, and, after the first changed token, the different prefixes the two
runs condition on. The parts sum to `direct_total`; `direct_total + cast_residual`
equals the change of the logit difference, measured with the scale frozen
(`frozen_scale_change`), *only* in the exact case: every edit at the last layer's
`resid_post` and a shared prefix (position `i <= first_divergence`). Elsewhere the gap
between `direct_total` and `frozen_scale_change` is the part of the change that travels
through later layers or comes from the different prefix.
"""

from __future__ import annotations

import dataclasses
import html
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from alignez_tl.errors import ArgumentTypeError, InvalidArgumentError
from alignez_tl.generation import BACKENDS, encode_for_generation, stop_token_ids
from alignez_tl.generation import generate as generate_tokens
from alignez_tl.hooks import EditTerm, edit_steps, hook_name
from alignez_tl.models import model_device, render, require_tokenizer
from alignez_tl.steering import QuerySelection, Steerer
from analyses._common import theta_label

__all__ = [
    "Attribution",
    "attribute_steering",
    "final_norm_affine",
    "final_norm_kind",
    "final_norm_scale",
    "frozen_norm_readout",
]

N_FORWARD_PASSES = 2  # base run + steered run, both after generation


# --------------------------------------------------------------------------- result


@dataclass
class Attribution:
    """Per-token attribution of a steered answer against the unsteered one.

    Alignment: position `i` is the i-th generated token. Both runs share the prompt
    (`prompt_len` tokens); position `i` is predicted by sequence position
    `prompt_len - 1 + i` of each run, which conditions on that run's own first `i`
    tokens. Up to and including `first_divergence` the two prefixes are identical; after
    it they differ. Only the first `n_positions = min(len(base), len(steered))` positions
    are compared. Token lists include the stop token that ended a generation (when one
    did): "steered went on where base stopped" is a change too.

    Attributes:
        prompt: the query as given.
        prompt_len: tokens in the rendered prompt.
        base_tokens, steered_tokens: generated token ids (stop token kept, if any).
        base_strings, steered_strings: each token decoded on its own.
        base_text, steered_text: the answers as `Steerer.generate` returns them.
        n_positions: positions compared.
        first_divergence: first `i` where the tokens differ (None: none of the compared).
        changed: [n] steered token != base token.
        same_prefix: [n] both runs saw the same tokens before position i.
        logit_diff_steered: [n] `logit[steered_i] − logit[base_i]` in the steered run
            (>= 0 where the steered token was the greedy choice).
        logit_diff_base: [n] the same difference in the base run (<= 0 when greedy).
        frozen_scale_change: [n] the change of that difference between the runs with the
            final norm's scale frozen at the steered run's value:
            `(d_s − c) − (σ_base/σ_steered)·(d_b − c)`, `c` the norm-bias and `b_U` part.
            In the exact case it equals `direct_total + cast_residual`.
        direct_total: [n] sum of all direct edit contributions (DLA).
        per_layer: [n, len(layers)] contributions summed over directions.
        per_direction: [n, len(directions)] contributions summed over layers.
        per_layer_direction: [n, len(layers), len(directions)] the individual terms.
        cast_residual: [n] DLA of what the hook really added minus the sum of the
            per-direction edits: the rounding of the hook's arithmetic (float32, or
            float64 for float64 models) and of the cast back to the model dtype (tiny; a
            large value means the edits were not reproduced).
        scale_ratio: [n] final-norm scale, steered run / base run (1 = the frozen-scale
            assumption costs nothing).
        reconstruction_error: max |logit_diff_steered − (the same difference rebuilt from
            the final-norm input through the linear map used for DLA)|: checks that map.
        layers: edited layers (columns of per_layer).
        directions: `(objective index, direction index j)` pairs (columns of per_direction).
        selections: what `Steerer.select` chose for the prompt, per objective.
        n_forward_passes: model forward passes after generation (2).
        top_k: how many layers / directions the HTML hover lists.
    """

    prompt: str
    prompt_len: int
    base_tokens: list[int]
    steered_tokens: list[int]
    base_strings: list[str]
    steered_strings: list[str]
    base_text: str
    steered_text: str
    n_positions: int
    first_divergence: Optional[int]
    changed: np.ndarray
    same_prefix: np.ndarray
    logit_diff_steered: np.ndarray
    logit_diff_base: np.ndarray
    frozen_scale_change: np.ndarray
    direct_total: np.ndarray
    per_layer: np.ndarray
    per_direction: np.ndarray
    per_layer_direction: np.ndarray
    cast_residual: np.ndarray
    scale_ratio: np.ndarray
    reconstruction_error: float
    layers: list[int]
    directions: list[tuple[int, int]]
    selections: list[dict] = field(default_factory=list)
    n_forward_passes: int = N_FORWARD_PASSES
    top_k: int = 3

    # ------------------------------------------------------------------ views

    @property
    def direction_labels(self) -> list[str]:
        """`θ1`, `θ2`, ... (1-based, as in the docs and the report: direction j is
        `θ{j+1}`) for one objective, `o{p}.θ1` ... when several were composed."""
        several = len({p for p, _ in self.directions}) > 1
        return [f"o{p}.{theta_label(j)}" if several else theta_label(j) for p, j in self.directions]

    @property
    def layer_labels(self) -> list[str]:
        return [f"L{layer}" for layer in self.layers]

    def top_layers(self, i: int, k: Optional[int] = None) -> list[tuple[str, float]]:
        """The `k` layers with the largest |contribution| at position `i`."""
        return _top(self.layer_labels, self.per_layer[i], k or self.top_k)

    def top_directions(self, i: int, k: Optional[int] = None) -> list[tuple[str, float]]:
        """The `k` directions with the largest |contribution| at position `i`."""
        return _top(self.direction_labels, self.per_direction[i], k or self.top_k)

    # ------------------------------------------------------------------ export

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types (lists, floats, ints, strings, None)."""
        return {
            "prompt": self.prompt,
            "prompt_len": self.prompt_len,
            "base_tokens": list(self.base_tokens),
            "steered_tokens": list(self.steered_tokens),
            "base_strings": list(self.base_strings),
            "steered_strings": list(self.steered_strings),
            "base_text": self.base_text,
            "steered_text": self.steered_text,
            "n_positions": self.n_positions,
            "first_divergence": self.first_divergence,
            "changed": [bool(v) for v in self.changed],
            "same_prefix": [bool(v) for v in self.same_prefix],
            "logit_diff_steered": _floats(self.logit_diff_steered),
            "logit_diff_base": _floats(self.logit_diff_base),
            "frozen_scale_change": _floats(self.frozen_scale_change),
            "direct_total": _floats(self.direct_total),
            "cast_residual": _floats(self.cast_residual),
            "scale_ratio": _floats(self.scale_ratio),
            "per_layer": [_floats(row) for row in self.per_layer],
            "per_direction": [_floats(row) for row in self.per_direction],
            "per_layer_direction": [[_floats(r) for r in row] for row in self.per_layer_direction],
            "reconstruction_error": _float(self.reconstruction_error),
            "layers": [int(v) for v in self.layers],
            "directions": [[int(p), int(j)] for p, j in self.directions],
            "direction_labels": self.direction_labels,
            "selections": self.selections,
            "n_forward_passes": self.n_forward_passes,
            "top_k": self.top_k,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Attribution":
        """Rebuild a result from `to_dict()` output (e.g. a saved JSON file)."""
        arrays = (
            "changed",
            "same_prefix",
            "logit_diff_steered",
            "logit_diff_base",
            "frozen_scale_change",
            "direct_total",
            "per_layer",
            "per_direction",
            "per_layer_direction",
            "cast_residual",
            "scale_ratio",
        )
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for name in arrays:
            dtype = bool if name in ("changed", "same_prefix") else np.float64
            value = [np.nan if v is None else v for v in np.asarray(data[name], dtype=object).ravel()]
            kwargs[name] = np.asarray(value, dtype=dtype).reshape(np.shape(data[name]))
        n, n_l, n_d = int(data["n_positions"]), len(data["layers"]), len(data["directions"])
        for name, shape in (
            ("per_layer", (n, n_l)),
            ("per_direction", (n, n_d)),
            ("per_layer_direction", (n, n_l, n_d)),
        ):
            kwargs[name] = kwargs[name].reshape(shape)
        kwargs["directions"] = [tuple(int(v) for v in d) for d in data["directions"]]
        kwargs["reconstruction_error"] = (
            np.nan if data["reconstruction_error"] is None else float(data["reconstruction_error"])
        )
        return cls(**kwargs)

    def plot(self, *, title: Optional[str] = None, max_label_chars: int = 10) -> Any:
        """A `matplotlib.figure.Figure` (no pyplot state, no backend change).

        Top: the steered-minus-base logit difference in both runs, the frozen-scale change
        and the direct total, per position; the positions after the first changed token
        (where the two runs condition on different prefixes) shaded. Middle: per-layer
        direct contributions (layers × positions). Bottom: per-direction contributions.
        Heatmaps use a diverging colormap centred at 0 (red: pushes towards the steered
        token). Bottom tick labels are the steered tokens (changed ones in red), top tick
        labels the base tokens.
        """
        from matplotlib.colors import TwoSlopeNorm
        from matplotlib.figure import Figure

        n = self.n_positions
        n_l, n_d = len(self.layers), len(self.directions)
        width = min(max(6.0, 0.34 * n + 2.5), 22.0)
        heights = [1.6, max(0.9, 0.28 * n_l + 0.5), max(0.9, 0.28 * n_d + 0.5)]
        fig = Figure(figsize=(width, sum(heights) + 1.9), dpi=100, layout="constrained")
        axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": heights})
        x = np.arange(n)

        ax = axes[0]
        if self.first_divergence is not None and self.first_divergence + 1 < n:
            ax.axvspan(self.first_divergence + 0.5, n - 0.5, color="#bbb", alpha=0.18, lw=0, label="prefixes differ")
        ax.axhline(0, color="#888", lw=0.6)
        ax.plot(x, self.logit_diff_steered, "o-", ms=3, lw=1, color="#c0392b", label="steered run")
        ax.plot(x, self.logit_diff_base, "o-", ms=3, lw=1, color="#2c3e50", label="base run")
        ax.plot(x, self.frozen_scale_change, "--", lw=1, color="#7f8c8d", label="change (frozen scale)")
        ax.bar(x, self.direct_total, width=0.6, color="#e67e22", alpha=0.6, label="direct (DLA of edits)")
        ax.set_ylabel("logit[steered]\n− logit[base]", fontsize=8)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.45 * (high - low))  # room for the legend
        ax.legend(fontsize=7, ncol=5, loc="upper left", frameon=False)
        ax.tick_params(labelsize=7)

        for ax, data, labels, name in (
            (axes[1], self.per_layer.T, self.layer_labels, "layer"),
            (axes[2], self.per_direction.T, self.direction_labels, "direction"),
        ):
            data = np.asarray(data, dtype=float).reshape(len(labels), n)
            bound = float(np.nanmax(np.abs(data))) if data.size else 0.0
            bound = bound if bound > 0 else 1.0
            im = ax.imshow(
                data,
                aspect="auto",
                cmap="RdBu_r",
                interpolation="nearest",
                norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
            )
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_ylabel(f"edited {name}", fontsize=8)
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03).ax.tick_params(labelsize=7)

        bottom = axes[2]
        bottom.set_xticks(x, [_short(s, max_label_chars) for s in self.steered_strings[:n]], rotation=90, fontsize=7)
        for tick, was_changed in zip(bottom.get_xticklabels(), self.changed):
            if was_changed:
                tick.set_color("#c0392b")
                tick.set_fontweight("bold")
        bottom.set_xlabel("steered token (red: differs from base)", fontsize=8)
        top = axes[0].secondary_xaxis("top")
        top.set_xticks(
            x, [_short(s, max_label_chars) for s in self.base_strings[:n]], rotation=90, fontsize=7, color="#555"
        )
        top.set_xlabel("base token", fontsize=8)
        fig.suptitle(title or f"Direct logit attribution of the steering edits: {_short(self.prompt, 60)}", fontsize=9)
        return fig

    def to_html(self, *, top_k: Optional[int] = None, max_tokens: Optional[int] = None) -> str:
        """A self-contained HTML fragment of the steered answer (inline styles, no script).

        Each steered token is one `<span class="alignez-tok">`, coloured by its
        `direct_total` (red: the edits push towards the steered token over the base one;
        blue: against; white: no effect or nothing to compare). The hover (`title`) gives
        the base token, whether it changed, both logit differences and the `top_k` layers
        and directions with the largest contributions. All model text is HTML-escaped.
        `max_tokens` shows only the first tokens (default: all). The fragment is one line
        (newlines inside hovers are written `&#10;`), so it can be pasted into Markdown.
        """
        k = int(top_k or self.top_k)
        finite = np.abs(self.direct_total[np.isfinite(self.direct_total)])
        bound = float(finite.max()) if finite.size else 0.0
        spans = []
        shown_tokens = self.steered_strings if max_tokens is None else self.steered_strings[:max_tokens]
        for i, text in enumerate(shown_tokens):
            if i < self.n_positions:
                value = float(self.direct_total[i])
                colour = _colour(value, bound)
                lines = [
                    f"position {i}: {text!r}"
                    + (f" (base: {self.base_strings[i]!r}, changed)" if self.changed[i] else " (same as base)"),
                    f"logit[steered] − logit[base]: steered run {self.logit_diff_steered[i]:+.3f}, "
                    f"base run {self.logit_diff_base[i]:+.3f}",
                    f"direct attribution of edits: {value:+.3f} "
                    f"(change with frozen scale {self.frozen_scale_change[i]:+.3f})",
                ]
                if not self.same_prefix[i]:
                    lines.append("prefixes differ here (after the first changed token)")
                if self.changed[i] and self.layers:
                    lines.append("top layers: " + ", ".join(f"{n} {v:+.3f}" for n, v in self.top_layers(i, k)))
                    lines.append("top directions: " + ", ".join(f"{n} {v:+.3f}" for n, v in self.top_directions(i, k)))
                border = "border-bottom:2px solid #c0392b;" if self.changed[i] else ""
            else:
                colour, border = "transparent", "border-bottom:1px dotted #999;"
                lines = [f"position {i}: {text!r}", "no base token at this position (base answer ended)"]
            title = html.escape("\n".join(lines), quote=True).replace("\n", "&#10;")
            shown = html.escape(text, quote=True).replace("\n", "&#10;")
            spans.append(
                f'<span class="alignez-tok" style="background:{colour};{border}'
                f'border-radius:2px;padding:0 1px" title="{title}">{shown}</span>'
            )
        legend = (
            '<div style="font-size:0.8em;color:#555;margin-bottom:0.3em">'
            "steered answer; colour = direct logit attribution of the steering edits to "
            "logit[steered token] − logit[base token] "
            '(<span style="background:rgba(192,57,43,0.45)">towards steered</span>, '
            '<span style="background:rgba(41,128,185,0.45)">towards base</span>; '
            f"max |value| {bound:.3g}); underlined tokens changed; hover for details</div>"
        )
        return (
            '<div class="alignez-attribution" style="font-family:ui-monospace,monospace;'
            'font-size:0.9em;line-height:1.7">'
            f'<div style="font-size:0.8em;color:#555">prompt: {html.escape(self.prompt, quote=True)}</div>'
            + legend
            + '<div style="white-space:pre-wrap">'
            + "".join(spans)
            + ("…" if len(shown_tokens) < len(self.steered_strings) else "")
            + "</div></div>"
        )


def _floats(values: Any) -> list[Optional[float]]:
    return [_float(v) for v in np.asarray(values, dtype=float).ravel()]


def _float(value: Any) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def _top(labels: Sequence[str], values: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return [(labels[i], float(values[i])) for i in order]


def _short(text: str, limit: int) -> str:
    """A one-line label: newline and tab as arrows, other control characters as \\xNN."""
    text = text.replace("\n", "↵").replace("\t", "→")
    text = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _colour(value: float, bound: float) -> str:
    if not math.isfinite(value) or bound <= 0 or value == 0:
        return "transparent"
    alpha = min(1.0, abs(value) / bound) * 0.6
    rgb = "192,57,43" if value > 0 else "41,128,185"
    return f"rgba({rgb},{alpha:.3f})"


# --------------------------------------------------------------------------- computation


def attribute_steering(
    model: Any,
    steerer: Steerer,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    top_k: int = 3,
    chat: Optional[bool] = None,
    continuations: Optional[tuple[Sequence[int], Sequence[int]]] = None,
    backend: str = "auto",
) -> Attribution:
    """Which steered tokens changed, and which edited layers and directions moved them.

    Steps: (1) `Steerer.select` once for the prompt; greedy base and steered generation
    through the loop `Steerer.generate` uses (`generation.generate`: the same tokens);
    (2) one forward pass of prompt + base answer with no hooks, and one of prompt +
    steered tokens with the steering hooks of that same selection (`prompt_len` pinned,
    so `positions="generated"` edits exactly what it edited while generating) plus
    recorders around each edit hook (its input x and output); (3) per position, the
    logit differences and the direct logit attribution of every edit term
    `coef_j · s_j · σ(⟨x, θ_j⟩/s_j) · θ_j` through the final norm with the steered
    run's scale frozen (see the module docstring for the formula and the approximation).
    Generation drops the stop token that ended an answer; the last logits of the
    analysis pass tell which stop token it was, and it is put back as a position.

    Args:
        model: a TransformerLens model (TransformerBridge or HookedTransformer).
        steerer: the `Steerer` to explain (one or several composed objectives).
        prompt: the user query (rendered with the chat template like `Steerer.generate`).
        max_new_tokens: tokens to generate per answer (>= 1).
        top_k: layers / directions listed per token in `to_html`.
        chat: chat template on/off (default: when the tokenizer has one).
        continuations: `(base_ids, steered_ids)` to teacher-force instead of generating
            (each a non-empty list of token ids): for tests and for explaining given text.
        backend: the generation engine, as in `Steerer.generate` (`"auto"`: the fast
            path on a bridge; `"tl"`: TransformerLens `generate`). The two analysis
            passes always run through TransformerLens hooks.

    Returns:
        An `Attribution`. Cost: selection (one capture pass) and two greedy generations,
        then exactly two forward passes (`n_forward_passes`).

    Raises:
        TypeError: `steerer` is not a `Steerer`, or `prompt` is not a string.
        ValueError: empty prompt, `max_new_tokens` or `top_k` < 1, malformed
            `continuations`; all checked before any model call.
    """
    if not isinstance(steerer, Steerer):
        raise ArgumentTypeError(f"attribute_steering needs a Steerer, got {type(steerer).__name__}")
    if not isinstance(prompt, str):
        raise ArgumentTypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidArgumentError("prompt is empty")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidArgumentError(f"top_k must be a positive int, got {top_k!r}")
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    forced = None if continuations is None else _check_continuations(continuations, model)
    tok = require_tokenizer(model, "attribute_steering")
    steerer.check_model(model)

    device = model_device(model)
    # the prompt as generation encodes it (cut to leave room for the new tokens if need be)
    batch = encode_for_generation(model, [render(model, prompt, chat=chat)], chat, max_new_tokens)
    prompt_ids = batch.input_ids[0].tolist()
    plen = len(prompt_ids)
    selections = steerer.select(model, [prompt], chat=chat)
    stops = stop_token_ids(model)

    if forced is None:
        text = render(model, prompt, chat=chat)

        def answer(hooks: list) -> list[int]:
            return generate_tokens(
                model, [text], lambda start, stop, enc: hooks, chat=chat, max_new_tokens=max_new_tokens, backend=backend
            )[0]

        base = answer([])
        steered = answer(steerer.hooks(model, selections=selections, prompt_len=plen))
        # generation drops the stop token that ended an answer; it is put back below
        base_cut, steered_cut = len(base) < max_new_tokens, len(steered) < max_new_tokens
    else:
        base, steered = forced
        base_cut = steered_cut = False

    by_layer = steerer.edit_terms(selections)
    objectives = _objective_of_terms(by_layer, selections)
    record: list = []
    edit_hooks = steerer.hooks(model, selections=selections, prompt_len=plen, record=record)
    site = steerer.terms[0].subspace.site
    # one pass per run over the whole answer: its last logits give the stop token greedy chose
    base_run = _run(model, prompt_ids + base, [], device)
    steered_run = _run(model, prompt_ids + steered, edit_hooks, device, by_layer=by_layer, site=site)
    if base_cut:
        base = base + [_stop_choice(base_run, stops)]
    if steered_cut:
        steered = steered + [_stop_choice(steered_run, stops)]

    n = min(len(base), len(steered))
    result = _attribute(model, base, steered, plen, n, base_run, steered_run, by_layer, objectives, record, site)
    changed = np.array([b != s for b, s in zip(base[:n], steered[:n])], dtype=bool)
    first = int(np.flatnonzero(changed)[0]) if changed.any() else None
    same_prefix = np.arange(n) <= (first if first is not None else n)
    return Attribution(
        prompt=prompt,
        prompt_len=plen,
        base_tokens=list(base),
        steered_tokens=list(steered),
        base_strings=[tok.decode([t]) for t in base],
        steered_strings=[tok.decode([t]) for t in steered],
        base_text=_text(tok, base, stops),
        steered_text=_text(tok, steered, stops),
        n_positions=n,
        first_divergence=first,
        changed=changed,
        same_prefix=same_prefix,
        selections=[sel[0].to_dict() for sel in selections],
        top_k=top_k,
        **result,
    )


def _check_continuations(continuations: Any, model: Any) -> tuple[list[int], list[int]]:
    if not isinstance(continuations, (tuple, list)) or len(continuations) != 2:
        raise InvalidArgumentError("continuations must be a pair (base_ids, steered_ids)")
    vocab = int(model.cfg.d_vocab)
    out = []
    for name, ids in zip(("base", "steered"), continuations):
        ids = [int(t) for t in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        if not ids:
            raise InvalidArgumentError(f"the {name} continuation is empty")
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidArgumentError(f"the {name} continuation has token ids outside 0..{vocab - 1}")
        out.append(ids)
    return out[0], out[1]


def _text(tok: Any, ids: Sequence[int], stops: Sequence[int]) -> str:
    kept = list(ids[:-1]) if ids and ids[-1] in stops else list(ids)
    return tok.decode(kept, skip_special_tokens=True).strip()


def _stop_choice(run: "_Run", stops: Sequence[int]) -> int:
    """The stop token the run's last position ranks highest (the one generation stopped on)."""
    last = run.logits[-1]
    return int(max(stops, key=lambda t: float(last[t])))


@dataclass
class _Run:
    logits: Tensor  # [S, vocab] float64
    final_in: Tensor  # [S, d] input of the final norm
    scale: Tensor  # [S, 1] final-norm scale (ones without a norm)
    inputs: dict = field(default_factory=dict)  # layer -> [S, d] edit hook input
    outputs: dict = field(default_factory=dict)  # layer -> [S, d] edit hook output


def _has_hook(model: Any, name: str) -> bool:
    hook_dict = getattr(model, "hook_dict", None)
    return hook_dict is not None and name in hook_dict


@torch.inference_mode()
def _run(
    model: Any,
    ids: list[int],
    edit_hooks: list,
    device: torch.device,
    *,
    by_layer: Optional[dict] = None,
    site: str = "resid_post",
) -> _Run:
    """One forward pass: logits, the final norm's input and scale, edit inputs/outputs."""
    store: dict[str, Tensor] = {}

    def keep(key: str):
        def fn(activation: Tensor, hook: Any) -> None:
            store[key] = activation[0].detach().clone()

        return fn

    hooks: list = []
    names = dict(edit_hooks)
    for layer in sorted(by_layer or {}):
        name = hook_name(site, layer)
        if name not in names:
            raise RuntimeError(f"the steering hooks have no hook at {name}")
        # TransformerLens runs hooks on one hook point in the order they were added:
        # recorder (input x), the steering edit, recorder (output x + δ).
        hooks += [(name, keep(f"in.{layer}")), (name, names[name]), (name, keep(f"out.{layer}"))]
    hooks += [(n, f) for n, f in edit_hooks if n not in {h[0] for h in hooks}]
    # the final norm's input: its own hook on a bridge; the last block's output on a
    # HookedTransformer (added after the edit hooks, so it sees the edited stream)
    final_name = "ln_final.hook_in"
    if not _has_hook(model, final_name):
        final_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    hooks.append((final_name, keep("final_in")))
    has_scale = _has_hook(model, "ln_final.hook_scale") and final_norm_kind(model) is not None
    if has_scale:
        hooks.append(("ln_final.hook_scale", keep("scale")))
    tokens = torch.tensor([ids], dtype=torch.long, device=device)
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
    if "final_in" not in store:
        raise RuntimeError(f"no activation reached {final_name}: cannot attribute logits")
    final_in = store["final_in"]
    scale = store["scale"].reshape(-1, 1) if has_scale else torch.ones(final_in.shape[0], 1)
    run = _Run(logits=logits[0].detach().to(torch.float64), final_in=final_in, scale=scale.to(torch.float64))
    for layer in by_layer or {}:
        run.inputs[layer] = store[f"in.{layer}"]
        run.outputs[layer] = store[f"out.{layer}"]
    return run


def final_norm_kind(model: Any) -> Optional[str]:
    """The final norm's kind: "LN" (centre and scale), "RMS" (scale) or None (no final norm)."""
    kind = getattr(model.cfg, "normalization_type", None)
    if kind in ("LN", "LNPre"):
        return "RMS" if getattr(model.cfg, "final_rms", False) else "LN"
    if kind in ("RMS", "RMSPre"):
        return "RMS"
    return None


def final_norm_affine(model: Any, d_model: int) -> tuple[Tensor, Tensor]:
    """The final norm's effective weight and bias, float64 on the CPU (ones / zeros where
    there are none, e.g. a HookedTransformer whose weight processing folded them into W_U)."""
    ln = getattr(model, "ln_final", None)
    weight = bias = None
    if (
        ln is not None
        and final_norm_kind(model) is not None
        and model.cfg.normalization_type not in ("LNPre", "RMSPre")
    ):
        weight = getattr(ln, "weight", None)
        if weight is None:
            weight = getattr(ln, "w", None)
        if weight is not None and getattr(ln, "uses_weight_offset", False):
            weight = 1.0 + weight
        if final_norm_kind(model) == "LN":
            original = getattr(ln, "original_component", None)
            bias = getattr(original, "bias", None) if original is not None else None
            if bias is None:
                bias = getattr(ln, "b", None)
    w = torch.ones(d_model, dtype=torch.float64) if weight is None else weight.detach().to(torch.float64).cpu()
    b = torch.zeros(d_model, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).cpu()
    return w, b


def final_norm_scale(model: Any, resid: Tensor) -> Tensor:
    """The final norm's scale σ for inputs `resid` `[..., d_model]` (the final residual
    stream): `sqrt(var(x) + eps)` for LayerNorm, `sqrt(mean(x²) + eps)` for RMSNorm (what
    `ln_final.hook_scale` records), ones without a final norm. Float64, shape `[..., 1]`."""
    x = resid.detach().to(torch.float64).cpu()
    kind = final_norm_kind(model)
    if kind is None:
        return torch.ones(x.shape[:-1] + (1,), dtype=torch.float64)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    if kind == "LN":
        x = x - x.mean(-1, keepdim=True)
    return (x.square().mean(-1, keepdim=True) + eps).sqrt()


def frozen_norm_readout(model: Any, vectors: Tensor, scale: Union[float, Tensor] = 1.0) -> Tensor:
    """What the final norm makes of vectors added to its input, its scale frozen at `scale`.

    `N(v) / σ ⊙ w_ln` for every row v of `vectors` `[C, d_model]` (`N`: LayerNorm's
    centring, nothing for RMSNorm), float64 on the CPU. The norm's bias and `b_U` are left
    out: they cancel in the difference of two logit vectors, and a vector added to the
    residual stream changes the logits (with σ frozen) by exactly
    `frozen_norm_readout(model, v, σ) @ W_U`. The same linear map the direct logit
    attribution of `attribute_steering` uses (there σ is the steered run's scale at each
    position).
    """
    v = vectors.detach().to(torch.float64).cpu()
    if final_norm_kind(model) == "LN":
        v = v - v.mean(-1, keepdim=True)
    w_ln, _ = final_norm_affine(model, int(v.shape[-1]))
    sigma = scale.detach().to(torch.float64).cpu() if isinstance(scale, Tensor) else float(scale)
    return v / sigma * w_ln


def _objective_of_terms(
    by_layer: dict[int, list[EditTerm]], selections: list[list[QuerySelection]]
) -> dict[int, list[int]]:
    """Per layer, the objective index of each EditTerm (edit_terms keeps objective order)."""
    out = {}
    for layer, terms in by_layer.items():
        owners = [p for p, sel in enumerate(selections) if layer in sel[0].layers]
        if len(owners) != len(terms):
            raise RuntimeError(f"cannot match the edit terms at layer {layer} to objectives")
        out[layer] = owners
    return out


def _attribute(
    model,
    base,
    steered,
    plen,
    n,
    base_run: _Run,
    steered_run: _Run,
    by_layer: dict[int, list[EditTerm]],
    objectives: dict[int, list[int]],
    record: list,
    site: str,
) -> dict[str, Any]:
    from transformer_lens import ActivationCache

    q = torch.arange(plen - 1, plen - 1 + n)  # sequence positions predicting token i
    b_ids = torch.tensor(base[:n])
    s_ids = torch.tensor(steered[:n])
    rows = torch.arange(n)
    ld_s = steered_run.logits[q][rows, s_ids] - steered_run.logits[q][rows, b_ids]
    ld_b = base_run.logits[q][rows, s_ids] - base_run.logits[q][rows, b_ids]

    d_model = steered_run.final_in.shape[-1]
    w_ln, b_ln = final_norm_affine(model, d_model)
    W_U = model.W_U.detach().to(torch.float64).cpu()
    b_U = getattr(model, "b_U", None)
    b_U = torch.zeros(W_U.shape[1], dtype=torch.float64) if b_U is None else b_U.detach().to(torch.float64).cpu()
    dW = W_U[:, s_ids] - W_U[:, b_ids]  # [d, n]
    readout = w_ln[:, None] * dW  # [d, n]: w_ln ⊙ (W_U[:, s] − W_U[:, b])
    const = b_ln @ dW + (b_U[s_ids] - b_U[b_ids])  # [n] the bias part of each difference
    scale_s = steered_run.scale[q].cpu()  # [n, 1]
    scale_b = base_run.scale[q].cpu()

    cache = ActivationCache({"ln_final.hook_scale": scale_s[None]}, model)
    kind = final_norm_kind(model)

    def dla(stack: Tensor) -> Tensor:
        """[C, n, d] vectors at the n predicting positions -> [C, n] direct logit-diff parts."""
        stack = stack.to(torch.float64)
        if kind is not None:
            stack = cache.apply_ln_to_stack(stack[:, None], layer=None)[:, 0]  # centre, / σ_steered
        return torch.einsum("cnd,dn->cn", stack, readout)

    recon = dla(steered_run.final_in[q].cpu()[None])[0] + const
    reconstruction_error = float((recon - ld_s).abs().max()) if n else 0.0
    if reconstruction_error > 1e-3 * (1.0 + float(ld_s.abs().max())):
        warnings.warn(
            f"the final norm + unembedding map used for attribution rebuilds the logits only to "
            f"{reconstruction_error:.3g}: this model's final layer is not the affine norm + W_U "
            "assumed here (e.g. logit soft-capping), so the attributions are approximate",
            stacklevel=3,
        )

    frozen = (ld_s - const) - (scale_b / scale_s)[:, 0] * (ld_b - const)

    layers = sorted(by_layer)
    directions = sorted(
        {
            (p, j)
            for layer in layers
            for p, term in zip(objectives[layer], by_layer[layer])
            for j in torch.nonzero(term.coef[0] != 0).flatten().tolist()
        }
    )
    d_index = {key: c for c, key in enumerate(directions)}
    per_ld = torch.zeros(n, len(layers), len(directions), dtype=torch.float64)
    cast = torch.zeros(n, dtype=torch.float64)
    spans = {name: span for name, _, span in record}  # the positions each edit hook edited
    for li, layer in enumerate(layers):
        x_all = steered_run.inputs[layer].cpu()
        edited = torch.zeros(x_all.shape[0], dtype=torch.bool)
        span = spans.get(hook_name(site, layer))
        if span is not None:
            edited[span[0] : span[1]] = True
        mask = edited[q].to(torch.float64)[:, None]  # positions the hook edited
        # the hook computes in float32 (float64 for float64 activations): do the same
        work = torch.float64 if x_all.dtype == torch.float64 else torch.float32
        x = x_all[q].to(work)
        vectors = []
        keys = []
        for p, term in zip(objectives[layer], by_layer[layer]):
            theta = term.directions.to(work).cpu()
            s = term.scales.to(work).cpu()
            coef = term.coef[0].to(work).cpu()
            step = edit_steps(x @ theta.T, s, coef, term.mode, term.edit)  # [n, k]
            for j in torch.nonzero(coef != 0).flatten().tolist():
                vectors.append(step[:, j : j + 1].to(torch.float64) * theta[j].to(torch.float64) * mask)
                keys.append((p, j))
        actual = steered_run.outputs[layer][q].cpu().to(torch.float64) - x_all[q].to(torch.float64)
        modelled = torch.stack(vectors).sum(0) if vectors else torch.zeros_like(actual)
        parts = dla(torch.stack(vectors + [actual - modelled]))
        for c, key in enumerate(keys):
            per_ld[:, li, d_index[key]] += parts[c]
        cast += parts[-1]

    per_layer = per_ld.sum(-1)
    per_direction = per_ld.sum(1)
    direct_total = per_layer.sum(-1)
    np64 = lambda t: t.detach().cpu().numpy().astype(np.float64)  # noqa: E731
    return {
        "logit_diff_steered": np64(ld_s),
        "logit_diff_base": np64(ld_b),
        "frozen_scale_change": np64(frozen),
        "direct_total": np64(direct_total),
        "per_layer": np64(per_layer),
        "per_direction": np64(per_direction),
        "per_layer_direction": np64(per_ld),
        "cast_residual": np64(cast),
        "scale_ratio": np64((scale_s / scale_b)[:, 0]),
        "reconstruction_error": reconstruction_error,
        "layers": layers,
        "directions": directions,
        "n_forward_passes": N_FORWARD_PASSES,
    }
