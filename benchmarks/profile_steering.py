#!/usr/bin/env python
"""Where steered generation spends its extra time: a cProfile of `Steerer.generate`.

Run from the repository root:

    python benchmarks/profile_steering.py                   # batch 1 and 8, 64 tokens
    python benchmarks/profile_steering.py --batches 1 --repeats 4 --profiled 2

For each batch size, the same queries and subspace as `run_core.py`'s steering measure
(`Steerer.generate(steer=False)` vs `steer=True`, per-query selection read from the
prefill, every run forced to exactly `--tokens` new tokens) are

1. profiled with cProfile (`--profiled` generations of each kind), reporting per
   generation: model forward calls, the time in Hugging Face `generate`, in
   `generation._read_prefill` (the unedited prompt pass the selection is read from), in
   `Steerer.select`, and in the edit hooks (calls and seconds per call);
2. timed, interleaved (A B, B A, ...), `--repeats` paired ratios of process CPU time.

The JSON (default `benchmarks/results/steering-profile.json`, written atomically) and a
summary on stdout are what docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import run_core as rc  # noqa: E402  (the shared queries, pairs and helpers)

# (label, file suffix, function name) of the functions whose time is reported
WATCHED = {
    "hf_generate": ("transformers/generation/utils.py", "generate"),
    "read_prefill": ("alignez_tl/generation.py", "_read_prefill"),
    "select": ("alignez_tl/steering.py", "select"),
    "edit_hooks": ("alignez_tl/hooks.py", "fn"),
    "model_forward": ("transformers/models/llama/modeling_llama.py", "forward"),
}


def profile_runs(run: Any, n: int) -> dict[str, Any]:
    """cProfile `n` calls of `run()`; per-generation calls and seconds of the watched functions."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        run()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out: dict[str, Any] = {}
    for label, (suffix, func) in WATCHED.items():
        rows = [(k, v) for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func]
        if label == "model_forward":  # the outermost forward: the causal-LM class's (the largest cumulative)
            rows = sorted(rows, key=lambda kv: -kv[1][3])[:1]
        calls = sum(v[1] for _, v in rows)
        cum = sum(v[3] for _, v in rows)
        out[label] = {"calls": calls / n, "s": cum / n, "ms_per_call": 1000 * cum / calls if calls else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--profiled", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "steering-profile.json"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.tokens < 2 or args.repeats < 1 or args.profiled < 1 or not all(b >= 1 for b in batches):
        ap.error("--tokens must be >= 2, --repeats, --profiled and every batch >= 1")
    out_path = Path(args.out)
    if not out_path.parent.is_dir():
        ap.error(f"--out: no folder {out_path.parent}")

    import torch

    import alignez_tl as ez
    from alignez_tl._io import atomic_write_text
    from alignez_tl.models import load_model

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pairs = [(ez.render(model, q, p), ez.render(model, q, n)) for q, p, n in rc.FIT_PAIRS]
    steerer = ez.Steerer(ez.fit_subspace(model, pairs, tau=1.0, verbose=False), top_n=5)
    _, view = rc.steering_backend(model, "auto")
    result: dict[str, Any] = {
        "machine": rc.machine_info(args.threads),
        "model": args.model,
        "max_new_tokens": args.tokens,
        "method": "cProfile of Steerer.generate(steer=False/True), per generation; then paired process-CPU-time "
        "ratios steered/unsteered, interleaved; every run makes exactly max_new_tokens steps",
    }

    def run(steer: bool, queries: list[str]) -> float:
        gc.collect()
        c0 = time.process_time()
        with rc.quiet():
            steerer.generate(model, queries, max_new_tokens=args.tokens, steer=steer, batch_size=len(queries))
        return time.process_time() - c0

    with rc.min_new_tokens(view, args.tokens):
        for bs in batches:
            queries = (rc.GEN_QUERIES * (bs // len(rc.GEN_QUERIES) + 1))[:bs]
            run(False, queries), run(True, queries)  # warm-up
            rc.log(f"profile: batch {bs}")
            prof = {
                "unsteered": profile_runs(lambda: run(False, queries), args.profiled),
                "steered": profile_runs(lambda: run(True, queries), args.profiled),
            }
            rc.log(f"timing: batch {bs}, {args.repeats} paired repeats")
            ra, rb = rc.interleaved(
                args.repeats, lambda: {"cpu": run(False, queries)}, lambda: {"cpu": run(True, queries)}
            )
            a, b = [r["cpu"] for r in ra], [r["cpu"] for r in rb]
            result[f"batch_{bs}"] = {"profile": prof, "cpu_s_unsteered": a, "cpu_s_steered": b, **rc.ratio_stats(a, b)}
    atomic_write_text(out_path, json.dumps(result, indent=1) + "\n")
    for bs in batches:
        r = result[f"batch_{bs}"]
        p = r["profile"]
        print(
            f"batch {bs}: steered/unsteered CPU {r['ratio']:.3f} (of medians {r['of_medians']:.3f}, of minima "
            f"{r['of_minima']:.3f}); forwards {p['unsteered']['model_forward']['calls']:.0f} -> "
            f"{p['steered']['model_forward']['calls']:.0f}; read_prefill {p['steered']['read_prefill']['s']:.3f} s; "
            f"select {p['steered']['select']['s']:.3f} s; hooks {p['steered']['edit_hooks']['calls']:.0f} calls, "
            f"{p['steered']['edit_hooks']['s']:.3f} s ({p['steered']['edit_hooks']['ms_per_call'] or 0:.3f} ms each)"
        )


if __name__ == "__main__":
    main()
