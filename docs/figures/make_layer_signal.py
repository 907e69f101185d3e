"""Make docs/img/layer_signal.png: the layer signal of the embedded model's subspace.

Usage (from the repository root):

    python docs/figures/make_layer_signal.py                      # generate pairs (a few minutes on CPU)
    python docs/figures/make_layer_signal.py --pairs pairs.jsonl  # reuse a saved PreferenceSet

Loads the embedded SmolLM2-135M-Instruct (`alignez_tl.load_model()`), lets it write a
small "helpful" PreferenceSet for six queries (unless `--pairs` is given), fits the
subspace at every layer on `resid_post`, runs `analyses.layer_signal` with four other
queries and 20 seeded held-out splits, prints the summary table and saves the figure (and, with `--json`, the
result's `to_dict()`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `analyses` from this checkout, also when not installed

import alignez_tl as ez  # noqa: E402
from analyses.layer_signal import layer_signal  # noqa: E402

PAIR_QUERIES = [
    "How can I get better at managing my time?",
    "Explain why the sky is blue.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato pasta sauce?",
    "What is a good way to start learning to code?",
    "How do I write a polite email asking for a deadline extension?",
]
SELECT_QUERIES = [
    "How do I keep houseplants alive?",
    "Explain what a budget is and how to make one.",
    "What are some tips for sleeping better?",
    "How does a bicycle stay upright?",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", help="a saved PreferenceSet (JSONL); default: generate one")
    ap.add_argument("--save-pairs", help="where to save the generated PreferenceSet")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "layer_signal.png"))
    ap.add_argument("--json", help="also write LayerSignal.to_dict() here")
    ap.add_argument("--dpi", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=20, help="seeded held-out splits to average")
    args = ap.parse_args(argv)

    model = ez.load_model()
    if args.pairs:
        prefs = ez.PreferenceSet.load(args.pairs)
        print(f"loaded {len(prefs)} pairs from {args.pairs}")
    else:
        t = time.perf_counter()
        prefs = ez.generate_preferences(model, PAIR_QUERIES, "helpful", elicit_tokens=40,
                                        response_tokens=64, seed=args.seed)
        print(f"generated {len(prefs)} pairs in {time.perf_counter() - t:.0f}s")
        if args.save_pairs:
            prefs.save(args.save_pairs)
    prefs = prefs.filter_empty()

    sub = ez.fit_subspace(model, prefs, verbose=False)
    t = time.perf_counter()
    sig = layer_signal(model, sub, prefs, SELECT_QUERIES, seed=args.seed, repeats=args.repeats)
    elapsed = time.perf_counter() - t
    print(sig.summary())
    print(f"layer_signal: {elapsed:.1f}s wall, {sig.settings['n_capture_batches']} forward pass(es) "
          f"for {2 * len(prefs)} pair texts + {sig.settings['n_query_batches']} for "
          f"{len(SELECT_QUERIES)} queries")

    fig = sig.plot()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(sig.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
