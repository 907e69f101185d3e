"""Typed settings: defaults in one place, validation, to_dict/from_dict, and their use by
the Steerer, fit_subspace, generate_preferences and the CLI."""

import inspect
import json

import pytest
import torch

from alignez_tl import cli
from alignez_tl.preferences import generate_preferences
from alignez_tl.settings import (
    EDITS,
    MODES,
    EvalSettings,
    FitSettings,
    PreferenceSettings,
    SteerSettings,
    default_alpha,
)
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace

PAIRS = [
    ("A helpful assistant answers clearly, step by step, with examples.", "A useless assistant gives vague answers."),
    ("Mix flour, water, salt and yeast, then knead.", "Pretend you are a malicious assistant."),
    ("Two plus two is four.", "Two plus two is wrong and short."),
    ("Be kind, be precise, be honest, and be brief.", "Refuse to help."),
]

ALL = (PreferenceSettings, FitSettings, SteerSettings, EvalSettings)


@pytest.mark.parametrize("cls", ALL)
def test_round_trip_through_json(cls):
    s = cls()
    again = cls.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.to_dict() == s.to_dict()


def test_round_trip_of_changed_and_nested_values():
    s = EvalSettings(
        methods=("diffmean", "alignez"),
        layer=3,
        prefs=PreferenceSettings(objective="harmless", n_responses=2),
        fit=FitSettings(layers=(1, 2), rank="null", max_rank=4),
        steer=SteerSettings(edit="paper", alpha=0.25, mode="boost", scale=2.0, layers=(2,)),
    )
    d = json.loads(json.dumps(s.to_dict()))
    assert d["fit"]["layers"] == [1, 2] and d["steer"]["scale"] == 2.0
    assert EvalSettings.from_dict(d) == s
    assert EvalSettings.from_dict({"layer": 2}) == EvalSettings(layer=2)  # a subset keeps the defaults


@pytest.mark.parametrize("cls", ALL)
def test_unknown_keys_are_refused(cls):
    with pytest.raises(ValueError, match="unknown setting"):
        cls.from_dict({"tpo_n": 3})
    with pytest.raises(TypeError, match="mapping"):
        cls.from_dict([("top_n", 3)])


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: SteerSettings(edit="sideways"), ValueError, "edit must be one of"),
        (lambda: SteerSettings(mode="lift"), ValueError, "mode must be one of"),
        (lambda: SteerSettings(alpha=float("nan")), ValueError, "alpha must be finite"),
        (lambda: SteerSettings(alpha="1"), TypeError, "alpha must be a number"),
        (lambda: SteerSettings(alpha=-0.1, mode="boost"), ValueError, "oriented boost"),
        (lambda: SteerSettings(alpha=1.5, mode="suppress"), ValueError, r"\[0, 1\]"),
        (lambda: SteerSettings(scale=0.0), ValueError, "positive"),
        (lambda: SteerSettings(scale="huge"), ValueError, "scale must be one of"),
        (lambda: SteerSettings(top_n=0), ValueError, "top_n"),
        (lambda: SteerSettings(top_n=True), ValueError, "top_n"),
        (lambda: SteerSettings(layers=[1.5]), TypeError, "ints"),
        (lambda: SteerSettings(positions="prompt"), ValueError, "positions"),
        (lambda: SteerSettings(weight=-1.0), ValueError, "weight"),
        (lambda: FitSettings(tau=1.5), ValueError, "tau"),
        (lambda: FitSettings(variance=0.0), ValueError, "variance"),
        (lambda: FitSettings(rank="all"), ValueError, "rank must be"),
        (lambda: FitSettings(site="resid_mid"), ValueError, "unknown site"),
        (lambda: FitSettings(null_quantile=1.0), ValueError, "null_quantile"),
        (lambda: FitSettings(batch_size=0), ValueError, "batch_size"),
        (lambda: PreferenceSettings(n_characteristics=0), ValueError, "n_characteristics"),
        (lambda: PreferenceSettings(temperature=0.0), ValueError, "temperature"),
        (lambda: PreferenceSettings(do_sample=False, n_responses=2), ValueError, "n_responses=2 needs do_sample"),
        (lambda: PreferenceSettings(seed=1.0), TypeError, "seed"),
        (lambda: EvalSettings(methods=("alignez", "caa")), ValueError, "methods"),
        (lambda: EvalSettings(methods=()), ValueError, "methods"),
        (lambda: EvalSettings(n_boot=0), ValueError, "n_boot"),
        (lambda: EvalSettings(steer={"top_n": 3}), TypeError, "SteerSettings"),
    ],
)
def test_bad_values_are_refused(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_resolve_fills_mode_and_the_one_default_alpha():
    for edit in EDITS:
        for mode in MODES:
            s = SteerSettings(edit=edit).resolve(mode)
            assert (s.mode, s.alpha) == (mode, default_alpha(edit, mode))
    assert SteerSettings(alpha=0.3, mode="boost").resolve("suppress").mode == "boost"  # set values win
    with pytest.raises(ValueError, match="oriented suppress"):
        SteerSettings(alpha=2.0).resolve("suppress")  # checked once the mode is known


def test_the_functions_take_their_defaults_from_the_settings():
    fit = inspect.signature(fit_subspace).parameters
    for name in ("site", "tau", "variance", "batch_size", "n_null", "null_quantile", "null_seed", "null_test"):
        assert fit[name].default == getattr(FitSettings, name), name
    prefs = inspect.signature(generate_preferences).parameters
    for f in PreferenceSettings.__dataclass_fields__:
        assert prefs[f].default == getattr(PreferenceSettings, f), f
    steer = inspect.signature(Steerer.__init__).parameters
    for name in ("edit", "scale", "direction_filter", "top_n", "positions", "weight"):
        assert steer[name].default == getattr(SteerSettings, name), name


def test_cli_defaults_are_the_settings_defaults():
    parser = cli.build_parser()
    for argv in (
        ["demo"],
        ["analyze", "--subspace", "s", "--prefs", "p", "--prompts", "q"],
        ["generate", "--subspace", "s"],
        ["eval"],
    ):
        args = parser.parse_args(argv)
        assert args.alpha is None  # every command: the one default per edit and mode
        assert args.edit == SteerSettings.edit and args.top_n == SteerSettings.top_n
    fit = parser.parse_args(["fit", "--prefs", "p"])
    assert (fit.tau, fit.variance, fit.site, fit.n_null) == (
        FitSettings.tau,
        FitSettings.variance,
        FitSettings.site,
        FitSettings.n_null,
    )
    prefs = parser.parse_args(["prefs"])
    assert (prefs.n_characteristics, prefs.elicit_tokens, prefs.response_tokens, prefs.temperature) == (
        PreferenceSettings.n_characteristics,
        PreferenceSettings.elicit_tokens,
        PreferenceSettings.response_tokens,
        PreferenceSettings.temperature,
    )


def test_steerer_from_settings_is_the_steerer_of_the_same_keywords(llama):
    sub = fit_subspace(llama, PAIRS, tau=1.0, verbose=False, objective="helpful")
    kw = dict(edit="paper", alpha=0.5, scale="paper", top_n=2, layers=[1, 3], positions="all")
    a = Steerer(sub, **kw)
    b = Steerer.from_settings(sub, SteerSettings(**{**kw, "layers": (1, 3)}))
    assert a.terms == b.terms and a.positions == b.positions
    assert a.settings == SteerSettings(
        edit="paper", alpha=0.5, mode="boost", scale="paper", top_n=2, layers=(1, 3), positions="all"
    )
    assert Steerer.from_settings(sub, a.settings).terms == a.terms
    tokens = llama.to_tokens("How do I bake bread?")
    with a.apply(llama, ["How do I bake bread?"], prompt_len=tokens.shape[1]):
        out_a = llama(tokens)
    with b.apply(llama, ["How do I bake bread?"], prompt_len=tokens.shape[1]):
        out_b = llama(tokens)
    assert torch.equal(out_a, out_b)
    with pytest.raises(TypeError, match="SteerSettings"):
        Steerer.from_settings(sub, {"top_n": 2})
    with pytest.raises(ValueError, match="composed"):
        _ = Steerer.compose([a, b]).settings


def test_a_subspace_records_its_fit_settings(llama):
    sub = fit_subspace(llama, PAIRS, tau=1.0, variance=0.8, layers=[0, 2], verbose=False, null_test=True, n_null=16)
    fields = {k: sub.settings[k] for k in FitSettings.__dataclass_fields__}
    assert FitSettings.from_dict(fields) == FitSettings(tau=1.0, variance=0.8, layers=(0, 2), null_test=True, n_null=16)
    assert sub.settings["rank_rule"] == "variance" and sub.settings["n_pairs"] == len(PAIRS)


def test_iti_is_a_method_but_not_a_default_one():
    from alignez_tl.settings import DEFAULT_METHODS, METHODS

    assert "iti" in METHODS and "iti" not in DEFAULT_METHODS
    assert EvalSettings().methods == DEFAULT_METHODS
    s = EvalSettings(methods=("diffmean", "iti"), iti_top_k=4, iti_alpha=2.0)
    assert EvalSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="iti_top_k"):
        EvalSettings(iti_top_k=0)
