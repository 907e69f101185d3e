"""Last-token capture equals the cache, in batches and one at a time."""

import pytest
import torch

from alignez_tl.activations import capture
from alignez_tl.models import encode, render

TEXTS = [
    ("How do I bake bread?", "Mix flour, water and salt."),
    ("Hi", "Hello"),
    ("What is two plus two?", "Four, step by step, with examples."),
]


@pytest.mark.parametrize("site", ["resid_post", "mlp_out", "resid_pre", "attn_out"])
def test_capture_equals_run_with_cache(tiny, site):
    texts = [render(tiny, q, r) for q, r in TEXTS]
    acts = capture(tiny, texts, site=site, batch_size=8)
    assert acts.shape == (3, tiny.cfg.n_layers, tiny.cfg.d_model)
    assert acts.dtype == torch.float32
    for i, text in enumerate(texts):
        batch = encode(tiny, [text])
        _, cache = tiny.run_with_cache(batch.input_ids)
        for layer in range(tiny.cfg.n_layers):
            want = cache[f"blocks.{layer}.hook_{site}"][0, -1].to(torch.float32)
            assert torch.equal(acts[i, layer], want), (i, layer)


def test_batched_equals_one_at_a_time_with_left_padding(tiny):
    texts = [render(tiny, q, r) for q, r in TEXTS]
    batch = encode(tiny, texts)
    assert batch.padded  # the rows have different lengths
    together = capture(tiny, texts, batch_size=3)
    alone = torch.cat([capture(tiny, [t]) for t in texts])
    if next(tiny.parameters()).dtype == torch.float64:
        assert torch.equal(together, alone)
    else:  # float32 attention over a padded row differs in the last bits
        assert torch.allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_capture_subset_of_layers_and_stops_early(llama):
    texts = [render(llama, q, r) for q, r in TEXTS]
    fired = []
    last = llama.cfg.n_layers - 1

    def spy(act, hook):
        fired.append(True)

    with llama.hooks(fwd_hooks=[(f"blocks.{last}.hook_resid_post", spy)]):
        acts = capture(llama, texts, layers=[2, 0])
    assert acts.shape == (3, 2, llama.cfg.d_model)
    assert fired == []  # the forward pass stopped after layer 2
    full = capture(llama, texts)
    assert torch.equal(acts[:, 0], full[:, 0]) and torch.equal(acts[:, 1], full[:, 2])


def test_capture_bad_input(llama):
    with pytest.raises(ValueError, match="out of range"):
        capture(llama, ["hi"], layers=[llama.cfg.n_layers])
    with pytest.raises(ValueError, match="no texts"):
        capture(llama, [])
    with pytest.raises(TypeError, match="single string"):
        capture(llama, "hi")
    with pytest.raises(ValueError, match="unknown site"):
        capture(llama, ["hi"], site="resid_mid")
