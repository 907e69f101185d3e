"""Objectives: templates, validation, built-ins and the registry."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest

from alignez_tl.objectives import (
    Objective,
    get_objective,
    list_objectives,
    register_objective,
    unregister_objective,
)


@pytest.fixture
def cleanup():
    """Names registered by a test; removed (or restored, for built-ins) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ValueError):  # already removed by the test
            unregister_objective(name)


# --------------------------------------------------------------------------- templates


def test_default_templates_are_the_papers_verbatim():
    obj = Objective("t", "helpful", "useless")
    q = "How do I bake bread?"
    assert obj.elicit_prompt(q, positive=True) == (
        "How do I bake bread?\nYou are a helpful assistant. Your answer to this query should: "
    )
    assert obj.elicit_prompt(q, positive=False) == (
        "How do I bake bread?\nPretend you are a useless assistant. Your response to this query should: "
    )
    assert obj.respond_prompt(q, "give clear steps", positive=True) == (
        "You are a helpful assistant. Your answer should give clear steps.\nHow do I bake bread? "
    )
    assert obj.respond_prompt(q, "skip steps", positive=False) == (
        "Pretend you are a useless assistant. Your answer should skip steps.\nHow do I bake bread?"
    )
    assert obj.mode == "boost"
    assert obj.fallback(True) == "be helpful" and obj.fallback(False) == "be useless"


def test_braces_in_query_and_char_are_not_reinterpreted():
    obj = Objective("t", "helpful", "useless")
    out = obj.respond_prompt("Print {x} in {y}", "use {braces}", positive=True)
    assert out == "You are a helpful assistant. Your answer should use {braces}.\nPrint {x} in {y} "


def test_custom_templates_with_literal_braces():
    obj = Objective(
        "json",
        "precise",
        "sloppy",
        elicit_positive="Q: {query} | as a {kw} bot, list traits as {{json}}:",
        respond_positive="[{kw}] {char} -> {query}",
    )
    assert obj.elicit_prompt("hi", positive=True) == "Q: hi | as a precise bot, list traits as {json}:"
    assert obj.respond_prompt("hi", "be exact", positive=True) == "[precise] be exact -> hi"


@pytest.mark.parametrize(
    "field_name, template, message",
    [
        ("respond_positive", "You are a {kw} assistant.\n{query}", r"must contain \{char\}"),
        ("elicit_negative", "Pretend to be {kw}.", r"must contain \{query\}"),
        ("elicit_positive", "{query} {kw} {char}", r"unknown placeholder\(s\) \{char\}"),
        ("respond_negative", "{query} {kw} {char} {tone}", r"unknown placeholder\(s\) \{tone\}"),
        ("respond_negative", "{query} {kw} {char} {}", r"unknown placeholder\(s\) \{\}"),
        ("elicit_positive", "{query!r} {kw}", r"no conversion or format spec"),
        ("elicit_positive", "{query:>10} {kw}", r"no conversion or format spec"),
        ("elicit_positive", "{query} {kw", r"not a valid format string"),
        ("elicit_positive", "   ", r"non-empty string"),
    ],
)
def test_template_validation(field_name, template, message):
    with pytest.raises(ValueError, match=message) as info:
        Objective("bad", "good", "evil", **{field_name: template})
    assert field_name in str(info.value)  # the error says which template is wrong


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="", positive="a", negative="b"), "Objective.name"),
        (dict(name="x", positive=" ", negative="b"), "Objective.positive"),
        (dict(name="x", positive="a", negative=None), "Objective.negative"),
        (dict(name="x", positive="a", negative="b", mode="remove"), "'boost', 'suppress'"),
    ],
)
def test_field_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Objective(**kwargs)


def test_objective_is_frozen():
    obj = get_objective("helpful")
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.positive = "evil"  # type: ignore[misc]


def test_dict_round_trip_through_json():
    obj = Objective("tone", "warm", "cold", mode="suppress", description="warmth ✨")
    data = json.loads(json.dumps(obj.to_dict()))
    assert Objective.from_dict(data) == obj
    assert get_objective(data) == obj


def test_from_dict_refuses_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"unknown objective field\(s\) \['kw_pos'\]"):
        Objective.from_dict({"name": "x", "positive": "a", "negative": "b", "kw_pos": "a"})
    with pytest.raises(ValueError, match=r"needs the field\(s\) \['negative'\]"):
        Objective.from_dict({"name": "x", "positive": "a"})
    with pytest.raises(TypeError):
        Objective.from_dict(["name", "x"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- built-ins


def test_builtin_keyword_pairs():
    builtins = list_objectives()[:6]
    assert builtins == ["helpful", "harmless", "humor", "creative", "math", "tone"]
    pairs = {n: (get_objective(n).positive, get_objective(n).negative) for n in builtins}
    assert pairs == {
        "helpful": ("helpful", "useless"),
        "harmless": ("safety-first", "malicious"),
        "humor": ("humorous", "dull and boring"),
        "creative": ("creative", "dull"),
        "math": ("careful step-by-step", "careless"),
        "tone": ("positive and upbeat", "negative and gloomy"),
    }
    tone = get_objective("tone")
    assert tone.mode == "boost" and tone.description == "positive vs negative tone"
    assert tone.elicit_prompt("Hi?", positive=False) == (
        "Hi?\nPretend you are a negative and gloomy assistant. Your response to this query should: "
    )


def test_get_objective_forms():
    helpful = get_objective("helpful")
    assert get_objective("HELPFUL") is helpful
    assert get_objective(" Helpful ") is helpful
    assert get_objective(helpful) is helpful
    with pytest.raises(ValueError, match="unknown objective 'helpfull'.*helpful, harmless, humor"):
        get_objective("helpfull")
    with pytest.raises(TypeError, match="name, an Objective or a dict"):
        get_objective(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry


def test_register_and_unregister(cleanup):
    obj = Objective("Concise", "concise", "rambling")
    cleanup.append("concise")
    assert register_objective(obj) is obj
    assert get_objective("concise") is obj
    assert "Concise" in list_objectives()
    register_objective(Objective("Concise", "concise", "rambling"))  # equal: a no-op
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_objective(Objective("concise", "short", "long"))
    replacement = Objective("concise", "short", "long")
    register_objective(replacement, overwrite=True)
    assert get_objective("CONCISE") is replacement
    unregister_objective("concise")
    assert "concise" not in [n.lower() for n in list_objectives()]
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("concise")


def test_builtins_are_protected(cleanup):
    original = get_objective("helpful")
    with pytest.raises(ValueError, match="already built-in"):
        register_objective(Objective("Helpful", "nice", "mean"))
    assert get_objective("helpful") is original
    with pytest.raises(ValueError, match="built-in objective and cannot be removed"):
        unregister_objective("helpful")
    cleanup.append("helpful")
    register_objective(Objective("helpful", "nice", "mean"), overwrite=True)
    assert get_objective("helpful").positive == "nice"
    unregister_objective("helpful")  # reverts to the built-in
    assert get_objective("helpful") == original


def test_register_rejects_non_objectives():
    with pytest.raises(TypeError, match="takes an Objective"):
        register_objective({"name": "x", "positive": "a", "negative": "b"})  # type: ignore[arg-type]
