"""Attribution of steered tokens: exactness in the exact case, bookkeeping, output, bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_steering import PAIRS, QUERIES
from tiny import make_model

from alignez_tl.generation import stop_token_ids
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace
from analyses.attribution import Attribution, attribute_steering


def _sub(model):
    return fit_subspace(model, PAIRS, tau=1.0, verbose=False, objective="helpful")


@pytest.fixture(scope="module")
def subs(llama, gpt2):
    return {"llama": (llama, _sub(llama)), "gpt2": (gpt2, _sub(gpt2))}


@pytest.fixture(scope="module")
def affine_models():
    """Fresh tiny models whose final norm has a non-trivial weight (and, for GPT-2, bias).

    The session fixtures keep weight 1 and bias 0, which would hide a missing `w_ln`.
    """
    out = {}
    gen = torch.Generator().manual_seed(1)
    for key, arch, dtype, tol in (
        ("gpt2", "gpt2", torch.float64, 1e-9),
        ("llama", "llama", torch.float32, 1e-4),
        ("gpt2-compat", "gpt2", torch.float64, 1e-9),
    ):
        model = make_model(arch, dtype=dtype, seed=3)
        norm = model.ln_final.original_component
        with torch.no_grad():
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
            if getattr(norm, "bias", None) is not None:
                norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen, dtype=torch.float64) * 0.5)
        if key.endswith("compat"):
            model.enable_compatibility_mode()  # folds the norm weights into W_U
        out[key] = (model, _sub(model), tol)
    return out


def _counting(model):
    calls = []

    def fn(act, hook):
        calls.append(act.shape[1])

    return calls, model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", fn)])


def _independent_frozen_change(model, steerer, query, base, steered):
    """The steered-minus-base logit difference, final-norm scale frozen at the steered run.

    Computed here from the model's own logits in two fresh forward passes:
    `(d_s − c) − (σ_b / σ_s)(d_b − c)`, with `c` the part the norm bias and `b_U` add.
    """
    prompt = encode(model, [render(model, query)]).input_ids[0].tolist()
    plen = len(prompt)
    out = {}
    for key, cont, hooks in (("b", base, []), ("s", steered, steerer.hooks(model, query, prompt_len=plen))):
        scale = {}

        def keep(act, hook, scale=scale):
            scale["v"] = act[0, :, 0].detach().to(torch.float64)

        with torch.inference_mode(), model.hooks(fwd_hooks=hooks + [("ln_final.hook_scale", keep)]):
            logits = model(torch.tensor([prompt + cont]))[0].to(torch.float64)
        out[key] = (logits, scale["v"])
    n = min(len(base), len(steered))
    pos = torch.arange(plen - 1, plen - 1 + n)
    b_ids, s_ids = torch.tensor(base[:n]), torch.tensor(steered[:n])
    rows = torch.arange(n)
    d = {k: out[k][0][pos][rows, s_ids] - out[k][0][pos][rows, b_ids] for k in out}
    W_U = model.W_U.detach().to(torch.float64)
    bias = getattr(model.ln_final.original_component, "bias", None)
    c = torch.zeros(n, dtype=torch.float64)
    if bias is not None:
        c = c + bias.detach().to(torch.float64) @ (W_U[:, s_ids] - W_U[:, b_ids])
    b_U = model.b_U.detach().to(torch.float64)
    c = c + b_U[s_ids] - b_U[b_ids]
    ratio = out["b"][1][pos] / out["s"][1][pos]
    return ((d["s"] - c) - ratio * (d["b"] - c)).numpy()


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt2-compat"])
def test_parts_sum_exactly_when_the_edit_is_at_the_final_layer(affine_models, arch):
    """Final-layer edit + shared prefix: the DLA parts are the whole change, to rounding."""
    model, sub, tol = affine_models[arch]
    last = model.cfg.n_layers - 1
    steerer = Steerer(sub, alpha=6.0, layers=[last], direction_filter="all")
    query = QUERIES[0]
    base = attribute_steering(model, steerer, query, max_new_tokens=5).base_tokens
    vocab = model.cfg.d_vocab
    other = lambda t: (t + 37) % vocab  # noqa: E731 - any different token
    forced = [
        (base, [other(base[0])] + base[1:]),  # differs at position 0: the prompt is the prefix
        (base, base[:2] + [other(base[2])] + base[3:]),  # shared prefix of two tokens, then differs
    ]
    for base_ids, steered_ids in forced:
        res = attribute_steering(model, steerer, query, continuations=(base_ids, steered_ids))
        exact = _independent_frozen_change(model, steerer, query, base_ids, steered_ids)
        k = res.first_divergence
        assert k is not None and res.same_prefix[: k + 1].all() and not res.same_prefix[k + 1 :].any()
        assert abs(exact[k]) > 1e-3  # the check is not 0 == 0
        parts = res.per_direction[: k + 1].sum(1) + res.cast_residual[: k + 1]
        np.testing.assert_allclose(parts, exact[: k + 1], rtol=tol, atol=tol)
        np.testing.assert_allclose(res.frozen_scale_change, exact, rtol=tol, atol=tol)
        # what the hook's rounding adds beyond the per-direction terms is tiny, so the
        # per-direction parts alone match as well
        assert np.abs(res.cast_residual).max() < tol * max(1.0, np.abs(exact).max())
        np.testing.assert_allclose(res.per_direction[: k + 1].sum(1), exact[: k + 1], rtol=tol, atol=tol)
        assert res.layers == [last]
        assert res.reconstruction_error < tol


def test_an_earlier_layer_edit_is_not_fully_direct(affine_models):
    """The exact-case check can fail: an edit at layer 0 also acts through later layers."""
    model, sub, _ = affine_models["gpt2"]
    steerer = Steerer(sub, alpha=6.0, layers=[0], direction_filter="all")
    base = attribute_steering(model, steerer, QUERIES[0], max_new_tokens=3).base_tokens
    steered = [(base[0] + 37) % model.cfg.d_vocab] + base[1:]
    res = attribute_steering(model, steerer, QUERIES[0], continuations=(base, steered))
    gap = abs(res.direct_total[0] + res.cast_residual[0] - res.frozen_scale_change[0])
    assert gap > 1e-3


def test_sums_agree(subs):
    model, sub = subs["llama"]
    res = attribute_steering(model, Steerer(sub, alpha=8.0, top_n=2), QUERIES[0], max_new_tokens=6)
    np.testing.assert_allclose(res.per_layer.sum(1), res.direct_total, atol=1e-9)
    np.testing.assert_allclose(res.per_direction.sum(1), res.direct_total, atol=1e-9)
    np.testing.assert_allclose(res.per_layer_direction.sum((1, 2)), res.direct_total, atol=1e-9)
    np.testing.assert_allclose(res.per_layer_direction.sum(2), res.per_layer, atol=1e-12)


# --------------------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_shapes_flags_and_pass_count(subs, arch):
    model, sub = subs[arch]
    steerer = Steerer(sub, alpha=8.0, top_n=2)
    query, max_new = QUERIES[1], 6
    calls, ctx = _counting(model)
    with ctx:
        [ref_base], _ = steerer.generate(model, [query], max_new_tokens=max_new, steer=False, return_tokens=True)
        [ref_steered], _ = steerer.generate(model, [query], max_new_tokens=max_new, return_tokens=True)
        n_generation = len(calls)
        res = attribute_steering(model, steerer, query, max_new_tokens=max_new)
    n_attribution = len(calls) - n_generation
    # Steerer.generate reads its selection from the fast path's prefill (no TransformerLens
    # pass); attribute_steering runs its one selection pass, its own passes, and generation
    assert n_generation == 0
    assert n_attribution - 1 == res.n_forward_passes <= 2

    stops = stop_token_ids(model)
    for got, ref in ((res.base_tokens, ref_base), (res.steered_tokens, ref_steered)):
        assert got[: len(ref)] == ref  # the same tokens as Steerer.generate
        if len(ref) < max_new:  # ended on a stop token, which is kept as a position
            assert len(got) == len(ref) + 1 and got[-1] in stops
        else:
            assert len(got) == len(ref)
    n = min(len(res.base_tokens), len(res.steered_tokens))
    [sel] = steerer.select(model, [query])
    assert res.n_positions == n
    assert res.layers == sorted(sel[0].layers)
    assert res.directions == sorted({(0, j) for layer in sel[0].layers for j in sel[0].kept[layer]})
    for name in (
        "changed",
        "same_prefix",
        "logit_diff_steered",
        "logit_diff_base",
        "frozen_scale_change",
        "direct_total",
        "cast_residual",
        "scale_ratio",
    ):
        assert getattr(res, name).shape == (n,), name
    assert res.per_layer.shape == (n, len(res.layers))
    assert res.per_direction.shape == (n, len(res.directions))
    assert res.per_layer_direction.shape == (n, len(res.layers), len(res.directions))
    assert list(res.changed) == [b != s for b, s in zip(res.base_tokens[:n], res.steered_tokens[:n])]
    first = next((i for i in range(n) if res.changed[i]), None)
    assert res.first_divergence == first
    assert res.changed.any()  # alpha 8 changes the answer of this tiny model
    # greedy: each run prefers its own token, so the analysis passes reproduce generation
    assert (res.logit_diff_steered >= -1e-5).all()
    assert (res.logit_diff_base <= 1e-5).all()
    assert np.all(res.logit_diff_steered[~res.changed] == 0)
    assert res.reconstruction_error < 1e-4
    assert np.abs(res.cast_residual).max() < 1e-4
    assert len(res.base_strings) == len(res.base_tokens)
    assert len(res.steered_strings) == len(res.steered_tokens)


def test_composed_objectives_are_labelled(subs):
    model, sub = subs["llama"]
    steerer = Steerer.compose([Steerer(sub, alpha=4.0, top_n=2), Steerer(sub, alpha=2.0, top_n=1)])
    res = attribute_steering(model, steerer, QUERIES[0], max_new_tokens=4)
    assert {p for p, _ in res.directions} == {0, 1}
    assert all(label.startswith(("o0.", "o1.")) for label in res.direction_labels)
    np.testing.assert_allclose(res.per_direction.sum(1), res.direct_total, atol=1e-9)
    assert np.abs(res.cast_residual).max() < 1e-4


def test_deterministic_and_json(subs):
    model, sub = subs["gpt2"]
    steerer = Steerer(sub, alpha=8.0, top_n=2)
    a = attribute_steering(model, steerer, QUERIES[2], max_new_tokens=5).to_dict()
    b = attribute_steering(model, steerer, QUERIES[2], max_new_tokens=5).to_dict()
    assert json.dumps(a, allow_nan=False) == json.dumps(b, allow_nan=False)
    assert a["n_forward_passes"] == 2 and a["prompt"] == QUERIES[2]


# --------------------------------------------------------------------------- output


@pytest.fixture(scope="module")
def result(subs):
    model, sub = subs["llama"]
    return attribute_steering(model, Steerer(sub, alpha=8.0, top_n=2), QUERIES[0], max_new_tokens=6)


def test_html_escapes_text_and_has_one_span_per_steered_token(result):
    page = result.to_html()
    assert page.count('class="alignez-tok"') == len(result.steered_tokens)
    assert "<script" not in page
    evil = dataclasses.replace(
        result,
        prompt='<script>alert("p")</script>',
        steered_strings=["<script>alert(1)</script>"] + result.steered_strings[1:],
        base_strings=['"><img src=x onerror=alert(2)>'] + result.base_strings[1:],
    )
    page = evil.to_html()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('class="alignez-tok"') == len(result.steered_tokens)
    assert page.count("<span") == page.count("</span>")


def test_html_marks_positions_without_a_base_token(subs):
    model, sub = subs["llama"]
    steerer = Steerer(sub, alpha=8.0, top_n=2)
    res = attribute_steering(model, steerer, QUERIES[0], continuations=([5, 6], [7, 8, 9, 10]))
    assert res.n_positions == 2 and len(res.steered_tokens) == 4
    page = res.to_html()
    assert page.count('class="alignez-tok"') == 4
    assert page.count("no base token at this position") == 2


def test_plot_returns_a_figure(result):
    from matplotlib.figure import Figure

    fig = result.plot()
    assert isinstance(fig, Figure)
    assert len(fig.axes) >= 3
    labels = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    assert len(labels) == result.n_positions


# --------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_forward_pass(subs):
    model, sub = subs["llama"]
    steerer = Steerer(sub, alpha=2.0)
    calls, ctx = _counting(model)
    with ctx:
        with pytest.raises(TypeError, match="Steerer"):
            attribute_steering(model, sub, QUERIES[0])
        with pytest.raises(ValueError, match="empty"):
            attribute_steering(model, steerer, "")
        with pytest.raises(ValueError, match="empty"):
            attribute_steering(model, steerer, "   ")
        with pytest.raises(TypeError, match="string"):
            attribute_steering(model, steerer, ["a list"])
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="max_new_tokens"):
                attribute_steering(model, steerer, QUERIES[0], max_new_tokens=bad)
        with pytest.raises(ValueError, match="top_k"):
            attribute_steering(model, steerer, QUERIES[0], top_k=0)
        with pytest.raises(ValueError, match="empty"):
            attribute_steering(model, steerer, QUERIES[0], continuations=([], [1]))
        with pytest.raises(ValueError, match="outside"):
            attribute_steering(model, steerer, QUERIES[0], continuations=([1], [10**9]))
    assert calls == []
    assert isinstance(Attribution, type)


def test_to_dict_round_trips(result):
    data = json.loads(json.dumps(result.to_dict()))
    again = Attribution.from_dict(data)
    assert again.to_dict() == result.to_dict()
    assert again.to_html() == result.to_html()


def test_plot_labels_show_control_characters_visibly():
    from analyses.attribution import _short

    assert _short("a\rb\x12\nc\td", 20) == "a\\x0db\\x12↵c→d"
    assert _short("abcdefgh", 5) == "abcd…"
