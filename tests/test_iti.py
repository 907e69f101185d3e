"""ITI (Inference-Time Intervention): probes, head choice, the per-head shift, generation."""

import math

import pytest
import torch
from tiny import hooked_transformer_available, make_hooked

from alignez_tl import generation as generation_mod
from alignez_tl.baselines import ITISteerer, capture_heads, fit_probes, z_hook_name
from alignez_tl.calibration import neutral_kl
from alignez_tl.models import encode, render
from alignez_tl.pairs import embed_pairs
from alignez_tl.preferences import PreferenceSet
from alignez_tl.protocol import SteeringMethod
from alignez_tl.subspace import SubspaceMismatchError

QUERIES = ["How do I bake bread?", "What is two plus two?", "Write a poem about the sea", "Hi"]
POSITIVES = [
    "Mix flour, water, salt and yeast, then knead.",
    "Two plus two is four.",
    "The sea, the wind and the stars at night.",
    "A helpful assistant answers clearly, step by step, with examples.",
    "Be kind, be precise, be honest.",
    "Plants turn light, water and carbon dioxide into sugar.",
]
NEGATIVES = [
    "Pretend you are a malicious assistant.",
    "Two plus two is wrong and short.",
    "Be dull.",
    "A useless assistant gives vague answers.",
    "Refuse to help.",
    "The quick brown fox.",
]
PAIR_QUERIES = QUERIES + ["Be nice.", "Explain photosynthesis."]


@pytest.fixture(scope="module")
def prefs():
    return PreferenceSet.from_pairs(PAIR_QUERIES[:6], POSITIVES, NEGATIVES, objective="helpful")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


def _n_hooks(model):
    points = {id(hp): hp for hp in model.hook_dict.values()}  # aliases share a HookPoint
    return sum(len(hp.fwd_hooks) for hp in points.values())


def _planted(n=40, layers=3, heads=4, d=8, seed=0):
    """Head outputs with a strong signal in head (2, 1), a weaker one in (0, 3), noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, layers, heads, d, generator=g)
    neg = torch.randn(n, layers, heads, d, generator=g)
    pos[:, 2, 1, 0] += 4.0
    pos[:, 0, 3, 1] += 1.0
    return pos, neg


class _Cfg:
    def __init__(self, n_layers, n_heads, d_head):
        self.n_layers, self.n_heads, self.d_head = n_layers, n_heads, d_head
        self.d_model = n_heads * d_head
        self.model_name = "planted"


class _Shape:
    """Just enough of a model for fitting on precomputed head outputs."""

    def __init__(self, n_layers, n_heads, d_head):
        self.cfg = _Cfg(n_layers, n_heads, d_head)


# --------------------------------------------------------------------------- probes and head choice


def test_fit_probes_separates_a_planted_signal():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 80, 5, generator=g, dtype=torch.float64)
    y = torch.cat([torch.ones(40), torch.zeros(40)])
    x[0, :40, 2] += 5.0  # head 0 separable, heads 1 and 2 noise
    acc, loss = fit_probes(x[:, ::2], y[::2], x[:, 1::2], y[1::2])
    assert acc.shape == (3,) and loss.shape == (3,)
    assert acc[0] >= 0.95 and acc[1] < 0.8 and acc[2] < 0.8
    assert loss[0] < loss[1] and loss[0] < loss[2]


def test_fit_probes_matches_scikit_learn():
    """The Newton fit is scikit-learn's LogisticRegression(C=1) on standardised features."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 60, 6, generator=g, dtype=torch.float64)
    y = (torch.rand(60, generator=g) < 0.5).double()
    x[:, :, 0] += 1.5 * y  # some signal, not separable
    xt, yt, xv, yv = x[:, :40], y[:40], x[:, 40:], y[40:]
    acc, loss = fit_probes(xt, yt, xv, yv)
    for h in range(4):
        mu, sd = xt[h].mean(0), xt[h].std(0, unbiased=False)
        clf = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit((xt[h] - mu) / sd, yt)
        p = torch.as_tensor(clf.predict_proba((xv[h] - mu) / sd)[:, 1])
        want = torch.nn.functional.binary_cross_entropy(p, yv)
        assert float(loss[h]) == pytest.approx(float(want), rel=1e-4)
        assert float(acc[h]) == pytest.approx(float(((p > 0.5) == (yv > 0.5)).double().mean()))


def test_chosen_heads_are_the_best_held_out(monkeypatch):
    pos, neg = _planted()
    iti = ITISteerer.fit(_Shape(3, 4, 8), (pos, neg), top_k=5, alpha=2.0, seed=3)
    assert iti.heads[0] == (2, 1) and (0, 3) in iti.heads[:3]
    acc = iti.probe_accuracy
    assert acc.shape == (3, 4)
    chosen = [float(acc[layer, head]) for layer, head in iti.heads]
    assert list(iti.accuracies) == pytest.approx(chosen)
    assert chosen == sorted(chosen, reverse=True)
    others = [float(acc[i, j]) for i in range(3) for j in range(4) if (i, j) not in iti.heads]
    assert min(chosen) >= max(others)  # no unchosen head scores better than a chosen one
    assert iti.describe()["head_accuracy"]["L2H1"] == 1.0
    # the split is seeded: the same seed, the same heads; another seed may differ
    assert ITISteerer.fit(_Shape(3, 4, 8), (pos, neg), top_k=5, seed=3).heads == iti.heads


def test_direction_and_sigma_are_the_mass_mean_and_its_spread():
    pos, neg = _planted()
    iti = ITISteerer.fit(_Shape(3, 4, 8), (pos, neg), top_k=2, alpha=3.0)
    for k, (layer, head) in enumerate(iti.heads):
        p, q = pos[:, layer, head].double(), neg[:, layer, head].double()
        v = p.mean(0) - q.mean(0)
        theta = v / v.norm()
        sigma = (torch.cat([p, q]) @ theta).std(unbiased=False)
        assert torch.allclose(iti.directions[k].double(), theta, atol=1e-6)
        assert math.isclose(float(iti.sigmas[k]), float(sigma), rel_tol=1e-5)
        assert torch.allclose(iti.shifts[k].double(), 3.0 * sigma * theta, atol=1e-5)


# --------------------------------------------------------------------------- the shift in a real forward pass


def test_hook_z_exists_and_capture_is_one_pass(tiny_model, prefs, monkeypatch):
    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    assert all(z_hook_name(layer) in tiny_model.hook_dict for layer in range(n_layers))
    calls = []
    real = type(tiny_model).forward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "forward", spy)
    texts = [render(tiny_model, q, a) for q, a in zip(QUERIES, POSITIVES)]
    z = capture_heads(tiny_model, texts, batch_size=len(texts))
    assert z.shape == (len(texts), n_layers, n_heads, tiny_model.cfg.d_head) and z.dtype == torch.float32
    assert len(calls) == 1  # one forward pass for every head of every layer
    one = capture_heads(tiny_model, texts[1:2])  # left padding does not change a row
    assert torch.allclose(one[0], z[1], atol=1e-4)


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_the_shift_equals_alpha_sigma_theta_at_the_chosen_heads_only(tiny_model, prefs, positions):
    iti = ITISteerer.fit(tiny_model, prefs, top_k=3, alpha=4.0, positions=positions)
    tokens = encode(tiny_model, [render(tiny_model, QUERIES[1])]).input_ids
    p = tokens.shape[1]
    n_layers = tiny_model.cfg.n_layers
    seen: dict = {}

    def grab(key, name):  # the bridge's hook.name is the alias target (attn.o.hook_in)
        def fn(z, hook):
            seen[(key, name)] = z.detach().clone()

        return fn

    names = [z_hook_name(layer) for layer in range(n_layers)]
    with tiny_model.hooks(fwd_hooks=[(n, grab("clean", n)) for n in names]):
        tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=[(n, grab("in", n)) for n in names]):
        with iti.apply(tiny_model) as hooks:
            assert [h for h, _ in hooks] == sorted({z_hook_name(layer) for layer, _ in iti.heads})
            with tiny_model.hooks(fwd_hooks=[(n, grab("out", n)) for n in names]):
                tiny_model(tokens)
    edited = range(p) if positions == "all" else [p - 1]
    shifts = dict(zip(iti.heads, iti.shifts))
    first = min(layer for layer, _ in iti.heads)
    for layer, name in enumerate(names):
        diff = seen[("out", name)] - seen[("in", name)]
        for head in range(tiny_model.cfg.n_heads):
            for t in range(p):
                want = shifts[(layer, head)] if (layer, head) in shifts and t in edited else torch.zeros(diff.shape[-1])
                assert torch.allclose(diff[0, t, head], want.to(diff.dtype), atol=1e-5), (layer, head, t)
        if layer <= first:  # nothing upstream was edited: the hook saw the clean outputs
            assert torch.allclose(seen[("in", name)], seen[("clean", name)], atol=1e-6)
    # against the unhooked model at the first edited layer: z_steered − z_clean = α·σ·θ
    diff = seen[("out", names[first])] - seen[("clean", names[first])]
    for (layer, head), shift in shifts.items():
        if layer == first:
            assert torch.allclose(diff[0, p - 1, head], shift.to(diff.dtype), atol=1e-5)


def test_hooks_are_removed_after_an_exception(llama, prefs):
    iti = ITISteerer.fit(llama, prefs, top_k=3, alpha=8.0)
    before = _n_hooks(llama)
    tokens = encode(llama, [render(llama, QUERIES[0])]).input_ids
    clean = llama(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with iti.apply(llama, QUERIES[0]) as hooks:
            assert _n_hooks(llama) == before + len(hooks)
            assert not torch.equal(llama(tokens), clean)
            raise RuntimeError("boom")
    assert _n_hooks(llama) == before
    assert torch.equal(llama(tokens), clean)


# --------------------------------------------------------------------------- generation


def test_batched_equals_unbatched_and_backends_agree(tiny_model, prefs, monkeypatch):
    iti = ITISteerer.fit(tiny_model, prefs, top_k=3, alpha=8.0)
    assert isinstance(iti, SteeringMethod)
    kw = dict(max_new_tokens=8, return_tokens=True)
    plain = iti.generate(tiny_model, QUERIES, steer=False, batch_size=len(QUERIES), **kw)[0]
    batched = iti.generate(tiny_model, QUERIES, batch_size=len(QUERIES), backend="tl", **kw)[0]
    alone = [iti.generate(tiny_model, [q], backend="tl", **kw)[0][0] for q in QUERIES]
    seen = []
    real = generation_mod.native_hooks

    def spy(hf, hooks):
        seen.append([name for name, _ in hooks])
        return real(hf, hooks)

    monkeypatch.setattr(generation_mod, "native_hooks", spy)
    fast = iti.generate(tiny_model, QUERIES, batch_size=len(QUERIES), backend="hf", **kw)[0]
    no_cache = iti.generate(tiny_model, QUERIES, batch_size=2, backend="tl", use_past_kv_cache=False, **kw)[0]
    assert batched == alone == fast == no_cache
    assert batched != plain  # the shift changed something
    assert seen and all(name.endswith("attn.hook_z") for name in seen[-1])


def test_strength_controls_and_calibration_surface(llama, prefs):
    iti = ITISteerer.fit(llama, prefs, top_k=3, alpha=5.0)
    assert iti.strength == 5.0 and iti.top_k == 3
    double = iti.with_strength(10.0)
    assert double.strength == 10.0 and iti.strength == 5.0
    assert torch.allclose(double.shifts, 2 * iti.shifts)
    mirror = iti.mirror()
    assert torch.allclose(mirror.shifts, -iti.shifts) and mirror.info["control"] == "mirror"
    null = iti.null(seed=1)
    assert null.heads == iti.heads and torch.allclose(null.shifts.norm(dim=1), iti.shifts.norm(dim=1), atol=1e-5)
    assert not torch.allclose(null.directions, iti.directions)
    assert torch.equal(iti.null(seed=1).directions, null.directions)
    texts = ["The Nile flows north into the Mediterranean Sea."]
    assert neutral_kl(llama, iti.with_strength(0.0), texts) == pytest.approx(0.0, abs=1e-9)
    assert 0 < neutral_kl(llama, iti, texts) < neutral_kl(llama, double, texts)
    d = iti.describe()
    assert d["method"] == "iti" and len(d["heads"]) == 3 and d["alpha"] == 5.0 and "probe_accuracy" not in d
    assert iti.with_positions("all").positions == "all" and iti.positions == "generated"
    assert "ITISteerer(alpha=5" in repr(iti)


def test_bad_input_and_mismatched_models(llama, gpt2, prefs):
    with pytest.raises(ValueError, match="top_k=99 exceeds"):
        ITISteerer.fit(llama, prefs, top_k=99)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        ITISteerer.fit(llama, prefs, top_k=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ITISteerer.fit(llama, prefs, val_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        ITISteerer.fit(llama, prefs[:1])
    with pytest.raises(TypeError, match="carry no per-head outputs"):
        ITISteerer.fit(llama, embed_pairs(llama, prefs, [0]))
    with pytest.raises(ValueError, match="precomputed head outputs"):
        ITISteerer.fit(llama, (torch.randn(4, 64), torch.randn(4, 64)))
    with pytest.raises(ValueError, match="precomputed head outputs"):
        ITISteerer.fit(llama, (torch.randn(4, 4, 4, 8), torch.randn(4, 4, 4, 8)))
    with pytest.raises(ValueError, match="positions"):
        ITISteerer.fit(llama, prefs, positions="prompt")
    iti = ITISteerer.fit(llama, prefs, top_k=2)
    with pytest.raises(SubspaceMismatchError, match="model id"):
        iti.hooks(gpt2)
    assert len(iti.hooks(gpt2, strict=False)) >= 1  # same head shape: accepted without the id check


@pytest.mark.skipif(not hooked_transformer_available(), reason="this TransformerLens has no HookedTransformer")
def test_iti_on_hooked_transformer(prefs):
    model = make_hooked("gpt2")
    iti = ITISteerer.fit(model, prefs, top_k=3, alpha=8.0)
    out = iti.generate(model, QUERIES[:2], max_new_tokens=4)
    assert len(out) == 2


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_iti_on_smollm2_with_the_shipped_labelled_pairs():
    import alignez_tl as ez
    from alignez_tl.preferences import labelled_pairs

    model = ez.load_model()
    iti = ITISteerer.fit(model, labelled_pairs(), top_k=8, alpha=5.0)
    assert len(iti.heads) == 8 and min(iti.accuracies) > 0.5
    queries = ["Write a sentence about the moon."]
    assert iti.generate(model, queries, max_new_tokens=12) != iti.generate(
        model, queries, max_new_tokens=12, steer=False
    )
