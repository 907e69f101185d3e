"""Steering: per-query direction filter, layer selection, edit hooks.

A `Steerer` turns one or more fitted `AlignmentSubspace`s into TransformerLens hook
functions. For each query it measures, at every layer, how much the query's own
activation already points along each direction (docs/method.md, "3. Which directions
and which layers"), keeps the directions the query does not yet express, scores the
layer, and edits the top-n layers. In a
batch, every row carries its own selection: the hook at a layer edits only the rows
that chose that layer, with the directions each row kept (per-row masks), so one
batched `generate` gives the same tokens as one query at a time.

`Steerer` is a `protocol.SteeringMethod`: its `apply` and `generate` are
`protocol.HookSteering`'s, shared with every baseline. Its objectives are
`SteeringTerm`s (`steerer.terms`), the public description analyses read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence, Union, cast

import torch
from torch import Tensor

from ._checks import _as_queries, require_model
from .activations import capture
from .errors import ArgumentTypeError, InvalidArgumentError
from .generation import Prefill
from .hooks import EditGuard, EditTerm, PositionTracker, check_layers, edit_hook, hook_name
from .models import render
from .protocol import HookSteering
from .settings import (
    DEFAULT_EDIT,
    POSITIONS,
    Edit,
    Filter,
    Mode,
    Positions,
    Scale,
    SteerSettings,
    check_alpha,
    check_number,
    default_alpha,
)
from .subspace import AlignmentSubspace

__all__ = [
    "DEFAULT_EDIT",
    "QuerySelection",
    "Steerer",
    "SteeringTerm",
    "default_alpha",
]


@dataclass
class QuerySelection:
    """What one objective chose for one query.

    Attributes:
        query: the query text.
        layers: the edited layers, best score first.
        scores: every layer's score `s_l(q) = sqrt(Σ_{θ kept} ⟨q̂, θ⟩²)`.
        kept: per layer, the indices of the directions the filter kept.
        cos: per layer, `⟨q̂, θ_j⟩` for every direction (q̂ = the query's unit activation).
    """

    query: str
    layers: list[int]
    scores: dict[int, float]
    kept: dict[int, list[int]]
    cos: dict[int, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "layers": self.layers,
            "scores": {str(k): v for k, v in self.scores.items()},
            "kept": {str(k): v for k, v in self.kept.items()},
        }


@dataclass(frozen=True)
class SteeringTerm:
    """One objective inside a `Steerer` (`steerer.terms`): what it edits and how.

    A `Steerer` holds one term per objective (`Steerer.compose` concatenates them); the
    controls and ablations (`mirror`, `null`, `with_alpha`, `only_components`) return
    steerers whose terms are modified copies. Frozen: use `dataclasses.replace`.

    Attributes:
        subspace: the fitted `AlignmentSubspace` of this objective.
        alpha: the step size α.
        weight: the objective's weight `w` in `x + Σ w · Δ(x)`.
        mode: `"boost"` or `"suppress"`.
        scale: `"fitted"`, `"paper"` or a positive number (see `Steerer`).
        direction_filter: `"paper"` or `"all"` (see `keeps`).
        top_n: layers edited per query.
        layers: fixed layers, or None for per-query top-n selection.
        components: the direction indices j this term may edit at every layer; None
            (default) means all of them.
        edit: `"paper"` or `"oriented"`.
        replaced: per layer, directions used instead of the subspace's (the mirror and
            null controls); None: the subspace's own.
        control: `"mirror"`, `"null"` (or combinations), None for the real edit.
    """

    subspace: AlignmentSubspace
    alpha: float
    weight: float
    mode: Mode
    scale: Scale
    direction_filter: Filter
    top_n: int
    layers: Optional[tuple[int, ...]]
    components: Optional[frozenset[int]] = None  # direction indices j allowed (None: all)
    edit: Edit = "paper"
    # per layer, directions that replace the subspace's (mirror and null controls)
    replaced: Optional[dict[int, Tensor]] = None
    control: Optional[str] = None

    def directions(self, layer: int) -> Tensor:
        """`[k, d_model]` directions edited at `layer` (the replaced ones for a control)."""
        if self.replaced is not None:
            return self.replaced[layer]
        return self.subspace.layers[layer].directions

    def keeps(self, cos: Tensor) -> Tensor:
        """The direction filter: which directions a query with cosines `cos` gets edited."""
        if self.direction_filter == "all":
            return torch.ones_like(cos, dtype=torch.bool)
        if self.mode == "boost" or self.edit == "oriented":
            return cos <= 0
        return cos > 0

    def component_mask(self, layer: int) -> Tensor:
        """1 for the direction indices this term may edit at `layer`, else 0."""
        rank = self.subspace.layers[layer].rank
        if self.components is None:
            return torch.ones(rank)
        return torch.tensor([1.0 if j in self.components else 0.0 for j in range(rank)])

    @property
    def max_rank(self) -> int:
        """The largest number of directions at any of the subspace's layers."""
        return max((sub.rank for sub in self.subspace.layers.values()), default=0)

    def component_indices(self) -> frozenset[int]:
        """The direction indices this term edits where they exist (`components`, or all)."""
        every = frozenset(range(self.max_rank))
        return every if self.components is None else every & self.components

    def scales(self, layer: int) -> Tensor:
        """The per-direction scale s_j at `layer` (`scale`: fitted RMS, 1, or the number)."""
        sub = self.subspace.layers[layer]
        if self.scale == "paper":
            return torch.ones(sub.rank)
        if self.scale == "fitted":
            rms = sub.proj_rms.clone()
            return torch.where(rms > 0, rms, torch.ones_like(rms))
        return torch.full((sub.rank,), float(self.scale))

    def settings(self, positions: Positions = "generated") -> SteerSettings:
        """This term's settings as a `SteerSettings` (α and mode resolved)."""
        return SteerSettings(
            edit=self.edit,
            alpha=self.alpha,
            mode=self.mode,
            scale=self.scale,
            direction_filter=self.direction_filter,
            top_n=self.top_n,
            layers=self.layers,
            positions=positions,
            weight=self.weight,
        )

    def candidate_layers(self) -> list[int]:
        """The layers this term may edit: those with directions (restricted to `layers`)."""
        usable = [layer for layer, sub in sorted(self.subspace.layers.items()) if sub.rank > 0]
        if self.layers is None:
            return usable
        return [layer for layer in self.layers if layer in usable]


class Steerer(HookSteering):
    """Edits a model's residual stream along fitted alignment subspaces.

    Args:
        subspace: a fitted `AlignmentSubspace`.
        alpha: step size α. Default: `default_alpha(edit, mode)`: 0.1 (oriented boost),
            1 (oriented suppress), and the paper's +1 / −1 for `edit="paper"`.
        mode: `"boost"` or `"suppress"`; default from the subspace's objective.
        edit: `"oriented"` (default) or `"paper"` (docs/method.md, "The two edits").
            Oriented, with p = ⟨x, θ⟩: boost adds `α·s·(1 − tanh(p/s))·θ`, suppress adds
            `α·relu(−p)·θ` (α in (0, 1]); both edit the directions the query does not
            express (⟨q̂, θ⟩ ≤ 0). Paper: boost adds `α·s·tanh(p/s)·θ`, suppress
            `α·s·relu(p/s)·θ` with α < 0 (the exact formula, for reproduction).
        scale: `"fitted"` (default: s_j = RMS of the fitted activations' projections on
            θ_j), `"paper"` (s_j = 1, the paper's exact formula), or a positive number.
        direction_filter: `"paper"` keeps, per query and layer, the directions the query
            does not already express (⟨q̂, θ⟩ ≤ 0; the paper's suppress keeps > 0);
            `"all"` keeps every direction.
        top_n: how many layers to edit per query, by score (paper: 5).
        layers: a fixed list of layers instead of per-query top-n selection (the
            direction filter still applies when a query is given).
        positions: `"generated"` (default: the last prompt token and every generated
            token, the paper's KV-cache behaviour) or `"all"`.
        weight: this objective's weight when composed with others.

    Use `Steerer.compose` for several objectives; `hooks()` for plain `(name, fn)` pairs;
    `apply()` as a context manager; `generate()` for batched steered generation.
    """

    def __init__(
        self,
        subspace: AlignmentSubspace,
        alpha: Optional[float] = None,
        *,
        mode: Optional[Mode] = None,
        edit: Edit = SteerSettings.edit,
        scale: Scale = SteerSettings.scale,
        direction_filter: Filter = SteerSettings.direction_filter,
        top_n: int = SteerSettings.top_n,
        layers: Optional[Sequence[int]] = None,
        positions: Positions = SteerSettings.positions,
        weight: float = SteerSettings.weight,
    ) -> None:
        if not isinstance(subspace, AlignmentSubspace):
            hint = ""
            if isinstance(subspace, (str, os.PathLike)):
                hint = " (load a saved one with AlignmentSubspace.load(path))"
            raise ArgumentTypeError(f"Steerer needs an AlignmentSubspace, got {type(subspace).__name__}{hint}")
        settings = SteerSettings(
            edit=edit,
            alpha=alpha,
            mode=mode,
            scale=scale,
            direction_filter=direction_filter,
            top_n=top_n,
            layers=None if layers is None else tuple(layers),
            positions=positions,
            weight=weight,
        ).resolve(subspace.mode)
        self._init(subspace, settings)

    @classmethod
    def from_settings(cls, subspace: AlignmentSubspace, settings: SteerSettings) -> "Steerer":
        """A Steerer of `subspace` with typed `settings` (`SteerSettings`)."""
        if not isinstance(settings, SteerSettings):
            raise ArgumentTypeError(f"settings must be a SteerSettings, got {type(settings).__name__}")
        out = cls.__new__(cls)
        if not isinstance(subspace, AlignmentSubspace):
            cls.__init__(out, subspace)  # the same TypeError as the constructor
        out._init(subspace, settings.resolve(subspace.mode))
        return out

    def _init(self, subspace: AlignmentSubspace, settings: SteerSettings) -> None:
        assert settings.mode is not None  # resolve() filled it in
        mode, alpha, layers = settings.mode, float(settings.alpha or 0.0), settings.layers
        check_alpha(settings.edit, mode, alpha)
        fixed = None
        if layers is not None:
            n_layers = int(subspace.model.get("n_layers") or (max(subspace.layers) + 1))
            fixed = tuple(check_layers(list(layers), n_layers))
            missing = [layer for layer in fixed if layer not in subspace.layers]
            if missing:
                raise InvalidArgumentError(
                    f"layers {missing} were not fitted; the subspace has layers {subspace.layer_indices}"
                )
            empty = [layer for layer in fixed if subspace.layers[layer].rank == 0]
            if len(empty) == len(fixed):
                raise InvalidArgumentError(f"layers {fixed} have no directions (every pair was filtered out there)")
        self.terms: list[SteeringTerm] = [
            SteeringTerm(
                subspace,
                alpha,
                settings.weight,
                mode,
                settings.scale,
                settings.direction_filter,
                settings.top_n,
                fixed,
                edit=settings.edit,
            )
        ]
        self.positions = settings.positions

    @property
    def settings(self) -> SteerSettings:
        """This steerer's `SteerSettings` (one objective; a composed steerer has one per term)."""
        if len(self.terms) != 1:
            raise InvalidArgumentError(
                f"a composed steerer has {len(self.terms)} settings: read [t.settings() for t in .terms]"
            )
        return self.terms[0].settings(self.positions)

    # ------------------------------------------------------------------ composition

    @classmethod
    def compose(cls, steerers: Sequence["Steerer"], weights: Optional[Sequence[float]] = None) -> "Steerer":
        """Several objectives at once: `x̂ = x + Σ_p w_p · Δ_p(x)`.

        Every objective's edit Δ_p is computed from the same input x (not compounded),
        and each objective chooses its own layers per query.
        """
        steerers = list(steerers)
        if not steerers:
            raise InvalidArgumentError("compose needs at least one Steerer")
        weights = [1.0] * len(steerers) if weights is None else list(weights)
        if len(weights) != len(steerers):
            raise InvalidArgumentError(f"{len(weights)} weights for {len(steerers)} steerers")
        positions = {s.positions for s in steerers}
        if len(positions) != 1:
            raise InvalidArgumentError(f"composed steerers must share `positions`; got {sorted(positions)}")
        d_models = {t.subspace.d_model for s in steerers for t in s.terms}
        sites = {t.subspace.site for s in steerers for t in s.terms}
        if len(d_models) != 1 or len(sites) != 1:
            raise InvalidArgumentError("composed subspaces must share d_model and site")
        out = cls.__new__(cls)
        out.positions = positions.pop()
        out.terms = []
        for steerer, w in zip(steerers, weights):
            w = check_number("weight", w)
            if w < 0:
                raise InvalidArgumentError(f"weights must be >= 0, got {w}")
            out.terms.extend(replace(t, weight=t.weight * w) for t in steerer.terms)
        return out

    def overlap(self) -> list[list[float]]:
        """Mean absolute cosine between objectives' directions, over shared layers.

        Entry `[p][q]` is the mean `|⟨θ_p, θ_q⟩|` over all direction pairs at the layers
        both subspaces fitted: 0 means orthogonal objectives, 1 identical ones.
        """
        n = len(self.terms)
        out = [[0.0] * n for _ in range(n)]
        for i, a in enumerate(self.terms):
            for j, b in enumerate(self.terms):
                vals = []
                for layer in set(a.subspace.layers) & set(b.subspace.layers):
                    ta, tb = a.subspace.layers[layer].directions, b.subspace.layers[layer].directions
                    if ta.numel() and tb.numel():
                        vals.append((ta @ tb.T).abs().mean())
                out[i][j] = float(torch.stack(vals).mean()) if vals else 0.0
        return out

    # ------------------------------------------------------------------ selection

    def check_model(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a non-model, or a model a subspace was not fitted on (`AlignmentSubspace.check_model`)."""
        require_model(model, "steering")
        for term in self.terms:
            term.subspace.check_model(model, strict=strict)

    def prefill(self) -> Optional[Prefill]:
        """What selection reads from each query's unedited last prompt token (`generation.Prefill`).

        With `positions="generated"` the first edited position is the last prompt token, so
        `generate` reads the selection from the prompt's own forward pass (the fast path
        with the KV cache) instead of a second pass over the prompts. None for
        `positions="all"`, whose edits start at the first prompt token.
        """
        layers = sorted({layer for t in self.terms for layer in t.candidate_layers()})
        if self.positions != "generated" or not layers:
            return None
        return Prefill(self.terms[0].subspace.site, tuple(layers))

    def select(
        self,
        model: Any,
        queries: Sequence[str],
        *,
        chat: Optional[bool] = None,
        batch_size: int = 16,
        activations: Optional[Tensor] = None,
    ) -> list[list[QuerySelection]]:
        """Per objective, per query: the kept directions, layer scores and chosen layers.

        The query activation is the last token of `render(model, query)`: for a chat
        model, the end of the generation prompt, which is the first position steering
        edits during generation. `activations` (`[queries, layers, d_model]` at
        `self.prefill().layers`, as generation reads them from the prefill) replaces
        the capture pass.
        """
        queries = _as_queries(queries)
        self.check_model(model, strict=False)
        site = self.terms[0].subspace.site
        layers = sorted({layer for t in self.terms for layer in t.candidate_layers()})
        if activations is None:
            texts = [render(model, q, chat=chat) for q in queries]
            acts = capture(model, texts, layers, site, batch_size=batch_size, chat=chat)
        else:
            if tuple(activations.shape[:2]) != (len(queries), len(layers)):
                raise InvalidArgumentError(
                    f"activations of shape {tuple(activations.shape)} for {len(queries)} queries "
                    f"at {len(layers)} layers"
                )
            acts = activations.to(torch.float32)
        unit = acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        index = {layer: i for i, layer in enumerate(layers)}
        result = []
        for term in self.terms:
            per_query = []
            for qi, query in enumerate(queries):
                scores, kept, cosines = {}, {}, {}
                for layer in term.candidate_layers():
                    cos = term.directions(layer) @ unit[qi, index[layer]]
                    keep = term.keeps(cos)
                    kept[layer] = keep.nonzero().flatten().tolist()
                    scores[layer] = float(cos[keep].square().sum().sqrt())
                    cosines[layer] = cos.tolist()
                ranked = [layer for layer in scores if kept[layer]]
                if term.layers is None:
                    ranked.sort(key=lambda layer: (-scores[layer], layer))
                    chosen = ranked[: term.top_n]
                else:
                    chosen = ranked
                per_query.append(QuerySelection(query, chosen, scores, kept, cosines))
            result.append(per_query)
        return result

    # ------------------------------------------------------------------ hooks

    # names its extra keywords (selections, chat, monitor) instead of HookSteering's
    # **kwargs, so that a misspelt keyword raises: a deliberate narrowing of the override
    def hooks(  # type: ignore[override]
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        *,
        selections: Optional[list[list[QuerySelection]]] = None,
        activations: Optional[Tensor] = None,
        prompt_len: Optional[int] = None,
        chat: Optional[bool] = None,
        record: Optional[list] = None,
        monitor: Optional[dict] = None,
        strict: bool = True,
    ) -> list[tuple[str, Any]]:
        """Plain `(hook_name, fn)` pairs for `model.hooks(fwd_hooks=...)` or `run_with_hooks`.

        Args:
            query: one query (its selection applies to every batch row) or one query per
                batch row. Without a query, a Steerer built with fixed `layers` edits all
                directions at those layers.
            selections: reuse the output of `select()` instead of recomputing it.
            activations: the queries' last-prompt-token activations at `prefill().layers`
                (`[rows, layers, d_model]`): select from them without a capture pass.
            prompt_len: the padded prompt length, when known: pins which positions
                `positions="generated"` edits (see `hooks.PositionTracker`).
            record: a list that receives `(hook_name, seq_len, (start, stop))` for every
                edit, to check which positions were edited.
            monitor: a dict that counts the edited (row, position, direction) entries
                (`"edited"`) and those whose projection was negative before the edit
                (`"negative"`), over all hooks (see `hooks.edit_hook`).
            strict: refuse a subspace fitted on a model with another id.

        Each call returns fresh hooks with fresh position state: use one set per generation.
        """
        self.check_model(model, strict=strict)
        if selections is None and query is not None:
            queries = [query] if isinstance(query, str) else _as_queries(query)
            selections = self.select(model, queries, chat=chat, activations=activations)
        by_layer = self.edit_terms(selections)
        site = self.terms[0].subspace.site
        guard = EditGuard(alpha=self.terms[0].alpha if len(self.terms) == 1 else None)  # one warning per set of hooks
        out = []
        for layer in sorted(by_layer):
            name = hook_name(site, layer)
            log = None
            if record is not None:
                log = _NamedLog(record, name)
            tracker = PositionTracker(self.positions, prompt_len, log=log)
            out.append((name, edit_hook(by_layer[layer], tracker, monitor, guard, name)))
        return out

    def edit_terms(self, selections: Optional[list[list[QuerySelection]]] = None) -> dict[int, list[EditTerm]]:
        """Per layer, the `EditTerm`s (one per objective) the hooks apply.

        `selections` is `select()`'s output (None: the fixed layers, every direction).
        Each term's `coef` is `[rows, k]`: alpha · weight · (0/1 selection and component
        mask). Analyses use this to split an edit into per-direction contributions:
        `coef[:, j] · s_j · σ(⟨x, θ_j⟩ / s_j) · θ_j` for the hook's input x.
        """
        by_layer: dict[int, list[EditTerm]] = {}
        for ti, term in enumerate(self.terms):
            rows = self._masks(term, None if selections is None else selections[ti])
            for layer, mask in rows.items():
                coef = mask * term.component_mask(layer) * (term.alpha * term.weight)
                by_layer.setdefault(layer, []).append(
                    EditTerm(term.directions(layer), term.scales(layer), coef, term.mode, term.edit)
                )
        return by_layer

    def only_components(self, components: Sequence[int]) -> "Steerer":
        """A copy that edits only direction indices `components` (θ_j at every layer).

        Layer and direction selection are unchanged, so the result edits a subset of
        what this steerer edits: the tool for ablating single subspace components.
        """
        keep = frozenset(int(j) for j in components)
        return self._with_components(lambda term: keep if term.components is None else term.components & keep)

    def without_components(self, components: Sequence[int]) -> "Steerer":
        """A copy that never edits direction indices `components` (θ_j at every layer)."""
        drop = frozenset(int(j) for j in components)
        return self._with_components(lambda term: term.component_indices() - drop)

    # ------------------------------------------------------------------ controls

    def with_alpha(self, alpha: float) -> "Steerer":
        """A copy with step size `alpha` for every objective (no refit): for strength sweeps."""
        alpha = check_number("alpha", alpha)
        for term in self.terms:
            check_alpha(term.edit, term.mode, alpha)
        return self._copy([replace(t, alpha=alpha) for t in self.terms])

    with_strength = with_alpha

    @property
    def strength(self) -> float:
        """The step size α (of the first objective)."""
        return self.terms[0].alpha

    def mirror(self) -> "Steerer":
        """The mirror control: the same edit with every direction negated.

        It selects and edits exactly as this steerer does, but towards the dispreferred
        side. A steerer steers when it beats its mirror, not merely the base model: any
        change to a greedy answer can move a score.
        """
        terms = []
        for t in self.terms:
            layers = t.candidate_layers()
            terms.append(
                replace(
                    t,
                    replaced={layer: -t.directions(layer) for layer in layers},
                    control="mirror" if t.control is None else f"{t.control}+mirror",
                )
            )
        return self._copy(terms)

    def null(self, seed: int = 0) -> "Steerer":
        """The null-direction control: random orthonormal directions in place of each layer's.

        Same ranks, scales, α, filter rule and layer count as this steerer, so the edit
        has a comparable size; only the directions carry no preference. Seeded.
        """
        gen = torch.Generator().manual_seed(int(seed))
        terms = []
        for t in self.terms:
            replaced = {}
            for layer in t.candidate_layers():
                k, d = t.directions(layer).shape
                q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
                replaced[layer] = q.T.to(torch.float32).contiguous()
            terms.append(replace(t, replaced=replaced, control="null"))
        return self._copy(terms)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, for reports and result files."""
        out = []
        for t in self.terms:
            out.append(
                {
                    "method": "alignez",
                    "objective": t.subspace.objective_name,
                    "edit": t.edit,
                    "mode": t.mode,
                    "alpha": t.alpha,
                    "weight": t.weight,
                    "scale": t.scale,
                    "filter": t.direction_filter,
                    "top_n": t.top_n,
                    "layers": list(t.layers) if t.layers is not None else None,
                    "control": t.control,
                    "ranks": {str(k): v for k, v in t.subspace.ranks().items()},
                }
            )
        return {
            "positions": self.positions,
            "objectives": out,
            **{k: out[0][k] for k in ("method", "edit", "mode", "alpha", "control")},
        }

    def with_positions(self, positions: str) -> "Steerer":
        """A copy that edits `positions` (`"generated"` or `"all"`); the terms are unchanged."""
        if positions not in POSITIONS:
            raise InvalidArgumentError(f"positions must be one of {POSITIONS}, got {positions!r}")
        out = self._copy(list(self.terms))
        out.positions = cast(Positions, positions)  # checked against POSITIONS above
        return out

    def _copy(self, terms: list[SteeringTerm]) -> "Steerer":
        out = Steerer.__new__(Steerer)
        out.positions = self.positions
        out.terms = terms
        return out

    def _with_components(self, update: Any) -> "Steerer":
        return self._copy([replace(t, components=update(t)) for t in self.terms])

    def _masks(self, term: SteeringTerm, selections: Optional[list[QuerySelection]]) -> dict[int, Tensor]:
        """Per layer, a `[rows, k]` 0/1 mask of the directions each row edits."""
        masks: dict[int, Tensor] = {}
        if selections is None:
            if term.layers is None:
                raise InvalidArgumentError(
                    "no query given: pass query=... (per-query layer selection) or build the "
                    "Steerer with layers=[...] to edit fixed layers"
                )
            for layer in term.candidate_layers():
                masks[layer] = torch.ones(1, term.subspace.layers[layer].rank)
            return masks
        for row, sel in enumerate(selections):
            for layer in sel.layers:
                if layer not in masks:
                    masks[layer] = torch.zeros(len(selections), term.subspace.layers[layer].rank)
                masks[layer][row, sel.kept[layer]] = 1.0
        return masks

    # apply() and generate() are HookSteering's (protocol.py), shared with the baselines.


class _NamedLog(list):
    """Adapter: a PositionTracker log that writes `(hook_name, seq_len, span)` to a shared list."""

    def __init__(self, sink: list, name: str) -> None:
        super().__init__()
        self._sink, self._name = sink, name

    def append(self, item: Any) -> None:
        seq_len, span = item
        self._sink.append((self._name, seq_len, span))


def __getattr__(name: str) -> Any:
    """`generate_with_hooks` and `BACKENDS`, which this module used to hold: now `generation`'s."""
    if name in ("generate_with_hooks", "BACKENDS"):
        from . import generation

        return generation.generate if name == "generate_with_hooks" else generation.BACKENDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
