"""Typed settings: the one place for every default and every allowed value.

Each stage of the pipeline has a frozen dataclass:

- `PreferenceSettings`: how the model writes its own pairs (`generate_preferences`);
- `FitSettings`: how the subspace is fitted (`fit_subspace`);
- `SteerSettings`: how a `Steerer` edits (edit, mode, α, scale, filter, layers, ...);
- `EvalSettings`: one `alignez eval` run (the two above plus the comparison's own).

Each validates itself when built (the same errors the functions raised before any model
work), turns into JSON-ready values with `to_dict()` and back with `from_dict()`, which
refuses unknown keys. The allowed string values are `Literal` aliases (`Edit`, `Mode`,
`Site`, ...); the tuples beside them (`EDITS`, `MODES`, ...) are derived from those.
Subspace and result files store the settings that made them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, TypeVar, Union, get_args

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "SEED_LIMIT",
    "DEFAULT_EDIT",
    "DEFAULT_METHODS",
    "EDITS",
    "FILTERS",
    "METHODS",
    "MODES",
    "POSITIONS",
    "RANK_RULES",
    "SCALES",
    "SITE_NAMES",
    "Edit",
    "EvalSettings",
    "FitSettings",
    "Method",
    "Mode",
    "Positions",
    "PreferenceSettings",
    "RankRule",
    "Scale",
    "Site",
    "SteerSettings",
    "check_choice",
    "check_count",
    "check_number",
    "check_positive_int",
    "check_rank_args",
    "check_seed",
    "default_alpha",
]

Edit = Literal["oriented", "paper"]
Mode = Literal["boost", "suppress"]
Positions = Literal["generated", "all"]
Filter = Literal["paper", "all"]
ScaleRule = Literal["fitted", "paper"]
Scale = Union[ScaleRule, float]
Site = Literal["resid_post", "resid_pre", "mlp_out", "attn_out"]
RankRule = Literal["variance", "fixed", "null"]
Method = Literal["alignez", "diffmean", "pca", "prompt", "iti"]

EDITS: tuple[str, ...] = get_args(Edit)
MODES: tuple[str, ...] = get_args(Mode)
POSITIONS: tuple[str, ...] = get_args(Positions)
FILTERS: tuple[str, ...] = get_args(Filter)
SCALES: tuple[str, ...] = get_args(ScaleRule)
SITE_NAMES: tuple[str, ...] = get_args(Site)
RANK_RULES: tuple[str, ...] = get_args(RankRule)
METHODS: tuple[Method, ...] = get_args(Method)
#: What `alignez eval` compares when `--methods` is not given (ITI is opt-in: `--methods ...,iti`).
DEFAULT_METHODS: tuple[Method, ...] = ("alignez", "diffmean", "pca", "prompt")

DEFAULT_EDIT: Edit = "oriented"

#: The longest prompt (in tokens) generation takes by default: a longer one is refused
#: before any work (`generation.check_prompt_tokens`) instead of running out of memory.
DEFAULT_MAX_PROMPT_TOKENS = 2048

# One default step size per (edit, mode), used by the Python API and every CLI command.
_DEFAULT_ALPHA: dict[tuple[str, str], float] = {
    ("paper", "boost"): 1.0,  # the paper's values
    ("paper", "suppress"): -1.0,
    ("oriented", "boost"): 0.1,  # the efficacy sweep's range (docs/does_it_work.md)
    ("oriented", "suppress"): 1.0,
}


def default_alpha(edit: str = DEFAULT_EDIT, mode: str = "boost") -> float:
    """The default step size α of `edit` in `mode` (docs/method.md, "4. The edit")."""
    if (edit, mode) not in _DEFAULT_ALPHA:
        raise InvalidArgumentError(f"no default alpha for edit={edit!r}, mode={mode!r}; edits: {EDITS}, modes: {MODES}")
    return _DEFAULT_ALPHA[(edit, mode)]


# --------------------------------------------------------------------------- checks


SEED_LIMIT = 2**32  # seeds are 0..2**32-1, what every random generator used here takes


def check_seed(name: str, value: Any) -> int:
    """`value` if it is an int in 0..SEED_LIMIT-1 (bools refused), else an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise InvalidArgumentError(f"{name} must be in 0..{SEED_LIMIT - 1}, got {value}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """`value` if it is an int >= 1 (bools refused), else `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def check_count(name: str, value: Any) -> int:
    """`value` if it is an int >= 0 (bools refused), else `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{name} must be an int >= 0, got {value!r}")
    return value


def check_number(name: str, value: Any) -> float:
    """`value` as a float if it is a finite real number (`TypeError` / `ValueError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, else `ValueError` listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidArgumentError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_alpha(edit: str, mode: str, alpha: float) -> None:
    """The oriented edit's direction comes from θ, so its α is a positive size."""
    if edit != "oriented":
        return
    if mode == "boost" and alpha < 0:
        raise InvalidArgumentError(
            f"alpha must be >= 0 for the oriented boost, got {alpha} (to push towards the dispreferred "
            "side use steerer.mirror())"
        )
    if mode == "suppress" and not 0 <= alpha <= 1:
        raise InvalidArgumentError(f"alpha must be in [0, 1] for the oriented suppress, got {alpha}")


# --------------------------------------------------------------------------- the base

S = TypeVar("S", bound="_Settings")


def _jsonable(value: Any) -> Any:
    if isinstance(value, _Settings):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class _Settings:
    """`to_dict` / `from_dict` / `replace` shared by every settings class."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (tuples become lists, nested settings dicts)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """Build from `to_dict()`'s output (or any subset of it: the rest keeps its default).

        Unknown keys are refused, so a typo never passes silently; the values are
        validated as when built directly.
        """
        if not isinstance(data, Mapping):
            raise ArgumentTypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidArgumentError(f"{cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
        values = {}
        for name, value in data.items():
            nested = _NESTED.get((cls.__name__, name))
            if nested is not None and isinstance(value, Mapping):
                value = nested.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _tuple_of_ints(name: str, value: Any) -> Optional[tuple[int, ...]]:
    """A layer list as a tuple of ints (their range is checked against the model's depth later)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{name} must be a sequence of layer indices, got {type(value).__name__}")
    out = tuple(value)
    for layer in out:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ArgumentTypeError(f"layer indices must be ints, got {layer!r}")
    return out


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class PreferenceSettings(_Settings):
    """How the model writes its own pairs (`generate_preferences`; docs/method.md, "1.")."""

    objective: str = "helpful"
    n_characteristics: int = 3
    n_responses: int = 1
    elicit_tokens: int = 50  # the paper's
    response_tokens: int = 200  # the paper's
    elicit_prefill: str = ""
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    def __post_init__(self) -> None:
        if not isinstance(self.objective, str) or not self.objective.strip():
            raise InvalidArgumentError(f"objective must be a registered objective's name, got {self.objective!r}")
        for name in (
            "n_characteristics",
            "n_responses",
            "elicit_tokens",
            "response_tokens",
            "batch_size",
            "max_prompt_tokens",
        ):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.do_sample, bool):
            raise ArgumentTypeError(f"do_sample must be True or False, got {self.do_sample!r}")
        check_seed("seed", self.seed)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be an int >= 0 (0 turns it off), got {self.top_k!r}")
        if self.do_sample:
            if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
                raise InvalidArgumentError(
                    f"temperature must be > 0 when sampling, got {self.temperature!r}; "
                    "for deterministic output pass do_sample=False"
                )
            if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
                raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.n_responses > 1 and not self.do_sample:
            raise InvalidArgumentError(
                f"n_responses={self.n_responses} needs do_sample=True: greedy decoding gives the same "
                "answer every time; pass n_responses=1 or sample"
            )
        if not isinstance(self.elicit_prefill, str):
            raise ArgumentTypeError(f"elicit_prefill must be a string, got {type(self.elicit_prefill).__name__}")


def check_rank_args(
    rank: Any = None,
    max_rank: Any = None,
    n_null: Any = 200,
    null_quantile: Any = 0.95,
    null_seed: Any = 0,
    null_test: Any = False,
) -> None:
    """Refuse bad rank-rule arguments with an error that names the fix (no work is done)."""
    rank_msg = (
        "rank must be a positive int (a fixed number of directions), 'null' (keep the "
        "directions that beat the sign-flip permutation null) or None (the variance rule); "
        f"got {rank!r}"
    )
    if isinstance(rank, str):
        if rank != "null":
            raise InvalidArgumentError(rank_msg)
    elif rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InvalidArgumentError(rank_msg)
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise InvalidArgumentError(f"max_rank must be a positive int or None; got {max_rank!r}")
    if isinstance(n_null, bool) or not isinstance(n_null, int) or n_null < 1:
        raise InvalidArgumentError(
            f"n_null must be a positive int (the number of random sign draws, e.g. 200); got {n_null!r}"
        )
    if (
        isinstance(null_quantile, bool)
        or not isinstance(null_quantile, (int, float))
        or not (0.0 < null_quantile < 1.0)
    ):
        raise InvalidArgumentError(
            f"null_quantile must be a number strictly between 0 and 1 (e.g. 0.95); got {null_quantile!r}"
        )
    check_seed("null_seed", null_seed)
    if not isinstance(null_test, bool):
        raise ArgumentTypeError(f"null_test must be True or False; got {null_test!r}")


@dataclass(frozen=True)
class FitSettings(_Settings):
    """How the alignment subspace is fitted (`fit_subspace`; docs/method.md, "2.").

    `rank=None` keeps the smallest rank reaching `variance` (the paper's rule); an int
    keeps exactly that many directions; `"null"` keeps the leading directions whose mean
    gap beats `n_null` random pos/neg swaps. `max_rank` caps any rule. `null_test`
    computes the null as a diagnostic under the other rules too.
    """

    site: Site = "resid_post"
    layers: Optional[tuple[int, ...]] = None
    tau: float = 0.8  # the paper's pair filter on cos(pos, neg)
    variance: float = 0.9  # the paper's explained-variance rule
    rank: Union[int, Literal["null"], None] = None
    max_rank: Optional[int] = None
    n_null: int = 200
    null_quantile: float = 0.95
    null_seed: int = 0
    null_test: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name, lo, hi in (("tau", -1.0, 1.0), ("variance", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (lo < value <= hi) or value != value:
                raise InvalidArgumentError(f"{name} must be a number in ({lo}, {hi}]; got {value!r}")
        check_rank_args(self.rank, self.max_rank, self.n_null, self.null_quantile, self.null_seed, self.null_test)
        if self.site not in SITE_NAMES:
            raise InvalidArgumentError(f"unknown site {self.site!r}; choose one of {', '.join(SITE_NAMES)}")
        object.__setattr__(self, "layers", _tuple_of_ints("layers", self.layers))
        check_positive_int("batch_size", self.batch_size)

    @property
    def rank_rule(self) -> str:
        """`"variance"`, `"fixed"` or `"null"`."""
        return "null" if self.rank == "null" else "variance" if self.rank is None else "fixed"


@dataclass(frozen=True)
class SteerSettings(_Settings):
    """How a `Steerer` edits (docs/steering.md).

    `alpha=None` takes `default_alpha(edit, mode)`; `mode=None` takes the subspace
    objective's. `resolve(mode)` fills both in and checks α against the edit.
    """

    edit: Edit = DEFAULT_EDIT
    alpha: Optional[float] = None
    mode: Optional[Mode] = None
    scale: Scale = "fitted"
    direction_filter: Filter = "paper"
    top_n: int = 5  # the paper's
    layers: Optional[tuple[int, ...]] = None
    positions: Positions = "generated"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.mode is not None:
            check_choice("mode", self.mode, MODES)
        check_choice("edit", self.edit, EDITS)
        if self.alpha is not None:
            alpha = check_number("alpha", self.alpha)
            object.__setattr__(self, "alpha", alpha)
            if self.mode is not None:
                check_alpha(self.edit, self.mode, alpha)
        weight = check_number("weight", self.weight)
        if weight < 0:
            raise InvalidArgumentError(f"weight must be >= 0, got {weight}")
        object.__setattr__(self, "weight", weight)
        if isinstance(self.scale, str):
            if self.scale not in SCALES:
                raise InvalidArgumentError(f"scale must be one of {SCALES} or a positive number, got {self.scale!r}")
        elif check_number("scale", self.scale) <= 0:
            raise InvalidArgumentError(f"a numeric scale must be positive, got {self.scale}")
        check_choice("direction_filter", self.direction_filter, FILTERS)
        check_positive_int("top_n", self.top_n)
        object.__setattr__(self, "layers", _tuple_of_ints("layers", self.layers))
        check_choice("positions", self.positions, POSITIONS)

    def resolve(self, mode: str) -> "SteerSettings":
        """With `mode` (where unset) and α (where unset: the default of edit and mode) filled in."""
        mode = self.mode or mode
        alpha = default_alpha(self.edit, mode) if self.alpha is None else self.alpha
        return self.replace(mode=mode, alpha=alpha)


@dataclass(frozen=True)
class EvalSettings(_Settings):
    """One `alignez eval` run: pairs, fit and steering settings plus the comparison's own.

    `layer=None` puts the DiffMean and PCA baselines at the layer AlignEZ edits most
    often on the prompts; `coef` is their coefficient. `iti_top_k` and `iti_alpha` are
    ITI's K and α (`baselines.ITISteerer`).
    """

    model: str = "smollm2-135m-instruct"
    methods: tuple[Method, ...] = DEFAULT_METHODS
    judge: str = "self"
    layer: Optional[int] = None
    coef: float = 1.0
    max_new_tokens: int = 48
    n_boot: int = 2000
    iti_top_k: int = 8
    iti_alpha: float = 3.0
    prefs: PreferenceSettings = field(default_factory=lambda: PreferenceSettings(elicit_tokens=40, response_tokens=64))
    fit: FitSettings = field(default_factory=FitSettings)
    steer: SteerSettings = field(default_factory=SteerSettings)

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise InvalidArgumentError(f"methods must be a non-empty subset of {METHODS}; got {list(methods)}")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(methods)))
        if self.layer is not None:
            check_count("layer", self.layer)
        check_number("coef", self.coef)
        check_positive_int("max_new_tokens", self.max_new_tokens)
        check_positive_int("n_boot", self.n_boot)
        check_positive_int("iti_top_k", self.iti_top_k)
        check_number("iti_alpha", self.iti_alpha)
        for name, kind in (("prefs", PreferenceSettings), ("fit", FitSettings), ("steer", SteerSettings)):
            if not isinstance(getattr(self, name), kind):
                raise ArgumentTypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @property
    def objective(self) -> str:
        return self.prefs.objective

    @property
    def seed(self) -> int:
        return self.prefs.seed


_NESTED: dict[tuple[str, str], type[_Settings]] = {
    ("EvalSettings", "prefs"): PreferenceSettings,
    ("EvalSettings", "fit"): FitSettings,
    ("EvalSettings", "steer"): SteerSettings,
}
