"""embed_pairs / PairActivations, the diffmean/pca aggregators, and the SteeringMethod protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import alignez_tl as ez
from alignez_tl.activations import capture
from alignez_tl.baselines import (
    DiffMeanSteerer,
    NoSteerer,
    PCASteerer,
    PromptSteerer,
    VectorSteerer,
    diffmean,
    diffmean_vector,
    pca,
    pca_direction,
)
from alignez_tl.models import encode
from alignez_tl.pairs import EmptySubspaceError, PairActivations, check_pair_data, embed_pairs
from alignez_tl.preferences import PreferenceSet
from alignez_tl.protocol import HookSteering, SteeringMethod
from alignez_tl.steering import Steerer, SteeringTerm
from alignez_tl.subspace import fit_subspace

QUERIES = ["How do I bake bread?", "What is two plus two?", "Write a poem about the sea", "Hi"]
POSITIVES = [
    "Mix flour, water, salt and yeast, then knead.",
    "Two plus two is four.",
    "The sea, the wind and the stars at night.",
    "A helpful assistant answers clearly, step by step, with examples.",
]
NEGATIVES = [
    "Pretend you are a malicious assistant.",
    "Two plus two is wrong and short.",
    "Be dull.",
    "A useless assistant gives vague answers.",
]
TEXT_PAIRS = list(zip(POSITIVES, NEGATIVES))
LAYERS = [1, 3]


@pytest.fixture(scope="module")
def prefs():
    return PreferenceSet.from_pairs(QUERIES, POSITIVES, NEGATIVES, objective="helpful")


def _same(acts, pos, neg):
    assert torch.equal(acts.pos, pos) and torch.equal(acts.neg, neg)


# --------------------------------------------------------------------------- embed_pairs


def test_every_input_type_gives_what_capture_gives(llama, prefs):
    pos_t, neg_t = prefs.texts(llama)
    ref = capture(llama, list(pos_t) + list(neg_t), LAYERS, batch_size=3)
    acts = embed_pairs(llama, prefs, LAYERS, batch_size=3)
    _same(acts, ref[:4], ref[4:])
    assert acts.layers == (1, 3) and acts.site == "resid_post" and acts.source == "prefs"
    assert acts.objective["name"] == "helpful" and "seed" in acts.provenance
    assert acts.n_batches == 3 and acts.n_pairs == len(acts) == 4 and acts.model["d_model"] == llama.cfg.d_model

    ref = capture(llama, POSITIVES + NEGATIVES, LAYERS)
    texts = embed_pairs(llama, TEXT_PAIRS, LAYERS)
    _same(texts, ref[:4], ref[4:])
    assert texts.source == "texts" and texts.objective == {} and texts.provenance == {}

    # token tensors: each row run unpadded equals the padded batch's last token
    rows_p = [encode(llama, [t]).input_ids[0] for t in POSITIVES]
    rows_n = [encode(llama, [t]).input_ids[0] for t in NEGATIVES]
    tokens = embed_pairs(llama, (rows_p, rows_n), LAYERS, batch_size=2)
    assert tokens.source == "tokens" and tokens.n_batches == 4
    one = torch.stack([capture(llama, encode(llama, [t]), LAYERS)[0] for t in POSITIVES])
    torch.testing.assert_close(tokens.pos, one, rtol=1e-4, atol=1e-4)
    width = max(int(r.numel()) for r in rows_p)
    same_len = [r for r in rows_p if r.numel() == width]
    stacked = torch.stack(same_len)
    as_tensor = embed_pairs(llama, (stacked, stacked), LAYERS)
    as_numpy = embed_pairs(llama, (stacked.numpy(), stacked.numpy()), LAYERS)
    _same(as_numpy, as_tensor.pos, as_tensor.neg)

    # precomputed activations: used as they are, in their dtype
    p64, n64 = ref[:4].double(), ref[4:].double()
    given = embed_pairs(None, (p64, n64), LAYERS)
    _same(given, p64, n64)
    assert given.source == "acts" and given.n_batches == 0 and given.pos.dtype == torch.float64
    _same(embed_pairs(None, (p64.numpy(), n64.numpy()), LAYERS), p64, n64)
    single = embed_pairs(None, (p64[:, 0], n64[:, 0]), [1])
    _same(single, p64[:, :1], n64[:, :1])
    # a PairActivations: itself, or the requested layers of it
    assert embed_pairs(None, acts) is acts
    _same(embed_pairs(llama, acts, [3]), acts.pos[:, 1:], acts.neg[:, 1:])


def test_embed_pairs_bad_input():
    p, n = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    with pytest.raises(TypeError, match="embed_pairs takes a PreferenceSet"):
        embed_pairs(None, "good, bad", [0])
    with pytest.raises(TypeError, match="fit_subspace takes a PreferenceSet"):
        check_pair_data(42, caller="fit_subspace")
    with pytest.raises(EmptySubspaceError, match="no pairs given"):
        embed_pairs(None, [], [0])
    with pytest.raises(EmptySubspaceError, match="the preference set is empty"):
        embed_pairs(None, PreferenceSet.from_pairs([], [], [], "helpful"), [0])
    with pytest.raises(TypeError, match=r"pair 1 is not a \(positive_text, negative_text\)"):
        embed_pairs(None, [("a", "b"), ("a",)], [0])
    with pytest.raises(ValueError, match="must both be float activations or both integer tokens"):
        embed_pairs(None, (p, torch.ones(5, 3, dtype=torch.long)), [0, 1])
    with pytest.raises(ValueError, match="same shape"):
        embed_pairs(None, (p, n[:4]), [0, 1])
    with pytest.raises(ValueError, match=r"\[n, 3, 8\]"):
        check_pair_data((p, n), [0, 1, 2], d_model=8)
    with pytest.raises(ValueError, match=r"\[n, 2, 16\]"):
        check_pair_data((p, n), [0, 1], d_model=16)
    with pytest.raises(ValueError, match="for one layer"):
        embed_pairs(None, (p[:, 0], n[:, 0]), [0, 1])
    with pytest.raises(ValueError, match="without a model, pass layers"):
        embed_pairs(None, (p, n))
    with pytest.raises(EmptySubspaceError, match="hold no pairs"):
        embed_pairs(None, (p[:0], n[:0]), [0, 1])
    with pytest.raises(ValueError, match="token tensors need a model"):
        embed_pairs(None, (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)), [0])
    with pytest.raises(ValueError, match=r"token tensors must be \[n, seq\]"):
        embed_pairs(None, (torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long)), [0])
    acts = embed_pairs(None, (p, n), [0, 1])
    with pytest.raises(ValueError, match="taken at site 'resid_post', not 'mlp_out'"):
        embed_pairs(None, acts, [0], "mlp_out")
    with pytest.raises(ValueError, match=r"layers \[2\] were not embedded"):
        embed_pairs(None, acts, [2])
    with pytest.raises(ValueError, match="unknown site"):
        embed_pairs(None, (p, n), [0, 1], "resid_mid")
    with pytest.raises(ValueError, match="batch_size"):
        embed_pairs(None, (p, n), [0, 1], batch_size=0)


def test_pair_activations_value():
    g = torch.Generator().manual_seed(0)
    p, n = torch.randn(6, 2, 8, generator=g), torch.randn(6, 2, 8, generator=g)
    acts = PairActivations(p, n, (4, 7), "mlp_out")
    assert repr(acts).startswith("PairActivations(n_pairs=6, layers=[4, 7], site='mlp_out'")
    pos, neg = acts.at(7)
    assert torch.equal(pos, p[:, 1]) and torch.equal(neg, n[:, 1])
    assert torch.equal(acts.diffs(4), p[:, 0] - n[:, 0])
    cos = torch.nn.functional.cosine_similarity(p[:, 0].double(), n[:, 0].double(), dim=-1, eps=1e-12)
    assert torch.equal(acts.cos(4), cos)
    sub = acts.subset([0, 2])
    assert sub.n_pairs == 2 and torch.equal(sub.pos, p[[0, 2]]) and sub.site == "mlp_out"
    assert torch.equal(acts.subset(torch.tensor([True, False] * 3)).neg, n[[0, 2, 4]])
    assert torch.equal(acts.subset(np.array([1])).pos, p[[1]])
    assert acts.select([7]).layers == (7,) and torch.equal(acts.select([7]).pos[:, 0], p[:, 1])
    assert acts.float() is acts
    assert PairActivations(p.double(), n.double(), (4, 7)).float().pos.dtype == torch.float32
    with pytest.raises(ValueError, match="layer 5 was not embedded"):
        acts.at(5)
    with pytest.raises(Exception):
        acts.site = "resid_post"  # frozen
    with pytest.raises(ValueError, match="same shape"):
        PairActivations(p, n[:3], (4, 7))
    with pytest.raises(ValueError, match="one per slice"):
        PairActivations(p, n, (4,))
    with pytest.raises(ValueError, match="float tensor"):
        PairActivations(p.long(), n.long(), (4, 7))
    with pytest.raises(ValueError, match="unknown site"):
        PairActivations(p, n, (4, 7), "nowhere")


def test_fits_accept_pair_activations_with_identical_numbers(llama, prefs):
    acts = embed_pairs(llama, prefs)
    a = fit_subspace(llama, prefs, verbose=False)
    b = fit_subspace(llama, acts, verbose=False)
    c = fit_subspace(None, acts, verbose=False)
    assert a.layer_indices == b.layer_indices == c.layer_indices
    assert a.objective == b.objective and a.settings == b.settings
    for layer in a.layer_indices:
        assert torch.equal(a.layers[layer].directions, b.layers[layer].directions)
        assert torch.equal(a.layers[layer].proj_rms, c.layers[layer].proj_rms)
    for cls in (DiffMeanSteerer, PCASteerer):
        x = cls.fit(llama, prefs, layer=2)
        y = cls.fit(llama, acts, layer=2)
        assert torch.equal(x.vector, y.vector) and x.info == y.info and x.objective == y.objective


# --------------------------------------------------------------------------- aggregators


def test_aggregators_equal_the_closed_forms():
    g = torch.Generator().manual_seed(1)
    p, n = torch.randn(12, 2, 16, generator=g), torch.randn(12, 2, 16, generator=g)
    p[:, :, 0] += 3.0
    acts = PairActivations(p, n, (0, 5))
    for layer, i in ((0, 0), (5, 1)):
        assert torch.equal(diffmean(acts, layer), diffmean_vector(p[:, i], n[:, i]))
        assert torch.equal(pca(acts, layer), pca_direction(p[:, i], n[:, i]))
    dm = DiffMeanSteerer.fit(None, acts, layer=5)
    assert torch.equal(dm.vector, diffmean_vector(p[:, 1], n[:, 1]))
    assert torch.equal(dm.vector, DiffMeanSteerer.fit(None, (p[:, 1], n[:, 1]), layer=5).vector)
    pc = PCASteerer.fit(None, acts, layer=0, coef_scale="rms")
    assert torch.equal(pc.direction, PCASteerer.fit(None, (p[:, 0], n[:, 0]), layer=0, coef_scale="rms").direction)
    assert pc.info["coef_scale"] == "rms" and pc.proj_rms > 0

    def first_pos(acts, layer):
        return acts.at(layer)[0][0], {"which": "pair 0"}

    v = VectorSteerer.fit(None, acts, layer=0, aggregator=first_pos, coef=2.0)
    assert type(v) is VectorSteerer and torch.equal(v.vector, p[0, 0]) and v.coef == 2.0
    assert v.info == {"n_pairs": 12, "n_kept": 12, "tau": None, "which": "pair 0"}
    with pytest.raises(ValueError, match="the fitted vector is zero"):
        VectorSteerer.fit(None, acts, layer=0, aggregator=lambda a, l: torch.zeros(16))
    with pytest.raises(TypeError, match="aggregator must be a function"):
        VectorSteerer.fit(None, acts, layer=0, aggregator="diffmean")
    with pytest.raises(ValueError, match=r"layers \[3\] were not embedded"):
        DiffMeanSteerer.fit(None, acts, layer=3)


# --------------------------------------------------------------------------- the protocol


def _methods(llama, prefs):
    sub = fit_subspace(llama, prefs, tau=1.0, verbose=False)
    vec = VectorSteerer(torch.ones(llama.cfg.d_model), layer=1)
    return [
        Steerer(sub, layers=[1, 2]),
        NoSteerer(),
        DiffMeanSteerer.fit(llama, prefs, layer=2),
        PCASteerer.fit(llama, prefs, layer=2),
        PromptSteerer.fit(llama, prefs),
        vec,
    ]


def test_every_method_is_a_steering_method(llama, prefs):
    for method in _methods(llama, prefs):
        assert isinstance(method, SteeringMethod), type(method).__name__
        assert isinstance(method, HookSteering)
        assert type(method).apply is HookSteering.apply  # written once, not borrowed
        if not isinstance(method, PromptSteerer):
            assert type(method).generate is HookSteering.generate
        info = method.describe()
        assert isinstance(info, dict) and "method" in info
        with method.apply(llama) as hooks:
            assert isinstance(hooks, list)
    assert not isinstance(object(), SteeringMethod)
    assert ez.SteeringMethod is SteeringMethod and ez.embed_pairs is embed_pairs
    assert ez.PairActivations is PairActivations and ez.SteeringTerm is SteeringTerm


def test_with_positions(llama, prefs):
    steerer, none, dm, pc, prompt, vec = _methods(llama, prefs)
    for method in (steerer, dm, pc, vec):
        other = method.with_positions("all")
        assert other is not method and type(other) is type(method)
        assert other.positions == "all" and method.positions == "generated"
        assert other.describe()["positions"] == "all"
        assert {k: v for k, v in other.describe().items() if k != "positions"} == {
            k: v for k, v in method.describe().items() if k != "positions"
        }
        record: list = []
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        with llama.hooks(fwd_hooks=other.hooks(llama, prompt_len=3, record=record)):
            llama(ids, return_type=None)
        assert record and all(span == (0, 5) for _, _, span in record)  # every position edited
    for method in (none, prompt):
        other = method.with_positions("all")
        assert other is not method and other.describe() == method.describe()
    for method in _methods(llama, prefs):
        with pytest.raises(ValueError, match="positions must be one of"):
            method.with_positions("last")


def test_steering_term_is_public_and_none_means_all_components(llama, prefs):
    steerer = Steerer(fit_subspace(llama, prefs, tau=1.0, verbose=False), layers=[1, 2])
    term = steerer.terms[0]
    assert isinstance(term, SteeringTerm) and term.components is None
    every = frozenset(range(term.max_rank))
    assert term.component_indices() == every
    only = steerer.only_components([0, 1])
    assert only.terms[0].components == frozenset({0, 1})
    assert steerer.without_components([0]).terms[0].components == every - {0}
    assert only.without_components([1]).terms[0].components == frozenset({0})
    assert steerer.terms[0].components is None  # copies, not edits


def test_layer_signal_accepts_pair_activations(llama):
    from analyses.layer_signal import layer_signal

    sub = fit_subspace(llama, TEXT_PAIRS, tau=1.0, verbose=False)
    from_texts = layer_signal(llama, sub, TEXT_PAIRS, n_perm=10)
    acts = embed_pairs(llama, TEXT_PAIRS, sub.layer_indices)
    from_acts = layer_signal(None, sub, acts, n_perm=10)
    assert from_texts.settings["input"] == "texts" and from_texts.settings["n_capture_batches"] == 1
    assert from_acts.settings["input"] == "acts" and from_acts.settings["n_capture_batches"] == 0
    for name in ("auroc_first", "auroc_probe", "gap_z", "cos_mean", "p_auroc_probe", "n_kept"):
        assert np.array_equal(getattr(from_texts, name), getattr(from_acts, name), equal_nan=True), name
    with pytest.raises(ValueError, match="taken at site 'resid_post', not 'mlp_out'"):
        layer_signal(None, fit_subspace(llama, TEXT_PAIRS, site="mlp_out", tau=1.0, verbose=False), acts)
