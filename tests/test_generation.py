"""Generation: the one loop, its seed and stop rules, the fast-path view's freshness and
the per-query selection read from the prefill (exactly the tokens of the two-pass way)."""

import pytest
import torch
from test_steering import PAIRS, QUERIES
from tiny import make_model

import alignez_tl.generation as generation
from alignez_tl import steering as steering_mod
from alignez_tl.baselines import NoSteerer
from alignez_tl.fastpath import unwrapped_hf_model
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace

QUERIES_8 = QUERIES + ["Tell me about the wind", "Be brief", "Explain photosynthesis", "Refuse to help me"]


@pytest.fixture(scope="module")
def subs(llama, gpt2):
    return {id(m): fit_subspace(m, PAIRS, tau=1.0, verbose=False) for m in (llama, gpt2)}


# --------------------------------------------------------------------------- the rules


def test_generate_plain_is_seeded_and_equals_hf_generate(llama):
    batch = encode(llama, [render(llama, "How do I bake bread?"), render(llama, "Hi")])
    a = generation.generate_plain(llama, batch, max_new_tokens=6, seed=3)
    b = generation.generate_plain(llama, batch, max_new_tokens=6, seed=3)
    assert a == b and len(a) == 2
    greedy = generation.generate_plain(llama, batch, max_new_tokens=6, do_sample=False)
    ref = llama.original_model.generate(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=llama.tokenizer.pad_token_id,
    )
    stops = generation.stop_token_ids(llama)
    assert greedy == [generation.trim_generated(r[batch.input_ids.shape[1] :].tolist(), stops) for r in ref]


def test_seeded_generation_leaves_the_callers_random_state_alone(llama):
    batch = encode(llama, [render(llama, "Hi")])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generation.generate_plain(llama, batch, max_new_tokens=3, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_one_loop_one_seed_rule(llama):
    """`generate_plain` on one batch is `generate`'s first batch (seed + 0), sampled or greedy."""
    texts = [render(llama, q) for q in QUERIES]
    for sample in (dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0), dict(do_sample=False)):
        plain = generation.generate_plain(llama, encode(llama, texts), max_new_tokens=6, seed=5, **sample)
        looped = generation.generate(llama, texts, max_new_tokens=6, seed=5, batch_size=len(texts), **sample)
        assert plain == looped, sample


def test_old_names_still_resolve():
    from alignez_tl import models

    assert models.generate_plain is generation.generate_plain
    assert models.stop_token_ids is generation.stop_token_ids
    assert steering_mod.generate_with_hooks is generation.generate
    assert steering_mod.BACKENDS == generation.BACKENDS
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- the view's freshness


def test_the_view_follows_a_dtype_change():
    """`.to(float64)` after a generation: the view is rebuilt and equals a fresh float64 model."""
    model = make_model("llama", dtype=torch.float32)
    first = NoSteerer().generate(model, QUERIES[:2], max_new_tokens=8, batch_size=1, return_tokens=True)[0]
    old = unwrapped_hf_model(model)
    assert old is unwrapped_hf_model(model)  # unchanged model: the cached view
    model.to(torch.float64)
    view = unwrapped_hf_model(model)
    assert view is not None and view is not old
    # every tensor of the view is the model's own (the stale view kept its float32 rotary buffers)
    shared = {t.data_ptr() for t in list(model.original_model.parameters()) + list(model.original_model.buffers())}
    for name, t in list(view.named_parameters()) + list(view.named_buffers()):
        assert t.dtype == torch.float64 and t.data_ptr() in shared, name
    fresh = make_model("llama", dtype=torch.float64)
    batch = encode(model, [render(model, QUERIES[0])])
    with torch.inference_mode():
        ours = view(input_ids=batch.input_ids).logits
        ref = unwrapped_hf_model(fresh)(input_ids=batch.input_ids).logits
    assert torch.equal(ours, ref)
    kw = dict(max_new_tokens=8, batch_size=1, return_tokens=True)
    assert NoSteerer().generate(model, QUERIES[:2], **kw)[0] == NoSteerer().generate(fresh, QUERIES[:2], **kw)[0]
    assert len(first) == 2


def test_the_view_is_refused_after_a_change_to_meta():
    model = make_model("gpt2")
    assert unwrapped_hf_model(model) is not None
    # one weight replaced by a meta tensor: the old view would keep the real one
    name, weight = next(iter(model.original_model.named_parameters()))
    module_name, _, attr = name.rpartition(".")
    module = model.original_model.get_submodule(module_name)
    module._parameters[attr] = torch.nn.Parameter(torch.empty_like(weight, device="meta"))
    assert unwrapped_hf_model(model) is None
    with pytest.raises(ValueError, match="backend='hf'"):
        NoSteerer().generate(model, QUERIES[:1], max_new_tokens=2, backend="hf")
    model.to("meta")
    assert unwrapped_hf_model(model) is None


# --------------------------------------------------------------------------- selection from the prefill


@pytest.mark.parametrize("n", [1, 8])
def test_selection_from_the_prefill_gives_the_two_pass_tokens(tiny, subs, n, monkeypatch):
    steerer = Steerer(subs[id(tiny)], top_n=2, alpha=4.0)
    queries = QUERIES_8[:n]
    captures = []
    real_capture = steering_mod.capture
    monkeypatch.setattr(steering_mod, "capture", lambda *a, **k: captures.append(1) or real_capture(*a, **k))
    chosen = []
    real_select = Steerer.select

    def select(self, *args, **kwargs):
        chosen.append(real_select(self, *args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(Steerer, "select", select)
    two_pass = steerer.select(tiny, queries)
    for cache in (True, False):
        kw = dict(max_new_tokens=10, batch_size=8, return_tokens=True, use_past_kv_cache=cache)
        ref = steerer.generate(tiny, queries, selections=two_pass, **kw)[0]
        captures.clear(), chosen.clear()
        ours = steerer.generate(tiny, queries, **kw)[0]
        assert ours == ref, cache
        # with the cache, the selection came from the prefill (no capture pass) and is the same
        assert len(captures) == (0 if cache else 1)
        assert [[(s.layers, s.kept) for s in t] for t in chosen[0]] == [
            [(s.layers, s.kept) for s in t] for t in two_pass
        ]
        assert steerer.generate(tiny, queries, backend="tl", **kw)[0] == ref
    if n == 8:
        assert len({tuple(s.layers) for s in two_pass[0]}) > 1  # rows chose different layers
        assert ref != steerer.generate(tiny, queries, steer=False, **kw)[0]  # the steering did something


@pytest.mark.parametrize("site", ["resid_pre", "mlp_out", "attn_out"])
def test_selection_from_the_prefill_at_every_site(llama, site):
    """The prefill reads (native hooks that only read) work at every site the fast path places."""
    steerer = Steerer(fit_subspace(llama, PAIRS, tau=1.0, verbose=False, site=site), top_n=2, alpha=4.0)
    kw = dict(max_new_tokens=8, batch_size=8, return_tokens=True)
    ref = steerer.generate(llama, QUERIES, selections=steerer.select(llama, QUERIES), **kw)[0]
    assert steerer.generate(llama, QUERIES, **kw)[0] == ref


def test_prefill_edits_exactly_the_positions_of_the_two_pass_path(llama, subs):
    """The edited calls: the last prompt token alone (its prefix is cached, unedited), then one per token."""
    steerer = Steerer(subs[id(llama)], top_n=2, alpha=4.0)
    records = []
    real_hooks = Steerer.hooks

    def hooks(self, *args, **kwargs):
        kwargs["record"] = records
        return real_hooks(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Steerer, "hooks", hooks)
    try:
        steerer.generate(llama, QUERIES[:1], max_new_tokens=4, return_tokens=True)
    finally:
        mp.undo()
    spans = [(seq_len, span) for name, seq_len, span in records if name == records[0][0]]
    assert spans[0] == (1, (0, 1)) and all(s == (1, (0, 1)) for s in spans)
    # positions="all" edits the prompt too: it keeps the two-pass way
    assert steerer.with_positions("all").prefill() is None
    assert steerer.prefill().layers == tuple(sorted(subs[id(llama)].layers))


def test_prefill_is_not_used_for_explicit_prompts(llama, subs, monkeypatch):
    """Selection reads the rendered query; an explicit prompt is another text, so it keeps its own pass."""
    steerer = Steerer(subs[id(llama)], top_n=2, alpha=4.0)
    seen = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: seen.append(k["prefill"]) or real(*a, **k))
    steerer.generate(llama, QUERIES[:1], max_new_tokens=2)
    steerer.generate(llama, QUERIES[:1], prompts=[render(llama, QUERIES[0])], max_new_tokens=2)
    steerer.generate(llama, QUERIES[:1], max_new_tokens=2, steer=False)
    assert seen[0] is not None and seen[1:] == [None, None]
    with pytest.raises(ValueError, match="one entry per query"):
        steerer.generate(llama, QUERIES[:2], selections=steerer.select(llama, QUERIES[:1]))


@pytest.mark.slow
def test_selection_from_the_prefill_on_the_embedded_model():
    from alignez_tl import load_model

    model = load_model(verbose=False)
    pairs = [(render(model, q, "Sure! Here is a clear, kind answer."), render(model, q, "No.")) for q in QUERIES_8]
    steerer = Steerer(fit_subspace(model, pairs, tau=1.0, verbose=False), top_n=5)
    for n in (1, 8):
        queries = QUERIES_8[:n]
        two_pass = steerer.select(model, queries)
        kw = dict(max_new_tokens=24, batch_size=8, return_tokens=True)
        assert (
            steerer.generate(model, queries, **kw)[0] == steerer.generate(model, queries, selections=two_pass, **kw)[0]
        )
