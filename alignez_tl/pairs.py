"""Pair activations as a value: `embed_pairs` and `PairActivations`.

Every method that learns from preference pairs (`fit_subspace`, the DiffMean and PCA
baselines, `analyses.layer_signal`) needs the same thing: the last-token activations
of the positive and the negative text of every pair, at some layers of one hook site.
`embed_pairs` is the one place that turns pair data into them. It accepts

* a `PreferenceSet` (embedded as `PreferenceSet.texts` renders it: query + answer);
* a list of `(positive_text, negative_text)` pairs (texts used as they are);
* a `(pos, neg)` pair of integer token tensors `[n, seq]` (or lists of 1-D token
  tensors), run as they are (left-padded in batches);
* a `(pos, neg)` pair of float activations `[n, len(layers), d_model]` (`[n, d_model]`
  for one layer), torch tensors or numpy arrays, used as they are;
* a `PairActivations` (its layers can be narrowed with `layers`),

and returns a `PairActivations`: `pos` and `neg` `[n_pairs, n_layers, d_model]`, the
layers and site they were taken at, and what is known of where they came from. Embed
once, then fit as many methods as you like on the same activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .activations import capture, capture_tokens
from .errors import ArgumentTypeError, EmptySubspaceError, InvalidArgumentError
from .hooks import SITES, check_layers
from .models import Encoded, model_signature, pad_id, require_tokenizer

__all__ = [
    "PAIR_SOURCES",
    "EmptySubspaceError",
    "PairActivations",
    "check_pair_data",
    "check_text_pairs",
    "embed_pairs",
]

PAIR_SOURCES = ("prefs", "texts", "tokens", "acts")


@dataclass(frozen=True, eq=False)
class PairActivations:
    """The last-token activations of preference pairs at some layers of one hook site.

    Attributes:
        pos: `[n_pairs, n_layers, d_model]` activations of the positive texts. Float;
            float32 when captured, the given dtype when precomputed.
        neg: the same for the negative texts (row k is pair k's negative).
        layers: the layer of each slice along dim 1, ascending when captured.
        site: the hook site: `resid_post`, `mlp_out`, `resid_pre` or `attn_out`.
        objective: the objective's dict (`Objective.to_dict`) when the pairs came from
            a `PreferenceSet`, else `{}`.
        source: what they were made from: `"prefs"` (a PreferenceSet), `"texts"`,
            `"tokens"` or `"acts"` (precomputed activations).
        n_batches: the capture forward passes that made them (0 when precomputed).
        model: `models.model_signature` of the model that ran them (`{}` when unknown).
        provenance: what a fit records about the pairs: the PreferenceSet's generation
            `seed` (`{}` for other sources).

    Frozen: `subset`, `select` and `float` return new values. Equality is identity
    (tensors have no single truth value); compare `pos`/`neg` with `torch.equal`.
    """

    pos: Float[Tensor, "n n_layers d_model"]
    neg: Float[Tensor, "n n_layers d_model"]
    layers: tuple[int, ...]
    site: str = "resid_post"
    objective: dict[str, Any] = field(default_factory=dict)
    source: str = "acts"
    n_batches: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("pos", "neg"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != 3:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise InvalidArgumentError(
                    f"PairActivations.{name} must be a float tensor [n, n_layers, d_model]; got {shape}"
                )
        if self.pos.shape != self.neg.shape:
            raise InvalidArgumentError(
                f"pos and neg activations must have the same shape; got "
                f"{tuple(self.pos.shape)} and {tuple(self.neg.shape)}"
            )
        layers = tuple(self.layers)
        if any(isinstance(layer, bool) or not isinstance(layer, int) for layer in layers):
            raise ArgumentTypeError(f"layers must be ints, got {list(layers)}")
        if len(set(layers)) != len(layers) or len(layers) != self.pos.shape[1]:
            raise InvalidArgumentError(
                f"layers {list(layers)} must be distinct, one per slice of the {self.pos.shape[1]} along dim 1"
            )
        object.__setattr__(self, "layers", layers)
        if self.site not in SITES:
            raise InvalidArgumentError(f"unknown site {self.site!r}; choose one of {', '.join(SITES)}")
        if self.source not in PAIR_SOURCES:
            raise InvalidArgumentError(f"source must be one of {PAIR_SOURCES}, got {self.source!r}")

    # ------------------------------------------------------------------ views

    @property
    def n_pairs(self) -> int:
        return int(self.pos.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.pos.shape[2])

    def __len__(self) -> int:
        return self.n_pairs

    def index(self, layer: int) -> int:
        """The position of `layer` along dim 1 (a clear error if it was not embedded)."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise InvalidArgumentError(
                f"layer {layer} was not embedded; these activations have layers {list(self.layers)}"
            ) from None

    def at(self, layer: int) -> tuple[Float[Tensor, "n d_model"], Float[Tensor, "n d_model"]]:
        """`(pos, neg)` at `layer`, each `[n_pairs, d_model]` (views, not copies)."""
        i = self.index(layer)
        return self.pos[:, i], self.neg[:, i]

    def diffs(self, layer: int) -> Float[Tensor, "n d_model"]:
        """`pos − neg` at `layer`, `[n_pairs, d_model]`, in the activations' dtype."""
        pos, neg = self.at(layer)
        return pos - neg

    def cos(self, layer: int) -> Float[Tensor, " n"]:
        """`cos(pos[k], neg[k])` at `layer`, computed in float64 (AlignEZ's pair filter statistic)."""
        pos, neg = self.at(layer)
        return torch.nn.functional.cosine_similarity(pos.double(), neg.double(), dim=-1, eps=1e-12)

    # ------------------------------------------------------------------ new values

    def subset(self, idx: Union[Sequence[int], Tensor, np.ndarray, slice]) -> "PairActivations":
        """The pairs `idx` (indices, a boolean mask or a slice), every layer kept."""
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        elif not isinstance(idx, (Tensor, slice)):
            idx = torch.as_tensor(list(idx), dtype=torch.long)
        return replace(self, pos=self.pos[idx], neg=self.neg[idx])

    def select(self, layers: Sequence[int]) -> "PairActivations":
        """Only `layers`, in the given order (each must have been embedded)."""
        layers = [int(layer) for layer in layers]
        if layers == list(self.layers):
            return self
        idx = [self.index(layer) for layer in layers]
        return replace(self, pos=self.pos[:, idx], neg=self.neg[:, idx], layers=tuple(layers))

    def float(self) -> "PairActivations":
        """The same activations in float32 (itself when they already are)."""
        if self.pos.dtype == torch.float32 and self.neg.dtype == torch.float32:
            return self
        return replace(self, pos=self.pos.float(), neg=self.neg.float())

    def __repr__(self) -> str:
        return (
            f"PairActivations(n_pairs={self.n_pairs}, layers={list(self.layers)}, site={self.site!r}, "
            f"d_model={self.d_model}, source={self.source!r}, dtype={str(self.pos.dtype).replace('torch.', '')})"
        )


# --------------------------------------------------------------------------- checks


def check_text_pairs(data: Sequence[Any]) -> list[tuple[str, str]]:
    """`data` as a non-empty list of `(positive_text, negative_text)` string pairs, or a clear error."""
    pairs = list(data)
    if not pairs:
        raise EmptySubspaceError("no pairs given: there is nothing to fit")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ArgumentTypeError(f"pair {i} is not a (positive_text, negative_text) tuple of strings")
        for side, text in zip(("positive", "negative"), pair):
            if not text.strip():
                raise InvalidArgumentError(f"pair {i}: the {side} text is empty; every text needs some content")
    return pairs


def _is_tensor_pair(data: Any) -> bool:
    """A `(pos, neg)` tuple of tensors, numpy arrays or lists of tensors."""
    if not (isinstance(data, tuple) and len(data) == 2):
        return False
    return all(
        isinstance(t, (Tensor, np.ndarray)) or (isinstance(t, list) and t and isinstance(t[0], Tensor)) for t in data
    )


def _is_float(t: Any) -> bool:
    """Float activations (a tensor or array); a list of rows is always token sequences."""
    return not isinstance(t, list) and bool(torch.as_tensor(t).is_floating_point())


def _token_rows(t: Any) -> list[Tensor]:
    return [torch.as_tensor(r) for r in t] if isinstance(t, (Tensor, np.ndarray)) else list(t)


def check_pair_data(
    data: Any,
    layers: Optional[Sequence[int]] = None,
    *,
    d_model: Optional[int] = None,
    caller: str = "embed_pairs",
) -> tuple[str, int]:
    """Validate pair data without running anything: returns `(source, n_pairs)`.

    `source` is `"prefs"`, `"texts"`, `"tokens"` or `"acts"` (a `PairActivations` or
    float tensors). For activations, `layers` (when given) says which layer each slice
    along dim 1 is, and `d_model` (when given) their width. `caller` names the function
    in the type error. Raises `TypeError`, `ValueError` or `EmptySubspaceError` with the
    reason; nothing is captured.
    """
    from .preferences import PreferenceSet

    if isinstance(data, PairActivations):
        if layers is not None:
            missing = [layer for layer in layers if layer not in data.layers]
            if missing:
                raise InvalidArgumentError(
                    f"layers {missing} were not embedded; these activations have layers {list(data.layers)}"
                )
        if d_model is not None and data.d_model != d_model:
            raise InvalidArgumentError(f"the activations are {data.d_model} wide, but d_model is {d_model}")
        if data.n_pairs == 0:
            raise EmptySubspaceError("the activations hold no pairs: there is nothing to fit")
        return "acts", data.n_pairs
    if isinstance(data, PreferenceSet):
        if len(data) == 0:
            raise EmptySubspaceError("the preference set is empty: there are no pairs to fit")
        return "prefs", len(data)
    if _is_tensor_pair(data):
        p, n = data
        if _is_float(p) != _is_float(n):
            raise InvalidArgumentError("pos and neg must both be float activations or both integer tokens")
        if _is_float(p):
            return "acts", _check_activations(p, n, layers, d_model)
        rows_p, rows_n = _token_rows(p), _token_rows(n)
        for t in (p, n):
            if isinstance(t, (Tensor, np.ndarray)) and t.ndim != 2:
                raise InvalidArgumentError(
                    f"token tensors must be [n, seq] with the same non-zero n; got "
                    f"{tuple(p.shape) if hasattr(p, 'shape') else len(p)} and "
                    f"{tuple(n.shape) if hasattr(n, 'shape') else len(n)}"
                )
        if len(rows_p) != len(rows_n) or not rows_p:
            raise InvalidArgumentError(
                f"need the same, non-zero number of pos and neg sequences; got {len(rows_p)} and {len(rows_n)}"
            )
        for r in rows_p + rows_n:
            if not isinstance(r, Tensor) or r.is_floating_point() or r.ndim != 1 or r.numel() == 0:
                raise InvalidArgumentError("token sequences must be non-empty 1-D integer tensors")
        return "tokens", len(rows_p)
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise ArgumentTypeError(
            f"{caller} takes a PreferenceSet, a list of (positive, negative) text pairs, "
            "a (pos, neg) pair of token or activation tensors, or a PairActivations; "
            f"got {type(data).__name__}"
        )
    return "texts", len(check_text_pairs(data))


def _check_activations(p: Any, n: Any, layers: Optional[Sequence[int]], d_model: Optional[int]) -> int:
    p, n = torch.as_tensor(p), torch.as_tensor(n)
    if p.shape != n.shape:
        raise InvalidArgumentError(
            f"pos and neg activations must have the same shape; got {tuple(p.shape)} and {tuple(n.shape)}"
        )
    n_layers = None if layers is None else len(layers)
    width = "d_model" if d_model is None else d_model
    if p.ndim == 2:
        if layers is not None and len(layers) != 1:
            raise InvalidArgumentError(
                f"[n, d_model] activations are for one layer, but {n_layers} layers were asked for "
                f"({list(layers)}): pass layers=[that layer], or [n, {n_layers}, {width}] activations"
            )
        p = p[:, None]
    if (
        p.ndim != 3
        or (n_layers is not None and p.shape[1] != n_layers)
        or (d_model is not None and p.shape[2] != d_model)
    ):
        where = f" (one slice per layer {list(layers)}, in that order)" if layers is not None else ""
        raise InvalidArgumentError(
            f"activations must be [n, {'n_layers' if n_layers is None else n_layers}, {width}]"
            f"{where}; got {tuple(p.shape)}"
        )
    if p.shape[0] == 0:
        raise EmptySubspaceError("the activations hold no pairs: there is nothing to fit")
    return int(p.shape[0])


# --------------------------------------------------------------------------- embedding


def embed_pairs(
    model: Any,
    data: Any,
    layers: Optional[Sequence[int]] = None,
    site: str = "resid_post",
    *,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = False,
    caller: str = "embed_pairs",
) -> PairActivations:
    """Any pair data, as the last-token activations of every pair at `layers`.

    Args:
        model: the TransformerLens model; may be None for precomputed activations.
        data: a `PreferenceSet` (rendered with `PreferenceSet.texts`), a list of
            `(positive_text, negative_text)` pairs, a `(pos, neg)` pair of integer token
            tensors `[n, seq]` or lists of 1-D token tensors, a `(pos, neg)` pair of float
            activations `[n, len(layers), d_model]` (`[n, d_model]` for one layer; torch
            or numpy, kept in their dtype), or a `PairActivations`.
        layers: layer indices. Default: every layer of the model (captured in ascending
            order), or the layers of a given `PairActivations`. Precomputed activation
            tensors without a model need them (one per slice along dim 1).
        site: the hook site; a `PairActivations` taken at another site is refused.
        batch_size: texts (or token rows) per forward pass.
        chat: passed to `PreferenceSet.texts` and `models.encode`.
        verbose: a progress bar over batches.
        caller: the name a type error gives for the function that was called.

    Texts run as one list (the positives, then the negatives), `ceil(2n / batch_size)`
    forward passes; token tensors run pos and neg separately, `2 · ceil(n / batch_size)`.
    The values are those `activations.capture` gives for the same texts.
    """
    from .preferences import PreferenceSet

    if site not in SITES:
        raise InvalidArgumentError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    if model is not None:
        n_model_layers = int(model.cfg.n_layers)
        if layers is None and not isinstance(data, PairActivations):
            layers = list(range(n_model_layers))
        elif layers is not None:
            layers = check_layers(list(layers), n_model_layers)
    elif layers is not None:
        layers = list(layers)
    kind, n = check_pair_data(data, layers, caller=caller)

    if isinstance(data, PairActivations):
        if data.site != site:
            raise InvalidArgumentError(
                f"these activations were taken at site {data.site!r}, not {site!r}: pass site={data.site!r}"
            )
        return data if layers is None else data.select(layers)
    if kind == "acts":
        if layers is None:
            raise InvalidArgumentError("without a model, pass layers=[...] to say which layers the activations are")
        p, q = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        if p.ndim == 2:
            p, q = p[:, None], q[:, None]
        return PairActivations(p, q, tuple(layers), site, source="acts")
    if kind == "tokens":
        if model is None:
            raise InvalidArgumentError("token tensors need a model to run them")
        assert layers is not None  # the model's layers by default (above)
        out = []
        for rows in (_token_rows(data[0]), _token_rows(data[1])):
            chunks = []
            for start in range(0, len(rows), batch_size):
                batch = _pad_rows(rows[start : start + batch_size], model)
                chunks.append(capture_tokens(model, batch, layers, site))
            out.append(torch.cat(chunks))
        return PairActivations(
            out[0],
            out[1],
            tuple(layers),
            site,
            source="tokens",
            n_batches=2 * math.ceil(n / batch_size),
            model=model_signature(model),
        )
    objective: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    if kind == "prefs":
        require_tokenizer(model, "fitting from a PreferenceSet")
        assert isinstance(data, PreferenceSet)
        pos_texts, neg_texts = data.texts(model, chat=chat)
        objective = data.objective.to_dict()
        provenance = {"seed": data.settings.get("seed"), "pairs_hash": data.pair_hash()}
    else:
        require_tokenizer(model, "fitting from text pairs")
        pos_texts = [p for p, _ in data]
        neg_texts = [q for _, q in data]
    assert layers is not None  # there is a model (require_tokenizer), so its layers by default (above)
    texts = list(pos_texts) + list(neg_texts)
    acts = capture(
        model, texts, layers, site, batch_size=batch_size, chat=chat, verbose=verbose, desc="capturing pair activations"
    )
    k = len(pos_texts)
    return PairActivations(
        acts[:k],
        acts[k:],
        tuple(layers),
        site,
        objective=objective,
        source=kind,
        n_batches=math.ceil(2 * k / batch_size),
        model=model_signature(model),
        provenance=provenance,
    )


def _pad_rows(rows: list[Tensor], model: Any) -> Encoded:
    width = max(int(r.numel()) for r in rows)
    tok = getattr(model, "tokenizer", None)
    pad = pad_id(tok) if tok is not None else 0
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.numel() :] = r.long()
        mask[i, width - r.numel() :] = 1
    return Encoded(ids, mask)
