"""The alignment subspace: pair filter, SVD of differences, rank rule, sign, save/load.

Per layer l, with `P`, `N` the last-token activations of the positive and negative
texts of K pairs (docs/method.md, "2. The alignment subspace"):

1. drop pair k when `cos(P[k], N[k]) > tau` (near-identical pairs carry no signal);
2. `D = P - N` over the kept pairs (not mean-centred), `D = U Σ Vᵀ`;
3. keep the smallest k with cumulative `σ²/Σσ² ≥ variance` (or a fixed `rank`, or, with
   `rank="null"`, the leading directions whose mean preference gap beats a sign-flip
   permutation null; never more than `max_rank` or the numerical rank);
4. orient each kept direction θ so that `⟨mean(D), θ⟩ ≥ 0` (from negative to positive);
5. record the projection statistics of the fitted activations on each θ, which give
   the `scale="fitted"` step size.

`fit_subspace` takes a self-generated `PreferenceSet`, (pos, neg) text pairs, (pos,
neg) token tensors, precomputed activations or a `PairActivations`: whatever
`pairs.embed_pairs` takes, embedded by it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from ._checks import require_model
from ._io import atomic_write
from .errors import ArgumentTypeError, InvalidArgumentError, SubspaceFileError, SubspaceMismatchError
from .hooks import SITES, check_layers
from .models import any_id, basis_mismatch, model_signature
from .pairs import EmptySubspaceError, PairActivations, check_text_pairs, embed_pairs
from .settings import FitSettings, RankRule, Site, check_rank_args

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "AlignmentSubspace",
    "EmptySubspaceError",
    "LayerSubspace",
    "RankRule",
    "SubspaceFileError",
    "SubspaceMismatchError",
    "check_rank_args",
    "check_text_pairs",
    "fit_layer",
    "fit_subspace",
    "pair_activations",
    "sign_flip_null",
]

FORMAT = "alignez-subspace"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)  # format versions `AlignmentSubspace.load` reads

NULL_DRAW_CHUNK = 1024  # sign draws made per call of the generator (fixes the random stream)


@dataclass
class LayerSubspace:
    """The fitted subspace at one layer.

    Attributes:
        layer: layer index.
        directions: `[k, d_model]` orthonormal rows θ_j, oriented negative → positive.
        singular_values: all singular values σ of the difference matrix, descending
            (the kept directions are the first k).
        explained_variance: `σ²/Σσ²` for every singular value.
        n_pairs: pairs offered at this layer.
        n_kept: pairs that passed the cosine filter (`cos(P, N) ≤ tau`).
        pair_cos: `cos(P[k], N[k])` of every offered pair, `[n_pairs]`.
        proj_mean: mean of `⟨Φ, θ_j⟩` over the fitted activations (pos and neg rows).
        proj_rms: root mean square of `⟨Φ, θ_j⟩` over the same rows: the fitted scale s_j.
        mean_diff_proj: `⟨mean(D), θ_j⟩ ≥ 0`, the mean preference gap along θ_j.
        gap: `|⟨mean(D), v_j⟩|` for every singular direction v_j (length of
            `singular_values`; equals `mean_diff_proj` on the kept ones). Empty when the
            sign-flip null was not computed (`rank="null"` or `null_test=True` compute it).
        null_threshold: per singular direction, the `null_quantile` quantile of that gap
            when pos and neg are swapped inside random pairs (`sign_flip_null`). Empty
            when the null was not computed.
    """

    layer: int
    directions: Tensor
    singular_values: Tensor
    explained_variance: Tensor
    n_pairs: int
    n_kept: int
    pair_cos: Tensor
    proj_mean: Tensor
    proj_rms: Tensor
    mean_diff_proj: Tensor
    gap: Tensor = field(default_factory=lambda: torch.zeros(0))
    null_threshold: Tensor = field(default_factory=lambda: torch.zeros(0))

    def __post_init__(self) -> None:
        where = f"layer {self.layer}"
        for name in self._TENSORS:
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise ArgumentTypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InvalidArgumentError(
                    f"{where}: {name} holds NaN or inf; a subspace needs finite values "
                    "(refit it from finite activations)"
                )
        if self.directions.ndim != 2:
            raise InvalidArgumentError(
                f"{where}: directions must be [k, d_model], got shape {tuple(self.directions.shape)}"
            )
        k = self.directions.shape[0]
        for name in ("proj_mean", "proj_rms", "mean_diff_proj"):
            if tuple(getattr(self, name).shape) != (k,):
                raise InvalidArgumentError(
                    f"{where}: {name} has shape {tuple(getattr(self, name).shape)}, expected ({k},): "
                    "one value per direction"
                )
        if bool((self.proj_rms < 0).any()):
            raise InvalidArgumentError(f"{where}: proj_rms (the fitted scales) must be >= 0")
        for name in self._NULL_TENSORS:
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise ArgumentTypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if not bool(torch.isfinite(t).all()):
                raise InvalidArgumentError(f"{where}: {name} holds NaN or inf; refit the subspace")
        n_sing = int(self.singular_values.numel())
        shapes = {tuple(self.gap.shape), tuple(self.null_threshold.shape)}
        if len(shapes) != 1 or shapes.pop() not in ((0,), (n_sing,)):
            raise InvalidArgumentError(
                f"{where}: gap {tuple(self.gap.shape)} and null_threshold "
                f"{tuple(self.null_threshold.shape)} must both be empty (no null computed) or both "
                f"({n_sing},): one value per singular direction"
            )

    @property
    def rank(self) -> int:
        """How many directions were kept."""
        return int(self.directions.shape[0])

    @property
    def kept_variance(self) -> float:
        """Share of the difference variance the kept directions explain."""
        return float(self.explained_variance[: self.rank].sum()) if self.rank else 0.0

    @property
    def has_null(self) -> bool:
        """Whether the sign-flip null was computed for this layer (always False for a layer
        without kept pairs: there is nothing to test)."""
        return self.null_threshold.numel() > 0

    @property
    def n_above_null(self) -> Optional[int]:
        """How many leading singular directions have a gap above the null threshold; the
        count stops at the first that does not. None when the null was not computed."""
        if not self.has_null:
            return None
        above = (self.gap > self.null_threshold).long()
        return int(above.cumprod(0).sum())

    @property
    def gap_share(self) -> Optional[float]:
        """Share of the squared mean preference gap `‖mean(D)‖²` that lies along the kept
        directions, `Σ_{j ≤ rank} gap_j² / Σ_j gap_j²`. Under the sign-flip null its
        expectation is about `kept_variance` (random signs spread the mean gap like the
        variance), so a `gap_share` well above `kept_variance` is signal. None without
        the null."""
        if not self.has_null:
            return None
        energy = self.gap.double().square()
        total = float(energy.sum())
        return float(energy[: self.rank].sum()) / total if total > 0 else 0.0

    _TENSORS = (
        "directions",
        "singular_values",
        "explained_variance",
        "pair_cos",
        "proj_mean",
        "proj_rms",
        "mean_diff_proj",
    )
    # written by every save; optional on load (files from before the null rule lack them)
    _NULL_TENSORS = ("gap", "null_threshold")


def _empty_layer(layer: int, d_model: int, pair_cos: Tensor) -> LayerSubspace:
    zero = torch.zeros(0)
    return LayerSubspace(
        layer=layer,
        directions=torch.zeros(0, d_model),
        singular_values=zero,
        explained_variance=zero,
        n_pairs=int(pair_cos.numel()),
        n_kept=0,
        pair_cos=pair_cos.float(),
        proj_mean=zero,
        proj_rms=zero,
        mean_diff_proj=zero,
    )


def _rank_rule(rank: Union[int, str, None]) -> RankRule:
    return "null" if rank == "null" else "variance" if rank is None else "fixed"


def _stored_settings(settings: FitSettings, n_pairs: int, seed_info: dict[str, Any]) -> dict[str, Any]:
    """What a subspace file records of its fit: the null's settings only where it was computed."""
    out = settings.to_dict()
    if settings.rank != "null" and not settings.null_test:
        for name in ("n_null", "null_quantile", "null_seed", "null_test"):
            del out[name]
    return {**out, "rank_rule": settings.rank_rule, "n_pairs": n_pairs, **seed_info}


def sign_flip_null(
    z: Float[Tensor, "n r"],
    *,
    n_null: int = 200,
    quantile: float = 0.95,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The sign-flip permutation null of the mean preference gap along fixed directions.

    `z[k, j] = ⟨pos_k − neg_k, v_j⟩` are the pair projection coordinates. Swapping pos and
    neg inside pair k multiplies row k by −1. If pos and neg were exchangeable (no
    preference), every such swap pattern would be as likely as the data, so the gap
    along v_j, `|mean_k z[k, j]|`, is compared with its values under `n_null` random
    sign vectors `s ∈ {−1, +1}ⁿ`, `|mean_k s_k z[k, j]|`.

    The right singular vectors of `D = P − N` do not change under these swaps
    (`(diag(s) D)ᵀ diag(s) D = Dᵀ D`), so with `v_j` from the SVD of D the test is exact
    conditional on the directions, and needs no SVD per draw: one `[n_null, n] @ [n, r]`
    product. (For the same reason the singular values themselves carry no information
    against this null: `σ(diag(s) D) = σ(D)` for every s.)

    Args:
        z: `[n, r]` coordinates, one row per pair.
        n_null: number of random sign vectors.
        quantile: the quantile of the null gaps to return, per direction.
        seed: seed of a private `torch.Generator` (global RNG state is untouched); the
            signs are drawn in chunks of `NULL_DRAW_CHUNK` rows, so the same seed and
            shapes give the same draws.

    Returns:
        `(gap, threshold)`, each `[r]` float64: the observed `|mean_k z[k, j]|` and the
        `quantile` quantile (linear interpolation) of the null gaps.
    """
    check_rank_args(n_null=n_null, null_quantile=quantile, null_seed=seed)
    if z.ndim != 2:
        raise InvalidArgumentError(f"z must be [n_pairs, n_directions]; got shape {tuple(z.shape)}")
    z = z.to(torch.float64)
    n, r = z.shape
    if n == 0 or r == 0:
        return torch.zeros(r, dtype=torch.float64), torch.zeros(r, dtype=torch.float64)
    gap = z.mean(0).abs()
    null = torch.empty(n_null, r, dtype=torch.float64)
    for start, signs in _null_sign_chunks(n, n_null, seed):
        null[start : start + signs.shape[0]] = (signs @ z).abs_().div_(n)
    return gap, quantile_rows(null, float(quantile))


def _null_sign_chunks(n: int, n_null: int, seed: int):
    """The random ±1 sign vectors of `sign_flip_null`, `(first_row, [rows, n])` chunks."""
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, n_null, NULL_DRAW_CHUNK):
        rows = min(NULL_DRAW_CHUNK, n_null - start)
        yield start, torch.randint(0, 2, (rows, n), generator=gen, dtype=torch.float64).mul_(2).sub_(1)


def null_signs(n: int, n_null: int = 200, seed: int = 0) -> Tensor:
    """`[n_null, n]` float64 ±1: the sign vectors `sign_flip_null(z, n_null=n_null,
    seed=seed)` draws for `n` pairs (for callers that batch the same test)."""
    return torch.cat([chunk for _, chunk in _null_sign_chunks(n, n_null, seed)])


def quantile_rows(x: Tensor, q: float, dim: int = 0) -> Tensor:
    """The q quantile of `x` along `dim`, with linear interpolation (as `torch.quantile`'s
    default, without its input-size limit)."""
    ordered = x.sort(dim=dim).values
    m = x.shape[dim]
    at = q * (m - 1)
    lo = int(math.floor(at))
    hi = min(lo + 1, m - 1)
    low, high = ordered.select(dim, lo), ordered.select(dim, hi)
    return low + (at - lo) * (high - low)


def fit_layer(
    pos: Float[Tensor, "n d_model"],
    neg: Float[Tensor, "n d_model"],
    *,
    layer: int = 0,
    tau: float = 0.8,
    variance: float = 0.90,
    rank: Union[int, Literal["null"], None] = None,
    max_rank: Optional[int] = None,
    n_null: int = 200,
    null_quantile: float = 0.95,
    null_seed: int = 0,
    null_test: bool = False,
) -> LayerSubspace:
    """Fit the subspace at one layer from paired activations (pure linear algebra).

    The SVD runs in float64; directions are stored as float32. Directions whose singular
    value is numerically zero (below `1e-6 · σ_max`) are never kept, so identical or
    rank-deficient differences give fewer directions, not noise.

    Rank rules: `rank=None` keeps the smallest k whose cumulative explained variance
    reaches `variance` (the paper's); an int keeps that many; `rank="null"` keeps the
    leading singular directions, in order, while the mean preference gap along each
    beats the `null_quantile` quantile of its sign-flip permutation null
    (`sign_flip_null`, `n_null` draws seeded by `null_seed`), stopping at the first
    that does not. `null_test=True` computes the same null under the other rules
    (stored in `gap` / `null_threshold`, rank unchanged).
    """
    check_rank_args(rank, max_rank, n_null, null_quantile, null_seed, null_test)
    if pos.shape != neg.shape or pos.ndim != 2:
        raise InvalidArgumentError(
            f"pos and neg must both be [n, d_model]; got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    bad = (~torch.isfinite(pos)).any(-1) | (~torch.isfinite(neg)).any(-1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise InvalidArgumentError(
            f"layer {layer}: the activations contain NaN or inf in {len(rows)} of {bad.numel()} pairs "
            f"(first: pair {rows[0]}). Check the model's dtype (float16 overflows easily: load it in "
            "float32) or the activations you passed."
        )
    p = pos.to(torch.float64)
    q = neg.to(torch.float64)
    d_model = p.shape[1]
    cos = torch.nn.functional.cosine_similarity(p, q, dim=-1, eps=1e-12)
    keep = cos <= tau
    if not keep.any():
        return _empty_layer(layer, d_model, cos)
    diffs = p[keep] - q[keep]
    u, sigma, vh = torch.linalg.svd(diffs, full_matrices=False)
    energy = sigma.square()
    total = energy.sum()
    if total <= 0:
        return _empty_layer(layer, d_model, cos)
    ratio = energy / total
    numerical_rank = int((sigma > 1e-6 * sigma[0]).sum())
    gaps = threshold = torch.zeros(0)
    if rank == "null" or null_test:
        gaps, threshold = sign_flip_null(u * sigma, n_null=n_null, quantile=null_quantile, seed=null_seed)
        # numerically-zero directions carry no gap: store 0 / 0 so that they never pass;
        # decide on the float32 values that are stored, so n_above_null agrees with rank
        gaps[numerical_rank:] = 0.0
        threshold[numerical_rank:] = 0.0
        gaps, threshold = gaps.to(torch.float32), threshold.to(torch.float32)
    if rank == "null":
        k = min(int((gaps > threshold).long().cumprod(0).sum()), numerical_rank)
    elif rank is not None:
        k = min(int(rank), numerical_rank)
    else:
        cumulative = torch.cumsum(ratio, 0)
        k = int((cumulative < variance - 1e-12).sum()) + 1
        k = min(k, numerical_rank)
    if max_rank is not None:
        k = min(k, int(max_rank))
    theta = vh[:k]
    mean_diff = diffs.mean(0)
    gap = theta @ mean_diff
    sign = torch.where(gap < 0, -1.0, 1.0).to(theta.dtype)
    theta = theta * sign[:, None]
    fitted = torch.cat([p[keep], q[keep]], dim=0)
    proj = fitted @ theta.T
    return LayerSubspace(
        layer=layer,
        directions=theta.to(torch.float32),
        singular_values=sigma.to(torch.float32),
        explained_variance=ratio.to(torch.float32),
        n_pairs=int(cos.numel()),
        n_kept=int(keep.sum()),
        pair_cos=cos.to(torch.float32),
        proj_mean=proj.mean(0).to(torch.float32),
        proj_rms=proj.square().mean(0).sqrt().to(torch.float32),
        mean_diff_proj=(gap * sign).to(torch.float32),
        gap=gaps,
        null_threshold=threshold,
    )


@dataclass
class AlignmentSubspace:
    """Per-layer alignment subspaces of one objective, with provenance.

    Attributes:
        layers: layer index → `LayerSubspace` (layers where every pair was filtered
            out are present with rank 0).
        site: hook site the activations came from (`resid_post`, `mlp_out`, ...).
        d_model: residual width.
        model: `models.model_signature` of the model it was fitted on (model id, class,
            n_layers, d_model, compatibility mode, and the residual-basis facts: norm type,
            weights processed, residual stream centred), or `{}` for bare activations.
        objective: the objective's `to_dict()` (name, keywords, mode, templates).
        settings: fit settings (tau, variance, rank, max_rank, `rank_rule`; with the
            sign-flip null also n_null, null_quantile, null_seed, null_test), the pair
            count and the preference set's seed.
        versions: package versions at fit time.
    """

    layers: dict[int, LayerSubspace]
    site: str
    d_model: int
    model: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise InvalidArgumentError(f"unknown site {self.site!r}; choose one of {', '.join(SITES)}")
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise InvalidArgumentError(f"d_model must be a positive int, got {self.d_model!r}")
        if not self.layers:
            raise InvalidArgumentError("an AlignmentSubspace needs at least one layer; layers is empty")
        for key, sub in self.layers.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise InvalidArgumentError(f"layer keys are ints >= 0, got {key!r}")
            if not isinstance(sub, LayerSubspace):
                raise ArgumentTypeError(f"layers[{key!r}] must be a LayerSubspace, got {type(sub).__name__}")
            if key != sub.layer:
                raise InvalidArgumentError(f"layers[{key!r}] holds the subspace of layer {sub.layer}")
            if sub.directions.shape[1] != self.d_model:
                raise InvalidArgumentError(
                    f"layer {key}: directions are {sub.directions.shape[1]} wide, but d_model is {self.d_model}"
                )

    # ------------------------------------------------------------------ views

    @property
    def layer_indices(self) -> list[int]:
        return sorted(self.layers)

    @property
    def mode(self) -> str:
        """`"boost"` or `"suppress"`, from the objective (boost when unknown)."""
        return str(self.objective.get("mode", "boost"))

    @property
    def objective_name(self) -> str:
        return str(self.objective.get("name", "custom"))

    def ranks(self) -> dict[int, int]:
        return {layer: sub.rank for layer, sub in sorted(self.layers.items())}

    def summary(self) -> str:
        """A short table: per layer the rank, kept variance and pairs kept; with the
        sign-flip null also how many leading directions beat it and the share of the
        mean preference gap along the kept directions."""
        rule = self.settings.get("rank_rule")
        head = f"alignment subspace ({self.objective_name}, site {self.site}, d_model {self.d_model}"
        lines = [head + (f", rank rule {rule})" if rule else ")")]
        with_null = any(sub.has_null for sub in self.layers.values())
        lines.append("layer  rank  kept-var  pairs kept" + ("  above-null  gap-share" if with_null else ""))
        for layer, sub in sorted(self.layers.items()):
            row = f"{layer:>5}  {sub.rank:>4}  {sub.kept_variance:>8.3f}  {sub.n_kept:>4}/{sub.n_pairs}"
            if with_null:
                above, share = sub.n_above_null, sub.gap_share
                row += (
                    f"  {above:>10}  {share:>9.3f}"
                    if above is not None and share is not None
                    else f"  {'-':>10}  {'-':>9}"
                )
            lines.append(row)
        if with_null:
            lines.append(
                f"above-null: leading directions whose mean pos-neg gap beats the "
                f"{self.settings.get('null_quantile', 0.95):g} quantile of {self.settings.get('n_null', '?')} "
                "random pos/neg swaps (0: nothing beats chance). gap-share: share of the squared mean "
                "gap along the kept directions; swaps alone give about kept-var."
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        ranks = self.ranks()
        return (
            f"AlignmentSubspace(objective={self.objective_name!r}, site={self.site!r}, "
            f"layers={len(ranks)}, ranks={list(ranks.values())})"
        )

    # ------------------------------------------------------------------ checks

    def check_model(self, model: Any, *, strict: bool = True, site: Optional[str] = None) -> None:
        """Refuse a model this subspace was not fitted on, saying why.

        Always refused: a different `d_model`, a layer beyond the model's depth, a
        different `n_layers`, a different residual basis (`models.basis_mismatch`: another
        norm type, or a residual stream centred on one side only, as
        `center_writing_weights` makes it), and, when `site` is given, a different hook
        site. The model class and compatibility mode alone do not matter: a subspace
        fitted on a `TransformerBridge` fits a `HookedTransformer` or a bridge in
        compatibility mode of the same RMSNorm model. (Files written before the basis
        facts were recorded keep the old rule: another model class or compatibility mode
        is refused.) With `strict=True` (default) a different model id is refused too.
        """
        sig = model_signature(model)
        reasons = []
        if site is not None and site != self.site:
            reasons.append(f"site {self.site!r} (subspace) vs {site!r} (requested)")
        if sig["d_model"] != self.d_model:
            reasons.append(f"d_model {self.d_model} (subspace) vs {sig['d_model']} (model)")
        if self.model:
            if self.model.get("n_layers") != sig["n_layers"]:
                reasons.append(f"n_layers {self.model.get('n_layers')} vs {sig['n_layers']}")
            reasons.extend(basis_mismatch(self.model, sig, strict=strict))
            if strict and self.model.get("model_id") != sig["model_id"]:
                reasons.append(f"model id {self.model.get('model_id')!r} vs {sig['model_id']!r}")
        too_deep = [layer for layer in self.layers if layer >= sig["n_layers"]]
        if too_deep:
            reasons.append(f"layers {too_deep} do not exist in a {sig['n_layers']}-layer model")
        if reasons:
            raise SubspaceMismatchError(
                "this subspace does not fit: "
                + "; ".join(reasons)
                + (". Pass strict=False to accept a different model id only." if any_id(reasons) else "")
            )

    # ------------------------------------------------------------------ files

    def _metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "site": self.site,
            "d_model": self.d_model,
            "model": self.model,
            "objective": self.objective,
            "settings": self.settings,
            "versions": self.versions,
            "layers": {
                str(layer): {
                    "rank": sub.rank,
                    "n_pairs": sub.n_pairs,
                    "n_kept": sub.n_kept,
                    "n_singular": int(sub.singular_values.numel()),
                }
                for layer, sub in sorted(self.layers.items())
            },
        }

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write one `.safetensors` file: the tensors plus JSON provenance in its header.

        The write is atomic (a temporary file in the same folder, then a rename), so a
        crash never leaves a half-written subspace behind.
        """
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        for layer, sub in self.layers.items():
            for name in LayerSubspace._TENSORS + LayerSubspace._NULL_TENSORS:
                tensors[f"layer.{layer}.{name}"] = getattr(sub, name).detach().to(torch.float32).contiguous()
        meta = {"alignez": json.dumps(self._metadata(), sort_keys=True)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return path

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        model: Any = None,
        *,
        strict: bool = True,
        site: Optional[str] = None,
    ) -> "AlignmentSubspace":
        """Read a subspace file, validating format, version, shapes and dtypes.

        With `model`, also refuse it when it does not match (`check_model`; `site` too
        when given). No code is executed on load (safetensors holds raw tensors and a
        JSON header only). The per-layer `gap` and `null_threshold` tensors are optional:
        files written before the sign-flip null rule load with them empty.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SubspaceFileError(f"no subspace file at {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            with open(path, "rb") as raw:
                magic = raw.read(4)
            pickled = magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            if pickled or magic == b"PK\x03\x04":  # a pickle, or torch.save's zip of pickles
                raise SubspaceFileError(
                    f"{path} looks like a pickle or torch.save file; alignez-tl never unpickles files "
                    "(unpickling can run code). Subspaces are .safetensors files written by "
                    "AlignmentSubspace.save."
                ) from None
            raise SubspaceFileError(f"{path} is not a readable safetensors file ({exc})") from exc
        if "alignez" not in header:
            raise SubspaceFileError(f"{path} is a safetensors file but not an alignez subspace (no provenance)")
        try:
            meta = json.loads(header["alignez"])
        except json.JSONDecodeError as exc:
            raise SubspaceFileError(f"{path}: the provenance JSON is corrupt ({exc})") from exc
        except RecursionError:
            raise SubspaceFileError(f"{path}: the provenance JSON is nested too deeply to read") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise SubspaceFileError(f"{path}: format {found!r}, expected {FORMAT!r}")
        version = meta.get("version")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise SubspaceFileError(
                f"{path}: format version {version!r} is not supported; this alignez-tl "
                f"reads version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}. Refit the subspace "
                "with this version (or load it with the alignez-tl that wrote it)."
            )
        try:
            d_model = meta["d_model"]
            site_name = meta["site"]
            layer_info = meta["layers"]
            if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
                raise InvalidArgumentError(f"d_model must be a positive int, got {d_model!r}")
            if not isinstance(layer_info, dict):
                raise InvalidArgumentError(f"'layers' must be an object, got {type(layer_info).__name__}")
            for part in ("model", "objective", "settings", "versions"):
                if not isinstance(meta.get(part, {}), dict):
                    raise InvalidArgumentError(f"{part!r} must be an object")
            counts = {
                int(key): {f: int(info[f]) for f in ("rank", "n_singular", "n_pairs", "n_kept")}
                for key, info in layer_info.items()
            }
            if not counts:
                raise InvalidArgumentError("it lists no layers; a subspace file holds at least one")
            if min(counts) < 0:
                raise InvalidArgumentError(f"layer {min(counts)} is negative; layers are numbered from 0")
        except (KeyError, TypeError, ValueError) as exc:
            what = f"field {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise SubspaceFileError(f"{path}: the provenance header is malformed ({what})") from None
        if site_name not in SITES:
            raise SubspaceFileError(f"{path}: unknown site {site_name!r}; known sites: {', '.join(SITES)}")
        layers = {}
        for layer, info in sorted(counts.items()):
            values = {}
            for name in LayerSubspace._TENSORS:
                tkey = f"layer.{layer}.{name}"
                if tkey not in tensors:
                    raise SubspaceFileError(f"{path}: tensor {tkey!r} is missing")
                t = tensors[tkey]
                if t.dtype != torch.float32:
                    raise SubspaceFileError(
                        f"{path}: tensor {tkey!r} is {str(t.dtype).replace('torch.', '')}; the format stores float32"
                    )
                if not torch.isfinite(t).all():
                    raise SubspaceFileError(f"{path}: tensor {tkey!r} holds NaN or inf")
                values[name] = t
            for name in LayerSubspace._NULL_TENSORS:  # absent in files written before the null rule
                tkey = f"layer.{layer}.{name}"
                if tkey in tensors:
                    t = tensors[tkey]
                    if t.dtype != torch.float32 or t.ndim != 1:
                        raise SubspaceFileError(f"{path}: tensor {tkey!r} must be a 1-D float32 tensor")
                    if not torch.isfinite(t).all():
                        raise SubspaceFileError(f"{path}: tensor {tkey!r} holds NaN or inf")
                    values[name] = t
            k, n_sing, n_pairs = info["rank"], info["n_singular"], info["n_pairs"]
            expected = {
                "directions": (k, d_model),
                "singular_values": (n_sing,),
                "explained_variance": (n_sing,),
                "pair_cos": (n_pairs,),
                "proj_mean": (k,),
                "proj_rms": (k,),
                "mean_diff_proj": (k,),
            }
            for name, shape in expected.items():
                if tuple(values[name].shape) != shape:
                    raise SubspaceFileError(
                        f"{path}: layer {layer} {name} has shape {tuple(values[name].shape)}, metadata says {shape}"
                    )
            try:
                layers[layer] = LayerSubspace(layer=layer, n_pairs=n_pairs, n_kept=info["n_kept"], **values)
            except (TypeError, ValueError) as exc:
                raise SubspaceFileError(f"{path}: {exc}") from None
        sub = cls(
            layers=layers,
            site=site_name,
            d_model=d_model,
            model=meta.get("model", {}),
            objective=meta.get("objective", {}),
            settings=meta.get("settings", {}),
            versions=meta.get("versions", {}),
        )
        if model is not None:
            sub.check_model(model, strict=strict, site=site)
        elif site is not None and site != sub.site:
            raise SubspaceMismatchError(f"{path}: fitted at site {sub.site!r}, requested {site!r}")
        return sub


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("alignez-tl", "transformer-lens", "transformers", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- fitting


def pair_activations(
    model: Any, data: Any, layers: list[int], site: str, batch_size: int, chat: Optional[bool], verbose: bool
) -> tuple[Tensor, Tensor, dict[str, Any], dict[str, Any]]:
    """`embed_pairs` as the tuple `(pos, neg, objective_dict, provenance)`, pos/neg float32.

    Kept for code written before `embed_pairs`; new code should call `embed_pairs` and
    use the `PairActivations` it returns.
    """
    acts = embed_pairs(
        model, data, layers, site, batch_size=batch_size, chat=chat, verbose=verbose, caller="fit_subspace"
    ).float()
    return acts.pos, acts.neg, dict(acts.objective), dict(acts.provenance)


def fit_subspace(
    model: Any,
    data: Any,
    *,
    layers: Optional[Sequence[int]] = None,
    site: Site = FitSettings.site,
    tau: float = FitSettings.tau,
    variance: float = FitSettings.variance,
    rank: Union[int, Literal["null"], None] = None,
    max_rank: Optional[int] = None,
    batch_size: int = FitSettings.batch_size,
    chat: Optional[bool] = None,
    objective: Any = None,
    verbose: bool = True,
    n_null: int = FitSettings.n_null,
    null_quantile: float = FitSettings.null_quantile,
    null_seed: int = FitSettings.null_seed,
    null_test: bool = FitSettings.null_test,
) -> AlignmentSubspace:
    """Fit the alignment subspace at every requested layer.

    The keyword arguments from `layers` to `null_test` are the fields of `FitSettings`
    (a settings object passes as ``fit_subspace(model, data, **settings.to_dict())``), and
    the subspace records them in `settings`.

    Args:
        model: the TransformerLens model (may be None only for precomputed activations).
        data: a `PreferenceSet`; a list of `(positive_text, negative_text)` pairs (the
            texts are embedded as they are); a `(pos, neg)` pair of integer token
            tensors `[n, seq]` or lists of 1-D token tensors; a `(pos, neg)` pair of
            float activations `[n, len(layers), d_model]` (`[n, d_model]` for one layer);
            or a `PairActivations` from `embed_pairs` (embed once, fit many times).
        layers: which layers (default: all; for a `PairActivations`, its layers).
        site: hook site: `resid_post` (default), `mlp_out` (the paper's), `resid_pre`, `attn_out`.
        tau: pair filter threshold on `cos(pos, neg)` (paper: 0.8).
        variance: keep the smallest k whose cumulative explained variance reaches this
            (the default rank rule, the paper's).
        rank: an int keeps exactly this many directions instead (capped by the numerical
            rank); `"null"` keeps the leading directions whose mean preference gap beats
            the sign-flip permutation null (see `fit_layer`, `sign_flip_null`).
        max_rank: never keep more than this many (multi-objective scripts use 10).
        objective: objective name/object/dict to record when `data` is not a PreferenceSet.
        verbose: progress bars.
        n_null: random pos/neg swap patterns of the null (`rank="null"` or `null_test`).
        null_quantile: a direction beats the null when its gap exceeds this quantile of
            its null gaps (0.95: a 5% test; stopping at the first failure keeps the chance
            of keeping any noise direction at about 5% per layer).
        null_seed: seed of the sign draws (a private `torch.Generator`; the same draws at
            every layer).
        null_test: also compute the null under the variance or fixed rules, as a
            diagnostic (`LayerSubspace.n_above_null`, `gap_share`), ranks unchanged.

    Raises:
        EmptySubspaceError: no pairs, or every pair filtered out at every layer (the
            message says how many were dropped and why), or, with `rank="null"`, no
            direction beat the null at any layer.
    """
    settings = FitSettings(
        site=site,
        tau=tau,
        variance=variance,
        rank=rank,
        max_rank=max_rank,
        n_null=n_null,
        null_quantile=null_quantile,
        null_seed=null_seed,
        null_test=null_test,
        batch_size=batch_size,
    )
    if layers is None and isinstance(data, PairActivations):
        layers = list(data.layers)
    if model is not None:
        require_model(model, "fit_subspace")
        n_layers = int(model.cfg.n_layers)
        layers = check_layers(list(range(n_layers)) if layers is None else list(layers), n_layers)
    elif layers is None:
        raise InvalidArgumentError("without a model, pass layers=[...] to say which layers the activations are")
    else:
        layers = list(layers)

    acts = embed_pairs(
        model, data, layers, site, batch_size=batch_size, chat=chat, verbose=verbose, caller="fit_subspace"
    ).float()
    pos, neg, obj_dict, seed_info = acts.pos, acts.neg, dict(acts.objective), dict(acts.provenance)
    if objective is not None:
        from .objectives import get_objective

        obj_dict = get_objective(objective).to_dict()
    null_kw: dict[str, Any] = dict(n_null=n_null, null_quantile=null_quantile, null_seed=null_seed, null_test=null_test)
    fitted = {
        layer: fit_layer(
            pos[:, i], neg[:, i], layer=layer, tau=tau, variance=variance, rank=rank, max_rank=max_rank, **null_kw
        )
        for i, layer in enumerate(layers)
    }
    if (
        rank == "null"
        and any(sub.n_kept > 0 for sub in fitted.values())
        and all(sub.rank == 0 for sub in fitted.values())
    ):
        ratios = {
            sub.layer: float(sub.gap[0] / sub.null_threshold[0])
            for sub in fitted.values()
            if sub.has_null and float(sub.null_threshold[0]) > 0
        }
        closest = ""
        if ratios:
            best = max(ratios, key=lambda layer: ratios[layer])
            closest = f" (closest: layer {best}, first-direction gap / null threshold = {ratios[best]:.2f})"
        raise EmptySubspaceError(
            f"no direction beat the sign-flip null at any of the {len(fitted)} layers{closest}: the "
            f"mean pos-neg gap is no "
            f"larger than {n_null} random pos/neg swaps give, so these {pos.shape[0]} pairs carry no "
            "preference signal this test can see. Use more (or more distinct) pairs, or rank=None "
            "for the paper's variance rule."
        )
    if all(sub.rank == 0 for sub in fitted.values()):
        n = pos.shape[0]
        max_cos = max(float(sub.pair_cos.max()) for sub in fitted.values())
        min_cos = min(float(sub.pair_cos.min()) for sub in fitted.values())
        raise EmptySubspaceError(
            f"all {n} pairs were dropped at every layer: cos(pos, neg) ranged over "
            f"[{min_cos:.3f}, {max_cos:.3f}], and pairs with cos > tau={tau} carry no preference "
            "signal (or the differences were all zero). Use more distinct pairs or a higher tau."
        )
    d_model = int(pos.shape[-1])
    return AlignmentSubspace(
        layers=fitted,
        site=site,
        d_model=d_model,
        model=model_signature(model) if model is not None else {},
        objective=obj_dict,
        settings=_stored_settings(settings.replace(layers=tuple(layers)), int(pos.shape[0]), seed_info),
        versions=_versions(),
    )
