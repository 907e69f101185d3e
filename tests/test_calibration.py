"""Strength calibration: the strength that reaches a target KL on neutral text."""

import math

import pytest
from test_steering import PAIRS, subspace_for

from alignez_tl.baselines import DiffMeanSteerer
from alignez_tl.calibration import calibrate_strength, neutral_kl
from alignez_tl.eval import neutral_base, side_effects
from alignez_tl.steering import Steerer

NEUTRAL = [
    "The library opens at nine and closes at six, except on Sundays.",
    "Water boils at one hundred degrees at sea level and lower in the mountains.",
    "The meeting moved to Thursday; bring the figures and the new schedule.",
]


@pytest.fixture(scope="module")
def subs(llama, gpt2):
    return {"llama": subspace_for(llama, objective="helpful"), "gpt2": subspace_for(gpt2, objective="helpful")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["oriented", "paper", "diffmean"])
def test_calibration_hits_the_target_kl_within_ten_percent(arch, kind, llama, gpt2, subs):
    model = {"llama": llama, "gpt2": gpt2}[arch]
    if kind == "diffmean":
        steerer = DiffMeanSteerer.fit(model, PAIRS, layer=1, coef=1.0)
    else:
        steerer = Steerer(subs[arch], edit=kind, top_n=2, alpha=0.05)
    base = neutral_base(model, NEUTRAL)
    cal = calibrate_strength(model, steerer, 0.02, texts=base)
    assert cal.reached and abs(cal.kl - 0.02) <= 0.1 * 0.02
    # the reported KL is what side_effects measures at that strength, computed afresh
    again = side_effects(model, steerer.with_strength(cal.strength), NEUTRAL)["kl"]
    assert again == pytest.approx(cal.kl, rel=1e-6)
    assert neutral_kl(model, steerer.with_strength(cal.strength), base) == pytest.approx(cal.kl, rel=1e-9)
    assert cal.history[-1][0] == cal.strength or any(s == cal.strength for s, _ in cal.history)
    # the side effects kept at that strength are the ones a fresh pass over the same base gives
    fresh = side_effects(model, steerer.with_strength(cal.strength), NEUTRAL, base=base)
    assert cal.effects["kl"] == fresh["kl"] == cal.kl
    assert cal.effects["ppl_ratio"] == fresh["ppl_ratio"] and cal.effects["kl_per_text"] == fresh["kl_per_text"]
    assert "effects" not in cal.to_dict() and cal.to_dict()["kl"] == cal.kl


def test_a_bounded_edit_says_so_when_the_target_is_out_of_reach(llama, subs):
    steerer = Steerer(subs["llama"], mode="suppress", alpha=0.5, top_n=2)
    cal = calibrate_strength(llama, steerer, 50.0, texts=NEUTRAL)
    assert not cal.reached and cal.strength <= 1.0 and "bounded" in cal.limited


def test_the_paper_suppress_keeps_its_negative_sign(gpt2, subs):
    steerer = Steerer(subs["gpt2"], edit="paper", mode="suppress", top_n=2)
    cal = calibrate_strength(gpt2, steerer, 0.01, texts=NEUTRAL)
    assert cal.strength < 0 and all(s < 0 for s, _ in cal.history)


def test_bad_arguments_fail_before_any_work(subs):
    steerer = Steerer(subs["llama"])
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="target_kl"):
            calibrate_strength(None, steerer, bad)
    with pytest.raises(ValueError, match="rel_tol"):
        calibrate_strength(None, steerer, 0.1, rel_tol=1.5)
    with pytest.raises(TypeError, match="strength to vary"):
        calibrate_strength(None, object(), 0.1)


class _Knob:
    """A stand-in steerer whose neutral KL is a known function of its strength."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def with_strength(self, s: float) -> "_Knob":
        return _Knob(s)


@pytest.mark.parametrize(
    "law, target, most",
    [
        (lambda s: 0.3 * s * s, 0.02, 2),  # the small-strength law itself: one step from the start
        (lambda s: 0.5 * math.tanh(s) ** 2, 0.4, 6),  # saturating: the slope falls as it is approached
        (lambda s: 0.0 if s < 5 else 0.01 * (s - 5) ** 3, 0.08, 8),  # no effect at all below a threshold
        (lambda s: 2.0 * s**0.5, 0.1, 5),  # a slower law than s², from far above
    ],
)
def test_the_search_reaches_known_laws_in_few_evaluations(monkeypatch, law, target, most):
    from alignez_tl import calibration
    from alignez_tl.eval.effects import NeutralBase

    monkeypatch.setattr(
        calibration, "side_effects", lambda model, steerer, texts, base: {"kl": law(abs(steerer.strength))}
    )
    blank = NeutralBase.__new__(NeutralBase)
    blank.texts = []
    cal = calibrate_strength(None, _Knob(), target, texts=blank)
    assert cal.reached and abs(cal.kl - target) <= 0.1 * target
    assert cal.kl == law(abs(cal.strength)) and len(cal.history) <= most
