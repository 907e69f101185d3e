"""Make docs/img/ablation.png: component ablation on the embedded SmolLM2-135M-Instruct.

Standalone (a few minutes on a laptop CPU):

    python docs/figures/make_ablation.py

generates a small self-generated preference set for six queries, fits the helpful
subspace on the pairs of the first four and keeps the pairs of the last two as the
held-out pairs for the margin. With `--subspace FILE` (a subspace fitted on this model,
e.g. by `alignez demo`) the fit is skipped and only the held-out queries' pairs are
generated (`--pairs FILE` skips that too: a PreferenceSet JSONL whose queries were not
used for the fit).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import alignez_tl as ez
from analyses.ablation import Ablation, ablate_components

FIT_QUERIES = [
    "How can I get better at managing my time?",
    "Explain why the sky is blue.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato pasta sauce?",
]
HELD_OUT_QUERIES = [
    "How do I start learning to play the guitar?",
    "What are some tips for writing a good cover letter?",
]
PROMPTS = [
    "How do I keep a houseplant alive?",
    "Explain how the gears on a bicycle work.",
    "What is a good way to learn new vocabulary?",
    "How should I prepare for a job interview?",
]
ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subspace", help="a subspace .safetensors fitted on the embedded model (skips the fit)")
    ap.add_argument("--pairs", help="held-out preference pairs (.jsonl) for the margin")
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--greedy-tokens", type=int, default=16)
    ap.add_argument("--max-components", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "ablation.png"))
    ap.add_argument("--json", help="also write the result's to_dict() here")
    ap.add_argument("--save-dir", help="save the fitted subspace and the held-out pairs here, for --subspace/--pairs")
    ap.add_argument("--from-json", help="only redraw the figure from a --json file written earlier")
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        draw(Ablation.from_dict(data), args)
        return

    t0 = time.perf_counter()
    model = ez.load_model(verbose=False)
    print(f"model loaded in {time.perf_counter() - t0:.0f} s")
    gen = dict(objective="helpful", elicit_tokens=40, response_tokens=64, seed=0, verbose=False)

    t = time.perf_counter()
    if args.subspace:
        sub = ez.AlignmentSubspace.load(args.subspace, model=model)
        if args.pairs:
            held_out = ez.PreferenceSet.load(args.pairs)
        else:
            held_out = ez.generate_preferences(model, HELD_OUT_QUERIES, **gen)
    else:
        prefs = ez.generate_preferences(model, FIT_QUERIES + HELD_OUT_QUERIES, **gen).filter_empty()
        fit_set = ez.PreferenceSet([p for p in prefs if p.query in FIT_QUERIES], prefs.objective, prefs.settings)
        held_out = ez.PreferenceSet([p for p in prefs if p.query in HELD_OUT_QUERIES], prefs.objective,
                                    prefs.settings)
        sub = ez.fit_subspace(model, fit_set, verbose=False)
    held_out = held_out.filter_empty()
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        sub.save(Path(args.save_dir) / "subspace.safetensors")
        held_out.save(Path(args.save_dir) / "held_out.jsonl")
    print(f"subspace and {len(held_out)} held-out pairs ready in {time.perf_counter() - t:.0f} s; "
          f"ranks {sorted(set(sub.ranks().values()))}")

    steerer = ez.Steerer(sub, edit="paper", alpha=args.alpha)  # the figure as published: the paper edit
    t = time.perf_counter()
    result = ablate_components(model, steerer, PROMPTS, pairs=held_out, max_components=args.max_components,
                               greedy_tokens=args.greedy_tokens, batch_size=8)
    elapsed = time.perf_counter() - t
    print(f"ablation: {result.n_forward} forward calls in {elapsed:.0f} s")
    print(result.summary())

    if args.json:
        Path(args.json).write_text(json.dumps({**result.to_dict(), "runtime_s": elapsed}, indent=1))
    draw(result, args)


def draw(result: Ablation, args: argparse.Namespace) -> None:
    s = result.settings
    fig = result.plot(title=(f"SmolLM2-135M-Instruct, helpful subspace, α={s['alpha']}: "
                             f"{s['n_prompts']} prompts, {s['n_pairs']} held-out pairs, "
                             f"{s['greedy_tokens']} greedy tokens"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
