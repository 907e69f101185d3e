"""Baselines for AlignEZ, usable wherever a `Steerer` is (docs/baselines.md).

Every baseline is built from the same data AlignEZ fits its subspace on (a
self-generated `PreferenceSet`, text pairs, token tensors, activations or a
`PairActivations`: whatever `pairs.embed_pairs` takes, embedded by it), so a comparison
isolates the method, not the data:

* `DiffMeanSteerer` (DiffMean / CAA): `v = mean_k (P[k] − N[k])` at one layer, added as
  `x + coef · v`.
* `PCASteerer`: the first principal component of the mean-centred differences
  (repeng's `pca_diff`), oriented so `⟨mean diff, pc⟩ ≥ 0`, added as `x + coef · pc`
  (or `coef · rms · pc` with `coef_scale="rms"`).
* `PromptSteerer` (prompt-only): no activation edit; a system prompt naming the
  objective's positive keyword ("You are a helpful assistant.").
* `NoSteerer`: nothing at all, through the same generation path.

Every one is a `protocol.SteeringMethod`, as `Steerer` is: `hooks(model, query, *,
prompt_len, record, strict)` returns `(hook_name, fn)` pairs, `apply(model, ...)` is a
context manager that always removes them, `generate(model, queries, ...)` is
`protocol.HookSteering.generate`, the code `Steerer` runs too (prompt-only calls the
same loop, `generation.generate`, with its own prompts): the same batching,
left padding, seeding, stop tokens, backend and `steer=False` unsteered path, so the
only difference between two runs is the steering itself. `describe()` and
`with_positions()` complete the interface.

The closed forms are pure functions on tensors: `diffmean_vector`, `pca_direction`. The
aggregators `diffmean(acts, layer)` and `pca(acts, layer)` apply them to a
`PairActivations`; `VectorSteerer.fit(model, data, layer=..., aggregator=...)` fits a
vector steerer with any such aggregator (DiffMean and PCA are two of them).
"""

from __future__ import annotations

import copy
import math
import string
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import ArgumentTypeError, InvalidArgumentError
from .hooks import POSITIONS, SITES, PositionTracker, check_layers, hook_name
from .models import any_id, basis_mismatch, model_signature, render, require_tokenizer
from .pairs import EmptySubspaceError, PairActivations, embed_pairs
from .protocol import HookSteering
from .settings import check_number
from .steering import _NamedLog
from .subspace import SubspaceMismatchError

__all__ = [
    "COEF_SCALES",
    "DEFAULT_SYSTEM_TEMPLATE",
    "Baseline",
    "DiffMeanSteerer",
    "NoSteerer",
    "PCASteerer",
    "PromptSteerer",
    "VectorSteerer",
    "Aggregator",
    "add_hook",
    "diffmean",
    "diffmean_vector",
    "pca",
    "pca_direction",
    "ITISteerer",
    "ITI_ALPHA",
    "ITI_TOP_K",
    "capture_heads",
    "fit_probes",
    "z_hook_name",
]

DEFAULT_SYSTEM_TEMPLATE = "You are a {positive} assistant."
COEF_SCALES = ("unit", "rms")

#: `aggregator(acts, layer)`: a `[d_model]` vector from the pairs at `layer`, or
#: `(vector, info)` to record extra statistics in the steerer's `info`.
Aggregator = Callable[[PairActivations, int], Union[Tensor, tuple[Tensor, dict[str, Any]]]]


# --------------------------------------------------------------------------- closed forms


def _check_pairs(pos: Tensor, neg: Tensor) -> None:
    if not isinstance(pos, Tensor) or not isinstance(neg, Tensor):
        raise ArgumentTypeError("pos and neg must be tensors")
    if pos.shape != neg.shape or pos.ndim != 2:
        raise InvalidArgumentError(
            f"pos and neg must both be [n, d_model]; got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if pos.shape[0] == 0:
        raise EmptySubspaceError("no pairs: there is nothing to fit")
    if not pos.is_floating_point() or not neg.is_floating_point():
        raise ArgumentTypeError("pos and neg must be float activations")
    if not torch.isfinite(pos).all() or not torch.isfinite(neg).all():
        raise InvalidArgumentError("the activations contain NaN or inf")


def _out_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def diffmean_vector(pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
    """DiffMean / CAA: `mean_k (pos[k] − neg[k])`, not normalised.

    Computed in float64, returned in the inputs' dtype (at least float32).
    """
    _check_pairs(pos, neg)
    return (pos.to(torch.float64) - neg.to(torch.float64)).mean(0).to(_out_dtype(pos))


def pca_direction(pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
    """The first principal component of the mean-centred differences, unit norm.

    `D = pos − neg`, `D_c = D − mean(D)`, `D_c = U Σ Vᵀ`, `pc = V[:, 0]`, flipped so that
    `⟨mean(D), pc⟩ ≥ 0` (pointing from negative to positive). This is repeng's
    `pca_diff` (scikit-learn's PCA centres the data); note that steering-vectors'
    `pca_aggregator` is *uncentred* instead. Needs at least two pairs whose differences
    are not all equal (otherwise the centred differences are zero and there is no
    component). Computed in float64, returned in the inputs' dtype (at least float32).
    """
    _check_pairs(pos, neg)
    if pos.shape[0] < 2:
        raise InvalidArgumentError("the PCA of the differences needs at least 2 pairs (one pair has no variance)")
    diffs = pos.to(torch.float64) - neg.to(torch.float64)
    mean = diffs.mean(0)
    centred = diffs - mean
    _, sigma, vh = torch.linalg.svd(centred, full_matrices=False)
    if not float(sigma[0]) > 1e-6 * float(diffs.norm()):  # below float32 rounding: no spread
        raise InvalidArgumentError(
            "the differences are all equal, so their mean-centred PCA has no component; "
            "use DiffMean (or more varied pairs)"
        )
    pc = vh[0]
    if float(mean @ pc) < 0:
        pc = -pc
    return pc.to(_out_dtype(pos))


def diffmean(acts: PairActivations, layer: int) -> Float[Tensor, " d_model"]:
    """The DiffMean aggregator: `diffmean_vector` of the pairs at `layer`."""
    return diffmean_vector(*acts.at(layer))


def pca(acts: PairActivations, layer: int) -> Float[Tensor, " d_model"]:
    """The PCA aggregator: `pca_direction` of the pairs at `layer` (unit norm)."""
    return pca_direction(*acts.at(layer))


def _cosine_filter(acts: PairActivations, layer: int, tau: Optional[float]) -> PairActivations:
    """Drop the pairs with `cos(pos, neg) > tau` at `layer` (AlignEZ's pair filter); None keeps all."""
    if tau is None:
        return acts
    cos = acts.cos(layer)
    keep = cos <= tau
    if not keep.any():
        raise EmptySubspaceError(
            f"all {acts.n_pairs} pairs have cos(pos, neg) > tau={tau} "
            f"(range [{float(cos.min()):.3f}, {float(cos.max()):.3f}]): nothing left to fit"
        )
    return acts.subset(keep)


# --------------------------------------------------------------------------- hooks


def add_hook(vector: Float[Tensor, " d_model"], tracker: PositionTracker):
    """A hook that adds `vector` at the tracker's positions of every row.

    The sum is computed in the wider of float32 and the activation's dtype and cast
    back, so a float32 or float64 model gets exactly `x + vector` at those positions.
    """
    cache: dict[tuple, Tensor] = {}

    def fn(activation: Float[Tensor, "batch pos d_model"], hook: object) -> Tensor:
        start, stop = tracker.window(activation.shape[1])
        work = torch.promote_types(activation.dtype, torch.float32)
        key = (activation.device, work)
        if key not in cache:
            cache[key] = vector.to(device=activation.device, dtype=work)
        out = activation.clone()
        out[:, start:stop] = (activation[:, start:stop].to(work) + cache[key]).to(activation.dtype)
        return out

    return fn


# --------------------------------------------------------------------------- base


class Baseline(HookSteering):
    """What every baseline shares with `Steerer`: the `protocol.HookSteering` base.

    Subclasses define `hooks()`, `check_model()`, `describe()` and `with_positions()`;
    `apply` and `generate` are `HookSteering`'s (the shared loop
    `generation.generate`: batching, left padding, seeding, stop tokens, the
    `backend` choice; `steer=False` runs the unsteered model through the same path).
    """

    method = "baseline"

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, for reports."""
        return {"method": self.method}


class NoSteerer(Baseline):
    """No steering: `hooks()` is empty; `generate` renders each query plainly."""

    method = "none"

    @classmethod
    def fit(cls, model: Any = None, data: Any = None, **kwargs: Any) -> "NoSteerer":
        """For a uniform API: ignores its arguments."""
        return cls()

    def check_model(self, model: Any, *, strict: bool = True) -> None:
        require_tokenizer(model, "generation")

    def hooks(
        self,
        model: Any,
        query: Any = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        return []

    def with_positions(self, positions: str) -> "NoSteerer":
        """A copy (`positions` is checked; there is no edit, so it changes nothing)."""
        _check_positions(positions)
        return copy.copy(self)

    def __repr__(self) -> str:
        return "NoSteerer()"


# --------------------------------------------------------------------------- vectors

_V = TypeVar("_V", bound="VectorSteerer")  # `fit` returns the class it is called on


class VectorSteerer(Baseline):
    """Adds a fixed vector to the residual stream at one layer: `x + coef · vector`.

    Args:
        vector: `[d_model]`, the step per unit of `coef` (float32 is kept).
        layer: the layer whose `site` output is edited.
        coef: the multiplier (any finite number; negative steers away).
        site: `resid_post` (default), `resid_pre`, `mlp_out` or `attn_out`.
        positions: `"generated"` (default: the last prompt token and every generated
            token, as `Steerer`) or `"all"` (every position, the prompt included).
        model: `models.model_signature` of the model it was fitted on (`{}`: unknown).

    Every batch row gets the same edit; the `query` given to `hooks` is ignored.
    """

    method = "vector"

    def __init__(
        self,
        vector: Tensor,
        *,
        layer: int,
        coef: float = 1.0,
        site: str = "resid_post",
        positions: str = "generated",
        model: Optional[dict[str, Any]] = None,
        objective: Optional[dict[str, Any]] = None,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        _check_settings(layer=layer, coef=coef, site=site, positions=positions)
        if not isinstance(vector, Tensor) or vector.ndim != 1 or not vector.is_floating_point():
            raise InvalidArgumentError("vector must be a 1-D float tensor [d_model]")
        if not torch.isfinite(vector).all():
            raise InvalidArgumentError("vector contains NaN or inf")
        if model and not 0 <= layer < int(model.get("n_layers", layer + 1)):
            raise InvalidArgumentError(
                f"layer {layer} is out of range: the model has layers 0..{model['n_layers'] - 1}"
            )
        self.vector = vector.detach().to(torch.promote_types(vector.dtype, torch.float32)).cpu()
        self.layer = int(layer)
        self.coef = float(coef)
        self.site = site
        self.positions = positions
        self.model = dict(model or {})
        self.objective = dict(objective or {})
        self.info = dict(info or {})

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def direction(self) -> Tensor:
        """`vector / ‖vector‖` (zeros for a zero vector)."""
        norm = self.vector.norm()
        return self.vector / norm if norm > 0 else torch.zeros_like(self.vector)

    @property
    def delta(self) -> Tensor:
        """What the hook adds at each edited position: `coef · vector`."""
        return self.coef * self.vector

    @property
    def hook_name(self) -> str:
        return hook_name(self.site, self.layer)

    def with_coef(self, coef: float) -> "VectorSteerer":
        """A copy with another `coef` (no refit): for coefficient sweeps."""
        out = self.__class__.__new__(self.__class__)
        out.__dict__.update(self.__dict__)
        _check_settings(layer=self.layer, coef=coef, site=self.site, positions=self.positions)
        out.coef = float(coef)
        return out

    with_strength = with_coef

    @property
    def strength(self) -> float:
        """The multiplier `coef` (what strength sweeps and calibration vary)."""
        return self.coef

    def mirror(self) -> "VectorSteerer":
        """The mirror control: the same step towards the dispreferred side (`coef → −coef`)."""
        out = self.with_coef(-self.coef)
        out.info = {**self.info, "control": "mirror"}
        return out

    def null(self, seed: int = 0) -> "VectorSteerer":
        """The null-direction control: a seeded random unit direction with the same `‖vector‖`."""
        gen = torch.Generator().manual_seed(int(seed))
        r = torch.randn(self.d_model, generator=gen, dtype=torch.float64)
        out = self.__class__.__new__(self.__class__)
        out.__dict__.update(self.__dict__)
        out.vector = (r / r.norm() * float(self.vector.norm())).to(self.vector.dtype)
        out.info = {**self.info, "control": "null", "null_seed": int(seed)}
        return out

    def check_model(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a model this vector does not fit (d_model, depth, compatibility mode, id)."""
        sig = model_signature(model)
        reasons = []
        if sig["d_model"] != self.d_model:
            reasons.append(f"d_model {self.d_model} (vector) vs {sig['d_model']} (model)")
        if self.layer >= sig["n_layers"]:
            reasons.append(f"layer {self.layer} does not exist in a {sig['n_layers']}-layer model")
        if self.model and self.model.get("n_layers") != sig["n_layers"]:
            reasons.append(f"n_layers {self.model.get('n_layers')} vs {sig['n_layers']}")
        _refuse_mismatch(f"this {self.method} steering vector does not fit", reasons, self.model, sig, strict)

    def hooks(
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """One `(hook_name, fn)` pair adding `coef · vector` at the chosen positions.

        `query` is accepted for `Steerer` compatibility and ignored (every row gets the
        same edit). `prompt_len` and `record` mean what they mean for `Steerer.hooks`.
        Each call returns a fresh hook with fresh position state.
        """
        self.check_model(model, strict=strict)
        name = self.hook_name
        log = _NamedLog(record, name) if record is not None else None
        tracker = PositionTracker(self.positions, prompt_len, log=log)
        return [(name, add_hook(self.delta, tracker))]

    @classmethod
    def fit(
        cls: type[_V],
        model: Any,
        data: Any,
        *,
        layer: int,
        aggregator: Aggregator,
        coef: float = 1.0,
        site: str = "resid_post",
        positions: str = "generated",
        tau: Optional[float] = None,
        batch_size: int = 16,
        chat: Optional[bool] = None,
        objective: Any = None,
        verbose: bool = False,
    ) -> _V:
        """A steering vector from pair data: `aggregator(acts, layer)` on the embedded pairs.

        `data` is anything `embed_pairs` takes (see `DiffMeanSteerer.fit`); it is embedded
        at `layer` and `site` in float32, the pairs with `cos(pos, neg) > tau` dropped when
        `tau` is given, and `aggregator` (e.g. `diffmean`, `pca`, or your own function of
        a `PairActivations` and the layer) gives the `[d_model]` vector, or `(vector,
        info)`. `info` records `n_pairs`, `n_kept`, `tau` and the aggregator's info.
        """
        _check_settings(layer=layer, coef=coef, site=site, positions=positions)
        if not callable(aggregator):
            raise ArgumentTypeError(f"aggregator must be a function (acts, layer) -> vector, got {aggregator!r}")
        acts, n_pairs = _fit_activations(
            model,
            data,
            layer=layer,
            site=site,
            tau=tau,
            batch_size=batch_size,
            chat=chat,
            verbose=verbose,
            caller=f"{cls.__name__}.fit",
        )
        out = aggregator(acts, layer)
        vector, extra = out if isinstance(out, tuple) else (out, {})
        if not isinstance(vector, Tensor):
            raise ArgumentTypeError(f"the aggregator returned {type(vector).__name__}, not a [d_model] tensor")
        if not float(vector.norm()) > 0:
            raise InvalidArgumentError(
                f"layer {layer}: the fitted vector is zero, there is no direction to steer along"
            )
        return cls(
            vector.to(torch.float32),
            layer=layer,
            coef=coef,
            site=site,
            positions=positions,
            model=model_signature(model) if model is not None else {},
            objective=_objective_dict(objective, acts.objective),
            info={"n_pairs": n_pairs, "n_kept": acts.n_pairs, "tau": tau, **extra},
        )

    def with_positions(self, positions: str) -> "VectorSteerer":
        """A copy that adds the vector at `positions` (`"generated"` or `"all"`)."""
        _check_positions(positions)
        out = copy.copy(self)
        out.positions = positions
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layer": self.layer,
            "site": self.site,
            "coef": self.coef,
            "positions": self.positions,
            "vector_norm": float(self.vector.norm()),
            "delta_norm": float(self.delta.norm()),
            "objective": self.objective.get("name"),
            **self.info,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layer={self.layer}, coef={self.coef:g}, site={self.site!r}, "
            f"positions={self.positions!r}, |vector|={float(self.vector.norm()):.4g})"
        )


def _refuse_mismatch(what: str, reasons: list[str], fitted: dict, sig: dict, strict: bool) -> None:
    """Add the checks every fitted steerer shares (residual basis, model id) and raise if any failed.

    `fitted` is the model signature recorded at fit time (may be empty), `sig` the model's.
    """
    if fitted:
        reasons.extend(basis_mismatch(fitted, sig, what="vector", strict=strict))
        if strict and fitted.get("model_id") != sig["model_id"]:
            reasons.append(f"model id {fitted.get('model_id')!r} vs {sig['model_id']!r}")
    if reasons:
        raise SubspaceMismatchError(
            f"{what}: "
            + "; ".join(reasons)
            + (". Pass strict=False to accept a different model id only." if any_id(reasons) else "")
        )


def _check_settings(*, layer: Any, coef: Any, site: Any, positions: Any) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ArgumentTypeError(f"layer must be an int, got {layer!r}")
    if layer < 0:
        raise InvalidArgumentError(f"layer {layer} is out of range: layers are numbered from 0")
    check_number("coef", coef)
    if site not in SITES:
        raise InvalidArgumentError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    _check_positions(positions)


def _check_positions(positions: Any) -> None:
    if positions not in POSITIONS:
        raise InvalidArgumentError(f"positions must be one of {POSITIONS}, got {positions!r}")


def _fit_activations(
    model: Any,
    data: Any,
    *,
    layer: int,
    site: str,
    tau: Optional[float],
    batch_size: int,
    chat: Optional[bool],
    verbose: bool,
    caller: str,
) -> tuple[PairActivations, int]:
    """The pairs' float32 activations at `layer` (`embed_pairs`, as for the subspace),
    after the cosine filter; and how many pairs there were before it."""
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not -1.0 < tau <= 1.0:
            raise InvalidArgumentError(f"tau must be None or a number in (-1, 1]; got {tau!r}")
    if model is not None:
        check_layers([layer], int(model.cfg.n_layers))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    acts = embed_pairs(
        model, data, [layer], site, batch_size=batch_size, chat=chat, verbose=verbose, caller=caller
    ).float()
    return _cosine_filter(acts, layer, tau), acts.n_pairs


def _objective_dict(objective: Any, fitted: dict[str, Any]) -> dict[str, Any]:
    if objective is None:
        return dict(fitted)
    from .objectives import get_objective

    return get_objective(objective).to_dict()


class DiffMeanSteerer(VectorSteerer):
    """DiffMean / CAA: `x + coef · v` with `v = mean_k (Φ(pos_k) − Φ(neg_k))` (not normalised).

    `vector` is the raw mean difference (`diffmean`), `direction` its unit vector.
    `coef = 1` adds the mean preference gap itself. Build it with `DiffMeanSteerer.fit`.
    """

    method = "diffmean"

    @classmethod
    def fit(  # type: ignore[override]
        cls,
        model: Any,
        data: Any,
        *,
        layer: int,
        coef: float = 1.0,
        site: str = "resid_post",
        positions: str = "generated",
        tau: Optional[float] = None,
        batch_size: int = 16,
        chat: Optional[bool] = None,
        objective: Any = None,
        verbose: bool = False,
    ) -> "DiffMeanSteerer":
        """Fit from the same data `fit_subspace` takes: `VectorSteerer.fit` with `diffmean`.

        Args:
            model: the TransformerLens model (None only for precomputed activations).
            data: anything `embed_pairs` takes: a `PreferenceSet`, `(positive_text,
                negative_text)` pairs, a `(pos, neg)` pair of token tensors, `(pos, neg)`
                float activations `[n, d_model]` (or `[n, 1, d_model]`) of this layer, or a
                `PairActivations` holding this layer. Texts are embedded exactly as for the
                subspace (`PreferenceSet.texts`), the activation taken at the last token.
            layer: the layer; coef, site, positions: see `VectorSteerer`.
            tau: None (default, CAA: every pair) or AlignEZ's pair filter, dropping the
                pairs with `cos(pos, neg) > tau`.
            objective: name/object to record when `data` is not a PreferenceSet.
        """
        return super().fit(
            model,
            data,
            layer=layer,
            aggregator=_nonzero_diffmean,
            coef=coef,
            site=site,
            positions=positions,
            tau=tau,
            batch_size=batch_size,
            chat=chat,
            objective=objective,
            verbose=verbose,
        )


def _nonzero_diffmean(acts: PairActivations, layer: int) -> Tensor:
    v = diffmean(acts, layer)
    if not float(v.norm()) > 0:
        raise InvalidArgumentError(f"layer {layer}: the mean difference is zero, there is no direction to steer along")
    return v


class PCASteerer(VectorSteerer):
    """The first principal component of the mean-centred differences: `x + coef · s · pc`.

    `direction` is the unit `pc` (`pca`: `⟨mean diff, pc⟩ ≥ 0`), `vector = s · pc` with
    `s = 1` (`coef_scale="unit"`, default: `coef` is in residual-stream units) or
    `s = proj_rms` (`coef_scale="rms"`: the RMS of `⟨Φ, pc⟩` over the fitted positive and
    negative activations, the same statistic AlignEZ's `scale="fitted"` uses, so
    `coef = 1` is a step of AlignEZ's size). `mean_diff_proj = ⟨mean diff, pc⟩` is
    recorded too.
    """

    method = "pca"

    @classmethod
    def fit(  # type: ignore[override]
        cls,
        model: Any,
        data: Any,
        *,
        layer: int,
        coef: float = 1.0,
        coef_scale: str = "unit",
        site: str = "resid_post",
        positions: str = "generated",
        tau: Optional[float] = None,
        batch_size: int = 16,
        chat: Optional[bool] = None,
        objective: Any = None,
        verbose: bool = False,
    ) -> "PCASteerer":
        """Fit from the same data `fit_subspace` takes (see `DiffMeanSteerer.fit`):
        `VectorSteerer.fit` with `pca`, scaled by `coef_scale`."""
        _check_settings(layer=layer, coef=coef, site=site, positions=positions)
        if coef_scale not in COEF_SCALES:
            raise InvalidArgumentError(f"coef_scale must be one of {COEF_SCALES}, got {coef_scale!r}")

        def scaled_pc(acts: PairActivations, layer: int) -> tuple[Tensor, dict[str, Any]]:
            pos, neg = acts.at(layer)
            pc = pca(acts, layer).to(torch.float64)
            fitted = torch.cat([pos, neg]).to(torch.float64)
            proj_rms = float((fitted @ pc).square().mean().sqrt())
            mean_diff_proj = float(diffmean(acts, layer).to(torch.float64) @ pc)
            scale = proj_rms if coef_scale == "rms" else 1.0
            return scale * pc, {"coef_scale": coef_scale, "proj_rms": proj_rms, "mean_diff_proj": mean_diff_proj}

        return super().fit(
            model,
            data,
            layer=layer,
            aggregator=scaled_pc,
            coef=coef,
            site=site,
            positions=positions,
            tau=tau,
            batch_size=batch_size,
            chat=chat,
            objective=objective,
            verbose=verbose,
        )

    @property
    def coef_scale(self) -> str:
        return str(self.info.get("coef_scale", "unit"))

    @property
    def proj_rms(self) -> float:
        return float(self.info.get("proj_rms", math.nan))


# --------------------------------------------------------------------------- prompting


def _check_template(template: Any) -> None:
    if not isinstance(template, str) or not template.strip():
        raise InvalidArgumentError(f"template must be a non-empty string, got {template!r}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise InvalidArgumentError(f"template {template!r} is not a valid format string ({exc})") from None
    unknown = names - {"positive", "negative"}
    if unknown:
        raise InvalidArgumentError(f"template may use only {{positive}} and {{negative}}; got {sorted(unknown)}")


class PromptSteerer(Baseline):
    """Prompt-only: no activation edit, a system prompt instead.

    `generate` renders each query with `models.render(model, q, system=self.system)`
    (for a chat model, a system turn; for a plain model, `"{system}\\n{query}"`).
    `hooks()` is empty. For a chat template that injects a default system prompt
    (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."), `system=` replaces it,
    whereas `NoSteerer` keeps the default: compare against both if that matters.
    `steer=False` renders plainly (no system prompt), like `NoSteerer`.
    """

    method = "prompt"

    def __init__(self, system: str, *, objective: Optional[dict[str, Any]] = None) -> None:
        if not isinstance(system, str) or not system.strip():
            raise InvalidArgumentError(f"system must be a non-empty string, got {system!r}")
        self.system = system
        self.objective = dict(objective or {})

    @classmethod
    def fit(
        cls,
        model: Any = None,
        data: Any = None,
        *,
        objective: Any = None,
        template: str = DEFAULT_SYSTEM_TEMPLATE,
    ) -> "PromptSteerer":
        """The system prompt from the objective's keywords.

        `template` may use `{positive}` and `{negative}` (default: "You are a {positive}
        assistant."). The objective comes from `objective=` or else from `data` when it
        is a `PreferenceSet`; text pairs or activations name no keyword, so pass
        `objective=` with them. `model` is unused (kept for a uniform `fit`).
        """
        from .objectives import Objective, get_objective
        from .preferences import PreferenceSet

        _check_template(template)
        if objective is not None:
            obj: Objective = get_objective(objective)
        elif isinstance(data, PreferenceSet):
            obj = data.objective
        else:
            raise InvalidArgumentError(
                "the prompt-only baseline needs the objective's keywords: pass a PreferenceSet "
                "or objective=... (a name such as 'helpful', or an Objective)"
            )
        system = template.format(positive=obj.positive, negative=obj.negative)
        return cls(system, objective=obj.to_dict())

    def check_model(self, model: Any, *, strict: bool = True) -> None:
        require_tokenizer(model, "prompting")

    def hooks(
        self,
        model: Any,
        query: Any = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        return []

    def render(self, model: Any, query: str, *, chat: Optional[bool] = None) -> str:
        """The prompt `generate` feeds the model for `query`."""
        text = render(model, query, chat=chat, system=self.system)
        if self.system not in text:
            raise InvalidArgumentError(
                "the model's chat template dropped the system prompt; the prompt-only baseline "
                "cannot be run with this template"
            )
        return text

    generation_desc = "prompted generation"

    def prompt_text(self, model: Any, query: str, *, chat: Optional[bool] = None, steer: bool = True) -> str:
        """With the system prompt when steering (`render`), without it for `steer=False` (the
        unsteered path). `generate` is `HookSteering.generate` with these prompts and no hooks:
        the prompt is tokenised exactly as an unsteered prompt is (chat text: no extra BOS), and
        explicit `prompts` are used exactly as given."""
        return self.render(model, query, chat=chat) if steer else render(model, query, chat=chat)

    def with_positions(self, positions: str) -> "PromptSteerer":
        """A copy (`positions` is checked; there is no activation edit, so it changes nothing)."""
        _check_positions(positions)
        return copy.copy(self)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "system": self.system, "objective": self.objective.get("name")}

    def __repr__(self) -> str:
        return f"PromptSteerer(system={self.system!r})"


# --------------------------------------------------------------------------- ITI

#: ITI's defaults here: the paper's K = 48 heads of LLaMA-7B's 1024 is about 5%; 8 heads
#: is about 3% of SmolLM2-135M's 270. α: see docs/baselines.md ("ITI", measured).
ITI_TOP_K = 8
ITI_ALPHA = 3.0
ITI_VAL_FRACTION = 0.25


def z_hook_name(layer: int) -> str:
    """The per-head site ITI edits: `blocks.{layer}.attn.hook_z`, `[batch, pos, n_heads, d_head]`."""
    return f"blocks.{int(layer)}.attn.hook_z"


def _head_shape(model: Any) -> tuple[int, int, int]:
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    d_head = int(getattr(cfg, "d_head", 0) or int(cfg.d_model) // n_heads)
    return int(cfg.n_layers), n_heads, d_head


@torch.inference_mode()
def capture_heads(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = False,
) -> Float[Tensor, "n n_layers n_heads d_head"]:
    """Every head's output (`hook_z`) at the last real token of each text, float32.

    One forward pass per batch with a capture hook at every layer's `attn.hook_z`; the
    pass stops right after the deepest one (no last MLP, final norm or unembedding).
    Texts are encoded as `activations.capture` encodes them (`models.encode`, left
    padding), so the rows are the texts `embed_pairs` captures at `resid_post`.
    """
    from tqdm.auto import tqdm

    from .hooks import StopForward, capture_hook
    from .models import encode, model_device, padding_kwargs

    texts = list(texts)
    if not texts:
        raise InvalidArgumentError("capture_heads got no texts")
    n_layers = _head_shape(model)[0]
    device = model_device(model)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="capturing heads", disable=not verbose, leave=False):
        batch = encode(model, texts[start : start + batch_size], chat=chat)
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        store: dict[int, Tensor] = {}
        hooks = [
            (z_hook_name(layer), capture_hook(store, layer, last, stop=layer == n_layers - 1))
            for layer in range(n_layers)
        ]
        try:
            with model.hooks(fwd_hooks=hooks):
                model(ids, return_type=None, **padding_kwargs(model, mask))
        except StopForward:
            pass
        missing = [layer for layer in range(n_layers) if layer not in store]
        if missing:
            raise RuntimeError(f"hook_z capture hooks at layers {missing} did not fire")
        chunks.append(torch.stack([store[layer] for layer in range(n_layers)], dim=1))
    return torch.cat(chunks)


def fit_probes(
    x_train: Float[Tensor, "heads n_train d"],
    y_train: Float[Tensor, " n_train"],
    x_val: Float[Tensor, "heads n_val d"],
    y_val: Float[Tensor, " n_val"],
    *,
    l2: float = 1.0,
    steps: int = 30,
) -> tuple[Tensor, Tensor]:
    """One L2-regularised logistic-regression probe per head, fitted by Newton's method.

    `x_*` hold one feature matrix per head (standardised with the training rows' mean
    and spread), `y_*` the labels (1 = positive). The loss is the summed log-loss plus
    `l2/2 · ‖w‖²` (scikit-learn's `LogisticRegression(C=1/l2)`; the bias is not
    penalised). Returns `(accuracy, log_loss)` on the validation rows, one per head, in
    float64 (accuracy counts a logit of exactly 0 as wrong).
    """
    xt, xv = x_train.to(torch.float64), x_val.to(torch.float64)
    mu = xt.mean(1, keepdim=True)
    sd = xt.std(1, keepdim=True, unbiased=False).clamp_min(1e-12)
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    h, n, d = xt.shape
    xt = torch.cat([xt, torch.ones(h, n, 1, dtype=xt.dtype)], -1)
    xv = torch.cat([xv, torch.ones(h, xv.shape[1], 1, dtype=xv.dtype)], -1)
    yt, yv = y_train.to(torch.float64), y_val.to(torch.float64)
    w = torch.zeros(h, d + 1, dtype=torch.float64)
    reg = torch.full((d + 1,), float(l2), dtype=torch.float64)
    reg[-1] = 0.0
    eye = torch.eye(d + 1, dtype=torch.float64) * 1e-9
    for _ in range(steps):
        p = torch.sigmoid(torch.einsum("hnd,hd->hn", xt, w))
        grad = torch.einsum("hnd,hn->hd", xt, p - yt) + reg * w
        weight = p * (1 - p)
        hess = (xt * weight[..., None]).transpose(1, 2) @ xt + torch.diag(reg) + eye  # [h, d+1, d+1]
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    logits = torch.einsum("hnd,hd->hn", xv, w)
    acc = ((logits > 0) == (yv > 0.5)).to(torch.float64).mean(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yv.expand_as(logits), reduction="none").mean(1)
    return acc, loss


def _head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


class ITISteerer(Baseline):
    """Inference-Time Intervention (Li et al. 2023): shift the top-K heads' outputs.

    At each chosen head `(layer, head)`, at the edited positions, the head's output
    before `W_O` (`blocks.{layer}.attn.hook_z[:, pos, head]`) becomes

        z ← z + α · σ · θ

    with `θ` the unit mass-mean direction (mean positive − mean negative output of that
    head at the pairs' last token) and `σ` the standard deviation of the fitted outputs
    (positives and negatives together) along `θ`. The heads are the `top_k` with the best
    held-out accuracy of a linear probe (`ITISteerer.fit`).

    Args:
        heads: the chosen `(layer, head)` pairs, best first.
        directions: `[K, d_head]` unit directions `θ`, one per chosen head.
        sigmas: `[K]` standard deviations `σ`.
        alpha: `α`, the strength (negative steers away).
        accuracies: the chosen heads' held-out probe accuracies (for reports).
        positions: `"generated"` (default) or `"all"`, as for every steerer.
        shape: `(n_layers, n_heads, d_head)` of the model it was fitted on.
        model: `models.model_signature` of that model (`{}`: unknown).

    `strength` is `α`; `with_strength`, `mirror()` and `null(seed)` give the copies the
    efficacy sweep calibrates and compares, as for `VectorSteerer`.
    """

    method = "iti"

    def __init__(
        self,
        heads: Sequence[tuple[int, int]],
        directions: Tensor,
        sigmas: Tensor,
        *,
        alpha: float = ITI_ALPHA,
        accuracies: Optional[Sequence[float]] = None,
        positions: str = "generated",
        shape: Optional[tuple[int, int, int]] = None,
        model: Optional[dict[str, Any]] = None,
        objective: Optional[dict[str, Any]] = None,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        check_number("alpha", alpha)
        _check_positions(positions)
        heads = [(int(layer), int(head)) for layer, head in heads]
        if not heads:
            raise InvalidArgumentError("ITI needs at least one head")
        if len(set(heads)) != len(heads):
            raise InvalidArgumentError(f"the heads must be distinct, got {heads}")
        if not isinstance(directions, Tensor) or directions.ndim != 2 or directions.shape[0] != len(heads):
            raise InvalidArgumentError(f"directions must be a [{len(heads)}, d_head] tensor")
        if not isinstance(sigmas, Tensor) or tuple(sigmas.shape) != (len(heads),):
            raise InvalidArgumentError(f"sigmas must be a [{len(heads)}] tensor")
        if not torch.isfinite(directions).all() or not torch.isfinite(sigmas).all():
            raise InvalidArgumentError("directions and sigmas must be finite")
        if shape is not None:
            n_layers, n_heads, d_head = shape
            bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
            if bad or directions.shape[1] != d_head:
                raise InvalidArgumentError(
                    f"heads {bad} or d_head {directions.shape[1]} do not fit a model of shape {shape}"
                )
        self.heads: tuple[tuple[int, int], ...] = tuple(heads)
        self.directions = directions.detach().to(torch.promote_types(directions.dtype, torch.float32)).cpu()
        self.sigmas = sigmas.detach().to(self.directions.dtype).cpu()
        self.alpha = float(alpha)
        self.accuracies: tuple[float, ...] = tuple(float(a) for a in (accuracies or [math.nan] * len(heads)))
        self.positions = positions
        self.shape = tuple(shape) if shape is not None else None
        self.model = dict(model or {})
        self.objective = dict(objective or {})
        self.info = dict(info or {})

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        model: Any,
        data: Any,
        *,
        top_k: int = ITI_TOP_K,
        alpha: float = ITI_ALPHA,
        val_fraction: float = ITI_VAL_FRACTION,
        seed: int = 0,
        positions: str = "generated",
        batch_size: int = 16,
        chat: Optional[bool] = None,
        objective: Any = None,
        verbose: bool = False,
    ) -> "ITISteerer":
        """Probe every head on the pairs, keep the `top_k` best, and shift along their mass means.

        Args:
            model: the TransformerLens model (a bridge or a HookedTransformer).
            data: a `PreferenceSet` (its `texts`, as every method embeds it), a list of
                `(positive_text, negative_text)` pairs, or precomputed head outputs: a
                `(pos, neg)` pair of float tensors `[n_pairs, n_layers, n_heads, d_head]`
                (as `capture_heads` gives them).
            top_k: how many heads to shift.
            alpha: the strength `α`.
            val_fraction: the share of pairs held out to score the probes (both texts of
                a pair fall on the same side), split with `seed`.
            objective: name/object to record when `data` is not a PreferenceSet.

        The heads' outputs come from one capture pass over the pairs for every head at
        once (`capture_heads`). Each head's probe is an L2-regularised logistic regression
        (`fit_probes`) fitted on the training pairs' positive (label 1) and negative
        (label 0) outputs and scored on the held-out pairs; heads are ranked by held-out
        accuracy, ties broken by held-out log-loss, then by (layer, head). The directions
        and `σ` use every pair, as the reference implementation does.
        """
        from .pairs import check_pair_data
        from .preferences import PreferenceSet
        from .settings import check_positive_int

        check_positive_int("top_k", top_k)
        check_number("alpha", alpha)
        _check_positions(positions)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise InvalidArgumentError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
        n_layers, n_heads, d_head = _head_shape(model)
        if top_k > n_layers * n_heads:
            raise InvalidArgumentError(f"top_k={top_k} exceeds the model's {n_layers * n_heads} heads")
        fitted_objective: dict[str, Any] = {}
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
            pos, neg = (t.detach().float().cpu() for t in data)
            want = (n_layers, n_heads, d_head)
            if pos.shape != neg.shape or pos.ndim != 4 or tuple(pos.shape[1:]) != want:
                raise InvalidArgumentError(
                    f"precomputed head outputs must be two [n_pairs, {n_layers}, {n_heads}, {d_head}] tensors; "
                    f"got {tuple(pos.shape)} and {tuple(neg.shape)}"
                )
        else:
            kind, _ = check_pair_data(data, caller=f"{cls.__name__}.fit")
            if kind == "prefs":
                require_tokenizer(model, "fitting from a PreferenceSet")
                assert isinstance(data, PreferenceSet)
                pos_texts, neg_texts = data.texts(model, chat=chat)
                fitted_objective = data.objective.to_dict()
            elif kind == "texts":
                require_tokenizer(model, "fitting from text pairs")
                pos_texts, neg_texts = [p for p, _ in data], [q for _, q in data]
            else:
                raise ArgumentTypeError(
                    f"{cls.__name__}.fit takes a PreferenceSet, (positive, negative) text pairs or "
                    "precomputed [n, n_layers, n_heads, d_head] head outputs; residual-stream "
                    "activations and token tensors carry no per-head outputs"
                )
            acts = capture_heads(model, list(pos_texts) + list(neg_texts), batch_size=batch_size, chat=chat)
            pos, neg = acts[: len(pos_texts)], acts[len(pos_texts) :]
        n = int(pos.shape[0])
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise InvalidArgumentError(
                f"ITI needs at least 2 pairs (some to fit the probes, some to score them); got {n}"
            )
        if not torch.isfinite(pos).all() or not torch.isfinite(neg).all():
            raise InvalidArgumentError("the head outputs contain NaN or inf")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        val_idx, train_idx = order[:n_val], order[n_val:]

        def rows(idx: Tensor) -> tuple[Tensor, Tensor]:  # [heads, 2·len(idx), d_head], labels
            x = torch.cat([pos[idx], neg[idx]]).reshape(2 * len(idx), n_layers * n_heads, d_head)
            y = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))])
            return x.transpose(0, 1), y

        acc, loss = fit_probes(*rows(train_idx), *rows(val_idx))
        ranked = sorted(range(n_layers * n_heads), key=lambda i: (-float(acc[i]), float(loss[i]), i))[:top_k]
        heads = [divmod(i, n_heads) for i in ranked]
        p64, q64 = pos.to(torch.float64), neg.to(torch.float64)
        directions, sigmas = [], []
        for layer, head in heads:
            v = p64[:, layer, head].mean(0) - q64[:, layer, head].mean(0)
            if not float(v.norm()) > 0:
                raise InvalidArgumentError(f"head {_head_label(layer, head)}: the mean difference is zero")
            theta = v / v.norm()
            proj = torch.cat([p64[:, layer, head], q64[:, layer, head]]) @ theta
            directions.append(theta)
            sigmas.append(proj.std(unbiased=False))
        return cls(
            heads,
            torch.stack(directions).float(),
            torch.stack(sigmas).float(),
            alpha=alpha,
            accuracies=[float(acc[i]) for i in ranked],
            positions=positions,
            shape=(n_layers, n_heads, d_head),
            model=model_signature(model),
            objective=_objective_dict(objective, fitted_objective),
            info={
                "n_pairs": n,
                "n_val": n_val,
                "val_fraction": float(val_fraction),
                "seed": int(seed),
                "probe_accuracy": acc.reshape(n_layers, n_heads).float(),
            },
        )

    # ------------------------------------------------------------------ views

    @property
    def top_k(self) -> int:
        return len(self.heads)

    @property
    def strength(self) -> float:
        """`α` (what strength sweeps and calibration vary)."""
        return self.alpha

    @property
    def shifts(self) -> Tensor:
        """`[K, d_head]`: what each chosen head gets added, `α · σ · θ`."""
        return self.alpha * self.sigmas[:, None] * self.directions

    @property
    def probe_accuracy(self) -> Optional[Tensor]:
        """`[n_layers, n_heads]` held-out probe accuracy of every head (None when not fitted here)."""
        return self.info.get("probe_accuracy")

    def with_strength(self, alpha: float) -> "ITISteerer":
        """A copy with another `α` (no refit)."""
        check_number("alpha", alpha)
        out = copy.copy(self)
        out.alpha = float(alpha)
        return out

    with_alpha = with_strength

    def mirror(self) -> "ITISteerer":
        """The mirror control: the same shifts towards the dispreferred side (`α → −α`)."""
        out = self.with_strength(-self.alpha)
        out.info = {**self.info, "control": "mirror"}
        return out

    def null(self, seed: int = 0) -> "ITISteerer":
        """The null-direction control: the same heads and `σ`, seeded random unit directions."""
        gen = torch.Generator().manual_seed(int(seed))
        r = torch.randn(tuple(self.directions.shape), generator=gen, dtype=torch.float64)
        out = copy.copy(self)
        out.directions = (r / r.norm(dim=1, keepdim=True)).to(self.directions.dtype)
        out.info = {**self.info, "control": "null", "null_seed": int(seed)}
        return out

    def with_positions(self, positions: str) -> "ITISteerer":
        """A copy that shifts at `positions` (`"generated"` or `"all"`)."""
        _check_positions(positions)
        out = copy.copy(self)
        out.positions = positions
        return out

    # ------------------------------------------------------------------ hooks

    def check_model(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a model these heads do not fit (head shape, compatibility mode, id)."""
        shape = _head_shape(model)
        sig = model_signature(model)
        reasons = []
        if self.shape is not None and tuple(self.shape) != shape:
            reasons.append(f"(n_layers, n_heads, d_head) {tuple(self.shape)} (ITI) vs {shape} (model)")
        elif any(not (0 <= layer < shape[0] and 0 <= head < shape[1]) for layer, head in self.heads):
            reasons.append(f"heads {list(self.heads)} do not exist in a model of shape {shape}")
        elif int(self.directions.shape[1]) != shape[2]:
            reasons.append(f"d_head {int(self.directions.shape[1])} (ITI) vs {shape[2]} (model)")
        _refuse_mismatch("these ITI heads do not fit", reasons, self.model, sig, strict)

    def hooks(
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """One `(blocks.{l}.attn.hook_z, fn)` pair per layer with a chosen head.

        Each adds `α · σ · θ` to its chosen heads at the tracker's positions of every
        row (other heads and positions are left bit-identical). `query` is ignored;
        `prompt_len` and `record` mean what they mean for `Steerer.hooks`.
        """
        self.check_model(model, strict=strict)
        shifts = self.shifts
        out = []
        for layer in sorted({layer for layer, _ in self.heads}):
            idx = [i for i, (lay, _) in enumerate(self.heads) if lay == layer]
            name = z_hook_name(layer)
            log = _NamedLog(record, name) if record is not None else None
            tracker = PositionTracker(self.positions, prompt_len, log=log)
            heads = [self.heads[i][1] for i in idx]
            out.append((name, _head_shift_hook(heads, shifts[idx], tracker)))
        return out

    def describe(self) -> dict[str, Any]:
        info = {k: v for k, v in self.info.items() if k != "probe_accuracy"}
        return {
            "method": self.method,
            "alpha": self.alpha,
            "top_k": self.top_k,
            "positions": self.positions,
            "site": "attn.hook_z",
            "heads": [_head_label(layer, head) for layer, head in self.heads],
            "head_accuracy": {_head_label(*h): a for h, a in zip(self.heads, self.accuracies)},
            "sigmas": [float(s) for s in self.sigmas],
            "objective": self.objective.get("name"),
            **info,
        }

    def __repr__(self) -> str:
        heads = ", ".join(_head_label(*h) for h in self.heads)
        return f"ITISteerer(alpha={self.alpha:g}, heads=[{heads}], positions={self.positions!r})"


def _head_shift_hook(heads: list[int], shifts: Tensor, tracker: PositionTracker):
    """A `hook_z` hook adding `shifts[i]` to head `heads[i]` at the tracker's positions."""
    cache: dict[tuple, Tensor] = {}

    def fn(z: Float[Tensor, "batch pos n_heads d_head"], hook: object) -> Tensor:
        start, stop = tracker.window(z.shape[1])
        work = torch.promote_types(z.dtype, torch.float32)
        key = (z.device, work)
        if key not in cache:
            cache[key] = shifts.to(device=z.device, dtype=work)
        out = z.clone()
        out[:, start:stop, heads] = (z[:, start:stop, heads].to(work) + cache[key]).to(z.dtype)
        return out

    return fn
