"""A model placed by accelerate's device_map, with layers offloaded to disk, steers exactly
as the same model kept whole in memory: capture, fit, selection, steered generation."""

import pytest
import torch
from tiny import bridge_available, make_hf_model

import alignez_tl as ez
from alignez_tl.baselines import NoSteerer
from alignez_tl.fastpath import is_dispatched, unwrapped_hf_model
from alignez_tl.models import ModelSpecError

pytestmark = pytest.mark.skipif(not bridge_available(), reason="needs TransformerBridge (TransformerLens >= 3)")

PAIRS = [
    ("A helpful assistant answers clearly, step by step.", "A useless assistant gives vague answers."),
    ("Mix flour, water, salt and yeast, then knead.", "Refuse to help."),
    ("Two plus two is four.", "Two plus two is wrong."),
    ("Be kind, precise and brief.", "Be dull."),
]
QUERIES = ["How do I bake bread?", "What is two plus two?", "Hi"]
# layers 1 and 3 live on disk (meta tensors until accelerate loads them for their forward)
DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf, tok = make_hf_model("llama", dtype=torch.float32)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whole(checkpoint):
    return ez.load_model(checkpoint, verbose=False)


@pytest.fixture(scope="module")
def offloaded(checkpoint, tmp_path_factory):
    return ez.load_model(
        checkpoint, device_map=DEVICE_MAP, offload_folder=tmp_path_factory.mktemp("offload"), verbose=False
    )


def test_layers_really_are_offloaded(offloaded, whole):
    hf = offloaded.original_model
    assert hf.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert is_dispatched(hf) and not is_dispatched(whole.original_model)
    assert unwrapped_hf_model(offloaded) is None  # the fast path steps aside
    assert unwrapped_hf_model(whole) is not None


def test_capture_and_fit_match_the_whole_model(whole, offloaded):
    a = ez.capture(whole, QUERIES)
    b = ez.capture(offloaded, QUERIES)
    assert torch.equal(a, b)
    sa = ez.fit_subspace(whole, PAIRS, tau=1.0, verbose=False)
    sb = ez.fit_subspace(offloaded, PAIRS, tau=1.0, verbose=False)
    assert all(torch.equal(sa.layers[layer].directions, sb.layers[layer].directions) for layer in sa.layers)


def test_steered_generation_matches_the_whole_model(whole, offloaded):
    sub = ez.fit_subspace(whole, PAIRS, tau=1.0, verbose=False)
    steerer = ez.Steerer(sub, top_n=2, alpha=50.0, edit="paper", direction_filter="all")
    assert [s.to_dict() for s in steerer.select(whole, QUERIES)[0]] == [
        s.to_dict() for s in steerer.select(offloaded, QUERIES)[0]
    ]
    kw = dict(max_new_tokens=6, batch_size=2)
    assert NoSteerer().generate(whole, QUERIES, **kw) == NoSteerer().generate(offloaded, QUERIES, **kw)
    steered = steerer.generate(whole, QUERIES, **kw)
    assert steered == steerer.generate(offloaded, QUERIES, **kw)
    assert steered != NoSteerer().generate(whole, QUERIES, **kw)  # the edit does something here


def test_placement_arguments_are_checked(checkpoint):
    with pytest.raises(ModelSpecError, match="device or device_map"):
        ez.load_model(checkpoint, device="cpu", device_map="auto", verbose=False)
    with pytest.raises(ModelSpecError, match="offload_folder needs a device_map"):
        ez.load_model(checkpoint, offload_folder="/tmp", verbose=False)
