"""Cost of the analyses on the embedded model: wall time, peak memory, forward passes.

Each analysis runs in a fresh subprocess (so `ru_maxrss` measures its own peak), after
the model is loaded and the inputs are ready; the peak-RSS increase is `ru_maxrss`
after minus before the call. Forward passes are counted with a TransformerLens hook on
`blocks.0.hook_resid_pre` (every TransformerLens forward call, each generated token of
the TL path included) and a native hook on the un-wrapped view's first decoder layer
(generation on the fast path).

    .venv/bin/python benchmarks/run_analyses.py --pairs pairs.jsonl --subspace subspace.safetensors

Without `--pairs`/`--subspace` it self-generates pairs for 6 queries and fits first
(several minutes on a 2-core CPU). Results: `benchmarks/results/analyses.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = [
    "How can I get better at managing my time?",
    "Explain why the sky is blue.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato pasta sauce?",
    "How do I keep houseplants alive?",
    "What is a good way to learn a new language?",
]


def _child(which: str, pairs: str, subspace: str, threads: int, tokens: int) -> dict:
    """Runs inside the subprocess: one analysis, measured."""
    import torch

    import alignez_tl as ez
    from alignez_tl.fastpath import unwrapped_hf_model

    torch.set_num_threads(threads)
    model = ez.load_model(verbose=False)
    prefs = ez.PreferenceSet.load(pairs)
    sub = ez.AlignmentSubspace.load(subspace, model)
    steerer = ez.Steerer(sub, edit="paper", alpha=0.25)
    counts = {"tl": 0, "fast": 0}

    def tl_count(act, hook):
        counts["tl"] += 1

    view = unwrapped_hf_model(model)
    handle = view.get_submodule("model.layers")[0].register_forward_pre_hook(
        lambda m, a: counts.__setitem__("fast", counts["fast"] + 1)
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    c0 = time.process_time()
    model.add_hook("blocks.0.hook_resid_pre", tl_count)
    try:
        if which == "layer_signal":
            from analyses.layer_signal import layer_signal

            result = layer_signal(model, sub, prefs, queries=QUERIES[:4])
            extra = {"recommended": result.recommended}
        elif which == "subspace_lens":
            from analyses.subspace_lens import subspace_lens

            result = subspace_lens(model, sub, prefs, n_splits=20)
            extra = {"n_capture_batches": result.settings["n_capture_batches"], "seconds": result.settings["seconds"]}
        else:
            from analyses.attribution import attribute_steering

            result = attribute_steering(model, steerer, QUERIES[0], max_new_tokens=tokens)
            extra = {"n_positions": result.n_positions, "n_forward_passes_reported": result.n_forward_passes}
    finally:
        model.reset_hooks()
        handle.remove()
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "peak_rss_increase_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
        "tl_forward_calls": counts["tl"],
        "fast_path_forward_calls": counts["fast"],
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs")
    parser.add_argument("--subspace")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attribution-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/analyses.json"))
    parser.add_argument("--only", help="run only these analyses (comma-separated)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.pairs, args.subspace, args.threads, args.attribution_tokens)))
        return

    if not (args.pairs and args.subspace):
        import alignez_tl as ez

        work = Path(tempfile.mkdtemp(prefix="alignez-bench-"))
        model = ez.load_model(verbose=False)
        prefs = ez.generate_preferences(model, QUERIES, elicit_tokens=40, response_tokens=64, seed=0)
        args.pairs = str(prefs.save(work / "pairs.jsonl"))
        args.subspace = str(ez.fit_subspace(model, prefs).save(work / "subspace.safetensors"))
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg": os.getloadavg(),
        },
        "inputs": {"pairs": args.pairs, "subspace": args.subspace},
    }
    for which in ("layer_signal", "subspace_lens", "attribution"):
        if args.only and which not in args.only.split(","):
            continue
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                which,
                "--pairs",
                args.pairs,
                "--subspace",
                args.subspace,
                "--threads",
                str(args.threads),
                "--attribution-tokens",
                str(args.attribution_tokens),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            results[which] = {"error": proc.stderr[-2000:]}
        else:
            results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(which, json.dumps(results[which]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
