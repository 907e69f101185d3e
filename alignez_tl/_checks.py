"""Input checks shared by several modules: raised before any model work starts."""

from __future__ import annotations

import os
from typing import Any

from .errors import ArgumentTypeError, InvalidArgumentError


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
    raise ArgumentTypeError(
        f"{what} needs a TransformerLens model with .cfg.n_layers and .cfg.d_model; got {type(model).__name__}{hint}"
    )


def _as_queries(queries: Any) -> list[str]:
    """`queries` as a non-empty list of non-empty strings, or a clear error."""
    if isinstance(queries, str):
        raise ArgumentTypeError("expected a list of queries, got a single string: wrap it in a list")
    queries = list(queries)
    if not queries:
        raise InvalidArgumentError("the query list is empty")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise InvalidArgumentError(f"every query must be a non-empty string; got {q!r}")
    return queries
