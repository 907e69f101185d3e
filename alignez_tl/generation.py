"""Generation: the one loop every caller uses, and its seed, prompt-budget and stop rules.

Every generation in the package comes here: `HookSteering.generate` (every steerer and
baseline, steered or not, and `PromptSteerer`), preference writing (`generate_plain`)
and the analyses. Three engines sit behind one call, chosen by `backend`:

* `"hf"`: Hugging Face `generate` on the un-wrapped view of a `TransformerBridge`
  (`fastpath.unwrapped_hf_model`), the hooks attached as native PyTorch hooks;
* `"tl"`: TransformerLens `generate` under `model.hooks(...)` (the reference); on a
  `HookedTransformer` one unpadded row at a time, as its `generate` infers padding from
  pad tokens and ignores (2.x) or re-derives (3.x) an attention mask;
* `"auto"` on a `HookedTransformer`: the batched loop of this module (`_decode_hooked`),
  left-padded rows with an explicit attention mask and TransformerLens' own KV cache,
  under `model.hooks(...)`.

`"auto"` takes `"hf"` where the model offers it. All give the same greedy tokens.

The rules, each written once:

* **seed**: one encoded batch is generated inside `seeded(seed)`, which leaves the
  caller's random state alone; `generate` gives its b-th batch `seed + b`.
* **prompt budget**: `prompt_budget`: `max_new_tokens` must leave at least one prompt
  token in the context; a longer prompt keeps its last `n_ctx - max_new_tokens` tokens
  (`encode_for_generation`, with one warning).
* **prompt limit**: `check_prompt_tokens`: with `max_prompt_tokens`, a prompt over that
  many tokens is refused (`PromptTooLongError`, naming the query and its count) before
  any generation, instead of running out of memory.
* **stops**: EOS and the chat template's end-of-turn token (`stop_token_ids`); each row
  is cut at the first one (`trim_generated`).

**Selection from the prefill.** A caller whose hooks depend on the prompt itself
(per-query layer selection) passes `prefill=Prefill(site, layers)`. On the fast path
with the KV cache, a batch then runs as: positions 0..P−2 once, unedited, into a
`DynamicCache`; the last prompt token once, unedited, reading its activation at
`layers` (`[rows, len(layers), d_model]`, float32); the cache cropped back to P−1; then
`generate` from that cache, so the last prompt token runs again, now with the edits,
and decoding follows. The extra cost is one token's forward, not a second pass over the
prompts. `hooks_for` receives the activations as a fourth argument; the hooks it
returns then see the last prompt token alone as their first call (`prompt_len=1`). The
other engines (and `use_past_kv_cache=False`, a batch with a prompt cut to fit the
context, or a cache that cannot be cropped) pass None: the caller selects as before,
with its own pass.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import models
from ._checks import require_model
from .errors import ArgumentTypeError, InvalidArgumentError, PromptTooLongError
from .fastpath import native_hooks, unwrapped_hf_model
from .hooks import capture_hook, hook_name
from .models import Encoded, is_bridge, model_device, pad_id, require_tokenizer
from .settings import SEED_LIMIT

__all__ = [
    "BACKENDS",
    "Prefill",
    "check_prompt_tokens",
    "encode_for_generation",
    "generate",
    "generate_plain",
    "prompt_budget",
    "seeded",
    "stop_token_ids",
    "trim_generated",
]

BACKENDS = ("auto", "hf", "tl")


# --------------------------------------------------------------------------- the rules


def stop_token_ids(model: Any) -> list[int]:
    """Tokens that end an answer: EOS plus the chat template's end-of-turn token."""
    tok = require_tokenizer(model, "generation")
    ids = set()
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        if special in vocab:
            ids.add(int(vocab[special]))
    return sorted(ids)


def trim_generated(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """Cut a generated row at its first stop token (the stop token is dropped)."""
    out = []
    for t in ids:
        if int(t) in stops:
            break
        out.append(int(t))
    return out


@contextlib.contextmanager
def seeded(seed: int, device: Union[str, torch.device, None] = None) -> Iterator[None]:
    """Seed torch inside the block only; the caller's random state is restored after."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidArgumentError(f"seed must be an int in 0..{SEED_LIMIT - 1}, got {seed!r}")
    device = torch.device(device or "cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def prompt_budget(
    model: Any, max_new_tokens: int, what: str = "max_new_tokens", n_ctx: Optional[int] = None
) -> Optional[int]:
    """How many prompt tokens fit in the context next to `max_new_tokens` new ones.

    `n_ctx` defaults to the model's context length; None when neither states one.
    Raises `ValueError` when the new tokens alone fill the context (no room for even one
    prompt token). `models.encode(reserve=...)` applies this same rule.
    """
    if n_ctx is None:
        n_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", 0) or 0)
    if n_ctx <= 0:
        return None
    if max_new_tokens >= n_ctx:
        raise InvalidArgumentError(
            f"{what}={max_new_tokens} does not fit the model's context of {n_ctx} tokens "
            f"(the prompt needs at least one): use {what} < {n_ctx}"
        )
    return n_ctx - max_new_tokens


def check_prompt_tokens(
    model: Any, texts: Sequence[str], limit: Optional[int], *, per_query: int = 1, offset: int = 0
) -> None:
    """Refuse (`PromptTooLongError`) a prompt of more than `limit` tokens; None: no limit.

    `texts` are the prompts as fed to the model (rendered); `per_query` of them belong
    to each query (preference writing asks two per query), and the message names the
    query's index, `offset` plus the position in `texts` divided by `per_query`.
    """
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"max_prompt_tokens must be a positive int or None, got {limit!r}")
    tok = require_tokenizer(model, "counting prompt tokens")
    for i, text in enumerate(texts):
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n > limit:
            raise PromptTooLongError(
                f"query {offset + i // per_query} (counting from 0) has {n:,} tokens; the limit "
                f"(max_prompt_tokens, --max-prompt-tokens) is {limit:,}: shorten or drop that query, "
                "or raise the limit if the model and memory allow"
            )


def encode_for_generation(model: Any, texts: list[str], chat: Optional[bool], max_new_tokens: int) -> Encoded:
    """`models.encode` leaving room for `max_new_tokens` in the context (`prompt_budget`).

    A longer prompt keeps its last tokens (the end of a chat prompt is the part that
    asks for the answer), with one warning that says so.
    """
    return models.encode(model, texts, chat=chat, reserve=max_new_tokens)


# --------------------------------------------------------------------------- the engines


@dataclass(frozen=True)
class Prefill:
    """What to read from the unedited last prompt token before the edits: `site` at `layers`."""

    site: str
    layers: tuple[int, ...]


@dataclass(frozen=True)
class _Sampling:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: Optional[float]
    top_k: Optional[int]  # None: the engine's default (Hugging Face: the generation config's)
    use_cache: bool


#: `hooks(activations)` for one batch: the prefill activations, or None.
_BatchHooks = Callable[[Optional[Tensor]], list]


class _Engine:
    """One model's generation engine: the fast-path view, the HookedTransformer loop, or TransformerLens'."""

    def __init__(self, model: Any, backend: str, *, rows_alone: bool = False) -> None:
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.view: Optional[nn.Module] = unwrapped_hf_model(model) if backend in ("auto", "hf") else None
        if backend == "hf" and self.view is None:
            raise InvalidArgumentError(
                "backend='hf' needs a TransformerBridge (not in compatibility mode) whose weights "
                "the fast path can view"
            )
        # A HookedTransformer's generate derives padding from pad tokens and ignores a given
        # attention mask: backend="tl" gives it one unpadded row at a time (with that row's
        # hooks), the reference; "auto" runs the batched loop `_decode_hooked` instead.
        # `rows_alone` keeps preference writing's TransformerLens rows alone on a bridge.
        bridge = is_bridge(model)
        self.hooked_loop = self.view is None and not bridge and backend == "auto"
        self.row_by_row = self.view is None and not self.hooked_loop and (rows_alone or not bridge)
        self.stops = stop_token_ids(model)
        self.pad = pad_id(model.tokenizer)
        self.device = model_device(model)

    def run(
        self, batch: Encoded, hooks: _BatchHooks, sampling: _Sampling, prefill: Optional[Prefill]
    ) -> list[list[int]]:
        """Generate one encoded batch; each row's new token ids, cut at the first stop token."""
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        s = sampling
        if self.view is not None:
            kwargs: dict[str, Any] = dict(
                max_new_tokens=s.max_new_tokens,
                do_sample=s.do_sample,
                eos_token_id=self.stops,
                pad_token_id=self.pad,
                use_cache=s.use_cache,
            )
            if s.do_sample:
                kwargs.update(temperature=s.temperature, top_p=s.top_p)
                if s.top_k is not None:
                    kwargs["top_k"] = s.top_k
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            acts = None
            # a prompt cut to fit the context keeps the two-pass selection (which reads the
            # prompt cut to the context only), so that its tokens stay the same
            if prefill is not None and s.use_cache and not batch.n_truncated:
                acts, cache = _read_prefill(self.view, ids, mask, prefill)
                if cache is not None:
                    kwargs["past_key_values"] = cache
            with native_hooks(self.view, hooks(acts)):
                # a Hugging Face model: nn.Module does not declare `generate`
                out = self.view.generate(input_ids=ids, attention_mask=mask, **kwargs)  # type: ignore[operator]
        elif self.hooked_loop:
            with self.model.hooks(fwd_hooks=hooks(None)), _laid_out_as_copied(self.model):
                out = _decode_hooked(self.model, ids, mask, s, self.stops, self.pad)
        else:
            kwargs = dict(
                max_new_tokens=s.max_new_tokens,
                do_sample=s.do_sample,
                stop_at_eos=True,
                eos_token_id=self.stops,
                verbose=False,
                use_past_kv_cache=s.use_cache,
            )
            if s.do_sample:
                kwargs.update(temperature=s.temperature, top_p=s.top_p)
                if s.top_k is not None:
                    kwargs["top_k"] = s.top_k or None
            if batch.padded:
                kwargs["attention_mask"] = mask
            with self.model.hooks(fwd_hooks=hooks(None)):
                out = self.model.generate(ids, **kwargs)
        return [trim_generated(row.tolist(), self.stops) for row in out[:, ids.shape[1] :]]


def _hooked_cache_class() -> Any:
    """TransformerLens' KV cache of `HookedTransformer` (3.x and 2.x names)."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache
    except ImportError:  # TransformerLens 2.x
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache

        return HookedTransformerKeyValueCache


def _sample_logits() -> Callable[..., Tensor]:
    """TransformerLens' sampler (temperature, top-k, top-p), the one its `generate` uses."""
    import importlib

    try:
        module = importlib.import_module("transformer_lens.utilities")
        return module.sample_logits
    except (ImportError, AttributeError):  # TransformerLens 2.x
        return importlib.import_module("transformer_lens.utils").sample_logits


#: Per TransformerLens component class, the weights its forward copies into a fresh
#: contiguous tensor at every call, and the order of their dimensions in that copy. 3.x:
#: the gated MLP and the unembed pass `W.T.contiguous()` to `F.linear`, the attention
#: `rearrange`s W_Q/W_K/W_V to `(head d_head) d_model` and W_O to `d_model (head d_head)`
#: and makes them contiguous. 2.x copies the attention's W_Q/W_K/W_V only (its MLP and
#: unembed multiply the weights as they are).
_Layouts = dict[str, dict[str, tuple[int, ...]]]
_ATTN_QKV: dict[str, tuple[int, ...]] = {
    "W_Q": (0, 2, 1),
    "W_K": (0, 2, 1),
    "W_V": (0, 2, 1),
    "_W_K": (0, 2, 1),
    "_W_V": (0, 2, 1),
}
_COPIED_3: _Layouts = {
    "GatedMLP": {"W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0)},
    "Unembed": {"W_U": (1, 0)},
    "Attention": {**_ATTN_QKV, "W_O": (2, 0, 1)},
    "GroupedQueryAttention": {**_ATTN_QKV, "W_O": (2, 0, 1)},
}
_COPIED_2: _Layouts = {"Attention": _ATTN_QKV, "GroupedQueryAttention": _ATTN_QKV}


@contextlib.contextmanager
def _laid_out_as_copied(model: Any) -> Iterator[None]:
    """Store a `HookedTransformer`'s weights, while inside, in the layout its forward copies them to.

    TransformerLens' components copy most weights at every forward (`_COPIED_3`): at
    batch 8 on SmolLM2 under TransformerLens 3.9 those copies took about three quarters of
    a decoding step. Inside this block each such parameter holds the same values as a
    permuted view of a tensor already in the copied layout, so the forward's
    `.contiguous()` (or `reshape`) is a no-op view and `F.linear` gets a tensor equal in
    values and layout to the copy it got before: the same results, bit for bit (tested).
    On exit every parameter gets a standard contiguous tensor again. Each re-layout costs
    one copy of the weights, i.e. one forward's worth, once per batch instead of once per
    token. Parameters that are not plain dense tensors are left alone.
    """
    from importlib.metadata import version

    table = _COPIED_2 if version("transformer-lens").startswith("2.") else _COPIED_3
    changed: list[nn.Parameter] = []
    with torch.inference_mode(False), torch.no_grad():  # parameters must not become inference tensors
        for module in model.modules():
            for name, order in table.get(type(module).__name__, {}).items():
                param = module._parameters.get(name)
                if param is None or param.ndim != len(order) or not param.is_contiguous() or param.is_meta:
                    continue
                inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
                param.data = param.data.permute(order).contiguous().permute(inverse)
                changed.append(param)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for param in changed:
                param.data = param.data.contiguous()


def _decode_hooked(model: Any, ids: Tensor, mask: Tensor, s: _Sampling, stops: list[int], pad: int) -> Tensor:
    """Batched decoding of a left-padded batch on a `HookedTransformer`; prompt + new ids.

    The forward passes get the attention mask explicitly (never inferred from pad
    tokens), from which TransformerLens derives each row's positions (rotary or learned)
    and masks the pad keys, so a padded row computes what it computes alone. With the KV
    cache (`TransformerLensKeyValueCache`, `HookedTransformerKeyValueCache` on 2.x) the
    prompt runs once and each step one token, whose mask column the cache appends; without
    it, each step runs the whole sequence again, as TransformerLens' `generate` does. The
    calls the hooks see are the ones `hooks.PositionTracker` expects: the padded prompt
    (every row's last prompt token at column P-1), then one token (or the grown sequence)
    per step. Sampling is TransformerLens' `sample_logits`; a finished row is fed `pad`.
    """
    batch = ids.shape[0]
    cache = _hooked_cache_class().init_cache(model.cfg, model.cfg.device, batch) if s.use_cache else None
    sample = _sample_logits() if s.do_sample else None
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    stop_ids = torch.tensor(stops, dtype=ids.dtype, device=ids.device)
    one = torch.ones((batch, 1), dtype=mask.dtype, device=mask.device)
    seq, seq_mask, new = ids, mask, []
    logits = model(ids, attention_mask=mask, past_kv_cache=cache)
    for step in range(s.max_new_tokens):
        last = logits[:, -1, :]
        if sample is not None:
            top_k = s.top_k or None  # 0: no top-k, as TransformerLens' generate is given it
            token = sample(last, top_k=top_k, top_p=s.top_p, temperature=s.temperature).to(ids.device)
        else:
            token = last.argmax(-1)
        token = token.masked_fill(finished, pad)
        new.append(token)
        finished |= torch.isin(token, stop_ids)
        if bool(finished.all()) or step == s.max_new_tokens - 1:
            break
        if cache is not None:
            logits = model(token[:, None], attention_mask=one, past_kv_cache=cache)
        else:
            seq, seq_mask = torch.cat([seq, token[:, None]], 1), torch.cat([seq_mask, one], 1)
            logits = model(seq, attention_mask=seq_mask)
    return torch.cat([ids, torch.stack(new, 1)], 1)


def croppable_cache(view: nn.Module) -> Any:
    """An empty Hugging Face `DynamicCache` for `view`, or None where one could not be
    cropped back exactly (a sliding-window or other non-dynamic layer)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=view.config)  # type: ignore[arg-type]  # a Hugging Face config
    replicated = getattr(cache, "layer_class_to_replicate", None)
    if any(type(layer) is not DynamicLayer for layer in cache.layers) or replicated not in (None, DynamicLayer):
        return None
    return cache


def _read_prefill(view: nn.Module, ids: Tensor, mask: Tensor, prefill: Prefill) -> tuple[Optional[Tensor], Any]:
    """Run the prompt unedited into a KV cache, read the last token at `prefill`, crop it off.

    Returns `(activations [rows, len(layers), d_model] float32, the cache holding
    positions 0..P-2)`, or `(None, None)` where the cache cannot be cropped exactly (a
    sliding-window layer).
    """
    cache = croppable_cache(view)
    if cache is None:
        return None, None
    # the position ids Hugging Face generate gives a left-padded prompt
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    common: dict[str, Any] = dict(past_key_values=cache, use_cache=True)
    if "logits_to_keep" in inspect.signature(view.forward).parameters:
        common["logits_to_keep"] = 1  # as generate's prefill: no logits for the prompt
    if ids.shape[1] > 1:
        view(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], **common)
    store: dict[int, Tensor] = {}
    reads = [(hook_name(prefill.site, layer), capture_hook(store, layer)) for layer in prefill.layers]
    with native_hooks(view, reads):
        view(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], **common)
    cache.crop(-1)  # drop the last prompt token: generate runs it again, edited
    return torch.stack([store[layer] for layer in prefill.layers], dim=1), cache


# --------------------------------------------------------------------------- the loop


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def generate(
    model: Any,
    texts: Sequence[str],
    hooks_for: Optional[Callable[..., list]] = None,
    *,
    chat: Optional[bool] = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 8,
    use_past_kv_cache: bool = True,
    backend: str = "auto",
    prefill: Optional[Prefill] = None,
    max_prompt_tokens: Optional[int] = None,
    verbose: bool = False,
    desc: str = "generation",
) -> list[list[int]]:
    """Batched generation of `texts`, with per-batch hooks; the loop every caller shares.

    Each batch of `batch_size` texts is encoded left-padded (`encode_for_generation`)
    and generated inside `seeded(seed + batch index)`. `hooks_for(start, stop, batch)`
    returns the `(hook_name, fn)` pairs for rows `start:stop` (None: no hooks); with
    `prefill`, it is called as `hooks_for(start, stop, batch, activations)` (see the
    module docstring). `backend`: `"auto"`, `"hf"` or `"tl"` (the module docstring).
    `top_k` None leaves the engine's default. `max_prompt_tokens` refuses a longer
    prompt before any work (`check_prompt_tokens`; None: no limit). Returns each row's
    new token ids, cut at the first stop token.
    """
    if isinstance(texts, str):
        raise ArgumentTypeError("expected a list of prompt texts, got a single string")
    _check_count("max_new_tokens", max_new_tokens)
    _check_count("batch_size", batch_size)
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    require_model(model, "generation")
    prompt_budget(model, max_new_tokens)  # refuses max_new_tokens >= the context, before any work
    check_prompt_tokens(model, texts, max_prompt_tokens)
    engine = _Engine(model, backend)
    sampling = _Sampling(max_new_tokens, do_sample, temperature, top_p, top_k, use_past_kv_cache)

    def bind(start: int, stop: int, batch: Encoded) -> _BatchHooks:
        if hooks_for is None:
            return lambda acts: []
        if prefill is None:
            return lambda acts: hooks_for(start, stop, batch)
        return lambda acts: hooks_for(start, stop, batch, acts)

    all_ids: list[list[int]] = []
    starts = range(0, len(texts), batch_size)
    for bi, start in enumerate(tqdm(starts, desc=desc, disable=not verbose, leave=False)):
        stop = min(start + batch_size, len(texts))
        with seeded(seed + bi, engine.device), torch.inference_mode():
            if engine.row_by_row:
                for i in range(start, stop):
                    one = encode_for_generation(model, [texts[i]], chat, max_new_tokens)
                    all_ids.extend(engine.run(one, bind(i, i + 1, one), sampling, prefill))
            else:
                batch = encode_for_generation(model, list(texts[start:stop]), chat, max_new_tokens)
                all_ids.extend(engine.run(batch, bind(start, stop, batch), sampling, prefill))
    return all_ids


def generate_plain(
    model: Any,
    batch: Encoded,
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 0,
    seed: int = 0,
) -> list[list[int]]:
    """One encoded batch with no hooks, seeded with `seed` (preference writing).

    The loop of `generate`, on the fastest engine the model offers; where there is no
    fast path, each row runs alone (unpadded). Returns the new token ids of each row,
    cut at the first stop token.
    """
    if max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    engine = _Engine(model, "auto", rows_alone=True)
    sampling = _Sampling(max_new_tokens, do_sample, temperature, top_p, top_k, True)
    with seeded(seed, engine.device), torch.inference_mode():
        if not engine.row_by_row:
            return engine.run(batch, lambda acts: [], sampling, None)
        out: list[list[int]] = []
        for row, mask in zip(batch.input_ids, batch.attention_mask):
            real = row[mask.bool()].unsqueeze(0)
            out.extend(engine.run(Encoded(real, torch.ones_like(real)), lambda acts: [], sampling, None))
        return out
