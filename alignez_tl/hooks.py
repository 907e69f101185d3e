"""TransformerLens hook-function factories: capture, edit (boost / suppress), project out.

Every factory returns a plain `fn(activation, hook)` that can go straight into
`model.hooks(fwd_hooks=[(name, fn)])` or `model.run_with_hooks(...)`. The edit math
lives in pure functions (`edit_delta`, `edit_sequential`) that take tensors only, so
it is testable without a model.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import ArgumentTypeError, EditStrengthError, InvalidArgumentError
from .settings import EDITS, MODES, POSITIONS  # the allowed values, defined once as Literal aliases

__all__ = [
    "EDITS",
    "SITES",
    "EditGuard",
    "EditStrengthWarning",
    "EditTerm",
    "PositionTracker",
    "StopForward",
    "capture_hook",
    "edit_delta",
    "edit_hook",
    "edit_sequential",
    "edit_steps",
    "hook_name",
    "project_out_hook",
    "refuse_edit_ratio",
    "stop_hook",
]

SITES: dict[str, str] = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "attn_out": "blocks.{layer}.hook_attn_out",
}

HookFn = Callable[[Tensor, object], Optional[Tensor]]


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of `site` at `layer` (works on bridge and HookedTransformer)."""
    if site not in SITES:
        raise InvalidArgumentError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return SITES[site].format(layer=int(layer))


def check_layers(layers: Sequence[Any], n_layers: int) -> list[int]:
    """Validate layer indices (any user input) against the model depth; returns sorted unique ints."""
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ArgumentTypeError(f"layer indices must be ints, got {layer!r}")
        if not 0 <= layer < n_layers:
            raise InvalidArgumentError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        out.append(layer)
    if not out:
        raise InvalidArgumentError("no layers given")
    return sorted(set(out))


# --------------------------------------------------------------------------- capture


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed was captured."""


def stop_hook() -> HookFn:
    """A hook that stops the forward pass (catch `StopForward` around the call)."""

    def fn(activation: Tensor, hook: object) -> None:
        raise StopForward

    return fn


def capture_hook(store: dict, key: object, last_index: Optional[Tensor] = None, stop: bool = False) -> HookFn:
    """Store the activation of the last real token of each row in `store[key]`.

    `last_index[b]` is the position of row b's last real token (default: the final
    position, right for left-padded or unpadded batches). The stored tensor is
    `[batch, d_model]` float32, detached (`[batch, n_heads, d_head]` at a per-head site
    such as `attn.hook_z`). With `stop=True` the hook then raises `StopForward`, so no
    later layer runs.
    """

    def fn(activation: Float[Tensor, "batch pos *features"], hook: object) -> None:
        if last_index is None:
            rows = activation[:, -1]
        else:
            idx = last_index.to(activation.device)
            rows = activation[torch.arange(activation.shape[0], device=activation.device), idx]
        store[key] = rows.detach().to(torch.float32).clone()
        if stop:
            raise StopForward

    return fn


# --------------------------------------------------------------------------- editing


def check_edit(edit: str, mode: str) -> None:
    """Refuse an unknown edit or mode, naming the allowed values."""
    if edit not in EDITS:
        raise InvalidArgumentError(f"edit must be one of {EDITS}, got {edit!r}")
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")


def edit_steps(
    proj: Float[Tensor, "... k"],
    scales: Float[Tensor, " k"],
    coef: Float[Tensor, "... k"],
    mode: str,
    edit: str = "paper",
) -> Float[Tensor, "... k"]:
    """The step along each direction, given the projections `proj = ⟨x, θ_j⟩`.

    `coef` carries α times the per-row 0/1 selection mask (and any objective weight).

    * `edit="paper"`: `coef·s·tanh(p/s)` (boost) or `coef·s·relu(p/s)` (suppress).
    * `edit="oriented"`: `coef·s·(1 − tanh(p/s))` (boost) or `coef·relu(−p)` (suppress).

    The edited activation is `x + Σ_j step_j · θ_j` (`edit_delta`).
    """
    check_edit(edit, mode)
    if edit == "paper":
        sigma = torch.tanh if mode == "boost" else torch.relu
        return coef * scales * sigma(proj / scales)
    if mode == "boost":
        return coef * scales * (1.0 - torch.tanh(proj / scales))
    return coef * torch.relu(-proj)


def edit_delta(
    x: Float[Tensor, "... d_model"],
    directions: Float[Tensor, "k d_model"],
    scales: Float[Tensor, " k"],
    coef: Float[Tensor, "... k"],
    mode: str,
    edit: str = "paper",
) -> Float[Tensor, "... d_model"]:
    """The AlignEZ edit of `x` along orthonormal `directions`, as one vectorised step.

    `delta = Σ_j step_j(⟨x, θ_j⟩) · θ_j` with the steps of `edit_steps`. `coef` broadcasts
    against `x`'s leading dimensions. Because the θ_j are orthonormal, an edit along θ_i
    leaves ⟨x, θ_j⟩ unchanged for j ≠ i, so this equals the paper's sequential update
    (`edit_sequential`) up to rounding.
    """
    return edit_steps(x @ directions.T, scales, coef, mode, edit) @ directions


def edit_sequential(
    x: Float[Tensor, "... d_model"],
    directions: Float[Tensor, "k d_model"],
    scales: Float[Tensor, " k"],
    alpha: float,
    mode: str,
    edit: str = "paper",
) -> Float[Tensor, "... d_model"]:
    """The update one direction after the other (the reference for tests).

    `x̂ ← x̂ + step(⟨x̂, θ_j⟩) · θ_j` for j = 1..k, with the step of `edit_steps` at
    `coef = alpha`. Returns the edited `x`.
    """
    check_edit(edit, mode)
    out = x.clone()
    coef = torch.as_tensor(alpha, dtype=x.dtype).reshape(1)
    for theta, s in zip(directions, scales):
        proj = (out * theta).sum(-1, keepdim=True)  # one direction: k = 1
        out = out + edit_steps(proj, s.reshape(1), coef, mode, edit) * theta
    return out


@dataclass
class EditTerm:
    """One objective's edit at one layer.

    `directions` [k, d] (orthonormal rows), `scales` [k] (s_j), `coef` [rows, k]:
    alpha · weight · mask, where rows is 1 (all batch rows alike) or the batch size
    (per-row selection), `mode` is "boost" or "suppress" and `edit` is "oriented" or
    "paper" (`edit_steps`).
    """

    directions: Tensor
    scales: Tensor
    coef: Tensor
    mode: str
    edit: str = "paper"

    def __post_init__(self) -> None:
        check_edit(self.edit, self.mode)
        if self.directions.ndim != 2 or self.coef.ndim != 2:
            raise InvalidArgumentError("directions must be [k, d] and coef [rows, k]")
        if self.coef.shape[1] != self.directions.shape[0] or self.scales.shape != (self.directions.shape[0],):
            raise InvalidArgumentError("directions, scales and coef disagree on k")


@dataclass
class PositionTracker:
    """Which sequence positions to edit in each forward call.

    `"all"`: every position. `"generated"`: the last prompt token and every generated
    token, which is what the paper's edit of "the last position of every forward call"
    touches under KV-cache generation. The tracker recognises the three kinds of call
    a generation makes:

    * a new sequence (prompt length P, or `prompt_len` when given): positions P-1..S-1;
    * a KV-cache step (one new token): that position;
    * a cache-less step (the sequence grew by exactly one token): positions P-1..S-1,
      so the recomputed past gets the same edits it got when it was generated, and
      generation with and without the KV cache is identical.

    Each hook holds its own tracker; all hooks see the same calls, so they agree.
    """

    positions: str = "generated"
    prompt_len: Optional[int] = None
    _start: Optional[int] = field(default=None, repr=False)
    _total: Optional[int] = field(default=None, repr=False)
    log: Optional[list] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise InvalidArgumentError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        p = self.prompt_len
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise InvalidArgumentError(
                f"prompt_len must be a positive int (the padded prompt length) or None, got {p!r}"
            )

    def reset(self) -> None:
        self._start = self._total = None

    def window(self, seq_len: int) -> tuple[int, int]:
        """The [start, stop) positions of this call to edit, and advance the state."""
        if self.positions == "all":
            span = (0, seq_len)
        elif seq_len == 1 and self._total is not None:  # KV-cache step
            self._total += 1
            span = (0, 1)
        elif self._total is not None and self._start is not None and seq_len == self._total + 1:
            self._total = seq_len  # cache-less step: the past is recomputed
            span = (self._start, seq_len)
        else:  # a new sequence
            prompt = self.prompt_len if self.prompt_len is not None else seq_len
            if not 1 <= prompt <= seq_len:
                raise InvalidArgumentError(
                    f"prompt_len={self.prompt_len} does not fit a forward call of {seq_len} positions"
                )
            self._start = prompt - 1
            self._total = seq_len
            span = (self._start, seq_len)
        if self.log is not None:
            self.log.append((seq_len, span))
        return span


class EditStrengthWarning(UserWarning):
    """The steering edit is more than 10 times the norm of the activation it edits
    (measured on the first edited forward pass): alpha is probably too large.

    `ratio` is the measured ratio, `hook` the hook point where it was measured.
    """

    def __init__(self, message: str, ratio: float = float("nan"), hook: str = "") -> None:
        super().__init__(message)
        self.ratio = ratio
        self.hook = hook


EDIT_RATIO_WARN = 10.0  # an edit this many times the activation's norm warns (EditStrengthWarning)
_REFUSE_RATIO: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("refuse_edit_ratio", default=None)


@contextlib.contextmanager
def refuse_edit_ratio(limit: Optional[float]) -> Iterator[None]:
    """Inside this block, edit hooks built here raise `EditStrengthError` when the edit's
    norm exceeds `limit` times the activation's (None: only warn). The command line uses
    1000: an edit that large replaces the activation, and the answer is noise."""
    token = _REFUSE_RATIO.set(limit)
    try:
        yield
    finally:
        _REFUSE_RATIO.reset(token)


@dataclass
class EditGuard:
    """The edit-strength check shared by the hooks of one generation (`Steerer.hooks`).

    Each hook measures `max ‖delta‖ / ‖x‖` over its edited positions on its **first**
    call only (the prompt's forward pass: one device sync per hook and generation, none
    per generated token) and records it in `ratios`. Above `EDIT_RATIO_WARN` the first
    hook to see it warns (`EditStrengthWarning`, once per guard); a non-finite edit, or
    one above `refuse_above` (default: the `refuse_edit_ratio` in force), raises
    `EditStrengthError`.
    """

    alpha: Optional[float] = None
    refuse_above: Optional[float] = field(default_factory=lambda: _REFUSE_RATIO.get())
    warned: bool = False
    ratios: dict[str, float] = field(default_factory=dict)

    def check(self, name: str, x: Tensor, delta: Tensor) -> None:
        with torch.no_grad():
            edit_norm = delta.double().norm(dim=-1)
            act_norm = x.double().norm(dim=-1).clamp_min(1e-30)
            ratio = float((edit_norm / act_norm).max()) if edit_norm.numel() else 0.0
            finite = bool(torch.isfinite(delta).all())
        self.ratios[name] = ratio
        a = "" if self.alpha is None else f"alpha={self.alpha:g} "
        if not finite or not math.isfinite(ratio):
            raise EditStrengthError(
                f"the steering edit at {name} is not finite ({a}overflows the activations' "
                f"{str(x.dtype).replace('torch.', '')}): alpha is far too large; use a value around 1 "
                "(the edit moves each direction by up to |alpha| times its fitted scale)"
            )
        if self.refuse_above is not None and ratio > self.refuse_above:
            raise EditStrengthError(
                f"{a}is far too large for this model: the edit's norm is {ratio:.3g} times the "
                f"activation's at {name} (more than {self.refuse_above:g}; measured on the first edited "
                "forward pass), so the steered answer would be noise; use a value around 1"
            )
        if ratio > EDIT_RATIO_WARN and not self.warned:
            self.warned = True
            warnings.warn(
                EditStrengthWarning(
                    f"{a}is probably too large for this model: the edit's norm is {ratio:.3g} times the "
                    f"activation's at {name} (measured on the first edited forward pass; above "
                    f"{EDIT_RATIO_WARN:g} the edit swamps the activation)",
                    ratio=ratio,
                    hook=name,
                ),
                stacklevel=2,
            )


def edit_hook(
    terms: Sequence[EditTerm],
    tracker: PositionTracker,
    monitor: Optional[dict] = None,
    guard: Optional[EditGuard] = None,
    name: str = "",
) -> HookFn:
    """A hook that adds every term's edit, each computed from the same input activation.

    Work is done in float32 (float64 for float64 activations) and cast back to the
    activation's dtype. Rows whose coefficients are all zero are returned bit-identical.

    `monitor`, when given, counts over every edited (row, position, direction) with a
    non-zero coefficient: `monitor["edited"]` in all, `monitor["negative"]` of them with
    `⟨x, θ⟩ < 0` before the edit (where the paper's boost pushes away from θ).

    `guard` (default: a fresh `EditGuard`) checks the edit's norm against the
    activation's on this hook's first call only (`name` labels its messages).
    """
    if not terms:
        raise InvalidArgumentError("edit_hook needs at least one term")
    guard = guard if guard is not None else EditGuard()
    first = [True]
    # each term's tensors cast once per (device, dtype), not on every generated token
    prepared: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, Tensor, EditTerm]]] = {}

    def prepare(device: torch.device, dtype: torch.dtype) -> list[tuple[Tensor, Tensor, Tensor, EditTerm]]:
        key = (device, dtype)
        if key not in prepared:
            prepared[key] = [
                (
                    t.directions.to(device, dtype),
                    t.scales.to(device, dtype),
                    t.coef.to(device, dtype)[:, None, :],
                    t,
                )
                for t in terms
            ]
        return prepared[key]

    def fn(activation: Float[Tensor, "batch pos d_model"], hook: object) -> Tensor:
        seq_len = activation.shape[1]
        start, stop = tracker.window(seq_len)
        batch = activation.shape[0]
        x = activation[:, start:stop].to(_work_dtype(activation.dtype))
        delta: Optional[Tensor] = None
        for theta, scales, coef, term in prepare(x.device, x.dtype):
            if coef.shape[0] not in (1, batch):
                raise InvalidArgumentError(
                    f"the steering was set up for {coef.shape[0]} queries but the forward pass "
                    f"has a batch of {batch}: pass one query per row (or a single query)"
                )
            proj = x @ theta.T
            step = edit_steps(proj, scales, coef, term.mode, term.edit) @ theta
            delta = step if delta is None else delta + step
            if monitor is not None:
                active = (coef != 0).expand_as(proj)
                monitor["edited"] = monitor.get("edited", 0) + int(active.sum())
                monitor["negative"] = monitor.get("negative", 0) + int((active & (proj < 0)).sum())
        assert delta is not None  # terms is not empty
        if first[0]:  # the first edited forward only: no device sync per generated token
            first[0] = False
            guard.check(name or str(getattr(hook, "name", "the edited hook")), x, delta)
        edited = (x + delta).to(activation.dtype)
        if start == 0 and stop == seq_len:  # a generated token: every position is edited
            return edited
        out = activation.clone()
        out[:, start:stop] = edited
        return out

    return fn


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision and float32 activations; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def project_out_hook(directions: Float[Tensor, "k d_model"]) -> HookFn:
    """A hook that removes the span of orthonormal `directions` at every position."""

    def fn(activation: Float[Tensor, "batch pos d_model"], hook: object) -> Tensor:
        theta = directions.to(device=activation.device, dtype=_work_dtype(activation.dtype))
        x = activation.to(theta.dtype)
        x = x - (x @ theta.T) @ theta
        return x.to(activation.dtype)

    return fn
