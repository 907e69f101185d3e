"""Component ablation (analyses.ablation): invariants, exactness, a planted direction."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_steering import PAIRS, QUERIES  # the same fitting pairs and queries as the steering tests

from alignez_tl.hooks import edit_delta
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import AlignmentSubspace, LayerSubspace, fit_subspace
from analyses.ablation import Ablation, ablate_components, projection_hooks

TRIPLES = [
    ("How do I bake bread?", "Mix flour, water and yeast, then knead.", "No."),
    ("What is two plus two?", "Two plus two is four.", "Be dull and wrong, refuse to help."),
]
GREEDY = 3


@pytest.fixture(scope="module")
def fitted(llama):
    """A real fitted subspace on the tiny Llama (rank 5 at every layer)."""
    sub = fit_subspace(llama, PAIRS, tau=1.0, verbose=False, objective="helpful")
    assert set(sub.ranks().values()) == {5}
    steerer = Steerer(sub, top_n=2, alpha=4.0)
    # components [0, 4] -> cumulative top:1..top:5, and top:5 is every direction
    result = ablate_components(llama, steerer, QUERIES, [0, 4], pairs=TRIPLES, greedy_tokens=GREEDY, batch_size=4)
    return steerer, result


def _layer(layer, dirs, rms):
    k = dirs.shape[0]
    return LayerSubspace(
        layer=layer,
        directions=dirs.to(torch.float32),
        singular_values=torch.ones(k),
        explained_variance=torch.full((k,), 1.0 / k),
        n_pairs=k,
        n_kept=k,
        pair_cos=torch.zeros(k),
        proj_mean=torch.zeros(k),
        proj_rms=torch.tensor(rms, dtype=torch.float32),
        mean_diff_proj=torch.ones(k),
    )


@pytest.fixture(scope="module")
def planted(gpt2):
    """Layer 2: θ0 with scale 1 (a big move at α=10: residual norms are ~3 here) and θ1
    with scale 1e-6 (its edit is at most 1e-5: irrelevant). Layer 1 has three more
    directions, so index 2 exists but the steering (fixed to layer 2) never edits it."""
    d = gpt2.cfg.d_model
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, 5, generator=g, dtype=torch.float64))
    sub = AlignmentSubspace(
        layers={2: _layer(2, basis[:, :2].T, [1.0, 1e-6]), 1: _layer(1, basis[:, 2:].T, [1.0, 1.0, 1.0])},
        site="resid_post",
        d_model=d,
    )
    steerer = Steerer(sub, alpha=10.0, direction_filter="all", layers=[2])
    result = ablate_components(gpt2, steerer, QUERIES[:3], [0, 1, 2], pairs=TRIPLES, greedy_tokens=4)
    return steerer, result


# --------------------------------------------------------------------------- shapes


def test_shapes_json_and_forward_count(fitted):
    steerer, r = fitted
    assert isinstance(r, Ablation)
    assert r.components == [0, 4] and r.top_k == [1, 2, 3, 4, 5]
    names = (
        ["base", "full", "drop:0", "drop:4", "only:0", "only:4"] + [f"top:{k}" for k in range(1, 6)] + ["projected_out"]
    )
    assert list(r.per_prompt) == names
    for metric in (
        "kl_vs_full",
        "kl_vs_base",
        "margin",
        "delta_margin",
        "edit_norm",
        "edit_norm_change",
        "tokens_changed_vs_full",
        "tokens_changed_vs_base",
    ):
        assert len(r.drop[metric]) == len(r.only[metric]) == 2
        assert len(r.cumulative[metric]) == 5
        for name in names:
            want = len(TRIPLES) if "margin" in metric else len(QUERIES)
            assert len(r.per_prompt[name][metric]) == want
            assert math.isclose(r.variant(name)[metric], sum(r.per_prompt[name][metric]) / want, rel_tol=1e-12)
    assert r.drop["kl_vs_full"][1] == r.variant("drop:4")["kl_vs_full"]
    assert all(len(row) <= GREEDY for rows in r.tokens.values() for row in rows)
    assert sum(len(row) for row in r.tokens["full"]) > 0
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["per_prompt"]["full"]["margin"] == r.per_prompt["full"]["margin"]
    back = Ablation.from_dict(d)
    assert back.to_dict() == d and back.variant("drop:0") == r.variant("drop:0")
    with pytest.raises(ValueError, match="not an ablation"):
        Ablation.from_dict({"analysis": "attribution"})
    # V variants x (B_p prompt passes x (1 + greedy tokens) + B_m margin passes). Same index
    # sets run once: top:1 = only:0, top:4 = drop:4 = {0..3}, top:5 = full -> 12 - 3 = 9
    assert r.settings["n_variants_run"] == 9
    v, b_p, b_m = 9, math.ceil(len(QUERIES) / 4), math.ceil(2 * len(TRIPLES) / 4)
    assert r.n_forward == v * (b_p * (1 + GREEDY) + b_m)
    assert "full" in r.summary() and "projected_out" in r.summary()


def test_invariants(fitted):
    _, r = fitted
    for name, m in r.per_prompt.items():
        assert all(v >= 0 for v in m["kl_vs_full"] + m["kl_vs_base"]), name
        assert all(0 <= v <= GREEDY for v in m["tokens_changed_vs_full"] + m["tokens_changed_vs_base"])
    base, full = r.per_prompt["base"], r.per_prompt["full"]
    assert all(
        v == 0 for v in base["kl_vs_base"] + base["delta_margin"] + base["edit_norm"] + base["tokens_changed_vs_base"]
    )
    assert all(v == 0 for v in full["kl_vs_full"] + full["edit_norm_change"] + full["tokens_changed_vs_full"])
    # the steering does something, so the checks below are not vacuous
    assert r.full["kl_vs_base"] > 1e-3 and r.full["edit_norm"] > 0
    # only(0..4) is every direction: exactly the full steering
    top = r.per_prompt["top:5"]
    assert all(v == 0 for v in top["kl_vs_full"] + top["edit_norm_change"] + top["tokens_changed_vs_full"])
    assert top["margin"] == full["margin"] and r.tokens["top:5"] == r.tokens["full"]
    assert r.per_prompt["top:1"] == r.per_prompt["only:0"]  # the same edit (run once)
    assert r.per_prompt["top:4"] == r.per_prompt["drop:4"]
    assert r.base["kl_vs_full"] > 0  # KL(full || base), a different number from KL(base || full)


def test_kl_tokens_and_only_every_component_by_hand(llama, fitted):
    """KL directions and greedy tokens against a hand computation; and what lets the
    analysis run top:R once with full: only(0..R-1) gives bit-identical logits."""
    steerer, r = fitted
    batch = encode(llama, [render(llama, q) for q in QUERIES])
    sels = steerer.select(llama, QUERIES)
    logits = []
    for st in (None, steerer, steerer.only_components(range(5)), steerer.without_components([7])):
        hooks = [] if st is None else st.hooks(llama, selections=sels, prompt_len=batch.input_ids.shape[1])
        with torch.inference_mode(), llama.hooks(fwd_hooks=hooks):
            logits.append(
                llama(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids())[
                    :, -1
                ].float()
            )
    base, full = logits[0], logits[1]
    assert torch.equal(full, logits[2]) and torch.equal(full, logits[3])
    lb, lf = torch.log_softmax(base, -1), torch.log_softmax(full, -1)
    kl_bf = (lb.exp() * (lb - lf)).sum(-1)  # KL(base || full)
    kl_fb = (lf.exp() * (lf - lb)).sum(-1)  # KL(full || base)
    assert r.per_prompt["full"]["kl_vs_base"] == pytest.approx(kl_bf.tolist(), rel=1e-4, abs=1e-6)
    assert r.per_prompt["base"]["kl_vs_full"] == pytest.approx(kl_fb.tolist(), rel=1e-4, abs=1e-6)
    assert not torch.allclose(kl_bf, kl_fb, rtol=1e-2)  # the two directions differ here
    # greedy tokens: exactly Steerer.generate's, on both generation backends
    for steer, name in ((True, "full"), (False, "base")):
        for backend in ("hf", "tl"):
            ids, _ = steerer.generate(
                llama, QUERIES, max_new_tokens=GREEDY, steer=steer, return_tokens=True, backend=backend
            )
            assert r.tokens[name] == ids


def test_batch_invariant_and_deterministic(llama, fitted):
    steerer, r = fitted
    two = ablate_components(llama, steerer, QUERIES, [0], pairs=TRIPLES, greedy_tokens=GREEDY, batch_size=3)
    # base, full, drop:0, only:0 (= top:1, run once), projected_out; 2 prompt + 2 margin batches
    assert two.n_forward == 5 * (2 * (1 + GREEDY) + 2)
    for name in ("base", "full", "drop:0", "only:0", "projected_out"):
        for metric, vals in two.per_prompt[name].items():
            want = r.per_prompt[name][metric]
            assert vals == pytest.approx(want, rel=1e-4, abs=1e-5), (name, metric)
        assert two.tokens[name] == r.tokens[name]
    kw = dict(greedy_tokens=2, batch_size=2)
    assert (
        ablate_components(llama, steerer, QUERIES[:2], [1], **kw).to_dict()
        == ablate_components(llama, steerer, QUERIES[:2], [1], **kw).to_dict()
    )


# --------------------------------------------------------------------------- exactness


def test_margin_is_teacher_forced_log_prob_with_generated_positions(llama, fitted):
    steerer, r = fitted
    tok = llama.tokenizer
    for pi, (q, pos, neg) in enumerate(TRIPLES):
        prompt = encode(llama, [render(llama, q)]).input_ids[0].tolist()
        p = len(prompt)
        margins = {}
        for steer in (False, True):
            logp = []
            for resp in (pos, neg):
                ids = torch.tensor([prompt + tok(resp, add_special_tokens=False)["input_ids"]])
                record = []
                hooks = steerer.hooks(llama, q, prompt_len=p, record=record) if steer else []
                with torch.inference_mode(), llama.hooks(fwd_hooks=hooks):
                    lsm = torch.log_softmax(llama(ids).float(), -1)
                logp.append(float(lsm[0, p - 1 : -1].gather(-1, ids[0, p:, None]).sum()))
                if steer:  # the last prompt token and every response token, nothing earlier
                    assert record and all(span == (p - 1, ids.shape[1]) for _, _, span in record)
            margins[steer] = logp[0] - logp[1]
        assert r.per_prompt["base"]["margin"][pi] == pytest.approx(margins[False], abs=2e-3)
        assert r.per_prompt["full"]["margin"][pi] == pytest.approx(margins[True], abs=2e-3)
        assert r.per_prompt["full"]["delta_margin"][pi] == pytest.approx(margins[True] - margins[False], abs=4e-3)
    assert r.full["delta_margin"] != 0


@pytest.mark.parametrize("variant", ["full", "drop:0"])
def test_edit_norm_is_the_hook_edit(llama, fitted, variant):
    """Σ_layers ‖edit‖ at the last prompt token, from each hook's actual input."""
    steerer, r = fitted
    st = steerer if variant == "full" else steerer.without_components([0])
    sels = st.select(llama, QUERIES)
    batch = encode(llama, [render(llama, q) for q in QUERIES])
    hooks = st.hooks(llama, selections=sels, prompt_len=batch.input_ids.shape[1])
    inputs = {}

    def grab(layer):
        def fn(act, hook):
            inputs[layer] = act[:, -1].float().clone()

        return fn

    terms = st.edit_terms(sels)
    grabs = [(f"blocks.{layer}.hook_resid_post", grab(layer)) for layer in terms]
    with torch.inference_mode(), llama.hooks(fwd_hooks=grabs + hooks):  # grabs run first
        llama(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids())
    want = torch.zeros(len(QUERIES))
    for layer, [term] in terms.items():
        delta = edit_delta(inputs[layer], term.directions, term.scales, term.coef, term.mode, term.edit)
        want += delta.norm(dim=-1)
    assert r.per_prompt[variant]["edit_norm"] == pytest.approx(want.tolist(), rel=1e-4, abs=1e-5)
    assert want.sum() > 0


# --------------------------------------------------------------------------- planted


def test_planted_direction_carries_the_effect(planted):
    _, r = planted
    v = r.variant
    assert v("full")["kl_vs_base"] > 0.05  # the planted θ0 really moves the next token
    assert abs(v("full")["delta_margin"]) > 0.1
    assert v("full")["tokens_changed_vs_base"] > 0
    # dropping θ0 removes the effect; θ0 alone is the effect
    assert v("drop:0")["kl_vs_base"] < 1e-5
    assert abs(v("drop:0")["delta_margin"]) < 1e-3
    assert v("drop:0")["tokens_changed_vs_base"] == 0
    assert v("only:0")["kl_vs_full"] < 1e-5 and v("only:0")["tokens_changed_vs_full"] == 0
    assert v("top:1")["kl_vs_full"] < 1e-5
    # dropping the irrelevant θ1 keeps the full effect
    assert v("drop:1")["kl_vs_full"] < 1e-5 and v("drop:1")["tokens_changed_vs_full"] == 0
    assert v("only:1")["kl_vs_base"] < 1e-5
    # per prompt, not only on average
    assert all(x < 1e-5 for x in r.per_prompt["drop:0"]["kl_vs_base"])
    assert all(x > 1e-3 for x in r.per_prompt["full"]["kl_vs_base"])
    # index 2 exists only at layer 1, which this steering never edits: dropping it is a no-op
    assert r.per_prompt["drop:2"] == r.per_prompt["full"] and r.tokens["drop:2"] == r.tokens["full"]
    assert v("only:2")["kl_vs_base"] < 1e-6 and v("only:2")["edit_norm"] == 0
    # the edit norm of θ0 is nearly all of it
    assert v("only:0")["edit_norm"] == pytest.approx(v("full")["edit_norm"], rel=1e-4)
    assert v("drop:0")["edit_norm"] < 1e-4


# --------------------------------------------------------------------------- projected out


def test_projection_removes_the_span(llama, fitted):
    steerer, r = fitted
    sub = steerer.terms[0].subspace
    proj = projection_hooks(steerer)
    assert [name for name, _ in proj] == [f"blocks.{layer}.hook_resid_post" for layer in sub.layer_indices]
    batch = encode(llama, [render(llama, q) for q in QUERIES])
    before, after = {}, {}

    def grab(store, layer):
        def fn(act, hook):
            store[layer] = act[:, -1].float().clone()

        return fn

    names = [f"blocks.{layer}.hook_resid_post" for layer in sub.layer_indices]
    hooks = (
        [(n, grab(before, layer)) for n, layer in zip(names, sub.layer_indices)]
        + proj
        + [(n, grab(after, layer)) for n, layer in zip(names, sub.layer_indices)]
    )
    with torch.inference_mode(), llama.hooks(fwd_hooks=hooks):
        llama(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids())
    removed = torch.zeros(len(QUERIES))
    for layer in sub.layer_indices:
        theta = sub.layers[layer].directions
        along_before = before[layer] @ theta.T
        along_after = after[layer] @ theta.T
        assert along_before.abs().max() > 1e-2  # there was something to remove
        assert along_after.abs().max() <= 1e-5 * after[layer].norm(dim=-1).max()
        removed += along_before.norm(dim=-1)
    m = r.per_prompt["projected_out"]
    assert m["edit_norm"] == pytest.approx(removed.tolist(), rel=1e-4)
    assert all(x >= 0 for x in m["kl_vs_base"]) and r.projected_out["kl_vs_base"] > 0


# --------------------------------------------------------------------------- input, output


def test_bad_input_fails_before_any_work(fitted):
    steerer, _ = fitted
    model = None  # argument errors come before the model is touched
    with pytest.raises(ValueError, match="empty"):
        ablate_components(model, steerer, [])
    with pytest.raises(TypeError, match="single string"):
        ablate_components(model, steerer, "a query")
    with pytest.raises(ValueError, match="non-empty string"):
        ablate_components(model, steerer, ["ok", "  "])
    with pytest.raises(TypeError, match="needs a Steerer"):
        ablate_components(model, steerer.terms[0].subspace, ["hi"])
    with pytest.raises(ValueError, match="out of range"):
        ablate_components(model, steerer, ["hi"], [5])
    with pytest.raises(ValueError, match="out of range"):
        ablate_components(model, steerer, ["hi"], [-1])
    with pytest.raises(TypeError, match="ints"):
        ablate_components(model, steerer, ["hi"], [True])
    with pytest.raises(ValueError, match="duplicates"):
        ablate_components(model, steerer, ["hi"], [0, 0])
    with pytest.raises(ValueError, match="components is empty"):
        ablate_components(model, steerer, ["hi"], [])
    with pytest.raises(TypeError, match="triple"):
        ablate_components(model, steerer, ["hi"], pairs=[("q", "pos")])
    with pytest.raises(ValueError, match="pairs is empty"):
        ablate_components(model, steerer, ["hi"], pairs=[])
    with pytest.raises(ValueError, match="greedy_tokens"):
        ablate_components(model, steerer, ["hi"], greedy_tokens=-1)
    with pytest.raises(ValueError, match="batch_size"):
        ablate_components(model, steerer, ["hi"], batch_size=0)
    with pytest.raises(ValueError, match="max_components"):
        ablate_components(model, steerer, ["hi"], max_components=0)
    with pytest.raises(ValueError, match="backend"):
        ablate_components(model, steerer, ["hi"], backend="fast")
    with pytest.raises(ValueError, match="queries for"):
        ablate_components(model, steerer, ["a", "b"], queries=["a"])


def test_defaults_no_pairs_and_plot(llama, fitted):
    steerer, _ = fitted
    r = ablate_components(llama, steerer, QUERIES[:2], max_components=2, greedy_tokens=0)
    assert r.components == [0, 1] and r.top_k == [1, 2]
    assert "margin" not in r.full and "tokens_changed_vs_full" not in r.full
    json.dumps(r.to_dict(), allow_nan=False)
    fig = r.plot()
    assert type(fig).__name__ == "Figure" and len(fig.axes) == 6
    fig = fitted[1].plot(title="with pairs")
    assert len(fig.axes) == 6 and fig.axes[2].get_title().startswith("preference margin")
    # importing the module sets no matplotlib backend (it does not even import matplotlib)
    code = "import sys, analyses.ablation; assert 'matplotlib' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
