"""The subspace lens: vocabulary view, principal angles, stability, relations, cost."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tiny import make_model

import alignez_tl.pairs as pairs_module
from alignez_tl.baselines import diffmean_vector
from alignez_tl.models import encode
from alignez_tl.pairs import PairActivations, embed_pairs
from alignez_tl.subspace import AlignmentSubspace, fit_layer, fit_subspace
from analyses.subspace_lens import SubspaceLens, principal_cosines, subspace_lens

PAIRS = [
    ("A helpful assistant answers clearly, step by step.", "A useless assistant gives vague answers."),
    ("Mix flour, water, salt and yeast, then knead.", "Pretend you are a malicious assistant."),
    ("Two plus two is four.", "Two plus two is wrong and short."),
    ("Be kind, be precise, be honest, and be brief.", "Refuse to help."),
    ("Plants turn light into sugar.", "The quick brown fox."),
    ("Water boils at one hundred degrees.", "Nobody knows anything about water."),
]


@pytest.fixture(scope="module")
def affine_models():
    """Fresh tiny models whose final norm has a random weight (a forgotten w_ln fails)."""
    out = {}
    gen = torch.Generator().manual_seed(1)
    for arch, dtype in (("llama", torch.float32), ("gpt2", torch.float64)):
        model = make_model(arch, dtype=dtype, seed=3)
        norm = model.ln_final.original_component
        with torch.no_grad():
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
        out[arch] = model
    return out


# --------------------------------------------------------------------------- principal angles


def test_principal_cosines_of_a_subspace_with_itself_and_orthogonal_ones():
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(40, 6, generator=gen, dtype=torch.float64)).Q.T  # 6 orthonormal rows
    a, b = q[:3], q[3:]
    assert np.allclose(principal_cosines(a, a), 1.0, atol=1e-12)  # angles 0
    mixed = torch.randn(3, 3, generator=gen, dtype=torch.float64) @ a  # another basis, same span
    assert np.allclose(principal_cosines(a, mixed), 1.0, atol=1e-10)
    cos = principal_cosines(a, b)
    assert cos.shape == (3,) and np.allclose(cos, 0.0, atol=1e-12)
    assert np.allclose(np.degrees(np.arccos(cos)), 90.0)
    # one shared direction, one orthogonal: cosines [1, 0]
    assert np.allclose(principal_cosines(torch.stack([q[0], q[1]]), torch.stack([q[0], q[4]])), [1.0, 0.0], atol=1e-12)
    assert principal_cosines(a, torch.zeros(0, 40)).shape == (0,)
    with pytest.raises(ValueError):
        principal_cosines(a, torch.zeros(2, 39))


# --------------------------------------------------------------------------- vocabulary view


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vocabulary_view_equals_a_hand_computation(affine_models, arch):
    model = affine_models[arch]
    sub = fit_subspace(model, PAIRS, tau=1.0, verbose=False)
    lens = subspace_lens(model, sub, PAIRS, n_splits=0, top_k_tokens=5)
    last = model.cfg.n_layers - 1
    # the frozen scale: the model's own ln_final.hook_scale at each pair text's last token
    scales = []

    def keep(act, hook):
        scales.append(float(act[0, -1, 0]))

    for text in [p for p, _ in PAIRS] + [n for _, n in PAIRS]:
        with torch.inference_mode(), model.hooks(fwd_hooks=[("ln_final.hook_scale", keep)]):
            model(encode(model, [text]).input_ids)
    sigma = float(np.mean(scales))
    assert lens.norm_scale == pytest.approx(sigma, rel=1e-5)
    w = model.ln_final.original_component.weight.detach().double()
    W_U = model.W_U.detach().double()
    for layer in (0, last):
        theta = sub.layers[layer].directions.double()
        assert len(lens.vocab[layer]) == theta.shape[0] >= 1
        for j, entry in enumerate(lens.vocab[layer]):
            v = theta[j]
            if arch == "gpt2":  # LayerNorm centres; RMSNorm does not
                v = v - v.mean()
            logits = (v / sigma * w) @ W_U
            up, down = torch.topk(logits, 5), torch.topk(-logits, 5)
            assert [i for _, i, _ in entry["promoted"]] == up.indices.tolist()
            assert [i for _, i, _ in entry["suppressed"]] == down.indices.tolist()
            assert np.allclose([x for _, _, x in entry["promoted"]], up.values.numpy(), rtol=1e-4, atol=1e-6)
            assert np.allclose([x for _, _, x in entry["suppressed"]], (-down.values).numpy(), rtol=1e-4, atol=1e-6)
            assert entry["promoted"][0][0] == model.tokenizer.decode([int(up.indices[0])])
    assert lens.top_tokens(last) == [t for t, _, _ in lens.vocab[last][0]["promoted"]]


# --------------------------------------------------------------------------- relations


def test_cos_with_diffmean_and_adjacent_layers_match_direct_computation(llama):
    acts = embed_pairs(llama, PAIRS)
    sub = fit_subspace(llama, acts, tau=1.0, verbose=False)
    lens = subspace_lens(llama, sub, acts, n_splits=0)
    for i, layer in enumerate(lens.layers):
        m = diffmean_vector(*acts.at(layer)).double()
        theta = sub.layers[layer].directions.double()
        direct = (theta @ m) / m.norm()  # unit-norm directions
        assert np.allclose(lens.diffmean_cos[i], direct.numpy(), atol=1e-6)
        assert lens.diffmean_share[i] == pytest.approx(float(direct.square().sum()), abs=1e-6)
        # θ_1 is oriented negative → positive, so it points along the mean difference
        assert lens.diffmean_cos[i][0] >= 0
    assert [a["layers"] for a in lens.adjacent] == [[a, b] for a, b in zip(lens.layers, lens.layers[1:])]
    a, b = lens.layers[0], lens.layers[1]
    expected = principal_cosines(sub.layers[a].directions, sub.layers[b].directions)
    assert np.allclose(lens.adjacent[0]["cosines"], expected)


def test_other_objectives_are_compared_at_shared_layers(llama):
    acts = embed_pairs(llama, PAIRS)
    sub = fit_subspace(llama, acts, tau=1.0, verbose=False)
    flipped = fit_subspace(llama, PairActivations(acts.neg, acts.pos, acts.layers), tau=1.0, verbose=False)
    lens = subspace_lens(llama, sub, acts, n_splits=0, others={"itself": sub, "flipped": flipped})
    for info in lens.objectives["itself"].values():
        assert np.allclose(info["cosines"], 1.0, atol=1e-5)
        assert info["theta1_cos"] == pytest.approx(1.0, abs=1e-5)
    for info in lens.objectives["flipped"].values():  # the same subspace, θ_1 reversed
        assert np.allclose(info["cosines"], 1.0, atol=1e-5)
        assert info["theta1_cos"] == pytest.approx(-1.0, abs=1e-5)
    named = subspace_lens(llama, sub, acts, n_splits=0, others=[sub, sub])
    assert sorted(named.objectives) == ["custom", "custom#2"]
    assert "vs flipped" in lens.summary()


# --------------------------------------------------------------------------- stability


def _planted(n=24, d=32, signal=10.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3.0
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    pos = base + torch.randn(n, d, generator=gen, dtype=torch.float64) + signal * u
    neg = base + torch.randn(n, d, generator=gen, dtype=torch.float64)
    return PairActivations(pos[:, None].float(), neg[:, None].float(), (0,))


def test_planted_signal_halves_agree_more_than_the_null():
    acts = _planted()
    sub = fit_subspace(None, acts, tau=1.0, rank=1, verbose=False)
    lens = subspace_lens(None, sub, acts, n_splits=20, seed=0)
    assert lens.k == [1]
    assert lens.vocab == {0: []} and lens.norm_scale is None  # no model: no vocabulary view
    # the halves find the planted direction, with the same orientation
    assert lens.mean("subspace_cos")[0] > 0.9
    assert lens.mean("theta1_cos")[0] > 0.9
    assert lens.mean("diffmean_split_cos")[0] > 0.9
    # with pos and neg swapped in random pairs the signed agreement is gone...
    assert abs(lens.mean("null_theta1_cos")[0]) < 0.5
    assert lens.mean("null_diffmean_split_cos")[0] < 0.5
    # ...and the halves agree far more than two random subspaces
    assert lens.mean("random_cos")[0] < 0.5
    # row sign flips leave the SVD's subspace unchanged: the null's principal cosines equal the real ones
    # (the splits are the same draws), which is why the signed measures carry the null comparison
    assert np.allclose(lens.null_subspace_cos, lens.subspace_cos, atol=1e-6)


def test_pure_noise_halves_agree_no_more_than_the_null():
    acts = _planted(signal=0.0, seed=1)
    sub = fit_subspace(None, acts, tau=1.0, rank=1, verbose=False)
    lens = subspace_lens(None, sub, acts, n_splits=30, seed=0)
    assert abs(lens.mean("theta1_cos")[0]) < 0.5
    assert lens.mean("diffmean_split_cos")[0] < 0.5


def test_stability_is_seeded_and_uses_the_fit_settings():
    acts = _planted()
    sub = fit_subspace(None, acts, tau=1.0, rank=2, verbose=False)
    one = subspace_lens(None, sub, acts, n_splits=5, seed=3)
    two = subspace_lens(None, sub, acts, n_splits=5, seed=3)
    other = subspace_lens(None, sub, acts, n_splits=5, seed=4)
    assert np.array_equal(one.subspace_cos, two.subspace_cos)
    assert not np.array_equal(one.subspace_cos, other.subspace_cos)
    assert one.k == [2] and one.settings["half"] == 12 and one.settings["tau"] == 1.0
    fixed = subspace_lens(None, sub, acts, n_splits=5, seed=3, k=1)
    assert fixed.k == [1]
    # the first draw by hand: the same permutation, halves refitted at rank 2
    perm = np.random.default_rng(3).permutation(acts.n_pairs)
    pos, neg = acts.at(0)
    fits = [fit_layer(pos[h], neg[h], tau=1.0, rank=2) for h in (perm[:12], perm[12:24])]
    cos = principal_cosines(fits[0].directions, fits[1].directions)
    assert one.subspace_cos[0, 0] == pytest.approx(float(cos.mean()), abs=1e-9)


def test_stability_refits_do_not_run_the_model(llama, monkeypatch):
    calls = []
    real = pairs_module.capture

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise AssertionError("the model ran again after the first embedding")
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs_module, "capture", counting)
    sub = fit_subspace(llama, embed_pairs(llama, PAIRS), tau=1.0, verbose=False)  # first capture
    calls.clear()
    lens = subspace_lens(llama, sub, PAIRS, n_splits=4)  # exactly one capture, then linear algebra
    assert len(calls) == 1
    assert lens.settings["n_capture_batches"] == 1
    assert np.isfinite(lens.subspace_cos).any()


def test_pair_activations_need_no_capture(llama, monkeypatch):
    acts = embed_pairs(llama, PAIRS)
    sub = fit_subspace(llama, acts, tau=1.0, verbose=False)

    def refuse(*args, **kwargs):
        raise AssertionError("no capture expected")

    monkeypatch.setattr(pairs_module, "capture", refuse)
    lens = subspace_lens(llama, sub, acts, n_splits=2, layers=[0, 2])
    assert lens.layers == [0, 2] and lens.settings["n_capture_batches"] == 0
    assert lens.norm_scale is not None  # the last layer is in the activations


# --------------------------------------------------------------------------- export, input


def test_to_dict_is_json_and_plot_and_summary(llama):
    sub = fit_subspace(llama, PAIRS, tau=1.0, verbose=False)
    lens = subspace_lens(llama, sub, PAIRS, n_splits=3, top_k_tokens=3, others=sub)
    data = json.loads(json.dumps(lens.to_dict(), allow_nan=False))
    assert data["layers"] == lens.layers and len(data["subspace_cos"]) == len(lens.layers)
    assert len(data["vocab"][str(lens.layers[0])][0]["promoted"]) == 3
    assert "subspace_cos_mean" in data and data["settings"]["n_splits"] == 3
    from matplotlib.figure import Figure

    assert isinstance(lens.plot(), Figure)
    text = lens.summary()
    assert "subspace lens" in text and "top tokens of θ1" in text
    assert isinstance(lens, SubspaceLens)


def test_bad_input(llama):
    sub = fit_subspace(llama, PAIRS, tau=1.0, verbose=False)
    with pytest.raises(TypeError):
        subspace_lens(llama, "not a subspace", PAIRS)
    with pytest.raises(ValueError, match="not in the subspace"):
        subspace_lens(llama, sub, PAIRS, layers=[99])
    for kwargs in ({"top_k_tokens": 0}, {"n_splits": -1}, {"k": 0}, {"seed": True}):
        with pytest.raises(ValueError):
            subspace_lens(llama, sub, PAIRS, **kwargs)
    with pytest.raises(TypeError):
        subspace_lens(llama, sub, PAIRS, others=["x"])
    first = sub.layer_indices[0]
    padded = dataclasses.replace(
        sub.layers[first], directions=torch.nn.functional.pad(sub.layers[first].directions, (0, 1))
    )
    wide = AlignmentSubspace(layers={first: padded}, site="resid_post", d_model=sub.d_model + 1)
    with pytest.raises(ValueError, match="d_model"):
        subspace_lens(llama, sub, PAIRS, others={"wide": wide})


def test_too_few_pairs_for_halves_gives_no_stability(llama):
    few = PAIRS[:3]
    sub = fit_subspace(llama, few, tau=1.0, verbose=False)
    lens = subspace_lens(llama, sub, few, n_splits=5)
    assert np.isnan(lens.subspace_cos).all()
    assert not math.isnan(lens.diffmean_share[0])


@pytest.mark.slow
def test_lens_on_the_embedded_model():
    """End to end on SmolLM2-135M-Instruct: hand-written pairs, three layers, a few splits."""
    from alignez_tl import load_model

    model = load_model(verbose=False)
    queries = ["How do I boil an egg?", "Why is the sky blue?", "How do I save money?", "What is a verb?"] * 2
    good = [
        "Put the egg in boiling water for nine minutes, then cool it in cold water.",
        "Sunlight scatters off air molecules, and blue light scatters the most.",
        "Write down what you spend, set a monthly budget, and save a fixed share first.",
        "A verb is a word for an action or a state, like run, think or be.",
    ]
    bad = ["I don't know.", "Whatever.", "Ask someone else.", "No idea, sorry."]
    texts = [(f"{q} {g}", f"{q} {b}") for q, g, b in zip(queries, good * 2, bad * 2)]
    acts = embed_pairs(model, texts)
    sub = fit_subspace(model, acts, layers=[0, 15, 29], tau=1.0, verbose=False)
    lens = subspace_lens(model, sub, acts, n_splits=4, top_k_tokens=5)
    assert lens.layers == [0, 15, 29] and lens.settings["n_capture_batches"] == 0
    assert lens.norm_scale is not None and lens.norm_scale > 0
    assert all(len(lens.vocab[layer][0]["promoted"]) == 5 for layer in lens.layers)
    assert all(isinstance(t, str) for t in lens.top_tokens(29))
    assert lens.subspace_cos.shape == (3, 4) and np.isfinite(lens.subspace_cos).all()
    assert np.all(np.asarray(lens.diffmean_cos[2]) <= 1.0 + 1e-6)
    json.dumps(lens.to_dict(), allow_nan=False)
    print(lens.summary())
