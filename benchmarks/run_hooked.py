#!/usr/bin/env python
"""Per-token cost of steered generation on a `HookedTransformer`: batched vs row by row vs the bridge.

Run from the repository root, in an environment with TransformerLens 3.9 (it holds both
`HookedTransformer` and `TransformerBridge`, so one process measures all three):

    PYTHONPATH=. ~/.cache/alignez-tl/venv-tl3-*/bin/python benchmarks/run_hooked.py
    PYTHONPATH=. ~/.cache/alignez-tl/venv-tl3-*/bin/python benchmarks/run_hooked.py --quick

In the main environment (TransformerLens 4.x, no `HookedTransformer`) it measures the
bridge alone (`--out` another file), for the bridge figure of TransformerLens 4.

The model is the embedded SmolLM2-135M-Instruct, loaded twice: `load_hooked` (a
`HookedTransformer`, TransformerLens' default weight processing) and `load_model` (a
`TransformerBridge`). Each engine generates the same 8 long-answer prompts (one batch of
8), greedy, `--new-tokens` new tokens, with the same steering edit (`hooks.edit_hook`,
oriented boost along 4 fixed random orthonormal directions at 5 layers,
`positions="generated"`) through the one loop `generation.generate`:

* `hooked_batched`: `backend="auto"` on the HookedTransformer (the left-padded batch,
  `_decode_hooked`);
* `hooked_rows`: `backend="tl"` on the HookedTransformer (TransformerLens' `generate`, one
  unpadded row at a time: what every HookedTransformer user got before);
* `bridge`: `backend="auto"` on the bridge (Hugging Face `generate` on the un-wrapped view).

Cost per token = process CPU seconds / generated tokens (each row's tokens up to its stop
token). Each repeat runs the three in turn, rotating the order; the headline ratios are
medians over the repeats of the paired ratios (hooked_batched / bridge,
hooked_rows / hooked_batched). torch runs on `--threads` threads (default 1). With
`--profile`, one extra batched run per engine under `torch.profiler` gives the operators
that take the time. `--ablate-layout` adds `hooked_batched_plain_layout`: the batched
loop without `generation._laid_out_as_copied` (the weights in TransformerLens' own
layout, copied by its forward at every step).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_core import (  # noqa: E402
    GEN_QUERIES,
    atomic_write_json,
    log,
    machine_info,
    median,
    quiet,
    ratio,
    timed2,
)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "hooked.json"
TARGET = ("hooked_batched_over_bridge", "<=", 2.0)
LAYERS = (10, 14, 18, 22, 26)


def steering_hooks(d_model: int, quick: bool) -> Callable[..., list]:
    """`hooks_for(start, stop, batch)`: the same oriented boost at `LAYERS` for every engine."""
    import torch

    from alignez_tl.hooks import EditTerm, PositionTracker, edit_hook, hook_name

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d_model, 4, generator=gen, dtype=torch.float64))
    term = EditTerm(q.T.float().contiguous(), torch.ones(4), torch.full((1, 4), 0.1), "boost", "oriented")
    layers = LAYERS[:2] if quick else LAYERS

    def hooks_for(start: int, stop: int, batch: Any) -> list:
        width = int(batch.input_ids.shape[1])
        return [
            (hook_name("resid_post", layer), edit_hook([term], PositionTracker("generated", width))) for layer in layers
        ]

    return hooks_for


def run_engine(
    model: Any, texts: list[str], backend: str, new_tokens: int, hooks_for: Callable, relayout: bool = True
) -> dict[str, Any]:
    from alignez_tl import generation

    real = generation._laid_out_as_copied
    if not relayout:
        generation._laid_out_as_copied = lambda model: contextlib.nullcontext()  # type: ignore[assignment]
    try:
        ids, wall, cpu = timed2(
            lambda: generation.generate(
                model, texts, hooks_for, chat=True, max_new_tokens=new_tokens, batch_size=len(texts), backend=backend
            )
        )
    finally:
        generation._laid_out_as_copied = real
    tokens = sum(len(row) for row in ids)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "tokens": tokens,
        "cpu_per_token_ms": 1000 * cpu / max(tokens, 1),
        "wall_per_token_ms": 1000 * wall / max(tokens, 1),
        "ids": ids,
    }


def profile(model: Any, texts: list[str], backend: str, new_tokens: int, hooks_for: Callable) -> list[dict]:
    """The operators that take the CPU time of one run, by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run_engine(model, texts, backend, new_tokens, hooks_for)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in rows[:15]
    ]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 4 tokens, 1 repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="add a torch.profiler table per engine")
    p.add_argument("--skip-rows", action="store_true", help="leave out the (slow) row-by-row engine")
    p.add_argument("--ablate-layout", action="store_true", help="add the batched loop without the weight re-layout")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import alignez_tl as ez
    from alignez_tl.models import is_bridge

    if args.quick:
        args.repeats, args.new_tokens, args.batch = 1, 4, 2
    texts_q = GEN_QUERIES[: args.batch]
    engines: dict[str, tuple[Any, str]] = {}
    with quiet():
        try:
            hooked = ez.load_hooked(verbose=False)
        except ez.models.ModelSpecError as err:  # TransformerLens 4.x: the bridge alone
            log(f"no HookedTransformer here ({err}); measuring the bridge alone")
        else:
            engines["hooked_batched"] = (hooked, "auto")
            if not args.skip_rows:
                engines["hooked_rows"] = (hooked, "tl")
            if args.ablate_layout:
                engines["hooked_batched_plain_layout"] = (hooked, "auto")
        bridge = ez.load_model(verbose=False)
        assert is_bridge(bridge)
        engines["bridge"] = (bridge, "auto")
    hooks_for = steering_hooks(int(bridge.cfg.d_model), args.quick)
    texts = {name: [ez.render(model, q) for q in texts_q] for name, (model, _) in engines.items()}

    log(f"engines {list(engines)}; batch {args.batch}, {args.new_tokens} new tokens, {args.repeats} repeats")
    with quiet():
        for name, (model, backend) in engines.items():  # warm-up (first-call allocations)
            run_engine(model, texts[name][:1], backend, 2, hooks_for)
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    order = list(engines)
    for r in range(args.repeats):
        turn = order[r % len(order) :] + order[: r % len(order)]
        for name in turn:
            model, backend = engines[name]
            with quiet():
                relayout = name != "hooked_batched_plain_layout"
                res = run_engine(model, texts[name], backend, args.new_tokens, hooks_for, relayout)
            runs[name].append(res)
            log(f"repeat {r + 1}: {name:15s} {res['cpu_per_token_ms']:8.2f} ms/token CPU ({res['tokens']} tokens)")

    same_tokens = None
    for other in ("hooked_rows", "hooked_batched_plain_layout"):
        if other in runs:
            same = all(a["ids"] == b["ids"] for a, b in zip(runs["hooked_batched"], runs[other]))
            same_tokens = same if same_tokens is None else same_tokens and same

    def paired(num: str, den: str) -> Optional[dict[str, Any]]:
        if num not in runs or den not in runs:
            return None
        per = [ratio(a["cpu_per_token_ms"], b["cpu_per_token_ms"]) for a, b in zip(runs[num], runs[den])]
        return {
            "ratio": median(per),
            "paired": per,
            "of_medians": ratio(
                median([x["cpu_per_token_ms"] for x in runs[num]]), median([x["cpu_per_token_ms"] for x in runs[den]])
            ),
        }

    result: dict[str, Any] = {
        "what": "per-token CPU cost of steered greedy generation, embedded SmolLM2-135M-Instruct",
        "machine": machine_info(args.threads),
        "settings": {
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "layers_edited": list(LAYERS[:2] if args.quick else LAYERS),
            "quick": args.quick,
        },
        "engines": {
            name: {
                "backend": backend,
                "model_class": type(model).__name__,
                "cpu_per_token_ms": median([x["cpu_per_token_ms"] for x in runs[name]]),
                "wall_per_token_ms": median([x["wall_per_token_ms"] for x in runs[name]]),
                "tokens": [x["tokens"] for x in runs[name]],
                "cpu_per_token_ms_runs": [round(x["cpu_per_token_ms"], 3) for x in runs[name]],
            }
            for name, (model, backend) in engines.items()
        },
        "ratios": {
            "hooked_batched_over_bridge": paired("hooked_batched", "bridge"),
            "hooked_rows_over_bridge": paired("hooked_rows", "bridge"),
            "hooked_rows_over_hooked_batched": paired("hooked_rows", "hooked_batched"),
            "plain_layout_over_bridge": paired("hooked_batched_plain_layout", "bridge"),
            "plain_layout_over_hooked_batched": paired("hooked_batched_plain_layout", "hooked_batched"),
        },
        "batched_tokens_equal_rows": same_tokens,  # and the plain-layout run's, where measured
    }
    headline = (result["ratios"].get(TARGET[0]) or {}).get("ratio")
    result["target"] = {
        "name": TARGET[0],
        "op": TARGET[1],
        "value": TARGET[2],
        "measured": headline,
        "met": None if headline is None else headline <= TARGET[2],
    }
    if args.profile:
        result["profile"] = {}
        for name, (model, backend) in engines.items():
            if name == "hooked_rows":
                continue
            with quiet():
                result["profile"][name] = profile(model, texts[name], backend, args.new_tokens, hooks_for)
    result["machine"]["loadavg_end"] = machine_info(args.threads)["loadavg_start"]
    out = args.out or DEFAULT_OUT.with_name("hooked-quick.json" if args.quick else "hooked.json")
    atomic_write_json(out, result)
    print(f"\nper-token CPU cost (median of {args.repeats}), batch {args.batch}, {args.new_tokens} new tokens:")
    for name, e in result["engines"].items():
        print(f"  {name:15s} {e['cpu_per_token_ms']:8.2f} ms/token   ({e['model_class']}, backend={e['backend']})")
    for name, r in result["ratios"].items():
        if r is not None:
            print(f"  {name:32s} {r['ratio']:.2f}x")
    print(f"  batched tokens == row-by-row (and plain-layout) tokens: {same_tokens}")
    print(f"  target {TARGET[0]} {TARGET[1]} {TARGET[2]}: {result['target']['met']}")
    print(f"  written to {out} ({time.strftime('%H:%M:%S')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
