"""The fast path: an un-wrapped view sharing the bridge's weights, with native hooks."""

import pytest
import torch
from test_steering import PAIRS, QUERIES

from alignez_tl.fastpath import native_hooks, unwrapped_hf_model
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace


@pytest.fixture(scope="module")
def subs(llama, gpt2):
    return {id(m): fit_subspace(m, PAIRS, tau=1.0, verbose=False) for m in (llama, gpt2)}


def test_view_shares_every_weight_without_copying(tiny):
    view = unwrapped_hf_model(tiny)
    assert view is unwrapped_hf_model(tiny)  # built once, cached
    wrapped = {p.data_ptr() for p in tiny.original_model.parameters()}
    for name, p in view.named_parameters():
        assert p.data_ptr() in wrapped, name
    assert not any(type(m).__module__.startswith("transformer_lens") for m in view.modules())


def test_view_logits_equal_the_bridge(tiny):
    batch = encode(tiny, [render(tiny, q) for q in QUERIES])
    view = unwrapped_hf_model(tiny)
    with torch.inference_mode():
        ours = view(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids()
        ).logits
        ref = tiny(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids())
    real = batch.attention_mask.bool()
    # the bridge computes GPT-2 attention itself (joint QKV), so the last bits may differ
    tol = 1e-10 if ours.dtype == torch.float64 else 1e-5
    assert torch.allclose(ours[real], ref[real], rtol=0, atol=tol)


@pytest.mark.parametrize("site", ["resid_post", "resid_pre", "mlp_out", "attn_out"])
def test_native_hooks_see_the_same_activations_as_tl_hooks(tiny, site):
    batch = encode(tiny, [render(tiny, QUERIES[0])])
    seen = {}

    def spy(key):
        def fn(act, hook):
            seen[key] = act.detach().clone()
            return act

        return fn

    name = f"blocks.1.hook_{site}"
    with torch.inference_mode():
        with tiny.hooks(fwd_hooks=[(name, spy("tl"))]):
            tiny(batch.input_ids)
        with native_hooks(unwrapped_hf_model(tiny), [(name, spy("hf"))]):
            unwrapped_hf_model(tiny)(input_ids=batch.input_ids)
    tol = 1e-10 if seen["tl"].dtype == torch.float64 else 1e-5
    assert torch.allclose(seen["tl"], seen["hf"], rtol=0, atol=tol)


def test_fast_path_gives_the_tl_path_tokens(tiny, subs):
    steerer = Steerer(subs[id(tiny)], top_n=2, alpha=4.0)
    for cache in (True, False):
        for steer in (True, False):
            kw = dict(
                max_new_tokens=10, batch_size=len(QUERIES), return_tokens=True, steer=steer, use_past_kv_cache=cache
            )
            fast = steerer.generate(tiny, QUERIES, backend="hf", **kw)[0]
            ref = steerer.generate(tiny, QUERIES, backend="tl", **kw)[0]
            assert fast == ref, (cache, steer)


def test_native_hooks_are_removed_on_error(llama):
    view = unwrapped_hf_model(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with native_hooks(view, [("blocks.0.hook_resid_post", lambda a, h: a)]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in view.modules())
    with pytest.raises(ValueError, match="cannot place"):
        with native_hooks(view, [("blocks.0.attn.hook_pattern", lambda a, h: a)]):
            pass


def test_compatibility_mode_has_no_fast_path():
    from tiny import make_model

    model = make_model("llama", compatibility_mode=True)
    assert unwrapped_hf_model(model) is None
    with pytest.raises(ValueError, match="backend='hf'"):
        Steerer(fit_subspace(model, PAIRS, tau=1.0, verbose=False), top_n=1).generate(
            model, QUERIES[:1], backend="hf", max_new_tokens=2
        )
