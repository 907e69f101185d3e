"""Small helpers the analyses share: JSON-ready values and single-threaded torch."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor


def clean(value: Any) -> Any:
    """JSON-ready: numpy and tensors → Python, NaN/inf → None (recursively)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, Tensor):
        return clean(value.detach().cpu().tolist())
    return value


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the setting.

    The analyses do thousands of tiny ops (small SVDs, projections); with torch's
    thread pool on a busy machine each one pays a synchronisation cost (measured: 30 s
    instead of 0.8 s for 30 layers x 20 splits on a loaded 2-core machine).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def theta_label(j: int) -> str:
    """The display name of direction index j (0-based in code): `θ{j+1}`, as the docs
    (θ_1 is the first direction) and every panel of the report write it."""
    return f"θ{int(j) + 1}"
