"""Make docs/img/attribution.png: token attribution of steering on the embedded model.

Usage (from the repository root):

    python docs/figures/make_attribution.py --subspace /tmp/demo1/subspace.safetensors
    python docs/figures/make_attribution.py            # fit a small subspace first (minutes on CPU)

Loads the embedded SmolLM2-135M-Instruct (`alignez_tl.load_model()`). With
`--subspace` it reuses a saved "helpful" subspace of that model; otherwise the model
writes a small PreferenceSet for four queries (`generate_preferences`, seed 0) and the
subspace is fitted on it. Then `analyses.attribution.attribute_steering` explains one
steered answer (`Steerer(sub, edit="paper", alpha=0.25)`: alpha=1 collapses answers on this model),
prints the wall time and a per-token table, and saves the heatmap (and, with `--html`,
the `to_html()` fragment; with `--json`, `to_dict()`).
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
from analyses.attribution import attribute_steering  # noqa: E402

PAIR_QUERIES = [
    "How can I get better at managing my time?",
    "Explain why the sky is blue.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato pasta sauce?",
]
PROMPT = "How do I keep houseplants alive?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subspace", help="a saved AlignmentSubspace of the embedded model")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "attribution.png"))
    ap.add_argument("--html", help="also write the to_html() fragment here")
    ap.add_argument("--html-tokens", type=int, help="only the first N tokens in the HTML fragment")
    ap.add_argument("--json", help="also write Attribution.to_dict() here")
    ap.add_argument("--dpi", type=int, default=90)
    args = ap.parse_args(argv)

    model = ez.load_model()
    if args.subspace:
        sub = ez.AlignmentSubspace.load(args.subspace, model)
        print(f"loaded the subspace {args.subspace}")
    else:
        t0 = time.perf_counter()
        prefs = ez.generate_preferences(model, PAIR_QUERIES, elicit_tokens=40, response_tokens=64, seed=0)
        sub = ez.fit_subspace(model, prefs, verbose=False)
        print(f"fitted a subspace on {len(prefs)} pairs in {time.perf_counter() - t0:.0f} s")

    steerer = ez.Steerer(sub, edit="paper", alpha=args.alpha)  # the figure as published: the paper edit
    t0, c0 = time.perf_counter(), time.process_time()
    att = attribute_steering(model, steerer, args.prompt, max_new_tokens=args.max_new_tokens)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"attribute_steering: {wall:.1f} s wall, {cpu:.1f} s CPU for max_new_tokens={args.max_new_tokens} "
          f"({att.n_forward_passes} forward passes after generation; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"edited layers {att.layers}; directions {att.direction_labels}")
    print(f"base:    {att.base_text!r}\nsteered: {att.steered_text!r}")
    print(f"first divergence at position {att.first_divergence}; "
          f"reconstruction error {att.reconstruction_error:.2e}")
    print(f"{'i':>3} {'steered':>14} {'base':>14} {'d_steer':>8} {'d_base':>8} {'frozen':>8} "
          f"{'direct':>8} {'σs/σb':>6}")
    for i in range(att.n_positions):
        print(f"{i:>3} {att.steered_strings[i]!r:>14} {att.base_strings[i]!r:>14} "
              f"{att.logit_diff_steered[i]:>8.3f} {att.logit_diff_base[i]:>8.3f} "
              f"{att.frozen_scale_change[i]:>8.3f} {att.direct_total[i]:>8.3f} {att.scale_ratio[i]:>6.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = att.plot()
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    if args.html:
        Path(args.html).write_text(att.to_html(max_tokens=args.html_tokens), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(att.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
