"""Make docs/img/subspace_lens.png: the subspace lens of the embedded model's subspace.

Usage (from the repository root):

    python docs/figures/make_subspace_lens.py                      # generate pairs (minutes on CPU)
    python docs/figures/make_subspace_lens.py --pairs pairs.jsonl  # reuse a saved PreferenceSet

Loads the embedded SmolLM2-135M-Instruct (`alignez_tl.load_model()`), lets it write a
"helpful" PreferenceSet for `--n-queries` prompts of the built-in fitting pool (unless
`--pairs` is given), embeds the pairs once (`embed_pairs`, every layer, `resid_post`),
fits the subspace from those activations and runs `analyses.subspace_lens` on the same
activations (no further forward pass), with 20 seeded half splits. Prints the summary
table and the timing, saves the figure (and, with `--json`, the result's `to_dict()`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `analyses` from this checkout, also when not installed

import alignez_tl as ez  # noqa: E402
from alignez_tl.prompts import fit_prompts  # noqa: E402
from analyses.subspace_lens import subspace_lens  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", help="a saved PreferenceSet (JSONL); default: generate one")
    ap.add_argument("--save-pairs", help="where to save the generated PreferenceSet")
    ap.add_argument("--n-queries", type=int, default=48, help="fitting-pool prompts to generate pairs for")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "subspace_lens.png"))
    ap.add_argument("--json", help="also write SubspaceLens.to_dict() here")
    ap.add_argument("--dpi", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-splits", type=int, default=20)
    args = ap.parse_args(argv)

    model = ez.load_model()
    if args.pairs:
        prefs = ez.PreferenceSet.load(args.pairs)
        print(f"loaded {len(prefs)} pairs from {args.pairs}")
    else:
        per = -(-args.n_queries // 6)  # six categories
        queries = [row["query"] for row in fit_prompts(per_category=per)][: args.n_queries]
        t = time.perf_counter()
        prefs = ez.generate_preferences(
            model, queries, "helpful", n_characteristics=2, elicit_tokens=40, response_tokens=48, seed=args.seed
        )
        print(f"generated {len(prefs)} pairs in {time.perf_counter() - t:.0f}s")
        if args.save_pairs:
            prefs.save(args.save_pairs)
    prefs = prefs.filter_empty()

    acts = ez.embed_pairs(model, prefs)  # the one capture pass
    sub = ez.fit_subspace(model, acts, verbose=False)
    print(sub.summary())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, c = time.perf_counter(), time.process_time()
    lens = subspace_lens(model, sub, acts, n_splits=args.n_splits, seed=args.seed)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(lens.summary(vocab_layers=[0, 10, 20, 25, 29]))
    print(f"subspace_lens: {wall:.1f}s wall, {cpu:.1f}s CPU, peak RSS +{peak:.0f} MiB, {lens.settings['seconds']}")

    fig = lens.plot()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(lens.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
