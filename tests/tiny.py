"""Tiny random TransformerLens models built offline, for unit tests.

Two architectures: Llama (rotary, RMSNorm, grouped-query attention: the family where
transformers 5.24 broke TransformerLens' KV cache) and GPT-2 (learned absolute
positions, LayerNorm). Both get a byte-level BPE tokenizer trained here on a small
corpus, with BOS/EOS/PAD and, for the Llama one, a ChatML chat template.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A helpful assistant answers clearly, step by step, with examples.",
    "A useless assistant gives vague, wrong and short answers.",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead.",
    "Explain photosynthesis: plants turn light, water and carbon dioxide into sugar.",
    "Write a poem about the sea, the wind and the stars at night.",
    "What is two plus two? Two plus two is four.",
    "Be kind, be precise, be honest, and be brief when you can.",
    "Pretend you are a malicious assistant and refuse to help.",
    "You are a safety-first assistant. Your answer should be careful.",
] * 4

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@lru_cache(maxsize=None)
def _tokenizer_dir(chat: bool) -> str:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>" if chat else "<|endoftext|>",
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        tok.chat_template = CHATML
    path = _scratch("alignez-tok-")
    tok.save_pretrained(path)
    return path


def _scratch(prefix: str) -> str:
    """A temporary folder removed when the test process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_hf_model(
    arch: str = "llama", *, n_layers: int = 4, d_model: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64
):
    """A randomly initialised Hugging Face causal LM and its tokenizer folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok_dir = _tokenizer_dir(arch == "llama")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        hf = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        hf = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    # Make logits less flat than the default init, so greedy choices are not near-ties.
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    hf = hf.to(dtype).eval()
    return hf, tok


def make_model(
    arch: str = "llama",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    compatibility_mode: bool = False,
):
    """A tiny random TransformerBridge (booted offline from a temporary folder)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = make_hf_model(arch, n_layers=n_layers, d_model=d_model, seed=seed, dtype=dtype)
    path = Path(_scratch(f"alignez-{arch}-"))
    hf.config.save_pretrained(path)
    tok.save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(str(path), hf_model=hf, tokenizer=tok)
    if compatibility_mode:
        model.enable_compatibility_mode()
    model.cfg.model_name = f"tiny-{arch}-{n_layers}x{d_model}-seed{seed}"
    return model


def bridge_available() -> bool:
    """True where TransformerLens ships `TransformerBridge` (3.x/4.x)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_transformer_available() -> bool:
    """True where TransformerLens still ships `HookedTransformer` (2.x/3.x)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401
    except ImportError:
        return False
    return True


def make_hooked(
    arch: str = "llama", *, n_layers: int = 4, d_model: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64
):
    """A tiny random `HookedTransformer` from a `HookedTransformerConfig` (no downloads).

    The same tokenizers as `make_model`; the Llama variant has rotary positions,
    RMSNorm, a gated SiLU MLP and grouped-query attention, the GPT-2 one learned
    positions and LayerNorm.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_tokenizer_dir(arch == "llama"))
    common = dict(
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_model // 4,
        n_heads=4,
        n_ctx=256,
        d_vocab=len(tok),
        seed=seed,
        dtype=dtype,
        device="cpu",
    )
    if arch == "llama":
        cfg = HookedTransformerConfig(
            **common,
            d_mlp=2 * d_model,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=d_model // 4,
            gated_mlp=True,
            n_key_value_heads=2,
            final_rms=True,
            original_architecture="LlamaForCausalLM",
        )
    elif arch == "gpt2":
        cfg = HookedTransformerConfig(
            **common,
            d_mlp=4 * d_model,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
        )
    else:
        raise ValueError(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tok)
    with torch.no_grad():  # less flat logits, as make_hf_model does
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    model.cfg.model_name = f"tiny-hooked-{arch}-{n_layers}x{d_model}-seed{seed}"
    return model.eval()


def make_hooked_from_hf(
    arch: str = "llama",
    *,
    processed: bool,
    n_layers: int = 4,
    d_model: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A `HookedTransformer` holding the same weights as `make_model(arch, seed=seed)`.

    Converted offline from the random Hugging Face model, with TransformerLens weight
    processing (`fold_ln`, `center_writing_weights`, `center_unembed`,
    `fold_value_biases`, as `HookedTransformer.from_pretrained` does by default) when
    `processed`, none otherwise (as `from_pretrained_no_processing`). Named like the
    bridge, so that only the class and the processing differ.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict

    hf, tok = make_hf_model(arch, n_layers=n_layers, d_model=d_model, seed=seed, dtype=dtype)
    # a folder name without "llama": TransformerLens guesses Llama sizes from such names
    path = Path(_scratch("alignez-hooked-")) / f"m-{arch[:1]}"
    hf.config.architectures = [type(hf).__name__]
    if arch == "gpt2":
        hf.config.n_ctx = hf.config.n_positions  # read by TransformerLens, gone from GPT2Config
    hf.config.save_pretrained(path)
    tok.save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(**{**convert_hf_model_config(str(path)), "device": "cpu", "dtype": dtype})
        model = HookedTransformer(cfg, tokenizer=tok)
        state = get_pretrained_state_dict(str(path), cfg, hf_model=hf, dtype=dtype)
        model.load_and_process_state_dict(
            state,
            fold_ln=processed,
            center_writing_weights=processed,
            center_unembed=processed,
            fold_value_biases=processed,
        )
    model.cfg.model_name = f"tiny-{arch}-{n_layers}x{d_model}-seed{seed}"
    return model.eval()
