"""The fast path: the same edit functions as native PyTorch hooks on an un-wrapped model.

Booting a `TransformerBridge` wraps the Hugging Face modules in place. On a GPU that
wrapping costs a lot in generation (measured on an H100: the bridge's `generate` ran
1.8–3.1× slower than raw Hugging Face `generate`, and even the wrapped model's own
`generate` 2×). The two generation-heavy phases (self-generated preferences, with no
hooks at all, and steered generation) therefore run on an *un-wrapped view*: a plain
Hugging Face model of the same class, built on the meta device and given the bridge's
own parameter and buffer tensors (`load_state_dict(..., assign=True)`), so no weight
memory is copied. Steering hooks go on its decoder layers as `register_forward_hook`
/ `register_forward_pre_hook`, calling exactly the `fn(activation, hook)` closures the
TransformerLens path uses.

The TransformerLens hook path stays the reference (and the path for analyses); a test
checks that both give the same greedy tokens.

A view is cached per bridge with a fingerprint of the wrapped model's tensors (every
parameter's and buffer's storage, dtype, device and shape). `model.to(dtype)` or
`.to(device)` replaces the buffers (and the parameters' storage), so a view built before
would keep stale tensors (rotary frequencies of the old dtype, say): on any mismatch the
view is rebuilt, or refused (None) when it cannot be (tensors on the meta device).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, cast

import torch
from torch import nn

from .errors import InvalidArgumentError

__all__ = ["is_dispatched", "native_hooks", "unwrapped_hf_model"]

_VIEWS: "weakref.WeakKeyDictionary[Any, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_WRAP = "._original_component"
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)$")
_Z_HOOK = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")  # the per-head outputs, before W_O


def _strip(name: str) -> str:
    return name.replace(_WRAP, "")


def unwrapped_hf_model(model: Any) -> Optional[nn.Module]:
    """A plain Hugging Face model sharing every weight of a `TransformerBridge`.

    Returns None for models that are not bridges (a `HookedTransformer` has no HF
    model inside) or whose modules cannot be matched one to one; callers then fall
    back to the TransformerLens path. The view is cached per bridge and rebuilt when the
    wrapped model's tensors changed since (`.to(dtype)`, `.to(device)`, replaced weights).
    """
    try:
        wrapped = model.original_model
    except Exception:  # noqa: BLE001 - not a bridge
        return None
    if wrapped is None or not hasattr(wrapped, "config") or getattr(model, "compatibility_mode", False):
        return None
    if is_dispatched(wrapped):
        return None  # accelerate moves (or loads from disk) each layer's weights in its own hooks
    stamp = _fingerprint(wrapped)
    cached = _VIEWS.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    _VIEWS.pop(model, None)
    view = _build_view(wrapped)
    if view is not None:
        _VIEWS[model] = (stamp, view)
    return view


def is_dispatched(hf_model: nn.Module) -> bool:
    """True for a Hugging Face model placed by accelerate over several devices or offloaded.

    Such a model (`from_pretrained(..., device_map=...)` with more than one place, or
    layers on "disk"/"meta") runs through accelerate's per-module hooks, which a plain
    view would bypass.
    """
    placement = getattr(hf_model, "hf_device_map", None) or {}
    if len(set(map(str, placement.values()))) > 1 or any(str(v) in ("disk", "meta") for v in placement.values()):
        return True
    return any(p.device.type == "meta" for p in hf_model.parameters())


def _fingerprint(wrapped: nn.Module) -> tuple:
    """The identity of every tensor of `wrapped`: storage address, dtype, device and shape."""
    tensors = list(wrapped.named_parameters(remove_duplicate=False)) + list(
        wrapped.named_buffers(remove_duplicate=False)
    )
    return (id(wrapped),) + tuple((name, t.data_ptr(), t.dtype, t.device, tuple(t.shape)) for name, t in tensors)


def _build_view(wrapped: nn.Module) -> Optional[nn.Module]:
    with torch.device("meta"):
        view = type(wrapped)(wrapped.config)
    wanted_params = dict(view.named_parameters())
    wanted_buffers = dict(view.named_buffers())
    state: dict[str, torch.Tensor] = {}
    for name, tensor in list(wrapped.named_parameters(remove_duplicate=False)) + list(
        wrapped.named_buffers(remove_duplicate=False)
    ):
        key = _strip(name)
        if (key in wanted_params or key in wanted_buffers) and key not in state:
            state[key] = tensor
    missing = [k for k in list(wanted_params) + list(wanted_buffers) if k not in state]
    if any(k in wanted_params for k in missing):
        return None  # an architecture whose wrapping we cannot map back one to one
    params = {k: v for k, v in state.items() if k in wanted_params}
    view.load_state_dict(params, strict=False, assign=True)
    for key in wanted_buffers:
        if key in state:
            module_name, _, buf_name = key.rpartition(".")
            module = view.get_submodule(module_name) if module_name else view
            module._buffers[buf_name] = state[key]
    if getattr(wrapped.config, "tie_word_embeddings", False) and hasattr(view, "tie_weights"):
        # assign=True replaced the tied tensor on one side only (a Hugging Face method: nn.Module lacks it)
        view.tie_weights()  # type: ignore[operator]
    if any(p.is_meta for p in view.parameters()) or any(b.is_meta for b in view.buffers()):
        return None
    view.eval()
    view.generation_config = wrapped.generation_config
    return view


def _decoder_layers(hf: nn.Module) -> Sequence[nn.Module]:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        try:
            return cast(Sequence[nn.Module], hf.get_submodule(path))  # an nn.ModuleList
        except AttributeError:
            continue
    raise InvalidArgumentError(f"cannot find the decoder layers of {type(hf).__name__}")


def _child(layer: nn.Module, names: Sequence[str]) -> nn.Module:
    for name in names:
        if hasattr(layer, name):
            return getattr(layer, name)
    raise InvalidArgumentError(f"{type(layer).__name__} has none of {names}")


def _replace_first(output: Any, fn: Callable, name: str) -> Any:
    """`output` with its first entry replaced by `fn`'s result; None (leave it) where `fn` returns None."""
    new = fn(output[0] if isinstance(output, tuple) else output, name)
    if new is None:  # a hook that only reads (a capture hook), as TransformerLens allows
        return None
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    return new


class _Name:
    """Stands in for a TransformerLens HookPoint where a hook reads `hook.name`."""

    def __init__(self, name: str) -> None:
        self.name = name


@contextlib.contextmanager
def native_hooks(hf: nn.Module, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach TransformerLens-style `(hook_name, fn)` pairs as native PyTorch hooks.

    Supported names: `blocks.{l}.hook_resid_post` (decoder layer output),
    `blocks.{l}.hook_resid_pre` (its input), `blocks.{l}.hook_mlp_out` and
    `blocks.{l}.hook_attn_out` (the MLP and attention outputs), and
    `blocks.{l}.attn.hook_z` (the input of the attention's output projection, seen as
    `[batch, pos, n_heads, d_head]`). A hook that returns None leaves the activation as
    it is (as on TransformerLens). The handles are removed on exit, even on error.
    """
    layers = _decoder_layers(hf)
    handles = []
    try:
        for name, fn in hooks:
            z_match = _Z_HOOK.match(name)
            if z_match is not None:
                handles.append(_z_hook(hf, layers[int(z_match.group(1))], name, fn))
                continue
            match = _HOOK.match(name)
            if match is None:
                raise InvalidArgumentError(f"the fast path cannot place a hook at {name!r}")
            layer, site = layers[int(match.group(1))], match.group(2)
            point = _Name(name)
            call = lambda act, n, fn=fn, point=point: fn(act, point)  # noqa: E731
            if site == "resid_pre":

                def pre(module, args, kwargs, call=call):
                    new = call(args[0] if args else kwargs["hidden_states"], None)
                    if new is None:  # a hook that only reads
                        return None
                    if args:
                        return (new,) + tuple(args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = new
                    return args, kwargs

                handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
                continue
            target = {
                "resid_post": layer,
                "mlp_out": _child(layer, ("mlp",)) if site == "mlp_out" else None,
                "attn_out": _child(layer, ("self_attn", "attn", "attention")) if site == "attn_out" else None,
            }[site]
            assert target is not None  # the entry of `site` is never None

            def post(module, args, output, call=call):
                return _replace_first(output, call, None)

            handles.append(target.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _z_hook(hf: nn.Module, layer: nn.Module, name: str, fn: Callable) -> Any:
    """A pre-hook on the attention's output projection calling `fn` on `[batch, pos, n_heads, d_head]`."""
    attn = _child(layer, ("self_attn", "attn", "attention"))
    proj = _child(attn, ("o_proj", "c_proj", "dense", "out_proj"))
    cfg: Any = hf.config
    n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
    point = _Name(name)

    def pre(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        z = fn(x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads), point)
        return args if z is None else (z.reshape(x.shape),) + tuple(args[1:])

    return proj.register_forward_pre_hook(pre)
