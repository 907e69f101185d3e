"""The alignment subspace: pair filter, SVD of differences, rank rule, sign, save/load.

Per layer l, with `P`, `N` the last-token activations of the positive and negative
texts of K pairs (ALIGNEZ.md §2):

1. drop pair k when `cos(P[k], N[k]) > tau` (near-identical pairs carry no signal);
2. `D = P - N` over the kept pairs (not mean-centred), `D = U Σ Vᵀ`;
3. keep the smallest k with cumulative `σ²/Σσ² ≥ variance` (or a fixed `rank`, and
   never more than `max_rank` or the numerical rank);
4. orient each kept direction θ so that `⟨mean(D), θ⟩ ≥ 0` (from negative to positive);
5. record the projection statistics of the fitted activations on each θ, which give
   the `scale="fitted"` step size.

`fit_subspace` takes a self-generated `PreferenceSet`, (pos, neg) text pairs, (pos,
neg) token tensors, or precomputed activations.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from ._checks import require_model
from ._io import atomic_write
from .activations import capture, capture_tokens
from .hooks import SITES, check_layers
from .models import Encoded, model_signature, pad_id, render, require_tokenizer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "AlignmentSubspace",
    "EmptySubspaceError",
    "LayerSubspace",
    "SubspaceFileError",
    "SubspaceMismatchError",
    "check_text_pairs",
    "fit_layer",
    "fit_subspace",
    "pair_activations",
]

FORMAT = "alignez-subspace"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)  # format versions `AlignmentSubspace.load` reads


class SubspaceFileError(ValueError):
    """A subspace file is missing, corrupt, or of an unknown format version."""


class SubspaceMismatchError(ValueError):
    """A subspace does not fit the model it is used with."""


class EmptySubspaceError(ValueError):
    """No pair survived the filter at any layer, so there is nothing to fit."""


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

    def __post_init__(self) -> None:
        where = f"layer {self.layer}"
        for name in self._TENSORS:
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{where}: {name} holds NaN or inf; a subspace needs finite values "
                    "(refit it from finite activations)"
                )
        if self.directions.ndim != 2:
            raise ValueError(f"{where}: directions must be [k, d_model], got shape {tuple(self.directions.shape)}")
        k = self.directions.shape[0]
        for name in ("proj_mean", "proj_rms", "mean_diff_proj"):
            if tuple(getattr(self, name).shape) != (k,):
                raise ValueError(
                    f"{where}: {name} has shape {tuple(getattr(self, name).shape)}, expected ({k},): "
                    "one value per direction"
                )
        if bool((self.proj_rms < 0).any()):
            raise ValueError(f"{where}: proj_rms (the fitted scales) must be >= 0")

    @property
    def rank(self) -> int:
        """How many directions were kept."""
        return int(self.directions.shape[0])

    @property
    def kept_variance(self) -> float:
        """Share of the difference variance the kept directions explain."""
        return float(self.explained_variance[: self.rank].sum()) if self.rank else 0.0

    _TENSORS = (
        "directions",
        "singular_values",
        "explained_variance",
        "pair_cos",
        "proj_mean",
        "proj_rms",
        "mean_diff_proj",
    )


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


def fit_layer(
    pos: Float[Tensor, "n d_model"],
    neg: Float[Tensor, "n d_model"],
    *,
    layer: int = 0,
    tau: float = 0.8,
    variance: float = 0.90,
    rank: Optional[int] = None,
    max_rank: Optional[int] = None,
) -> LayerSubspace:
    """Fit the subspace at one layer from paired activations (pure linear algebra).

    The SVD runs in float64; directions are stored as float32. Directions whose singular
    value is numerically zero (below `1e-6 · σ_max`) are never kept, so identical or
    rank-deficient differences give fewer directions, not noise.
    """
    if pos.shape != neg.shape or pos.ndim != 2:
        raise ValueError(f"pos and neg must both be [n, d_model]; got {tuple(pos.shape)} and {tuple(neg.shape)}")
    bad = (~torch.isfinite(pos)).any(-1) | (~torch.isfinite(neg)).any(-1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
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
    _, sigma, vh = torch.linalg.svd(diffs, full_matrices=False)
    energy = sigma.square()
    total = energy.sum()
    if total <= 0:
        return _empty_layer(layer, d_model, cos)
    ratio = energy / total
    numerical_rank = int((sigma > 1e-6 * sigma[0]).sum())
    if rank is not None:
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
            n_layers, d_model, compatibility mode), or `{}` for bare activations.
        objective: the objective's `to_dict()` (name, keywords, mode, templates).
        settings: fit settings (tau, variance, rank, max_rank) and the seed.
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
            raise ValueError(f"unknown site {self.site!r}; choose one of {', '.join(SITES)}")
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {self.d_model!r}")
        for key, sub in self.layers.items():
            if not isinstance(sub, LayerSubspace):
                raise TypeError(f"layers[{key!r}] must be a LayerSubspace, got {type(sub).__name__}")
            if key != sub.layer:
                raise ValueError(f"layers[{key!r}] holds the subspace of layer {sub.layer}")
            if sub.directions.shape[1] != self.d_model:
                raise ValueError(
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
        """A short table: per layer the rank, kept variance and pairs kept."""
        lines = [f"alignment subspace ({self.objective_name}, site {self.site}, d_model {self.d_model})"]
        lines.append("layer  rank  kept-var  pairs kept")
        for layer, sub in sorted(self.layers.items()):
            lines.append(
                f"{layer:>5}  {sub.rank:>4}  {sub.kept_variance:>8.3f}  {sub.n_kept:>4}/{sub.n_pairs}"
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
        different `n_layers`, model class (`HookedTransformer` vs `TransformerBridge`) or
        TransformerLens compatibility mode (different residual numerics), and, when
        `site` is given, a different hook site. With `strict=True`
        (default) a different model id is refused too.
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
            if bool(self.model.get("compatibility_mode")) != sig["compatibility_mode"]:
                on_off = lambda b: "on" if b else "off"  # noqa: E731
                reasons.append(
                    "compatibility mode "
                    f"{on_off(self.model.get('compatibility_mode'))} (subspace) vs "
                    f"{on_off(sig['compatibility_mode'])} (model): residual numerics differ"
                )
            fitted_class = self.model.get("model_class")
            if fitted_class and fitted_class != sig["model_class"]:
                reasons.append(
                    f"model class {fitted_class} (subspace) vs {sig['model_class']} (model): "
                    "residual numerics differ (a HookedTransformer's weight processing folds "
                    "norms and centres the residual stream)"
                )
            if strict and self.model.get("model_id") != sig["model_id"]:
                reasons.append(f"model id {self.model.get('model_id')!r} vs {sig['model_id']!r}")
        too_deep = [layer for layer in self.layers if layer >= sig["n_layers"]]
        if too_deep:
            reasons.append(f"layers {too_deep} do not exist in a {sig['n_layers']}-layer model")
        if reasons:
            raise SubspaceMismatchError(
                "this subspace does not fit: " + "; ".join(reasons)
                + (". Pass strict=False to accept a different model id only." if strict else "")
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
                str(layer): {"rank": sub.rank, "n_pairs": sub.n_pairs, "n_kept": sub.n_kept,
                             "n_singular": int(sub.singular_values.numel())}
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
            for name in LayerSubspace._TENSORS:
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
        JSON header only).
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
                raise ValueError(f"d_model must be a positive int, got {d_model!r}")
            if not isinstance(layer_info, dict):
                raise ValueError(f"'layers' must be an object, got {type(layer_info).__name__}")
            for part in ("model", "objective", "settings", "versions"):
                if not isinstance(meta.get(part, {}), dict):
                    raise ValueError(f"{part!r} must be an object")
            counts = {int(key): {f: int(info[f]) for f in ("rank", "n_singular", "n_pairs", "n_kept")}
                      for key, info in layer_info.items()}
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
                        f"{path}: tensor {tkey!r} is {str(t.dtype).replace('torch.', '')}; "
                        "the format stores float32"
                    )
                if not torch.isfinite(t).all():
                    raise SubspaceFileError(f"{path}: tensor {tkey!r} holds NaN or inf")
                values[name] = t
            k, n_sing, n_pairs = info["rank"], info["n_singular"], info["n_pairs"]
            expected = {
                "directions": (k, d_model), "singular_values": (n_sing,), "explained_variance": (n_sing,),
                "pair_cos": (n_pairs,), "proj_mean": (k,), "proj_rms": (k,), "mean_diff_proj": (k,),
            }
            for name, shape in expected.items():
                if tuple(values[name].shape) != shape:
                    raise SubspaceFileError(
                        f"{path}: layer {layer} {name} has shape {tuple(values[name].shape)}, "
                        f"metadata says {shape}"
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
    """Any pair data `fit_subspace` takes, as `[n, len(layers), d]` pos/neg activations.

    Returns `(pos, neg, objective_dict, seed_info)`. Analyses and baselines use it to
    embed pairs exactly as the subspace fit does.
    """
    from .preferences import PreferenceSet

    objective: dict[str, Any] = {}
    seed_info: dict[str, Any] = {}
    if isinstance(data, PreferenceSet):
        if len(data) == 0:
            raise EmptySubspaceError("the preference set is empty: there are no pairs to fit")
        require_tokenizer(model, "fitting from a PreferenceSet")
        pos_texts, neg_texts = data.texts(model, chat=chat)
        objective = data.objective.to_dict()
        seed_info = {"seed": data.settings.get("seed")}
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, (Tensor, list)) for t in data) and (
        isinstance(data[0], Tensor) or (data[0] and isinstance(data[0][0], Tensor))
    ):
        pos_t, neg_t = data
        return _tensor_pairs(model, pos_t, neg_t, layers, site, batch_size) + (objective, seed_info)
    else:
        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
            raise TypeError(
                "fit_subspace takes a PreferenceSet, a list of (positive, negative) text pairs, "
                f"a (pos, neg) pair of token or activation tensors; got {type(data).__name__}"
            )
        pairs = check_text_pairs(data)
        require_tokenizer(model, "fitting from text pairs")
        pos_texts = [p for p, _ in pairs]
        neg_texts = [n for _, n in pairs]
    texts = list(pos_texts) + list(neg_texts)
    acts = capture(model, texts, layers, site, batch_size=batch_size, chat=chat, verbose=verbose,
                   desc="capturing pair activations")
    n = len(pos_texts)
    return acts[:n], acts[n:], objective, seed_info


def check_text_pairs(data: Sequence[Any]) -> list[tuple[str, str]]:
    """`data` as a non-empty list of `(positive_text, negative_text)` string pairs, or a clear error."""
    pairs = list(data)
    if not pairs:
        raise EmptySubspaceError("no pairs given: there is nothing to fit")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"pair {i} is not a (positive_text, negative_text) tuple of strings")
        for side, text in zip(("positive", "negative"), pair):
            if not text.strip():
                raise ValueError(f"pair {i}: the {side} text is empty; every text needs some content")
    return pairs


def _tensor_pairs(model, pos_t, neg_t, layers, site, batch_size):
    """(pos, neg) as float activations (used as they are) or integer token ids (run)."""
    def as_rows(t):
        return [r for r in t] if isinstance(t, Tensor) else list(t)

    if isinstance(pos_t, Tensor) and isinstance(neg_t, Tensor) and pos_t.is_floating_point():
        if not neg_t.is_floating_point() or pos_t.shape != neg_t.shape:
            raise ValueError(f"pos and neg activations must have the same shape; got {tuple(pos_t.shape)} and {tuple(neg_t.shape)}")
        acts_p, acts_n = pos_t.float(), neg_t.float()
        if acts_p.ndim == 2:
            if len(layers) != 1:
                raise ValueError("[n, d_model] activations are for one layer: pass layers=[that layer]")
            acts_p, acts_n = acts_p[:, None], acts_n[:, None]
        if acts_p.ndim != 3 or acts_p.shape[1] != len(layers):
            raise ValueError(
                f"activations must be [n, n_layers, d_model] with one slice per layer in `layers` "
                f"({len(layers)}); got {tuple(acts_p.shape)}"
            )
        return acts_p, acts_n
    if model is None:
        raise ValueError("token tensors need a model to run them")
    rows_p, rows_n = as_rows(pos_t), as_rows(neg_t)
    if len(rows_p) != len(rows_n) or not rows_p:
        raise ValueError(f"need the same, non-zero number of pos and neg sequences; got {len(rows_p)} and {len(rows_n)}")
    for r in rows_p + rows_n:
        if r.is_floating_point() or r.ndim != 1 or r.numel() == 0:
            raise ValueError("token sequences must be non-empty 1-D integer tensors")
    out = []
    for rows in (rows_p, rows_n):
        chunks = []
        for start in range(0, len(rows), batch_size):
            chunks.append(capture_tokens(model, _pad_rows(rows[start : start + batch_size], model), layers, site))
        out.append(torch.cat(chunks))
    return out[0], out[1]


def _pad_rows(rows: list[Tensor], model: Any) -> Encoded:
    width = max(int(r.numel()) for r in rows)
    tok = getattr(model, "tokenizer", None)
    pad = pad_id(tok) if tok is not None else 0
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.numel():] = r.long()
        mask[i, width - r.numel():] = 1
    return Encoded(ids, mask)


def fit_subspace(
    model: Any,
    data: Any,
    *,
    layers: Optional[Sequence[int]] = None,
    site: str = "resid_post",
    tau: float = 0.8,
    variance: float = 0.90,
    rank: Optional[int] = None,
    max_rank: Optional[int] = None,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    objective: Any = None,
    verbose: bool = True,
) -> AlignmentSubspace:
    """Fit the alignment subspace at every requested layer.

    Args:
        model: the TransformerLens model (may be None only for precomputed activations).
        data: a `PreferenceSet`; a list of `(positive_text, negative_text)` pairs (the
            texts are embedded as they are); a `(pos, neg)` pair of integer token
            tensors `[n, seq]` or lists of 1-D token tensors; or a `(pos, neg)` pair of
            float activations `[n, len(layers), d_model]` (`[n, d_model]` for one layer).
        layers: which layers (default: all).
        site: hook site: `resid_post` (default), `mlp_out` (the paper's), `resid_pre`, `attn_out`.
        tau: pair filter threshold on `cos(pos, neg)` (paper: 0.8).
        variance: keep the smallest k whose cumulative explained variance reaches this.
        rank: keep exactly this many directions instead (capped by the numerical rank).
        max_rank: never keep more than this many (multi-objective scripts use 10).
        objective: objective name/object/dict to record when `data` is not a PreferenceSet.
        verbose: progress bars.

    Raises:
        EmptySubspaceError: no pairs, or every pair filtered out at every layer (the
            message says how many were dropped and why).
    """
    for name, value, lo, hi in (("tau", tau, -1.0, 1.0), ("variance", variance, 0.0, 1.0)):
        if not isinstance(value, (int, float)) or not (lo < value <= hi) or value != value:
            raise ValueError(f"{name} must be a number in ({lo}, {hi}]; got {value!r}")
    for name, value in (("rank", rank), ("max_rank", max_rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if model is not None:
        require_model(model, "fit_subspace")
        n_layers = int(model.cfg.n_layers)
        layers = check_layers(list(range(n_layers)) if layers is None else list(layers), n_layers)
    elif layers is None:
        raise ValueError("without a model, pass layers=[...] to say which layers the activations are")
    else:
        layers = list(layers)

    pos, neg, obj_dict, seed_info = pair_activations(model, data, layers, site, batch_size, chat, verbose)
    if objective is not None:
        from .objectives import get_objective

        obj_dict = get_objective(objective).to_dict()
    fitted = {
        layer: fit_layer(pos[:, i], neg[:, i], layer=layer, tau=tau, variance=variance,
                         rank=rank, max_rank=max_rank)
        for i, layer in enumerate(layers)
    }
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
        settings={"tau": tau, "variance": variance, "rank": rank, "max_rank": max_rank,
                  "n_pairs": int(pos.shape[0]), **seed_info},
        versions=_versions(),
    )
