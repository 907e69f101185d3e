"""Input checks shared by several modules: raised before any model work starts."""

from __future__ import annotations

import os
from typing import Any, Optional


def require_model(model: Any, what: str) -> Any:
    """Refuse anything that is not a TransformerLens-style model (`.cfg.n_layers`, `.cfg.d_model`).

    A model name or path gets a hint to load it first with `load_model`.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers") and hasattr(cfg, "d_model"):
        return model
    if isinstance(model, (str, os.PathLike)):
        hint = f"; load it first: model = alignez_tl.load_model({os.fspath(model)!r})"
    else:
        hint = " (a TransformerBridge or HookedTransformer, e.g. from alignez_tl.load_model())"
    raise TypeError(
        f"{what} needs a TransformerLens model with .cfg.n_layers and .cfg.d_model; got {type(model).__name__}{hint}"
    )


def prompt_budget(model: Any, max_new_tokens: int, what: str = "max_new_tokens") -> Optional[int]:
    """How many prompt tokens fit in the context next to `max_new_tokens` new ones.

    None when the model does not state its context length. Raises `ValueError` when the
    new tokens alone fill the context (no room for even one prompt token).
    """
    n_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", 0) or 0)
    if n_ctx <= 0:
        return None
    if max_new_tokens >= n_ctx:
        raise ValueError(
            f"{what}={max_new_tokens} does not fit the model's context of {n_ctx} tokens "
            f"(the prompt needs at least one): use {what} < {n_ctx}"
        )
    return n_ctx - max_new_tokens


def encode_for_generation(
    model: Any, texts: list[str], chat: Optional[bool], max_new_tokens: int, encode: Any = None
) -> Any:
    """`models.encode` (or the given `encode`) leaving room for `max_new_tokens` in the context.

    A longer prompt keeps its last tokens (the end of a chat prompt is the part that
    asks for the answer), with one warning that says so.
    """
    if encode is None:
        from .models import encode

    prompt_budget(model, max_new_tokens)  # the clear error when nothing fits
    return encode(model, texts, chat=chat, reserve=max_new_tokens)


def _as_queries(queries: Any) -> list[str]:
    """`queries` as a non-empty list of non-empty strings, or a clear error."""
    if isinstance(queries, str):
        raise TypeError("expected a list of queries, got a single string: wrap it in a list")
    queries = list(queries)
    if not queries:
        raise ValueError("the query list is empty")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"every query must be a non-empty string; got {q!r}")
    return queries
