"""`HookedTransformer` users: `load_hooked`, and batched generation equal to one row at a time.

Runs in the compatibility environments (TransformerLens 3.9 and 2.16, `tests/run_compat.sh`);
in the main environment (TransformerLens 4.x, no `HookedTransformer`) only the refusal of
`load_hooked` runs. Tiny random checkpoints are saved to temporary folders (nothing is
downloaded); the slow test loads the real embedded SmolLM2.
"""

from __future__ import annotations

import json
import warnings
from importlib.metadata import version

import pytest
import torch
from test_steering import PAIRS, QUERIES
from tiny import hooked_transformer_available, make_hf_model, make_hooked

import alignez_tl as ez
from alignez_tl import generation, models
from alignez_tl.errors import ModelSpecError
from alignez_tl.models import encode, render

HOOKED = pytest.mark.skipif(not hooked_transformer_available(), reason="this TransformerLens has no HookedTransformer")
TL2 = version("transformer-lens").startswith("2.")
# Rows of different lengths (4 to 10 prompt tokens on the tiny tokenizers), so a batch is left-padded.
ROWS = QUERIES + ["Explain photosynthesis to a child, step by step, with examples."]


@pytest.mark.skipif(hooked_transformer_available(), reason="TransformerLens 4.x only")
def test_load_hooked_on_transformer_lens_4_points_to_the_bridge(tmp_path):
    with pytest.raises(ModelSpecError, match="compatibility_mode=True"):
        ez.load_hooked(str(tmp_path))  # refused before anything is read


# ------------------------------------------------------------------------ load_hooked


def _save_tiny(tmp_path, arch: str, name: str):
    hf, tok = make_hf_model(arch, dtype=torch.float32)
    folder = tmp_path / name
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf.eval()


def _logprobs_gap(model, hf, ids) -> float:
    with torch.inference_mode():
        ours = model(ids).log_softmax(-1)
        theirs = hf(input_ids=ids).logits.log_softmax(-1)
    return float((ours - theirs).abs().max())


@HOOKED
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_load_hooked_from_a_folder_matches_hugging_face(tmp_path, arch):
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    names = list(loading.OFFICIAL_MODEL_NAMES)
    convert = loading.convert_hf_model_config
    # "llama" in the folder name: TransformerLens guesses an architecture from such a name
    # and crashes; load_hooked registers a neutral copy of the config instead
    folder, hf = _save_tiny(tmp_path, arch, f"my-{arch}-checkpoint")
    model = ez.load_hooked(folder, verbose=False)
    assert isinstance(model, HookedTransformer)
    assert model.cfg.model_name == f"my-{arch}-checkpoint" and model.cfg.n_layers == 4
    assert loading.OFFICIAL_MODEL_NAMES == names and loading.convert_hf_model_config is convert  # restored
    ids = encode(model, [render(model, "How do I bake bread?")]).input_ids
    assert _logprobs_gap(model, hf, ids) < 1e-4
    # the same model steers like any HookedTransformer
    sub = ez.fit_subspace(model, PAIRS, tau=1.0, verbose=False)
    assert sub.model["model_class"] == "HookedTransformer"
    assert len(ez.Steerer(sub, top_n=2).generate(model, QUERIES[:2], max_new_tokens=3)) == 2


@HOOKED
def test_load_hooked_keeps_the_rotary_base_of_a_transformers_5_config(tmp_path):
    # transformers 5 writes rope_parameters and no rope_theta; transformers 4 then keeps 10000,
    # and TransformerLens 2.16 ignores the base of a Llama config altogether
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, _ = _save_tiny(tmp_path, "llama", "rope")
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("rope_theta", None)
    cfg["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    path.write_text(json.dumps(cfg))
    model = ez.load_hooked(folder, verbose=False)
    assert float(model.cfg.rotary_base) == 100000.0
    reference = AutoConfig.from_pretrained(folder)
    reference.rope_theta = 100000.0  # by hand: transformers 4 reads only this field
    hf = AutoModelForCausalLM.from_pretrained(folder, config=reference).eval()
    ids = encode(model, [render(model, "Explain photosynthesis to a child, step by step.")]).input_ids
    assert _logprobs_gap(model, hf, ids) < 1e-4


@HOOKED
def test_load_hooked_refuses_what_transformer_lens_cannot_convert(tmp_path):
    from transformers import FalconConfig

    folder = tmp_path / "falcon"
    cfg = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    cfg.architectures = ["FalconForCausalLM"]
    cfg.save_pretrained(folder)  # a config and no weights: refused before weights are read
    with pytest.raises(ModelSpecError, match="cannot build a HookedTransformer for the architecture FalconForCausalLM"):
        ez.load_hooked(folder, verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        ez.load_hooked(tmp_path / "empty", verbose=False)
    with pytest.raises(ModelSpecError, match="unknown model"):
        ez.load_hooked("no-such-model", verbose=False)
    with pytest.raises(ModelSpecError, match="got a int"):
        ez.load_hooked(3, verbose=False)  # type: ignore[arg-type]


@HOOKED
def test_the_agreement_check_refuses_a_conversion_that_differs(tmp_path):
    folder, hf = _save_tiny(tmp_path, "llama", "check")
    model = ez.load_hooked(folder, verbose=False)
    with torch.no_grad():
        hf.model.layers[1].self_attn.q_proj.weight.mul_(3.0)  # as a config field lost in conversion would
    with pytest.raises(ModelSpecError, match="disagrees with the Hugging Face model"):
        models._check_agreement(model, hf, model.tokenizer, "LlamaForCausalLM", torch.float32)


# ------------------------------------------------------------------------ generation


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def hooked(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_hooked(request.param, dtype=torch.float64)
        sub = ez.fit_subspace(model, PAIRS, tau=1.0, objective="helpful", verbose=False)
    return request.param, model, sub


def _plain_loop(model, text: str, hooks: list, max_new_tokens: int) -> list[int]:
    """The textbook reference: one row, no padding, no cache, no mask, greedy, the whole
    sequence again at every step (the hooks' trackers see cache-less steps)."""
    ids = encode(model, [text]).input_ids
    stops = generation.stop_token_ids(model)
    seq = ids
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        for _ in range(max_new_tokens):
            token = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, token], 1)
            if int(token) in stops:
                break
    return generation.trim_generated(seq[0, ids.shape[1] :].tolist(), stops)


@HOOKED
@pytest.mark.parametrize("positions", ["generated", "all"])
def test_batched_generation_gives_the_tokens_of_one_row_at_a_time(hooked, positions):
    arch, model, sub = hooked
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2, positions=positions)
    lengths = {encode(model, [render(model, q)]).input_ids.shape[1] for q in ROWS}
    assert len(lengths) > 2  # the batch is left-padded
    for steer in (False, True):
        kw = dict(max_new_tokens=8, steer=steer, return_tokens=True)
        batched = steerer.generate(model, ROWS, batch_size=len(ROWS), **kw)[0]
        no_cache = steerer.generate(model, ROWS, batch_size=len(ROWS), use_past_kv_cache=False, **kw)[0]
        alone = [steerer.generate(model, [q], **kw)[0][0] for q in ROWS]
        plain = [
            _plain_loop(
                model,
                render(model, q),
                steerer.hooks(model, [q], prompt_len=encode(model, [render(model, q)]).input_ids.shape[1])
                if steer
                else [],
                8,
            )
            for q in ROWS
        ]
        assert batched == no_cache == alone == plain, (arch, positions, steer)
        if not (TL2 and arch == "gpt2"):
            # TransformerLens' own generate, one row at a time (backend="tl"). TL 2.16's is wrong
            # for learned positions when the pad id is 0 (this tokenizer): it builds the mask of
            # an all-zero token tensor, so every position but the first reads position 0.
            assert batched == steerer.generate(model, ROWS, backend="tl", **kw)[0]
    unsteered = steerer.generate(model, ROWS, max_new_tokens=8, steer=False, return_tokens=True)[0]
    assert unsteered != batched  # the edits move greedy tokens on these models


@HOOKED
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_laid_out_as_the_forward_copies_them_give_the_same_bits(dtype):
    for arch in ("llama", "gpt2"):
        model = make_hooked(arch, dtype=dtype)
        ids = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(0))
        params = dict(model.named_parameters())
        with torch.inference_mode():
            before = model(ids)
            with generation._laid_out_as_copied(model):
                inside = model(ids)
                moved = [n for n, p in model.named_parameters() if not p.is_contiguous()]
            after = model(ids)
        assert torch.equal(before, inside) and torch.equal(before, after)
        assert any(n.endswith("attn.W_Q") for n in moved)  # re-laid out on every version
        # restored: the same Parameter objects, contiguous, usable outside inference mode
        assert dict(model.named_parameters()) == params
        assert all(p.is_contiguous() and not p.is_inference() for p in model.parameters())


@HOOKED
def test_edits_start_at_every_left_padded_rows_last_prompt_token(hooked):
    _, model, sub = hooked
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    texts = [render(model, q) for q in ROWS]
    batch = encode(model, texts)
    width = batch.input_ids.shape[1]
    assert batch.padded
    record: list = []
    hooks = steerer.hooks(model, ROWS, prompt_len=width, record=record)
    sampling = generation._Sampling(4, False, 1.0, None, None, True)
    stops = generation.stop_token_ids(model)
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        generation._decode_hooked(model, batch.input_ids, batch.attention_mask, sampling, stops, 0)
    first = {(seq_len, span) for _, seq_len, span in record[: len(hooks)]}
    # left padding puts every row's last prompt token at column P-1: the first edited position
    assert first == {(width, (width - 1, width))}
    assert {(seq_len, span) for _, seq_len, span in record[len(hooks) :]} == {(1, (0, 1))}


@HOOKED
def test_sampling_at_batch_one_matches_transformer_lens_generate(hooked):
    arch, model, _ = hooked
    if TL2 and arch == "gpt2":
        pytest.skip("TransformerLens 2.16's generate misplaces learned positions when the pad id is 0")
    kw = dict(max_new_tokens=6, do_sample=True, temperature=0.9, seed=5, return_tokens=True)
    for q in ROWS[:3]:
        ours = ez.NoSteerer().generate(model, [q], **kw)[0]
        theirs = ez.NoSteerer().generate(model, [q], backend="tl", **kw)[0]
        assert ours == theirs


@HOOKED
@pytest.mark.slow
def test_load_hooked_on_the_embedded_model_answers_as_the_rows_do():
    model = ez.load_hooked(verbose=False)  # the embedded SmolLM2 (checked against Hugging Face)
    assert model.cfg.model_name == "smollm2-135m-instruct" and float(model.cfg.rotary_base) == 100000.0
    queries = ["What is the capital of France?", "Name three colours.", "Hi"]
    kw = dict(max_new_tokens=10, return_tokens=True)
    batched, texts = ez.NoSteerer().generate(model, queries, batch_size=3, **kw)
    assert "Paris" in texts[0]
    assert batched == [ez.NoSteerer().generate(model, [q], backend="tl", **kw)[0][0] for q in queries]
