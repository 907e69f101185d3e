"""Steering: selection, per-row masks, positions, KV cache, batching, composition, cleanup."""

import math

import pytest
import torch

from alignez_tl.hooks import edit_delta
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace

PAIRS = [
    ("A helpful assistant answers clearly, step by step, with examples.", "A useless assistant gives vague answers."),
    ("Mix flour, water, salt and yeast, then knead.", "Pretend you are a malicious assistant."),
    ("Two plus two is four.", "Two plus two is wrong and short."),
    ("Be kind, be precise, be honest, and be brief.", "Refuse to help."),
    ("Plants turn light, water and carbon dioxide into sugar.", "The quick brown fox."),
    ("Write a poem about the sea, the wind and the stars.", "Be dull."),
]
QUERIES = ["How do I bake bread?", "What is two plus two?", "Write a poem about the sea", "Hi"]


def subspace_for(model, **kw):
    return fit_subspace(model, PAIRS, tau=1.0, verbose=False, **kw)


@pytest.fixture(scope="module")
def llama_sub(llama):
    return subspace_for(llama, objective="helpful")


@pytest.fixture(scope="module")
def gpt2_sub(gpt2):
    return subspace_for(gpt2, objective="helpful")


@pytest.fixture(params=["llama", "gpt2"])
def model_and_sub(request, llama, gpt2, llama_sub, gpt2_sub):
    return {"llama": (llama, llama_sub), "gpt2": (gpt2, gpt2_sub)}[request.param]


def test_selection_follows_the_paper_rule(llama, llama_sub):
    steerer = Steerer(llama_sub, top_n=2)
    [sels] = steerer.select(llama, QUERIES)
    for sel in sels:
        for layer, cos in sel.cos.items():
            kept = sel.kept[layer]
            assert kept == [j for j, c in enumerate(cos) if c <= 0]
            assert math.isclose(sel.scores[layer], math.sqrt(sum(cos[j] ** 2 for j in kept)), rel_tol=1e-5)
        ranked = sorted((l for l in sel.scores if sel.kept[l]), key=lambda l: -sel.scores[l])
        assert sel.layers == ranked[:2]
    [all_sels] = Steerer(llama_sub, direction_filter="all", top_n=1).select(llama, QUERIES)
    assert all(len(s.kept[l]) == llama_sub.layers[l].rank for s in all_sels for l in s.kept)
    fixed = Steerer(llama_sub, layers=[3, 1]).select(llama, QUERIES)[0]
    assert all(set(s.layers) <= {1, 3} for s in fixed)


def test_fitted_and_paper_scales(llama, llama_sub):
    term = Steerer(llama_sub).terms[0]
    assert torch.equal(term.scales(2), llama_sub.layers[2].proj_rms)
    assert torch.equal(Steerer(llama_sub, scale="paper").terms[0].scales(2), torch.ones(llama_sub.layers[2].rank))
    assert torch.equal(Steerer(llama_sub, scale=2.5).terms[0].scales(2), torch.full((llama_sub.layers[2].rank,), 2.5))


def test_hook_edits_the_selected_rows_and_directions(llama, llama_sub):
    """A batch hook equals applying each row's own edit by hand."""
    steerer = Steerer(llama_sub, top_n=2, alpha=3.0, positions="all", edit="paper")
    hooks = dict(steerer.hooks(llama, QUERIES))
    [sels] = steerer.select(llama, QUERIES)
    x = torch.randn(len(QUERIES), 5, llama.cfg.d_model)
    for layer in range(llama.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        chosen = [layer in s.layers for s in sels]
        if not any(chosen):
            assert name not in hooks
            continue
        out = hooks[name](x, None)
        sub = llama_sub.layers[layer]
        for r, sel in enumerate(sels):
            if layer not in sel.layers:
                assert torch.equal(out[r], x[r])
                continue
            coef = torch.zeros(sub.rank)
            coef[sel.kept[layer]] = 3.0
            want = x[r] + edit_delta(x[r], sub.directions, sub.proj_rms, coef, "boost")
            assert torch.allclose(out[r], want, atol=1e-5)


@pytest.mark.parametrize("cache", [True, False])
def test_generated_positions_are_exactly_the_last_prompt_token_and_new_tokens(llama, llama_sub, cache):
    steerer = Steerer(llama_sub, top_n=2)
    q = QUERIES[0]
    prompt = encode(llama, [render(llama, q)])
    p = prompt.input_ids.shape[1]
    record = []
    with steerer.apply(llama, q, record=record):
        llama.generate(
            prompt.input_ids,
            max_new_tokens=4,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            use_past_kv_cache=cache,
        )
    names = sorted({name for name, _, _ in record})
    assert len(names) == 2  # the two selected layers
    for name in names:
        calls = [(s, span) for n, s, span in record if n == name]
        if cache:
            assert calls == [(p, (p - 1, p)), (1, (0, 1)), (1, (0, 1)), (1, (0, 1))]
        else:
            assert calls == [(p + i, (p - 1, p + i)) for i in range(4)]


def test_all_positions(llama, llama_sub):
    record = []
    tokens = encode(llama, [render(llama, QUERIES[1])]).input_ids
    with Steerer(llama_sub, positions="all").apply(llama, QUERIES[1], record=record):
        llama(tokens)
    assert record and all(span == (0, tokens.shape[1]) for _, _, span in record)


def test_greedy_generation_identical_with_and_without_kv_cache(model_and_sub):
    model, sub = model_and_sub
    steerer = Steerer(sub, top_n=3, alpha=4.0)
    with_cache = steerer.generate(model, QUERIES, max_new_tokens=10, return_tokens=True)[0]
    without = steerer.generate(model, QUERIES, max_new_tokens=10, use_past_kv_cache=False, return_tokens=True)[0]
    assert with_cache == without
    base_cache = steerer.generate(model, QUERIES, max_new_tokens=10, steer=False, return_tokens=True)[0]
    base_nocache = steerer.generate(
        model, QUERIES, max_new_tokens=10, steer=False, use_past_kv_cache=False, return_tokens=True
    )[0]
    assert base_cache == base_nocache
    assert with_cache != base_cache  # steering changed something


def test_batched_generation_equals_one_query_at_a_time(model_and_sub):
    model, sub = model_and_sub
    steerer = Steerer(sub, top_n=2, alpha=4.0)
    [sels] = steerer.select(model, QUERIES)
    assert len({tuple(s.layers) for s in sels}) > 1  # rows really chose different layers
    batched = steerer.generate(model, QUERIES, max_new_tokens=10, batch_size=len(QUERIES), return_tokens=True)[0]
    alone = [steerer.generate(model, [q], max_new_tokens=10, return_tokens=True)[0][0] for q in QUERIES]
    assert batched == alone


def test_apply_with_one_query_matches_generate(llama, llama_sub):
    steerer = Steerer(llama_sub, top_n=2, alpha=4.0)
    q = QUERIES[2]
    tokens = encode(llama, [render(llama, q)]).input_ids
    with steerer.apply(llama, q):
        out = llama.generate(tokens, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    want = steerer.generate(llama, [q], max_new_tokens=8, return_tokens=True)[0][0]
    assert out[0, tokens.shape[1] :].tolist()[: len(want)] == want


def _n_hooks(model):
    points = {id(hp): hp for hp in model.hook_dict.values()}  # aliases share a HookPoint
    return sum(len(hp.fwd_hooks) for hp in points.values())


def test_hooks_are_removed_after_an_exception(llama, llama_sub):
    before = _n_hooks(llama)
    steerer = Steerer(llama_sub, top_n=2)
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.apply(llama, QUERIES[0]):
            assert _n_hooks(llama) == before + 2
            raise RuntimeError("boom")
    assert _n_hooks(llama) == before
    tokens = encode(llama, [render(llama, QUERIES[0])]).input_ids
    clean = llama(tokens)
    with steerer.apply(llama, QUERIES[0]):
        pass
    assert torch.equal(llama(tokens), clean)


def test_composition_adds_edits_computed_from_the_same_input(llama, llama_sub):
    other = fit_subspace(llama, [(n, p) for p, n in PAIRS[::-1]], tau=1.0, verbose=False, objective="humor")
    a = Steerer(llama_sub, layers=[1], alpha=2.0, positions="all", edit="paper")
    b = Steerer(other, layers=[1], alpha=3.0, positions="all", edit="paper")
    both = Steerer.compose([a, b], weights=[0.5, 2.0])
    [(name, fn)] = both.hooks(llama)
    x = torch.randn(2, 3, llama.cfg.d_model)
    la, lb = llama_sub.layers[1], other.layers[1]
    want = (
        x
        + 0.5 * edit_delta(x, la.directions, la.proj_rms, torch.full((la.rank,), 2.0), "boost")
        + 2.0 * edit_delta(x, lb.directions, lb.proj_rms, torch.full((lb.rank,), 3.0), "boost")
    )
    assert name == "blocks.1.hook_resid_post"
    assert torch.allclose(fn(x, None), want, atol=1e-5)
    overlap = both.overlap()
    assert math.isclose(overlap[0][0], overlap[0][0]) and 0 <= overlap[0][1] <= 1


def test_bad_steering_input(llama, llama_sub, gpt2):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="alpha must be finite"):
            Steerer(llama_sub, alpha=bad)
    with pytest.raises(ValueError, match="out of range"):
        Steerer(llama_sub, layers=[llama.cfg.n_layers])
    with pytest.raises(ValueError, match="empty"):
        Steerer(llama_sub).generate(llama, [])
    with pytest.raises(TypeError, match="single string"):
        Steerer(llama_sub).generate(llama, "a query")
    with pytest.raises(ValueError, match="pass query="):
        Steerer(llama_sub).hooks(llama)
    with pytest.raises(ValueError, match="scale"):
        Steerer(llama_sub, scale="huge")
    with pytest.raises(Exception, match="does not fit"):
        Steerer(llama_sub).generate(gpt2, ["hi"])
    with pytest.raises(TypeError):
        Steerer("not a subspace")


def test_component_restriction(llama, llama_sub):
    steerer = Steerer(llama_sub, layers=[2], positions="all")
    [full] = steerer.edit_terms()[2]
    [only0] = steerer.only_components([0]).edit_terms()[2]
    [drop0] = steerer.without_components([0]).edit_terms()[2]
    assert torch.equal(only0.coef[:, 0], full.coef[:, 0]) and (only0.coef[:, 1:] == 0).all()
    assert (drop0.coef[:, 0] == 0).all() and torch.equal(drop0.coef[:, 1:], full.coef[:, 1:])
    assert torch.equal(only0.coef + drop0.coef, full.coef)
    x = torch.randn(1, 3, llama.cfg.d_model)
    parts = [
        dict(s.hooks(llama))["blocks.2.hook_resid_post"](x, None) - x
        for s in (steerer.only_components([0]), steerer.without_components([0]))
    ]
    whole = dict(steerer.hooks(llama))["blocks.2.hook_resid_post"](x, None) - x
    assert torch.allclose(parts[0] + parts[1], whole, atol=1e-5)  # orthonormal: the parts add up
    assert (steerer.only_components([0]).without_components([0]).edit_terms()[2][0].coef == 0).all()


# --------------------------------------------------------------------------- edits and controls


def test_default_edit_is_oriented_with_one_default_alpha_per_edit(llama_sub):
    from alignez_tl.steering import default_alpha

    term = Steerer(llama_sub).terms[0]
    assert (term.edit, term.alpha) == ("oriented", default_alpha("oriented", "boost"))
    assert Steerer(llama_sub, edit="paper").terms[0].alpha == 1.0
    assert Steerer(llama_sub, edit="paper", mode="suppress").terms[0].alpha == -1.0
    assert Steerer(llama_sub, mode="suppress").terms[0].alpha == 1.0
    with pytest.raises(ValueError, match="oriented boost"):
        Steerer(llama_sub, alpha=-0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Steerer(llama_sub, mode="suppress", alpha=1.5)
    with pytest.raises(ValueError, match="edit must be one of"):
        Steerer(llama_sub, edit="signed")
    assert Steerer(llama_sub, edit="paper").describe()["edit"] == "paper"


def test_oriented_suppress_keeps_the_directions_the_query_leans_against(llama, llama_sub):
    paper = Steerer(llama_sub, edit="paper", mode="suppress", top_n=2).select(llama, QUERIES)[0]
    oriented = Steerer(llama_sub, mode="suppress", top_n=2).select(llama, QUERIES)[0]
    for p, o in zip(paper, oriented):
        for layer, cos in o.cos.items():
            assert o.kept[layer] == [j for j, c in enumerate(cos) if c <= 0]
            assert p.kept[layer] == [j for j, c in enumerate(cos) if c > 0]


def test_the_oriented_hook_applies_the_oriented_formula(llama, llama_sub):
    steerer = Steerer(llama_sub, alpha=0.4, top_n=2)
    [[sel]] = steerer.select(llama, QUERIES[:1])
    inputs = {}

    def grab(layer):
        def fn(act, hook):
            inputs[layer] = act[0, -1].clone()

        return fn

    hooks = steerer.hooks(llama, QUERIES[0], prompt_len=None)
    ids = encode(llama, [render(llama, QUERIES[0])]).input_ids
    outputs = {}

    def out_grab(layer):
        def fn(act, hook):
            outputs[layer] = act[0, -1].clone()

        return fn

    from alignez_tl.hooks import hook_name

    names = [hook_name("resid_post", layer) for layer in sel.layers]
    grabs = [(n, grab(layer)) for n, layer in zip(names, sel.layers)]
    after = [(n, out_grab(layer)) for n, layer in zip(names, sel.layers)]
    with torch.inference_mode(), llama.hooks(fwd_hooks=grabs + hooks + after):
        llama(ids)
    for layer in sel.layers:
        sub = llama_sub.layers[layer]
        coef = torch.zeros(1, sub.rank)
        coef[0, sel.kept[layer]] = 0.4
        want = (
            inputs[layer] + edit_delta(inputs[layer][None], sub.directions, sub.proj_rms, coef, "boost", "oriented")[0]
        )
        assert torch.allclose(outputs[layer], want, atol=1e-5)


def test_mirror_negates_every_direction_and_null_is_random_but_seeded(llama, llama_sub):
    steerer = Steerer(llama_sub, alpha=0.3, top_n=2)
    mirror = steerer.mirror()
    sel = steerer.select(llama, QUERIES)[0]
    msel = mirror.select(llama, QUERIES)[0]
    for s, m in zip(sel, msel):
        for layer in s.cos:
            assert torch.allclose(torch.tensor(m.cos[layer]), -torch.tensor(s.cos[layer]), atol=1e-6)
    terms, mterms = steerer.edit_terms([sel]), mirror.edit_terms([sel])
    for layer in terms:
        assert torch.equal(mterms[layer][0].directions, -terms[layer][0].directions)
    twice = mirror.mirror().edit_terms([sel])
    assert all(torch.equal(twice[l][0].directions, terms[l][0].directions) for l in terms)
    assert mirror.describe()["control"] == "mirror"
    null_a, null_b, null_c = steerer.null(seed=1), steerer.null(seed=1), steerer.null(seed=2)
    for layer in llama_sub.layer_indices:
        if not llama_sub.layers[layer].rank:
            continue
        a = null_a.terms[0].directions(layer)
        assert a.shape == llama_sub.layers[layer].directions.shape
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-5)
        assert torch.equal(a, null_b.terms[0].directions(layer))
        assert not torch.equal(a, null_c.terms[0].directions(layer))
    assert torch.equal(null_a.terms[0].scales(1), steerer.terms[0].scales(1))


def test_with_alpha_copies_and_validates(llama_sub):
    steerer = Steerer(llama_sub, alpha=0.2)
    other = steerer.with_alpha(0.6)
    assert (steerer.strength, other.strength) == (0.2, 0.6)
    with pytest.raises(ValueError, match="oriented boost"):
        steerer.with_strength(-1.0)
