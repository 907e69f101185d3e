"""Baselines: closed forms, hook edits and positions, generation parity, bad input, and
DiffMean parity with the `steering-vectors` package."""

import numpy as np
import pytest
import torch

from alignez_tl import generation
from alignez_tl import models as models_mod
from alignez_tl import pairs as pairs_mod
from alignez_tl.activations import capture
from alignez_tl.baselines import (
    DiffMeanSteerer,
    NoSteerer,
    PCASteerer,
    PromptSteerer,
    add_hook,
    diffmean_vector,
    pca_direction,
)
from alignez_tl.fastpath import unwrapped_hf_model
from alignez_tl.hooks import PositionTracker
from alignez_tl.models import encode, render
from alignez_tl.preferences import PreferenceSet
from alignez_tl.subspace import EmptySubspaceError, SubspaceMismatchError

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
LAYER = 2


@pytest.fixture(scope="module")
def prefs():
    return PreferenceSet.from_pairs(QUERIES, POSITIVES, NEGATIVES, objective="helpful")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


def _n_hooks(model):
    points = {id(hp): hp for hp in model.hook_dict.values()}  # aliases share a HookPoint
    return sum(len(hp.fwd_hooks) for hp in points.values())


def _synthetic(n=40, d=16, seed=0, dtype=torch.float64):
    """Differences = a large mean along e0, plus most of the spread along e1 (and a
    small positive mean along e1, to fix the sign), plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    neg = torch.randn(n, d, generator=g, dtype=dtype)
    diff = 0.05 * torch.randn(n, d, generator=g, dtype=dtype)
    diff[:, 0] += 5.0
    spread = torch.randn(n, generator=g, dtype=dtype)
    diff[:, 1] += 3.0 * (spread - spread.mean()) + 0.2
    return neg + diff, neg


# --------------------------------------------------------------------------- closed forms


def test_diffmean_is_the_mean_difference():
    pos, neg = _synthetic()
    assert torch.equal(diffmean_vector(pos, neg), (pos - neg).mean(0))
    p32, n32 = pos.float(), neg.float()
    v = diffmean_vector(p32, n32)
    assert v.dtype == torch.float32
    assert torch.allclose(v.double(), (p32.double() - n32.double()).mean(0), atol=1e-6)
    steerer = DiffMeanSteerer.fit(None, (pos, neg), layer=0, coef=2.0)
    assert torch.allclose(steerer.vector.double(), (pos - neg).mean(0), atol=1e-6)  # raw, not normalised
    assert abs(float(steerer.vector.norm()) - float((pos - neg).mean(0).norm())) < 1e-5
    assert torch.allclose(steerer.direction, steerer.vector / steerer.vector.norm())
    assert torch.equal(steerer.delta, 2.0 * steerer.vector)


def test_pca_is_the_first_component_of_the_centred_differences():
    pos, neg = _synthetic()
    pc = pca_direction(pos, neg)
    diffs = (pos - neg).numpy()
    _, _, vt = np.linalg.svd(diffs - diffs.mean(0), full_matrices=False)
    reference = torch.from_numpy(vt[0])
    assert abs(float(pc @ reference)) > 0.9999
    assert abs(float(pc.norm()) - 1.0) < 1e-12
    assert float((pos - neg).mean(0) @ pc) >= 0  # sign rule
    assert float(pc[1]) > 0.99  # the spread direction, not the mean (e0): it is centred
    assert torch.allclose(pca_direction(neg, pos), -pc)  # swapping the sides flips it
    # the steerer stores the unit pc (coef_scale="unit") or rms·pc (coef_scale="rms")
    unit = PCASteerer.fit(None, (pos, neg), layer=0)
    assert torch.allclose(unit.vector.double(), pc, atol=1e-6) and unit.coef_scale == "unit"
    scaled = PCASteerer.fit(None, (pos, neg), layer=0, coef_scale="rms", coef=0.5)
    rms = float((torch.cat([pos, neg]) @ pc).square().mean().sqrt())
    assert abs(scaled.proj_rms - rms) < 1e-6 * rms  # activations are fitted in float32
    assert torch.allclose(scaled.vector.double(), rms * pc, atol=1e-5)
    assert torch.allclose(scaled.direction.double(), pc, atol=1e-6)
    assert torch.allclose(scaled.delta, 0.5 * scaled.vector)


def test_fit_embeds_the_same_texts_as_the_subspace(llama, prefs):
    """From a PreferenceSet, the activations are the subspace's: last token of PreferenceSet.texts."""
    pos_texts, neg_texts = prefs.texts(llama)
    acts = capture(llama, pos_texts + neg_texts, [LAYER])[:, 0]
    pos, neg = acts[: len(prefs)], acts[len(prefs) :]
    dm = DiffMeanSteerer.fit(llama, prefs, layer=LAYER)
    assert torch.allclose(dm.vector, diffmean_vector(pos, neg), atol=1e-6)
    assert dm.objective["name"] == "helpful" and dm.info["n_pairs"] == len(prefs)
    pca = PCASteerer.fit(llama, prefs, layer=LAYER)
    assert abs(float(pca.direction @ pca_direction(pos, neg))) > 0.9999
    # the same text pairs give the same vector
    pairs = list(zip(pos_texts, neg_texts))
    assert torch.allclose(DiffMeanSteerer.fit(llama, pairs, layer=LAYER).vector, dm.vector, atol=1e-6)
    # AlignEZ's pair filter, optional: tau keeps only the pairs with cos <= tau
    cos = torch.nn.functional.cosine_similarity(pos.double(), neg.double(), dim=-1)
    tau = float(cos.sort().values[1])  # keeps exactly the two least similar pairs
    filtered = DiffMeanSteerer.fit(llama, prefs, layer=LAYER, tau=tau)
    keep = cos <= tau
    assert filtered.info["n_kept"] == int(keep.sum()) == 2
    assert torch.allclose(filtered.vector, diffmean_vector(pos[keep], neg[keep]), atol=1e-6)


# --------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("kind", ["diffmean", "pca"])
def test_hook_adds_exactly_coef_v_at_the_generated_positions(kind):
    pos, neg = _synthetic(d=8, dtype=torch.float32)
    cls = DiffMeanSteerer if kind == "diffmean" else PCASteerer
    steerer = cls.fit(None, (pos, neg), layer=0, coef=-3.0)
    delta = -3.0 * steerer.vector
    tracker = PositionTracker("generated", prompt_len=5)
    fn = add_hook(steerer.delta, tracker)
    x = torch.randn(3, 5, 8)
    out = fn(x, None)
    assert torch.equal(out[:, :4], x[:, :4])  # prompt positions before the last: untouched
    assert torch.equal(out[:, 4], x[:, 4] + delta)  # the last prompt token, every row alike
    step = torch.randn(3, 1, 8)  # a KV-cache step: its one position is edited
    assert torch.equal(fn(step, None), step + delta)
    x64 = x.double()
    all_pos = add_hook(steerer.delta, PositionTracker("all"))(x64, None)
    assert all_pos.dtype == torch.float64
    assert torch.equal(all_pos, x64 + delta.double())


@pytest.mark.parametrize("cache", [True, False])
def test_generated_positions_in_a_real_generation(llama, prefs, cache):
    steerer = DiffMeanSteerer.fit(llama, prefs, layer=LAYER, coef=2.0)
    q = QUERIES[0]
    prompt = encode(llama, [render(llama, q)])
    p = prompt.input_ids.shape[1]
    record = []
    with steerer.apply(llama, q, record=record) as hooks:
        assert [name for name, _ in hooks] == [f"blocks.{LAYER}.hook_resid_post"]
        llama.generate(
            prompt.input_ids,
            max_new_tokens=4,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            use_past_kv_cache=cache,
        )
    calls = [(s, span) for _, s, span in record]
    if cache:
        assert calls == [(p, (p - 1, p)), (1, (0, 1)), (1, (0, 1)), (1, (0, 1))]
    else:
        assert calls == [(p + i, (p - 1, p + i)) for i in range(4)]


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_the_model_sees_x_plus_coef_v(tiny_model, prefs, positions):
    """Inside a real forward pass, resid_post at the layer becomes x + coef·v where edited."""
    steerer = PCASteerer.fit(tiny_model, prefs, layer=LAYER, coef=4.0, coef_scale="rms", positions=positions)
    tokens = encode(tiny_model, [render(tiny_model, QUERIES[1])]).input_ids
    seen = {}

    def grab(key):
        def fn(act, hook):
            seen[key] = act.detach().clone()

        return fn

    name = steerer.hook_name
    with tiny_model.hooks(fwd_hooks=[(name, grab("clean"))]):
        tiny_model(tokens)
    with steerer.apply(tiny_model) as hooks, tiny_model.hooks(fwd_hooks=[(name, grab("steered"))]):
        assert len(hooks) == 1
        tiny_model(tokens)
    diff = seen["steered"] - seen["clean"]
    p = tokens.shape[1]
    edited = range(p) if positions == "all" else [p - 1]
    delta = steerer.delta.to(diff.dtype)
    for t in range(p):
        want = delta if t in edited else torch.zeros_like(delta)
        assert torch.allclose(diff[0, t], want, atol=1e-5), t


@pytest.mark.parametrize("backend", ["tl", "hf"])
def test_prompt_only_and_no_steering_register_no_hooks(llama, prefs, monkeypatch, backend):
    prompt, none = PromptSteerer.fit(llama, prefs), NoSteerer()
    before = _n_hooks(llama)
    for steerer in (prompt, none):
        assert steerer.hooks(llama, QUERIES[0]) == []
        with steerer.apply(llama, QUERIES[0]) as hooks:
            assert hooks == [] and _n_hooks(llama) == before
    seen = []
    if backend == "tl":
        real = type(llama).hooks

        def spy(self, *args, fwd_hooks=(), **kwargs):
            seen.append(list(fwd_hooks))
            return real(self, *args, fwd_hooks=fwd_hooks, **kwargs)

        monkeypatch.setattr(type(llama), "hooks", spy)
    else:
        real = generation.native_hooks

        def spy(hf, hooks):
            seen.append(list(hooks))
            return real(hf, hooks)

        monkeypatch.setattr(generation, "native_hooks", spy)
    prompt.generate(llama, QUERIES[:2], max_new_tokens=2, backend=backend)
    none.generate(llama, QUERIES[:2], max_new_tokens=2, backend=backend)
    assert len(seen) == 2 and all(h == [] for h in seen)
    DiffMeanSteerer.fit(llama, prefs, layer=LAYER).generate(llama, QUERIES[:2], max_new_tokens=2, backend=backend)
    assert [name for name, _ in seen[-1]] == [f"blocks.{LAYER}.hook_resid_post"]  # the spy does see hooks


def test_prompt_only_renders_the_keyword_and_generates_from_that_prompt(llama, gpt2, prefs):
    steerer = PromptSteerer.fit(llama, prefs)
    assert steerer.system == "You are a helpful assistant."
    text = steerer.render(llama, QUERIES[0])
    assert "helpful" in text and text == render(llama, QUERIES[0], system=steerer.system)
    assert "helpful" in steerer.render(gpt2, QUERIES[0])  # plain model: "{system}\n{query}"
    custom = PromptSteerer.fit(objective="harmless", template="Be {positive}, never {negative}.")
    assert custom.system == "Be safety-first, never malicious."
    # generate feeds exactly the rendered prompt (tokenised as the unsteered path would)
    tokens = encode(llama, [text]).input_ids
    out = llama.generate(tokens, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    want = steerer.generate(llama, [QUERIES[0]], max_new_tokens=6, return_tokens=True)[0][0]
    assert out[0, tokens.shape[1] :].tolist()[: len(want)] == want
    # steer=False is the plain path, identical to NoSteerer
    plain = steerer.generate(llama, QUERIES, max_new_tokens=6, steer=False, return_tokens=True)[0]
    assert plain == NoSteerer().generate(llama, QUERIES, max_new_tokens=6, return_tokens=True)[0]
    assert steerer.generate(llama, QUERIES, max_new_tokens=6, return_tokens=True)[0] != plain


TEMPLATE_WITH_DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDEFAULT PROMPT<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_system_prompt_replaces_a_default_one_and_templates_are_respected(llama, prefs, monkeypatch):
    steerer = PromptSteerer.fit(llama, prefs)
    monkeypatch.setattr(llama.tokenizer, "chat_template", TEMPLATE_WITH_DEFAULT_SYSTEM)
    assert "DEFAULT PROMPT" in render(llama, QUERIES[0])  # like SmolLM2's default system turn
    text = steerer.render(llama, QUERIES[0])
    assert "DEFAULT PROMPT" not in text and steerer.system in text
    # a template that ignores system turns would silently make prompt-only a no-op
    monkeypatch.setattr(
        llama.tokenizer, "chat_template", "{{ messages[-1]['content'] }}{% if add_generation_prompt %} A:{% endif %}"
    )
    with pytest.raises(ValueError, match="dropped the system prompt"):
        steerer.generate(llama, QUERIES[:1], max_new_tokens=2)
    # a template that does not start with BOS: the prompt is still tokenised as chat text,
    # exactly as an unsteered prompt (no BOS added in front)
    monkeypatch.setattr(
        llama.tokenizer,
        "chat_template",
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
    )
    encoded = []
    real_encode = models_mod.encode

    def spy(*args, **kwargs):
        encoded.append(real_encode(*args, **kwargs))
        return encoded[-1]

    monkeypatch.setattr(models_mod, "encode", spy)
    steerer.generate(llama, QUERIES[:1], max_new_tokens=2)
    text = steerer.render(llama, QUERIES[0])
    assert not text.startswith(llama.tokenizer.bos_token)
    want = encode(llama, [text]).input_ids
    assert want[0, 0] != llama.tokenizer.bos_token_id
    assert torch.equal(encoded[0].input_ids, want)


@pytest.mark.parametrize("kind", ["diffmean", "pca"])
def test_hooks_are_removed_after_an_exception(llama, prefs, kind):
    cls = DiffMeanSteerer if kind == "diffmean" else PCASteerer
    steerer = cls.fit(llama, prefs, layer=LAYER, coef=3.0)
    before = _n_hooks(llama)
    tokens = encode(llama, [render(llama, QUERIES[0])]).input_ids
    clean = llama(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.apply(llama, QUERIES[0]):
            assert _n_hooks(llama) == before + 1
            assert not torch.equal(llama(tokens), clean)
            raise RuntimeError("boom")
    assert _n_hooks(llama) == before
    assert torch.equal(llama(tokens), clean)


# --------------------------------------------------------------------------- generation


def _steerers(model, prefs):
    return {
        "diffmean": DiffMeanSteerer.fit(model, prefs, layer=LAYER, coef=4.0),
        "pca": PCASteerer.fit(model, prefs, layer=LAYER, coef=4.0, coef_scale="rms"),
        "prompt": PromptSteerer.fit(model, prefs),
        "none": NoSteerer(),
    }


def test_batched_generation_equals_one_query_at_a_time(tiny_model, prefs):
    plain = NoSteerer().generate(tiny_model, QUERIES, max_new_tokens=8, batch_size=len(QUERIES), return_tokens=True)[0]
    for kind, steerer in _steerers(tiny_model, prefs).items():
        batched = steerer.generate(tiny_model, QUERIES, max_new_tokens=8, batch_size=len(QUERIES), return_tokens=True)[
            0
        ]
        alone = [steerer.generate(tiny_model, [q], max_new_tokens=8, return_tokens=True)[0][0] for q in QUERIES]
        assert batched == alone, kind
        if kind != "none":
            assert batched != plain, kind  # the baseline changed something
        unsteered = steerer.generate(
            tiny_model, QUERIES, max_new_tokens=8, steer=False, batch_size=len(QUERIES), return_tokens=True
        )[0]
        assert unsteered == plain, kind


@pytest.mark.parametrize("kind", ["diffmean", "pca"])
def test_kv_cache_matches_no_cache(tiny_model, prefs, kind):
    steerer = _steerers(tiny_model, prefs)[kind]
    with_cache = steerer.generate(tiny_model, QUERIES, max_new_tokens=8, return_tokens=True)[0]
    without = steerer.generate(tiny_model, QUERIES, max_new_tokens=8, use_past_kv_cache=False, return_tokens=True)[0]
    assert with_cache == without
    all_pos = steerer.with_coef(1.0)
    all_pos.positions = "all"
    assert (
        all_pos.generate(tiny_model, QUERIES[:2], max_new_tokens=6, return_tokens=True)[0]
        == all_pos.generate(tiny_model, QUERIES[:2], max_new_tokens=6, use_past_kv_cache=False, return_tokens=True)[0]
    )


def test_with_coef_and_describe(llama, prefs):
    steerer = DiffMeanSteerer.fit(llama, prefs, layer=LAYER, coef=1.0)
    double = steerer.with_coef(2.0)
    assert double.coef == 2.0 and steerer.coef == 1.0 and torch.equal(double.vector, steerer.vector)
    info = double.describe()
    assert info["method"] == "diffmean" and info["layer"] == LAYER and info["coef"] == 2.0
    assert abs(info["delta_norm"] - 2.0 * info["vector_norm"]) < 1e-4
    assert PromptSteerer.fit(llama, prefs).describe()["system"] == "You are a helpful assistant."
    with pytest.raises(ValueError, match="coef must be finite"):
        steerer.with_coef(float("nan"))


# --------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_work(llama, gpt2, prefs, monkeypatch):
    def no_capture(*args, **kwargs):
        raise AssertionError("activations were captured before the input was checked")

    monkeypatch.setattr(pairs_mod, "capture", no_capture)
    monkeypatch.setattr(pairs_mod, "capture_tokens", no_capture)
    n = llama.cfg.n_layers
    for cls in (DiffMeanSteerer, PCASteerer):
        for layer in (n, n + 3):
            with pytest.raises(ValueError, match="out of range"):
                cls.fit(llama, prefs, layer=layer)
        with pytest.raises(ValueError, match="out of range"):
            cls.fit(llama, prefs, layer=-1)
        with pytest.raises(TypeError, match="layer must be an int"):
            cls.fit(llama, prefs, layer=1.0)
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match="coef must be finite"):
                cls.fit(llama, prefs, layer=LAYER, coef=bad)
        with pytest.raises(TypeError, match="coef must be a number"):
            cls.fit(llama, prefs, layer=LAYER, coef="1")
        with pytest.raises(EmptySubspaceError, match="empty"):
            cls.fit(llama, prefs[:0], layer=LAYER)
        with pytest.raises(EmptySubspaceError, match="no pairs"):
            cls.fit(llama, [], layer=LAYER)
        with pytest.raises(ValueError, match="site"):
            cls.fit(llama, prefs, layer=LAYER, site="nowhere")
        with pytest.raises(ValueError, match="positions"):
            cls.fit(llama, prefs, layer=LAYER, positions="prompt")
        with pytest.raises(ValueError, match="tau"):
            cls.fit(llama, prefs, layer=LAYER, tau=float("nan"))
    with pytest.raises(ValueError, match="coef_scale"):
        PCASteerer.fit(llama, prefs, layer=LAYER, coef_scale="huge")


def test_bad_data_and_mismatched_models(llama, gpt2, prefs):
    pos, neg = _synthetic(n=3, d=llama.cfg.d_model, dtype=torch.float32)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        PCASteerer.fit(None, (pos[:1], neg[:1]), layer=0)
    with pytest.raises(ValueError, match="all equal"):
        PCASteerer.fit(None, (pos, pos - 1.0), layer=0)
    with pytest.raises(ValueError, match="mean difference is zero"):
        DiffMeanSteerer.fit(None, (pos, pos), layer=0)
    with pytest.raises(ValueError, match="NaN"):
        diffmean_vector(pos * float("nan"), neg)
    with pytest.raises(ValueError, match="same shape|\\[n, d_model\\]"):
        pca_direction(pos, neg[:2])
    with pytest.raises(EmptySubspaceError, match="tau"):
        DiffMeanSteerer.fit(None, (pos, pos + 1e-3), layer=0, tau=0.5)
    steerer = DiffMeanSteerer.fit(llama, prefs, layer=LAYER)
    with pytest.raises(SubspaceMismatchError, match="model id"):
        steerer.generate(gpt2, QUERIES[:1], max_new_tokens=2)
    steerer.hooks(gpt2, strict=False)  # same shapes: accepted when asked
    with pytest.raises(SubspaceMismatchError, match="d_model"):
        DiffMeanSteerer.fit(None, (pos[:, :8], neg[:, :8]), layer=0).hooks(llama)
    with pytest.raises(SubspaceMismatchError, match="does not exist"):
        DiffMeanSteerer.fit(None, (pos, neg), layer=9).hooks(llama)
    with pytest.raises(ValueError, match="objective"):
        PromptSteerer.fit(llama, [("a", "b")])
    with pytest.raises(ValueError, match="only \\{positive\\}"):
        PromptSteerer.fit(llama, prefs, template="You are {kind}.")
    with pytest.raises(ValueError, match="non-empty"):
        PromptSteerer("  ")
    with pytest.raises(TypeError, match="single string"):
        PromptSteerer.fit(llama, prefs).generate(llama, "one query")
    with pytest.raises(ValueError, match="empty"):
        NoSteerer().generate(llama, [])


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("arch,layers", [("llama", [0, 2, 3]), ("gpt2", [1, 3])])
def test_diffmean_matches_steering_vectors(arch, layers, llama, gpt2, prefs):
    """Our DiffMean vector equals steering-vectors' mean aggregator (decoder-block output =
    `blocks.{l}.hook_resid_post`), on the same Hugging Face weights and exactly the tokens it ran."""
    sv = pytest.importorskip("steering_vectors")
    model = {"llama": llama, "gpt2": gpt2}[arch]
    hf = unwrapped_hf_model(model)
    assert hf is not None
    pos_texts, neg_texts = prefs.texts(model)
    seen: list[torch.Tensor] = []

    def record_ids(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.detach().cpu().clone())

    handle = hf.register_forward_pre_hook(record_ids, with_kwargs=True)
    try:
        vec = sv.train_steering_vector(
            hf,
            model.tokenizer,
            list(zip(pos_texts, neg_texts)),
            layers=layers,
            aggregator=sv.mean_aggregator(),
            read_token_index=-1,
            batch_size=1,
        )
    finally:
        handle.remove()
    assert len(seen) == 2 * len(prefs) and all(ids.shape[0] == 1 for ids in seen)  # unpadded, one per text
    pos_ids, neg_ids = [ids[0] for ids in seen[0::2]], [ids[0] for ids in seen[1::2]]
    for layer in layers:
        ours = DiffMeanSteerer.fit(model, (pos_ids, neg_ids), layer=layer)
        theirs = vec.layer_activations[layer].detach().cpu()
        assert float((ours.vector.double() - theirs.double()).abs().max()) < 1e-5, layer
    if arch == "gpt2":  # plain text: it tokenised exactly as our encode does, so the text path agrees
        assert [ids.tolist() for ids in pos_ids] == [
            row[row_mask.bool()].tolist()
            for row, row_mask in zip(*(lambda e: (e.input_ids, e.attention_mask))(encode(model, pos_texts)))
        ]
        ours = DiffMeanSteerer.fit(model, prefs, layer=layers[-1])
        theirs = vec.layer_activations[layers[-1]].detach().cpu()
        assert float((ours.vector.double() - theirs.double()).abs().max()) < 1e-5
