"""Objectives: the keyword pair and prompt templates that steer self-generated preferences.

An objective names what "better" means for a set of preference pairs. AlignEZ asks the
model itself to describe a good and a bad answer (the *elicitation* prompts), then to
answer in each of those styles (the *response* prompts). The only task-specific inputs
are two keywords, e.g. ``helpful`` / ``useless``, slotted into four templates.

Templates use ``str.format`` placeholders:

* ``{query}``: the user's query (every template);
* ``{kw}``: the positive keyword in the positive templates, the negative one in the
  negative templates (every template);
* ``{char}``: one elicited characteristic, e.g. ``give step-by-step reasoning``
  (response templates only).

Literal braces are written ``{{`` and ``}}``.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Union

from .errors import ArgumentTypeError, InvalidArgumentError
from .settings import MODES

__all__ = [
    "ELICIT_NEGATIVE",
    "ELICIT_POSITIVE",
    "MODES",
    "Objective",
    "RESPOND_NEGATIVE",
    "RESPOND_POSITIVE",
    "get_objective",
    "list_objectives",
    "register_objective",
    "unregister_objective",
]

# The paper's templates (docs/method.md, "1. The model writes its own preferences"), verbatim, trailing spaces included.
ELICIT_POSITIVE = "{query}\nYou are a {kw} assistant. Your answer to this query should: "
ELICIT_NEGATIVE = "{query}\nPretend you are a {kw} assistant. Your response to this query should: "
RESPOND_POSITIVE = "You are a {kw} assistant. Your answer should {char}.\n{query} "
RESPOND_NEGATIVE = "Pretend you are a {kw} assistant. Your answer should {char}.\n{query}"

_ELICIT_FIELDS = frozenset({"query", "kw"})
_RESPOND_FIELDS = frozenset({"query", "kw", "char"})
_TEMPLATE_FIELDS = {
    "elicit_positive": _ELICIT_FIELDS,
    "elicit_negative": _ELICIT_FIELDS,
    "respond_positive": _RESPOND_FIELDS,
    "respond_negative": _RESPOND_FIELDS,
}


def _placeholders(template: str, where: str) -> set[str]:
    """The field names a format template uses; raises on malformed braces or specs."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidArgumentError(
            f"template {where} is not a valid format string ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise InvalidArgumentError(
                f"template {where} uses '{{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}'; placeholders take no conversion or format "
                "spec, write it as '{" + name + "}'"
            )
        names.add(name)
    return names


def _check_template(template: Any, where: str, needed: frozenset[str]) -> None:
    if not isinstance(template, str) or not template.strip():
        raise InvalidArgumentError(f"template {where} must be a non-empty string, got {template!r}")
    names = _placeholders(template, where)
    unknown = names - needed
    if unknown:
        shown = ", ".join("{" + n + "}" for n in sorted(unknown))
        allowed = ", ".join("{" + n + "}" for n in sorted(needed))
        raise InvalidArgumentError(
            f"template {where} uses unknown placeholder(s) {shown}; it may use only {allowed} "
            "(write literal braces as '{{' and '}}')"
        )
    missing = needed - names
    if missing:
        shown = ", ".join("{" + n + "}" for n in sorted(missing))
        raise InvalidArgumentError(f"template {where} must contain {shown}; got {template!r}")


@dataclass(frozen=True)
class Objective:
    """A keyword pair plus the four prompt templates that turn it into preference data.

    Attributes:
        name: identifier used in files and the registry (looked up case-insensitively).
        positive: keyword for the preferred side, e.g. ``"helpful"``.
        negative: keyword for the dispreferred side, e.g. ``"useless"``.
        elicit_positive: asks the model what a ``positive`` answer to ``{query}`` does.
        elicit_negative: asks the model what a ``negative`` answer to ``{query}`` does.
        respond_positive: asks for an answer to ``{query}`` with characteristic ``{char}``.
        respond_negative: same for the negative side.
        mode: ``"boost"`` (push towards the positive side) or ``"suppress"`` (remove the
            positive projection); see `MODES`.
        description: free text shown by `list_objectives` and in saved files.
    """

    name: str
    positive: str
    negative: str
    elicit_positive: str = ELICIT_POSITIVE
    elicit_negative: str = ELICIT_NEGATIVE
    respond_positive: str = RESPOND_POSITIVE
    respond_negative: str = RESPOND_NEGATIVE
    mode: str = "boost"
    description: str = ""

    def __post_init__(self) -> None:
        for attr in ("name", "positive", "negative"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value.strip():
                raise InvalidArgumentError(f"Objective.{attr} must be a non-empty string, got {value!r}")
        if self.mode not in MODES:
            raise InvalidArgumentError(
                f"Objective.mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}"
            )
        if not isinstance(self.description, str):
            raise InvalidArgumentError(f"Objective.description must be a string, got {self.description!r}")
        for attr, needed in _TEMPLATE_FIELDS.items():
            _check_template(getattr(self, attr), f"{attr} of objective {self.name!r}", needed)

    def keyword(self, positive: bool) -> str:
        """The positive or the negative keyword."""
        return self.positive if positive else self.negative

    def fallback(self, positive: bool) -> str:
        """The characteristic used when elicitation yields nothing usable: ``"be {kw}"``."""
        return f"be {self.keyword(positive)}"

    def elicit_prompt(self, query: str, *, positive: bool) -> str:
        """The prompt that asks the model to list characteristics of a good/bad answer."""
        template = self.elicit_positive if positive else self.elicit_negative
        return template.format(query=query, kw=self.keyword(positive))

    def respond_prompt(self, query: str, char: str, *, positive: bool) -> str:
        """The prompt that asks for an answer to `query` showing characteristic `char`."""
        template = self.respond_positive if positive else self.respond_negative
        return template.format(query=query, kw=self.keyword(positive), char=char)

    def to_dict(self) -> dict[str, str]:
        """All fields as a JSON-ready dict (the inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Objective":
        """Build an objective from `to_dict` output; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ArgumentTypeError(f"Objective.from_dict needs a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown objective field(s) {unknown}; valid fields: {sorted(known)}")
        missing = [k for k in ("name", "positive", "negative") if k not in data]
        if missing:
            raise InvalidArgumentError(f"an objective needs the field(s) {missing}; got {sorted(data)}")
        return cls(**data)


_BUILTINS: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("helpful", "helpful", "useless", description="general helpfulness"),
        Objective("harmless", "safety-first", "malicious", description="red-teaming / safety"),
        Objective("humor", "humorous", "dull and boring", description="funny answers"),
        Objective("creative", "creative", "dull", description="creative writing"),
        Objective("math", "careful step-by-step", "careless", description="math reasoning"),
        Objective("tone", "positive and upbeat", "negative and gloomy", description="positive vs negative tone"),
    )
}
_REGISTRY: dict[str, Objective] = dict(_BUILTINS)


def list_objectives() -> list[str]:
    """Names of all registered objectives (built-ins first, then user-defined)."""
    return [o.name for o in _REGISTRY.values()]


def register_objective(obj: Objective, *, overwrite: bool = False) -> Objective:
    """Make `obj` available by name to `get_objective` (and so to the CLI and loaders).

    Registering an objective equal to the one already under that name is a no-op. A
    different objective under a taken name (built-in or user-defined) is refused
    unless ``overwrite=True``.
    """
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"register_objective takes an Objective, got {type(obj).__name__}; build one with "
            "Objective(name=..., positive=..., negative=...)"
        )
    key = obj.name.lower()
    current = _REGISTRY.get(key)
    if current is not None and current != obj and not overwrite:
        kind = "built-in" if key in _BUILTINS else "registered"
        raise InvalidArgumentError(
            f"an objective named {obj.name!r} is already {kind}; pick another name or pass overwrite=True to replace it"
        )
    _REGISTRY[key] = obj
    return obj


def unregister_objective(name: str) -> None:
    """Remove a user-defined objective; a replaced built-in reverts to the original."""
    key = name.lower()
    if key not in _REGISTRY:
        raise InvalidArgumentError(f"no objective named {name!r}; registered: {', '.join(list_objectives())}")
    if key in _BUILTINS:
        if _REGISTRY[key] == _BUILTINS[key]:
            raise InvalidArgumentError(f"{name!r} is a built-in objective and cannot be removed")
        _REGISTRY[key] = _BUILTINS[key]
        return
    del _REGISTRY[key]


def get_objective(name_or_obj: Union[str, Objective, Mapping[str, Any]]) -> Objective:
    """Resolve an objective from a registered name (case-insensitive), an Objective or a dict.

    Raises:
        ValueError: an unknown name (the message lists the registered ones) or a bad dict.
        TypeError: anything else.
    """
    if isinstance(name_or_obj, Objective):
        return name_or_obj
    if isinstance(name_or_obj, str):
        key = name_or_obj.strip().lower()
        if key not in _REGISTRY:
            raise InvalidArgumentError(
                f"unknown objective {name_or_obj!r}; valid: {', '.join(list_objectives())}. "
                "Define your own with Objective(name, positive, negative) and "
                "register_objective(...), or pass the Objective directly."
            )
        return _REGISTRY[key]
    if isinstance(name_or_obj, Mapping):
        return Objective.from_dict(name_or_obj)
    raise ArgumentTypeError(f"objective must be a name, an Objective or a dict, got {type(name_or_obj).__name__}")
