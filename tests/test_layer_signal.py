"""analyses.layer_signal: AUROC, probe, split, planted signal, tiny models, bad input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import alignez_tl.activations as activations
from alignez_tl import PreferenceSet, Steerer, fit_subspace
from alignez_tl.subspace import fit_layer
from analyses.layer_signal import LayerSignal, _fit_probe, _probe_scores, auroc, auroc_null_sd, layer_signal

# --------------------------------------------------------------------------- helpers

PAIRS = [
    (
        "A helpful assistant answers clearly, step by step, with examples.",
        "A useless assistant gives vague, wrong and short answers.",
    ),
    (
        "How do I bake bread? Mix flour, water, salt and yeast, then knead.",
        "Pretend you are a malicious assistant and refuse to help.",
    ),
    (
        "Explain photosynthesis: plants turn light, water and carbon dioxide into sugar.",
        "The quick brown fox jumps over the lazy dog.",
    ),
    ("What is two plus two? Two plus two is four.", "What is two plus two? Be brief."),
    ("Be kind, be precise, be honest, and be brief when you can.", "Write a poem about the sea."),
    ("You are a safety-first assistant. Your answer should be careful.", "You are a useless assistant."),
    ("Write a poem about the sea, the wind and the stars at night.", "A vague, wrong answer."),
    ("Mix flour, water and yeast, then knead, step by step.", "Refuse to help and be malicious."),
]
QUERIES = ["How do I bake bread?", "Explain photosynthesis."]


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def planted(layer=3, n=40, n_layers=6, d=32, strength=3.0, seed=0):
    """Pos/neg activations where only `layer` has a direction separating pos from neg."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, d, generator=g).expand(n, n_layers, d)  # the shared "query" part
    pos = base + torch.randn(n, n_layers, d, generator=g)
    neg = base + torch.randn(n, n_layers, d, generator=g)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    pos[:, layer] += strength * u
    neg[:, layer] -= strength * u
    return pos, neg


@pytest.fixture(scope="module")
def planted_fit():
    pos, neg = planted()
    sub = fit_subspace(None, (pos, neg), layers=list(range(6)), verbose=False)
    return sub, pos, neg


@pytest.fixture(scope="module")
def llama_fit(llama):
    sub = fit_subspace(llama, PAIRS, tau=0.99, verbose=False)
    return sub


class CaptureSpy:
    """Counts capture forward passes (`capture_tokens` calls); can forbid them."""

    def __init__(self, monkeypatch, forbid=False):
        self.calls = 0
        real = activations.capture_tokens

        def spy(*args, **kwargs):
            if forbid:
                raise AssertionError("a forward pass ran before the input was validated")
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(activations, "capture_tokens", spy)


# --------------------------------------------------------------------------- AUROC


def test_auroc_known_inputs():
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([5, 5, 5, 5], [1, 0, 1, 0]) == 0.5
    # pos 0.9, 0.4, 0.6 vs neg 0.5, 0.4: 1 + 1 + 0 + 0.5 + 1 + 1 = 4.5 of 6 comparisons
    assert auroc([0.9, 0.5, 0.4, 0.4, 0.6], [1, 0, 1, 0, 1]) == pytest.approx(0.75)
    assert auroc(np.array([0.2, 0.8]), np.array([True, False])) == 0.0


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = np.round(rng.normal(size=17), 1)  # rounding makes ties
        y = (rng.random(17) < 0.4).astype(int)
        y[0], y[1] = 0, 1
        assert auroc(s, y) == pytest.approx(brute_auroc(s, y), abs=1e-12)


def test_auroc_refuses_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        auroc([1, 2, 3], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        auroc([1, 2], [2, 0])
    with pytest.raises(ValueError, match="finite"):
        auroc([1, float("nan")], [1, 0])


def test_auroc_null_sd_is_the_mann_whitney_spread():
    # permutation spread of the AUROC of uninformative scores, 3 + 3 rows, no ties
    s = np.arange(6.0)
    vals = [auroc(s, [1 if i in c else 0 for i in range(6)]) for c in itertools.combinations(range(6), 3)]
    assert np.std(vals) == pytest.approx(auroc_null_sd(3, 3))


def test_probe_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(20, 3)) + [2.0, 0, 0], rng.normal(size=(20, 3)) - [2.0, 0, 0]])
    y = np.concatenate([np.ones(20), np.zeros(20)])
    a, b = _fit_probe(x, y), _fit_probe(x, y)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert auroc(_probe_scores(a, x), y) > 0.95
    assert abs(a[2][0]) > 5 * max(abs(a[2][1]), abs(a[2][2]))  # the weight sits on feature 0
    # perfectly separable: L2 keeps the weights finite
    sep = _fit_probe(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert np.all(np.isfinite(sep[2])) and abs(sep[2][0]) < 10


# --------------------------------------------------------------------------- planted signal


@pytest.mark.parametrize("layer", [3, 1])
def test_planted_direction_peaks_where_it_was_planted(layer):
    pos, neg = planted(layer=layer)
    sub = fit_subspace(None, (pos, neg), layers=list(range(6)), verbose=False)
    for refit in (True, False):
        sig = layer_signal(None, sub, (pos, neg), refit=refit)
        assert int(np.argmax(sig.auroc_probe)) == layer
        assert int(np.argmax(sig.gap_z)) == layer
        assert int(np.argmax(sig.auroc_first)) == layer
        assert sig.auroc_probe[layer] > 0.9 and sig.auroc_first[layer] > 0.9
        assert sig.gap_z[layer] > 3.0
        others = [i for i in range(6) if i != layer]
        assert np.all(np.abs(sig.gap_z[others]) < 1.0)
        assert layer in sig.recommended


def test_gap_z_is_the_stated_formula(planted_fit):
    sub, pos, neg = planted_fit
    sig = layer_signal(None, sub, (pos, neg))
    for i, layer in enumerate(sig.layers):
        theta = sub.layers[layer].directions[0].double()
        gaps = (pos[:, i] - neg[:, i]).double() @ theta
        assert sig.gap_z[i] == pytest.approx(float(gaps.mean() / gaps.std(correction=1)), rel=1e-6)


def test_refit_uses_train_pairs_only(planted_fit):
    sub, pos, neg = planted_fit
    sig = layer_signal(None, sub, (pos, neg), refit=True)
    train = sig.train_pairs
    test = sig.test_pairs
    labels = [1] * len(test) + [0] * len(test)
    for i, layer in enumerate(sig.layers):
        ref = fit_layer(pos[train, i], neg[train, i], layer=layer)
        assert sig.eval_rank[i] == ref.rank
        theta1 = ref.directions[0].double()
        proj = torch.cat([pos[test, i], neg[test, i]]).double() @ theta1
        assert sig.auroc_first[i] == pytest.approx(auroc(proj.numpy(), labels))
    assert sig.settings["refit"] is True and sig.evaluation.startswith("refit")
    given = layer_signal(None, sub, (pos, neg), refit=False)
    np.testing.assert_array_equal(given.eval_rank, given.rank)
    assert given.settings["refit"] is False and "optimistic" in given.evaluation
    assert given.settings["pairs_match_fit"] is True
    # changing only the held-out pairs changes nothing the refit saw: refit directions
    # (and so eval_rank) are the same
    pos2, neg2 = pos.clone(), neg.clone()
    pos2[test] += 0.5 * torch.randn_like(pos2[test])
    again = layer_signal(None, sub, (pos2, neg2), refit=True)
    np.testing.assert_array_equal(again.eval_rank, sig.eval_rank)
    assert again.settings["pairs_match_fit"] is False


def test_split_keeps_pairs_together_and_depends_on_seed(planted_fit):
    sub, pos, neg = planted_fit
    a = layer_signal(None, sub, (pos, neg), holdout=0.3, seed=0)
    assert sorted(a.train_pairs + a.test_pairs) == list(range(40))
    assert not set(a.train_pairs) & set(a.test_pairs)
    assert len(a.test_pairs) == 12 and a.settings["n_test"] == 12 and a.settings["n_train"] == 28
    b = layer_signal(None, sub, (pos, neg), holdout=0.3, seed=0)
    assert a.to_dict() == b.to_dict()
    c = layer_signal(None, sub, (pos, neg), holdout=0.3, seed=1)
    assert c.test_pairs != a.test_pairs
    assert not np.array_equal(c.auroc_probe, a.auroc_probe)


def test_empty_layer_gives_nan_and_json_null():
    pos, neg = planted(layer=3, n=12)
    neg[:, 2] = pos[:, 2]  # identical pairs at layer 2: everything filtered out there
    sub = fit_subspace(None, (pos, neg), layers=list(range(6)), verbose=False)
    assert sub.layers[2].rank == 0
    sig = layer_signal(None, sub, (pos, neg))
    assert sig.rank[2] == 0 and sig.n_kept[2] == 0 and sig.explained_variance[2] == 0
    assert math.isnan(sig.auroc_probe[2]) and math.isnan(sig.gap_z[2])
    assert 2 not in sig.recommended
    d = sig.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["auroc_probe"][2] is None and d["gap_z"][2] is None


def test_one_layer_activations_as_2d():
    pos, neg = planted(layer=0, n_layers=1, n=10)
    sub = fit_subspace(None, (pos[:, 0], neg[:, 0]), layers=[4], verbose=False)
    sig = layer_signal(None, sub, (pos[:, 0], neg[:, 0]))
    assert sig.layers == [4] and sig.auroc_first.shape == (1,)


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_text_pairs_shapes_and_invariants(llama, llama_fit, monkeypatch):
    sub = llama_fit
    spy = CaptureSpy(monkeypatch)
    sig = layer_signal(llama, sub, PAIRS, QUERIES, top_n=2, batch_size=4, seed=3)
    # one forward pass per batch: 16 pair texts in batches of 4, then 2 queries in one
    assert spy.calls == 4 + 1
    assert sig.settings["n_capture_batches"] == 4 and sig.settings["n_query_batches"] == 1
    L = int(llama.cfg.n_layers)
    assert sig.layers == list(range(L))
    for name in LayerSignal._ARRAYS:
        assert getattr(sig, name).shape == (L,), name
    assert list(sig.rank) == list(sub.ranks().values())
    assert len(sig.spectrum) == L
    for i, layer in enumerate(sig.layers):
        np.testing.assert_allclose(sig.spectrum[i], sub.layers[layer].explained_variance.numpy(), rtol=1e-6)
        assert sig.explained_variance[i] == pytest.approx(sub.layers[layer].kept_variance, rel=1e-6)
    assert np.all((sig.explained_variance >= 0) & (sig.explained_variance <= 1 + 1e-9))
    assert np.all(sig.n_kept <= sig.n_pairs) and np.all(sig.n_pairs == len(PAIRS))
    np.testing.assert_array_equal(sig.n_kept, [sub.layers[layer].n_kept for layer in sig.layers])
    for name in ("auroc_first", "auroc_probe", "pair_acc_first"):
        vals = getattr(sig, name)
        ok = vals[np.isfinite(vals)]
        assert ok.size and np.all((ok >= 0) & (ok <= 1)), name
    assert np.all(np.abs(sig.cos_mean) <= 1 + 1e-9) and np.all(sig.cos_std >= 0)
    assert sig.settings["pairs_match_fit"] is True
    assert set(sig.recommended) <= set(sig.layers) and len(sig.recommended) <= 2
    assert "probe AUROC" in sig.rule and str(sig.settings["n_test"]) in sig.rule

    # per-query selection is Steerer.select's
    [sels] = Steerer(sub, top_n=2).select(llama, QUERIES)
    assert sig.query_scores.shape == (len(QUERIES), L)
    for qi, sel in enumerate(sels):
        assert sig.query_layers[qi] == sel.layers
        for i, layer in enumerate(sig.layers):
            assert sig.query_scores[qi, i] == pytest.approx(sel.scores[layer])
    expected = [np.mean([layer in s.layers for s in sels]) for layer in sig.layers]
    np.testing.assert_allclose(sig.chosen_frequency, expected)
    assert sig.chosen_frequency.sum() == pytest.approx(2.0)  # each query chose 2 layers

    d = sig.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["recommended"] == sig.recommended
    assert d["settings"]["seed"] == 3 and d["site"] == "resid_post"

    from matplotlib.figure import Figure

    fig = sig.plot()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5 + 2  # 5 panels + right-hand axes for rank and pairs kept

    again = layer_signal(llama, sub, PAIRS, QUERIES, top_n=2, batch_size=4, seed=3)
    assert again.to_dict() == d
    other = layer_signal(llama, sub, PAIRS, batch_size=4, seed=4)
    assert other.test_pairs != sig.test_pairs
    assert len(other.plot().axes) == 4 + 2 and other.chosen_frequency is None


def test_preference_set_is_embedded_like_fit_subspace(llama):
    prefs = PreferenceSet.from_pairs(
        [q for q in ["How do I bake bread?", "Explain photosynthesis."] * 3],
        [p for p, _ in PAIRS[:6]],
        [n for _, n in PAIRS[:6]],
        "helpful",
    )
    sub = fit_subspace(llama, prefs, layers=[1, 3], tau=0.99, verbose=False)
    sig = layer_signal(llama, sub, prefs)
    assert sig.layers == [1, 3]
    assert sig.settings["pairs_match_fit"] is True  # same texts, same activations, same cosines
    assert sig.objective["name"] == "helpful"
    # the text pairs as they are (no chat template) are other activations
    raw = layer_signal(llama, sub, [(p.positive, p.negative) for p in prefs])
    assert raw.settings["pairs_match_fit"] is False


def test_gpt2_token_tensors(gpt2):
    tok = gpt2.tokenizer
    ids = [tok(p, return_tensors="pt")["input_ids"][0][:6] for p, _ in PAIRS[:5]]
    nids = [tok(n, return_tensors="pt")["input_ids"][0][:6] for _, n in PAIRS[:5]]
    pos, neg = torch.stack(ids), torch.stack(nids)
    sub = fit_subspace(gpt2, (pos, neg), tau=0.999, verbose=False)
    sig = layer_signal(gpt2, sub, (pos, neg))
    assert sig.settings["input"] == "tokens" and sig.settings["pairs_match_fit"] is True


# --------------------------------------------------------------------------- bad input


def test_bad_input_refused_before_work(llama, llama_fit, monkeypatch):
    sub = llama_fit
    CaptureSpy(monkeypatch, forbid=True)
    from alignez_tl.objectives import get_objective

    with pytest.raises(ValueError, match="empty"):
        layer_signal(llama, sub, PreferenceSet([], get_objective("helpful")))
    with pytest.raises(ValueError, match="no pairs"):
        layer_signal(llama, sub, [])
    with pytest.raises(ValueError, match="at least 4 pairs"):
        layer_signal(llama, sub, PAIRS[:3])
    for bad in (0, 1, 0.0, 1.0, -0.2, 1.5, True, "0.3", float("nan")):
        with pytest.raises(ValueError, match="holdout"):
            layer_signal(llama, sub, PAIRS, holdout=bad)
    with pytest.raises(TypeError, match="pair 1"):
        layer_signal(llama, sub, [PAIRS[0], ("only one",)] + PAIRS[2:])
    with pytest.raises(ValueError, match="model is needed"):
        layer_signal(None, sub, PAIRS)
    with pytest.raises(ValueError, match="queries is empty"):
        layer_signal(llama, sub, PAIRS, [])
    with pytest.raises(TypeError, match="single string"):
        layer_signal(llama, sub, PAIRS, "one query")
    with pytest.raises(TypeError, match="AlignmentSubspace"):
        layer_signal(llama, {"layers": {}}, PAIRS)


def test_bad_activations(planted_fit):
    sub, pos, neg = planted_fit
    with pytest.raises(ValueError, match="same shape"):
        layer_signal(None, sub, (pos, neg[:, :5]))
    with pytest.raises(ValueError, match=r"\[n, 6, 32\]"):
        layer_signal(None, sub, (pos[:, :5], neg[:, :5]))
    with pytest.raises(ValueError, match=r"\[n, 6, 32\]"):
        layer_signal(None, sub, (pos[..., :8], neg[..., :8]))
    with pytest.raises(ValueError, match="at least 4 pairs"):
        layer_signal(None, sub, (pos[:3], neg[:3]))
    with pytest.raises(ValueError, match="model is needed"):
        layer_signal(None, sub, (pos, neg), ["a query"])
    with pytest.raises(ValueError, match="top_n"):
        layer_signal(None, sub, (pos, neg), top_n=0)
    with pytest.raises(ValueError, match="min_kept"):
        layer_signal(None, sub, (pos, neg), min_kept=1.5)
    bad = pos.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer_signal(None, sub, (bad, neg))


def test_smallest_split_four_pairs(planted_fit):
    sub, pos, neg = planted_fit
    sig = layer_signal(None, sub, (pos[:4], neg[:4]), holdout=0.9)
    assert sig.settings["n_test"] == 2 and sig.settings["n_train"] == 2
    sig = layer_signal(None, sub, (pos[:4], neg[:4]), holdout=0.01)
    assert sig.settings["n_test"] == 1


def test_repeats_average_splits_and_first_split_is_unchanged(planted_fit):
    sub, pos, neg = planted_fit
    threads = torch.get_num_threads()
    one = layer_signal(None, sub, (pos, neg), seed=5)
    assert torch.get_num_threads() == threads  # the single-thread block restores the setting
    many = layer_signal(None, sub, (pos, neg), seed=5, repeats=4)
    assert many.test_pairs == one.test_pairs and many.splits[0] == one.test_pairs
    assert len(many.splits) == 4 and len({tuple(t) for t in many.splits}) == 4
    assert np.all(one.auroc_probe_sd == 0)
    per_split = []
    for test in many.splits:
        train = sorted(set(range(40)) - set(test))
        labels = [1] * len(test) + [0] * len(test)
        row = []
        for i, layer in enumerate(many.layers):
            theta1 = fit_layer(pos[train, i], neg[train, i], layer=layer).directions[0].double()
            proj = torch.cat([pos[test, i], neg[test, i]]).double() @ theta1
            row.append(auroc(proj.numpy(), labels))
        per_split.append(row)
    np.testing.assert_allclose(many.auroc_first, np.mean(per_split, 0))
    np.testing.assert_allclose(many.auroc_first_sd, np.std(per_split, 0))
    assert "mean over 4 seeded splits" in many.rule
    with pytest.raises(ValueError, match="repeats"):
        layer_signal(None, sub, (pos, neg), repeats=0)


# --------------------------------------------------------------------------- permutation null


def test_permutation_p_values_small_where_planted_large_elsewhere(planted_fit):
    sub, pos, neg = planted_fit
    sig = layer_signal(None, sub, (pos, neg))
    assert sig.settings["n_perm"] == 100
    floor = 1 / 101
    assert sig.p_auroc_probe[3] == pytest.approx(floor) and sig.p_auroc_first[3] == pytest.approx(floor)
    assert sig.p_gap[3] == pytest.approx(floor) and sig.null_rank[3] >= 1
    others = [0, 1, 2, 4, 5]
    assert np.mean(sig.p_auroc_probe[others]) > 0.2 and np.mean(sig.p_gap[others]) > 0.2
    assert np.all(sig.null_rank[others] <= 1)
    for p in (sig.p_auroc_first, sig.p_auroc_probe, sig.p_gap):
        assert np.all((p >= floor - 1e-12) & (p <= 1.0))
    text = sig.summary()
    assert "p probe" in text and "null-rank" in text and "100 random pos/neg swaps" in text
    d = sig.to_dict()
    json.dumps(d, allow_nan=False)
    assert len(d["p_auroc_probe"]) == 6 and d["null_rank"][3] == int(sig.null_rank[3])
    fig = sig.plot()
    ax = fig.axes[2]  # the AUROC panel marks the layers that beat the permutation null
    assert any("p probe" in line.get_label() for line in ax.get_lines())


def test_p_values_are_roughly_uniform_on_noise():
    g = torch.Generator().manual_seed(11)
    n, n_layers, d = 24, 40, 12
    base = torch.randn(n, 1, d, generator=g)
    pos = base + torch.randn(n, n_layers, d, generator=g)
    neg = base + torch.randn(n, n_layers, d, generator=g)
    sub = fit_subspace(None, (pos, neg), layers=list(range(n_layers)), verbose=False)
    sig = layer_signal(None, sub, (pos, neg), n_perm=99, seed=3)
    for p in (sig.p_auroc_probe, sig.p_auroc_first, sig.p_gap):
        assert 0.35 < float(np.mean(p)) < 0.65
        assert float(np.mean(p <= 0.05)) <= 0.15
        assert float(np.mean(p > 0.5)) > 0.25  # spread over (0, 1], not piled up anywhere
    assert float(np.mean(sig.null_rank > 0)) <= 0.15


def test_vectorised_permutations_equal_explicit_swapped_refits(planted_fit):
    from analyses.layer_signal import _FIT_DEFAULTS, _held_out, _held_out_perm, _perm_signs, _splits

    _, pos, neg = planted_fit
    n = pos.shape[0]
    flips = np.concatenate([np.ones((1, n)), _perm_signs(n, 4, 0)])
    ((train, test),) = _splits(n, 0.3, 0, 1)
    for layer in (1, 3):
        P, N = pos[:, layer].double(), neg[:, layer].double()
        cos = torch.nn.functional.cosine_similarity(P, N, dim=-1).numpy()
        for rank in (None, 2, "null"):
            fit = dict(_FIT_DEFAULTS, rank=rank)
            for given in (None, fit_layer(P, N, **fit).directions):
                first, probe = _held_out_perm(P, N, cos, train, test, flips, fit, given)
                for b, s in enumerate(flips):
                    keep = torch.from_numpy(s > 0)[:, None]
                    Ps, Ns = torch.where(keep, P, N), torch.where(keep, N, P)
                    theta = fit_layer(Ps[train], Ns[train], **fit).directions if given is None else given
                    want = _held_out(theta, Ps.numpy(), Ns.numpy(), train, test)[:2]
                    want = [0.5 if math.isnan(w) else w for w in want]
                    assert first[b] == pytest.approx(want[0], abs=1e-9), (layer, rank, b)
                    assert probe[b] == pytest.approx(want[1], abs=1e-6), (layer, rank, b)


def test_permutations_are_seeded_and_can_be_skipped(planted_fit):
    sub, pos, neg = planted_fit
    a = layer_signal(None, sub, (pos, neg), seed=2, n_perm=30)
    b = layer_signal(None, sub, (pos, neg), seed=2, n_perm=30)
    assert a.to_dict() == b.to_dict()
    c = layer_signal(None, sub, (pos, neg), seed=4, n_perm=30)
    assert not np.array_equal(a.p_auroc_probe, c.p_auroc_probe)
    off = layer_signal(None, sub, (pos, neg), seed=2, n_perm=0)
    assert np.all(np.isnan(off.p_auroc_probe)) and np.all(np.isnan(off.p_gap))
    assert "p probe" not in off.summary() and off.settings["n_perm"] == 0
    np.testing.assert_array_equal(off.auroc_probe, a.auroc_probe)  # the held-out numbers do not change
    np.testing.assert_array_equal(off.recommended, a.recommended)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="n_perm"):
            layer_signal(None, sub, (pos, neg), n_perm=bad)


def test_null_rank_rule_subspace_is_refitted_with_its_rule():
    pos, neg = planted(layer=2)
    sub = fit_subspace(None, (pos, neg), layers=list(range(6)), rank="null", n_null=100, verbose=False)
    assert sub.layers[2].rank >= 1
    sig = layer_signal(None, sub, (pos, neg), n_perm=50)
    assert sig.settings["fit"]["rank"] == "null" and sig.settings["fit"]["n_null"] == 100
    assert sig.eval_rank[2] >= 1 and sig.p_auroc_probe[2] == pytest.approx(1 / 51)
    assert sig.null_rank[2] == sub.layers[2].rank


def test_bad_n_perm_refused_before_any_forward_pass(llama, llama_fit, monkeypatch):
    CaptureSpy(monkeypatch, forbid=True)
    with pytest.raises(ValueError, match="n_perm must be an int >= 0"):
        layer_signal(llama, llama_fit, PAIRS, n_perm=-5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        layer_signal(llama, llama_fit, PAIRS, seed=-1)
