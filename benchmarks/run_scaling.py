"""How the generation-heavy phases scale with the number of queries and the batch size.

On the embedded model, one process, one torch thread:

* steered and unsteered greedy generation (`Steerer.generate`, up to 32 new tokens;
  rows may stop early at EOS, so the comparable figure is time per generated token),
  for 1, 4 and 16 queries at batch size 8, and for 16 queries at batch sizes 1, 4, 16;
* plain generation for preferences (`generation.generate_plain`, sampling, 32 tokens), the
  same grid;
* last-token capture at all layers (`activations.capture`) for 1, 4 and 16 texts;
* the wall time of `alignez eval` on one built-in prompt per category.

Every timing is the median of `--repeats` runs; the JSON also gives each figure per
query and relative to the 1-query (or batch-size-1) run. Results:
`benchmarks/results/scaling.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    "How do I write a polite complaint letter?",
    "Why do cats purr?",
    "What makes a good night's sleep?",
    "How do vaccines work?",
    "How can I save money on groceries?",
    "What is the difference between weather and climate?",
    "How do I start running as a beginner?",
    "Explain compound interest simply.",
    "How should I prepare for a job interview?",
    "What are the planets of the solar system?",
]


def median_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
    args = parser.parse_args()

    import torch

    import alignez_tl as ez
    from alignez_tl.activations import capture
    from alignez_tl.generation import generate_plain
    from alignez_tl.models import encode, render

    torch.set_num_threads(args.threads)
    model = ez.load_model(verbose=False)
    pairs = [
        (render(model, q, "Here is a clear, careful answer with steps."), render(model, q, "No.")) for q in QUERIES[:8]
    ]
    steerer = ez.Steerer(ez.fit_subspace(model, pairs, tau=1.0, verbose=False), edit="paper", alpha=0.25)
    res: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": os.getloadavg(),
        },
        "settings": vars(args),
        "generation": [],
        "preferences": [],
        "capture": [],
    }

    grid = [(n, 8) for n in (1, 4, 16)] + [(16, b) for b in (1, 4, 16)]
    for n, batch in grid:
        queries = QUERIES[:n]
        row = {"queries": n, "batch_size": batch}
        for steer in (False, True):
            seconds, (ids, _) = median_time(
                lambda: steerer.generate(
                    model, queries, max_new_tokens=args.tokens, batch_size=batch, steer=steer, return_tokens=True
                ),
                args.repeats,
            )
            tokens = sum(len(r) for r in ids)
            key = "steered" if steer else "unsteered"
            row[f"{key}_s"] = seconds
            row[f"{key}_tokens"] = tokens
            row[f"{key}_s_per_token"] = seconds / max(tokens, 1)
        row["steered_over_unsteered_per_token"] = row["steered_s_per_token"] / row["unsteered_s_per_token"]
        res["generation"].append(row)

        prompts = [render(model, q) for q in queries]

        def plain():
            out = []
            for start in range(0, n, batch):
                out += generate_plain(
                    model, encode(model, prompts[start : start + batch]), max_new_tokens=args.tokens, seed=start
                )
            return out

        seconds, ids = median_time(plain, args.repeats)
        tokens = sum(len(r) for r in ids)
        res["preferences"].append(
            {"queries": n, "batch_size": batch, "s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        )
    for n in (1, 4, 16):
        texts = [a for a, _ in pairs] * 2
        seconds, _ = median_time(lambda: capture(model, texts[:n], batch_size=16), args.repeats)
        res["capture"].append({"texts": n, "s": seconds, "s_per_text": seconds / n})
    for key in ("generation", "preferences"):
        base = next(r for r in res[key] if r["queries"] == 1)
        for r in res[key]:
            field = "steered_s" if key == "generation" else "s"
            r["relative_to_1_query"] = r[field] / base[field]

    if not args.skip_eval:
        out = Path(tempfile.mkdtemp(prefix="alignez-bench-eval-")) / "eval"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "alignez_tl.cli",
                "eval",
                "--per-category",
                "1",
                "--quiet",
                "--out",
                str(out),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        res["eval"] = {
            "command": "alignez eval --per-category 1 --quiet",
            "wall_s": time.perf_counter() - t0,
            "returncode": proc.returncode,
        }
    res["machine"]["loadavg_end"] = os.getloadavg()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)
    for key in ("generation", "preferences", "capture"):
        for r in res[key]:
            print(key, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    if "eval" in res:
        print("eval", json.dumps(res["eval"]))


if __name__ == "__main__":
    main()
