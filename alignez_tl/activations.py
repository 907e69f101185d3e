"""Batched last-token capture at many layers in one forward pass per batch.

`capture` runs each batch once with one capture hook per requested layer and stops the
forward pass right after the deepest of them, so no later block, final norm or
unembedding runs. Only the last real token of every row is kept, in float32.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .errors import ArgumentTypeError, InvalidArgumentError
from .hooks import SITES, StopForward, capture_hook, check_layers, hook_name
from .models import Encoded, encode, model_device, padding_kwargs

__all__ = ["capture", "capture_tokens"]


@torch.inference_mode()
def capture_tokens(
    model: Any,
    batch: Encoded,
    layers: Sequence[int],
    site: str = "resid_post",
) -> Float[Tensor, "batch n_layers d_model"]:
    """Capture one encoded batch: `[batch, len(layers), d_model]`, float32.

    The activation of row b is taken at its last real token (the last position whose
    attention mask is 1), so left- and right-padded batches both work.
    """
    layers = check_layers(list(layers), int(model.cfg.n_layers))
    if site not in SITES:
        raise InvalidArgumentError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    device = model_device(model)
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # last index where mask == 1
    store: dict[int, Tensor] = {}
    deepest = max(layers)
    fwd_hooks = [(hook_name(site, layer), capture_hook(store, layer, last, stop=layer == deepest)) for layer in layers]
    kwargs = padding_kwargs(model, mask)
    try:
        with model.hooks(fwd_hooks=fwd_hooks):
            model(ids, return_type=None, **kwargs)
    except StopForward:
        pass
    missing = [layer for layer in layers if layer not in store]
    if missing:
        raise RuntimeError(f"capture hooks at layers {missing} did not fire (site {site!r})")
    # layers dispatched over several devices (accelerate's device_map) are gathered where
    # the first captured layer lives
    first = store[layers[0]].device
    return torch.stack([store[layer].to(first) for layer in layers], dim=1)


def capture(
    model: Any,
    texts: Union[Sequence[str], Encoded],
    layers: Optional[Sequence[int]] = None,
    site: str = "resid_post",
    *,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = False,
    desc: str = "capturing",
) -> Float[Tensor, "n n_layers d_model"]:
    """Last-token activations of many texts at many layers: `[n, len(layers), d_model]`.

    Args:
        model: a TransformerLens model.
        texts: strings (tokenised with `models.encode`, left-padded, in batches of
            `batch_size`), or an already encoded batch.
        layers: layer indices (default: all layers), returned in ascending order.
        site: `resid_post` (default), `mlp_out`, `resid_pre` or `attn_out`.
        chat: passed to `encode`. `None` (default) matches `models.render`'s default:
            texts of a chat model are tokenised as chat-rendered text (no extra BOS).
        verbose: show a progress bar over batches.
    """
    n_layers = int(model.cfg.n_layers)
    layers = check_layers(list(range(n_layers)) if layers is None else list(layers), n_layers)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(texts, Encoded):
        return capture_tokens(model, texts, layers, site)
    if isinstance(texts, str):
        raise ArgumentTypeError("capture takes a list of texts, not a single string")
    texts = list(texts)
    if not texts:
        raise InvalidArgumentError("capture got no texts")
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not verbose, leave=False):
        batch = encode(model, texts[start : start + batch_size], chat=chat)
        chunks.append(capture_tokens(model, batch, layers, site))
    return torch.cat(chunks, dim=0)
