"""GPU benchmark: generation paths and capture on a random Llama-3.2-1B-shaped model.

No weights can be downloaded on the GPU machines, so the model is randomly initialised
from a config (bf16) and the tokenizer is a word-level one built here. Random weights
give the same compute as real ones; the tokens are meaningless. Every figure is a
median over `--repeats` runs measured in this process, reported as a ratio to raw
Hugging Face `generate` measured on the same machine:

* raw HF `generate` (before the bridge is booted: booting wraps the HF modules in place);
* the TransformerLens path: `TransformerBridge.generate` (no hooks, then with the
  steering hooks at 5 layers), i.e. `generation.generate(backend="tl")`;
* the fast path: HF `generate` on the un-wrapped view sharing the bridge's weights
  (no hooks: the preference-generation path; with the steering hooks as native hooks:
  the steered path), i.e. `generation.generate(backend="hf")`;
* last-token capture at every layer vs `run_with_cache` of every `resid_post`.

Run `benchmarks/gpu.sh` on a CUDA machine; `python benchmarks/gpu_bench.py --tiny
--device cpu` is a quick smoke run anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = [f"w{i}" for i in range(2000)]


def build_tokenizer(folder: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)  # reloaded: the bridge wants a name_or_path


def build_model(args, folder: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(WORDS) + 4,
            max_position_embeddings=1024,
        )
    else:  # Llama-3.2-1B's shape
        cfg = LlamaConfig(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=4096,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        )
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg)
    model = model.to(getattr(torch, args.dtype)).eval()
    cfg.save_pretrained(folder)
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (kernels, caches)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prompts(batch: int, length: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)) for _ in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: a smoke run, not a benchmark")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "benchmarks/results"), "gpu.json"))
    args = parser.parse_args()
    if args.tiny:
        args.dtype = "float32" if args.device == "cpu" else args.dtype

    from transformer_lens.model_bridge import TransformerBridge

    from alignez_tl.activations import capture_tokens
    from alignez_tl.generation import generate as generate_with_hooks
    from alignez_tl.models import encode
    from alignez_tl.steering import Steerer
    from alignez_tl.subspace import fit_subspace

    folder = tempfile.mkdtemp(prefix="alignez-gpu-")
    tok = build_tokenizer(folder)
    hf = build_model(args, folder)
    n_layers = hf.config.num_hidden_layers
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {
        "machine": {
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "dtype": args.dtype,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "settings": vars(args),
        "generation": {},
        "capture": {},
    }
    gen_kw = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=2
    )

    # 1. raw Hugging Face generate, before the bridge wraps the modules
    raw = {}
    for b in batches:
        enc = tok(prompts(b, args.prompt_tokens, b), return_tensors="pt", padding=True).to(args.device)
        with torch.inference_mode():
            raw[b] = timed(lambda: hf.generate(**enc, **gen_kw), args.device, args.repeats)

    # 2. boot the bridge (wraps hf in place) and a synthetic 5-layer subspace
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok)
    bridge.cfg.model_name = "random-llama"
    layers = list(range(max(0, n_layers // 2 - 2), min(n_layers, n_layers // 2 + 3)))  # 5 middle layers
    g = torch.Generator().manual_seed(1)
    d = bridge.cfg.d_model
    pos = torch.randn(32, len(layers), d, generator=g)
    sub = fit_subspace(
        bridge, (pos, pos + torch.randn(32, len(layers), d, generator=g)), layers=layers, tau=1.0, max_rank=8
    )
    steerer = Steerer(sub, layers=layers, edit="paper", alpha=1.0)

    for b in batches:
        texts = prompts(b, args.prompt_tokens, b)
        row = {"raw_hf_s": raw[b]}
        for backend in ("tl", "hf"):
            for steer in (False, True):

                def run(backend=backend, steer=steer):
                    hooks_for = (
                        (lambda s, e, batch: steerer.hooks(bridge, prompt_len=batch.input_ids.shape[1]))
                        if steer
                        else (lambda s, e, batch: [])
                    )
                    # stop tokens never fire on random weights within budget often enough to matter;
                    # token counts are recorded below to be sure
                    return generate_with_hooks(
                        bridge,
                        texts,
                        hooks_for,
                        chat=False,
                        max_new_tokens=args.new_tokens,
                        batch_size=b,
                        backend=backend,
                    )

                seconds = timed(run, args.device, args.repeats)
                n_tokens = [len(r) for r in run()]
                key = f"{'fast' if backend == 'hf' else 'tl'}_{'steered' if steer else 'plain'}"
                row[key + "_s"] = seconds
                row[key + "_ratio_vs_raw"] = seconds / raw[b]
                row[key + "_min_tokens"] = min(n_tokens)
        results["generation"][str(b)] = row

    # 3. capture at every layer vs run_with_cache of every resid_post
    batch = encode(bridge, prompts(batches[-1], args.prompt_tokens, 7), chat=False)
    batch.input_ids = batch.input_ids.to(args.device)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    with torch.inference_mode():
        cap = timed(lambda: capture_tokens(bridge, batch, list(range(n_layers))), args.device, args.repeats)
        full = timed(
            lambda: bridge.run_with_cache(batch.input_ids, names_filter=lambda n: n in names), args.device, args.repeats
        )
    results["capture"] = {
        "batch": batches[-1],
        "capture_s": cap,
        "run_with_cache_s": full,
        "speedup": full / cap,
        "texts_per_s": batches[-1] / cap,
    }

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    os.replace(tmp, args.out)
    print(json.dumps(results["generation"], indent=1))
    print(json.dumps(results["capture"], indent=1))


if __name__ == "__main__":
    main()
