"""The `alignez` command: demo, prefs, fit, generate, analyze, eval.

Every subcommand takes `--model`, `--seed`, `--out` and `--quiet`, checks its inputs and
its output location before any model work starts, and writes each file atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ._io import atomic_write_jsonl, atomic_write_text, check_writable_folder, output_lock, staged_folder
from .errors import AlignezError, CLIError
from .settings import (
    EDITS,
    FILTERS,
    MODES,
    POSITIONS,
    SEED_LIMIT,
    SITE_NAMES,
    EvalSettings,
    FitSettings,
    PreferenceSettings,
    SteerSettings,
    default_alpha,
)
from .versions import package_version

DEMO_QUERIES = [
    "How can I get better at managing my time?",
    "Explain why the sky is blue.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato pasta sauce?",
]


# --------------------------------------------------------------------------- helpers


def _int_type(low: int, what: str, high: Optional[int] = None):
    """An argparse type: an int in [`low`, `high`) (argparse prints the message and exits with 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what
    return parse


def _float_type(what: str, ok=lambda v: True):
    """An argparse type: a finite float for which `ok(value)` holds."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


_POSITIVE = _int_type(1, "a positive integer")
_SEED = _int_type(0, f"an integer in 0..{SEED_LIMIT - 1}", SEED_LIMIT)
_COUNT = _int_type(0, "an integer >= 0")
_FINITE = _float_type("a finite number")
_POSITIVE_FLOAT = _float_type("a positive number", lambda v: v > 0)
_FRACTION = _float_type("a number in (0, 1]", lambda v: 0 < v <= 1)
_TAU = _float_type("a number in (-1, 1]", lambda v: -1 < v <= 1)


def _say(args: argparse.Namespace, *parts: Any) -> None:
    if not args.quiet:
        print(*parts, flush=True)


def _read_queries(args: argparse.Namespace) -> list[str]:
    """Queries from repeated --query and/or --queries FILE (plain lines or JSONL)."""
    from .prompts import PromptFileError, load_prompts

    queries = list(args.query or [])
    for query in queries:
        if not query.strip():
            raise CLIError("--query is empty or only whitespace; give the question to ask")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 arrive as lone surrogates
            raise CLIError(f"--query {query!r} is not valid UTF-8; pass the text in UTF-8") from None
    if args.queries:
        try:
            queries += [p["query"] for p in load_prompts(args.queries)]
        except PromptFileError as exc:
            if "holds no prompts" not in str(exc):
                raise CLIError(str(exc)) from None
    if not queries:
        raise CLIError("no queries: pass --query TEXT (repeatable) or --queries FILE")
    return queries


def _check_resume(args: argparse.Namespace) -> bool:
    """`--resume` and `--force` contradict each other: refused together."""
    resume = bool(getattr(args, "resume", False))
    if resume and args.force:
        raise CLIError(
            "--resume and --force contradict each other: --resume continues the output an interrupted "
            "run left, --force starts it over; pass one of them"
        )
    return resume


def _check_out_file(path: str, force: bool, resume: bool = False) -> Path:
    if path.endswith(("/", os.sep)):
        raise CLIError(f"--out {path} ends with a slash, which names a folder; give a file path inside it")
    out = Path(path)
    if out.exists() and not force and not resume:
        raise CLIError(f"{out} exists; pass --force to overwrite it (or --resume to continue an interrupted run)")
    if out.is_dir():
        raise CLIError(f"{out} is a folder; give a file path")
    try:
        check_writable_folder(out.parent if str(out.parent) else ".")
    except OSError as exc:
        raise CLIError(str(exc)) from None
    return out


def _out_dir(path: Optional[str], force: bool, prefix: str, resume: bool = False) -> Path:
    """The run's output folder, checked (nothing is created until `staged_folder` runs)."""
    if resume and not path:
        raise CLIError("--resume needs --out: the folder of the run to continue")
    out = Path(path) if path else Path(f"alignez-out/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force and not resume:
        raise CLIError(f"--out {out} is not empty; pass --force to write into it")
    try:
        check_writable_folder(out)
    except OSError as exc:
        raise CLIError(f"cannot use --out {out}: {exc}") from None
    return out


def _load(args: argparse.Namespace) -> Any:
    import torch

    from .models import ModelSpecError, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return load_model(args.model, verbose=not args.quiet)
    except ModelSpecError as exc:
        raise CLIError(str(exc)) from None


def _parse_layers(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CLIError(f"--layers takes comma-separated integers, got {text!r}") from None
    if not layers or min(layers) < 0:
        raise CLIError(f"--layers takes comma-separated layer indices >= 0, got {text!r}")
    twice = sorted({v for v in layers if layers.count(v) > 1})
    if twice:
        raise CLIError(f"--layers lists layer {twice[0]} more than once ({text!r}); give each layer once")
    return tuple(layers)


def _steer_settings_of(args: argparse.Namespace) -> Any:
    """The `SteerSettings` of the steering options, checked before any model work."""
    from .settings import SteerSettings

    try:
        return SteerSettings(
            edit=args.edit,
            alpha=args.alpha,
            scale=_scale(args.scale),
            direction_filter=args.filter,
            top_n=args.top_n,
            layers=_parse_layers(args.layers),
            positions=args.positions,
        )
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _steerer(args: argparse.Namespace, sub: Any) -> Any:
    from .steering import Steerer

    try:
        return Steerer.from_settings(sub, _steer_settings_of(args))
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _pref_settings_of(args: argparse.Namespace, **fixed: Any) -> Any:
    """The `PreferenceSettings` of the generation options (`fixed` overrides)."""
    from .objectives import get_objective
    from .settings import PreferenceSettings

    try:
        get_objective(args.objective)
        values = dict(
            objective=args.objective,
            n_characteristics=args.n_characteristics,
            elicit_tokens=args.elicit_tokens,
            response_tokens=args.response_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            max_prompt_tokens=getattr(args, "max_prompt_tokens", PreferenceSettings.max_prompt_tokens),
        )
        return PreferenceSettings(**{**values, **fixed})
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _scale(text: str) -> Any:
    if text in ("fitted", "paper"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CLIError(f"--scale takes fitted, paper or a positive number, got {text!r}") from None


def _side_by_side(rows: Sequence[dict], width: int = 100) -> str:
    out = []
    for row in rows:
        out.append("=" * width)
        out.append(f"Q: {row['query']}")
        out.append(f"   edited layers: {row['layers'] or 'none'}")
        for label in ("base", "steered"):
            wrapped = textwrap.fill(row[label] or "(empty)", width=width - 12, subsequent_indent=" " * 11)
            out.append(f"  {label:>7}: {wrapped}")
    out.append("=" * width)
    return "\n".join(out)


CLI_EDIT_RATIO_LIMIT = 1000.0  # see hooks.refuse_edit_ratio and docs/steering.md


def _generate_rows(
    args, model, steerer, queries, *, done: Sequence[dict] = (), write: Optional[Callable[[list[dict]], None]] = None
) -> list[dict]:
    """Base and steered answers, one batch of `--batch-size` queries at a time.

    Batch b is generated with seed `--seed + b`, as one `generate` call over all queries
    seeds its b-th batch, so the rows do not depend on where a run starts: `done` (the
    rows of a resumed file, whole batches) is kept and the next batch follows. `write`
    receives each batch's rows as soon as they are done. Progress: rows done / total,
    with an ETA (tqdm), unless --quiet.
    """
    from tqdm.auto import tqdm

    from .hooks import refuse_edit_ratio

    _check_prompts(args, model, queries)
    bs = args.batch_size
    rows = list(done)
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=bs, verbose=False)
    with tqdm(total=len(queries), initial=len(rows), unit="row", desc="rows", disable=args.quiet) as bar:
        for start in range(len(rows), len(queries), bs):
            chunk = queries[start : start + bs]
            seed = args.seed + start // bs
            base = steerer.generate(model, chunk, steer=False, seed=seed, **gen)
            # an edit over 1000 times the activation's norm replaces it: refused (exit 2) at the
            # first edited forward pass instead of writing noise (or empty answers) with exit 0
            with refuse_edit_ratio(CLI_EDIT_RATIO_LIMIT):
                steered = steerer.generate(model, chunk, seed=seed, **gen)
            selections = steerer.select(model, chunk)
            new = []
            for i, q in enumerate(chunk):
                per_objective = [sel[i] for sel in selections]
                new.append(
                    {
                        "query": q,
                        "base": base[i],
                        "steered": steered[i],
                        "changed": base[i] != steered[i],
                        "layers": sorted({layer for sel in per_objective for layer in sel.layers}),
                        "selection": [sel.to_dict() for sel in per_objective],
                    }
                )
            if write is not None:
                write(new)
            rows += new
            bar.update(len(new))
    return rows


def _check_prompts(args: argparse.Namespace, model: Any, queries: Sequence[str]) -> None:
    """--max-prompt-tokens: refuse a query whose rendered prompt is longer, before any generation."""
    from .generation import check_prompt_tokens
    from .models import render

    check_prompt_tokens(model, [render(model, q) for q in queries], getattr(args, "max_prompt_tokens", None))


def _steer_settings(args: argparse.Namespace, steerer: Any) -> dict[str, Any]:
    """What a result file records of the steering: the steerer's settings plus decoding."""
    return {
        **steerer.settings.to_dict(),
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "seed": args.seed,
    }


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    pref_settings = _pref_settings_of(args, do_sample=True)
    steer_settings = _steer_settings_of(args)
    final = _out_dir(args.out, args.force, "demo")
    queries = DEMO_QUERIES[: args.n_queries]
    with staged_folder(final) as out:
        summary, rows = _demo(args, out, final, queries, pref_settings, steer_settings)
    if not args.no_report:
        print(f"report: {final / 'report.html'}")
    print(f"{summary['changed']}/{len(rows)} answers changed; wrote {final}/ ({', '.join(summary['files'])})")
    return 0


def _demo(args, out: Path, final: Path, queries: list[str], pref_settings: Any, steer_settings: Any) -> tuple:
    """The demo's five steps, writing into `out` (the staged `final`)."""
    from .preferences import generate_preferences
    from .steering import Steerer
    from .subspace import fit_subspace

    t0 = time.perf_counter()
    model = _load(args)
    _say(args, f"[1/5] self-generating {args.objective} preference pairs for {len(queries)} queries")
    prefs = generate_preferences(model, queries, **pref_settings.to_dict(), verbose=not args.quiet)
    prefs.save(out / "pairs.jsonl")
    _say(args, f"      {len(prefs)} pairs -> {final / 'pairs.jsonl'}")
    _say(args, "[2/5] fitting the alignment subspace at every layer (resid_post)")
    sub = fit_subspace(model, prefs, batch_size=args.batch_size, verbose=not args.quiet)
    sub.save(out / "subspace.safetensors")
    _say(args, textwrap.indent(sub.summary(), "      "))
    _say(args, "[3/5] generating base and steered answers (greedy)")
    try:
        steerer = Steerer.from_settings(sub, steer_settings)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    rows = _generate_rows(args, model, steerer, queries)
    atomic_write_jsonl(out / "generations.jsonl", rows)
    _say(args, "[4/5] base vs steered")
    _say(args, _side_by_side(rows))
    summary = {
        "model": args.model,
        "objective": args.objective,
        "queries": queries,
        "pairs": len(prefs),
        "ranks": {str(k): v for k, v in sub.ranks().items()},
        "steering": _steer_settings(args, steerer),
        "changed": sum(r["changed"] for r in rows),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "files": ["pairs.jsonl", "subspace.safetensors", "generations.jsonl", "summary.json"],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if not args.no_report:
        _say(args, "[5/5] analyses and the HTML report")
        _analyze(args, model, sub, prefs, queries, steerer, rows, out)
        summary["files"] += ["layer_signal.json", "lens.json", "ablation.json", "attribution.json", "report.html"]
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary, rows


def _analyze(args, model, sub, prefs, prompts, steerer, rows, out: Path) -> Path:
    """Run the analyses, write their JSON and the HTML report into `out`."""
    from analyses.ablation import ablate_components
    from analyses.attribution import attribute_steering
    from analyses.layer_signal import layer_signal
    from analyses.report import Report, write_report
    from analyses.subspace_lens import subspace_lens

    verbose = not args.quiet
    signal = layer_signal(model, sub, prefs, queries=prompts, seed=args.seed, verbose=verbose)
    atomic_write_text(out / "layer_signal.json", _json(signal.to_dict()))
    lens = subspace_lens(model, sub, prefs, seed=args.seed, verbose=verbose)
    atomic_write_text(out / "lens.json", _json(lens.to_dict()))
    ablation = ablate_components(
        model,
        steerer,
        prompts,
        pairs=prefs,
        max_components=args.max_components,
        greedy_tokens=args.ablation_tokens,
        verbose=verbose,
    )
    atomic_write_text(out / "ablation.json", _json(ablation.to_dict()))
    attributions = [
        attribute_steering(model, steerer, q, max_new_tokens=args.attribution_tokens)
        for q in prompts[: args.n_attributions]
    ]
    atomic_write_text(out / "attribution.json", _json([a.to_dict() for a in attributions]))
    report = Report(
        subspace=sub,
        layer_signal=signal,
        lens=lens,
        ablation=ablation,
        attributions=attributions,
        answers=rows,
        title=f"alignez-tl report: {sub.objective_name}",
        meta={"command": " ".join(sys.argv), "steering": _steer_settings(args, steerer)},
    )
    return write_report(out / "report.html", report)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _check_prefs_match(path: Any, prefs: Any, sub: Any) -> None:
    """Refuse a preference set the subspace was not fitted on (the report would analyse the
    wrong pairs under the subspace's title); warn when the subspace predates the pair hash."""
    fitted = sub.objective
    theirs = prefs.objective.to_dict()
    for field_name in ("name", "mode"):
        if fitted.get(field_name) is not None and fitted.get(field_name) != theirs.get(field_name):
            raise CLIError(
                f"--prefs {path} holds pairs for objective {theirs.get('name')!r} ({theirs.get('mode')}), but the "
                f"subspace was fitted for {fitted.get('name')!r} ({fitted.get('mode')}); pass the preference file "
                "the subspace was fitted on"
            )
    recorded = sub.settings.get("pairs_hash")
    if recorded is None:
        print(
            f"alignez analyze: warning: the subspace records no pair hash (fitted before alignez-tl recorded "
            f"it, or not from a preference file), so whether --prefs {path} is the set it was fitted on "
            "cannot be checked",
            file=sys.stderr,
        )
    elif recorded != prefs.pair_hash():
        raise CLIError(
            f"--prefs {path} is not the preference set the subspace was fitted on (pair hash "
            f"{prefs.pair_hash()[:19]}... vs {str(recorded)[:19]}... recorded at fit time); pass the file "
            "given to `alignez fit`"
        )


def cmd_analyze(args: argparse.Namespace) -> int:
    from .preferences import PreferenceSet
    from .subspace import AlignmentSubspace, SubspaceFileError, SubspaceMismatchError

    args.query = None
    args.queries = args.prompts
    prompts = _read_queries(args)
    try:
        sub = AlignmentSubspace.load(args.subspace)
        prefs = PreferenceSet.load(args.prefs)
    except (SubspaceFileError, ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    _check_prefs_match(args.prefs, prefs, sub)
    if len(prefs) < 4:  # the layer signal holds pairs out: checked here, before the model loads
        raise CLIError(
            f"--prefs {args.prefs} holds {len(prefs)} pair(s); the analyses need at least 4 (2 to fit on and 1 "
            "held out, per split): generate preferences for more queries"
        )
    steerer = _steerer(args, sub)
    final = _out_dir(args.out, args.force, "analyze")
    model = _load(args)
    try:
        sub.check_model(model)
    except SubspaceMismatchError as exc:
        raise CLIError(str(exc)) from None
    with staged_folder(final) as out:
        rows = _generate_rows(args, model, steerer, prompts)
        atomic_write_jsonl(out / "generations.jsonl", rows)
        _analyze(args, model, sub, prefs, prompts, steerer, rows, out)
    print(f"report: {final / 'report.html'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.compose:
        return _cmd_compose(args)
    if args.sweep:
        return _cmd_sweep(args)
    from .eval_cli import EvalError, check_judge, parse_methods, run_eval
    from .objectives import get_objective
    from .prompts import PromptFileError, builtin_prompts, load_prompts
    from .settings import DEFAULT_METHODS

    for flag in ("quick", "n_prompts", "n_fit", "kl_targets", "rank", "etas", "elicit_prefill"):
        if getattr(args, flag) not in (None, False):
            raise CLIError(f"--{flag.replace('_', '-')} applies to --sweep or --compose only")
    if args.per_category and args.prompts:
        raise CLIError("--per-category applies to the built-in prompts only")
    resume = _check_resume(args)
    try:
        settings = EvalSettings(
            model=args.model,
            methods=tuple(parse_methods(args.methods or ",".join(DEFAULT_METHODS))),  # type: ignore[arg-type]
            judge=check_judge(args.judge or "self"),
            layer=args.layer,
            coef=args.coef,
            max_new_tokens=args.max_new_tokens or EvalSettings.max_new_tokens,
            n_boot=args.n_boot,
            iti_top_k=args.iti_k,
            iti_alpha=args.iti_alpha,
            prefs=_pref_settings_of(args),
            fit=FitSettings(batch_size=args.batch_size),
            steer=SteerSettings(edit=args.edit, alpha=args.alpha, top_n=args.top_n).resolve(
                get_objective(args.objective).mode
            ),
        )
        prompts = load_prompts(args.prompts) if args.prompts else builtin_prompts(per_category=args.per_category)
        if args.pairs_file:
            from .preferences import read_pairs

            read_pairs(args.pairs_file, objective=args.objective)  # checked before the model is loaded
    except (EvalError, PromptFileError, TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    final = _out_dir(args.out, args.force, "eval", resume)
    if resume:
        for name in ("pairs.jsonl", "generations.jsonl"):
            _precheck_resume(final / name)
    model = _load(args)
    args.resume_hint = final
    try:
        with staged_folder(final) as out:
            run_eval(
                settings,
                model,
                out,
                prompts,
                lambda *parts: _say(args, *parts),
                verbose=not args.quiet,
                prompts_file=args.prompts,
                pairs_file=args.pairs_file,
                resume=resume,
            )
    except EvalError as exc:
        raise CLIError(str(exc)) from None
    _say(args, (final / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {final}/ (results.json, results.md, netwin.png, ...): {final / 'results.json'}")
    return 0


def _sweep_config(args: argparse.Namespace) -> Any:
    """The SweepConfig of `alignez eval --sweep`, checked before any model work."""
    from .efficacy import ACTIVATION_METHODS, SweepConfig
    from .prompts import PromptFileError, load_prompts

    quick = args.quick
    settings: dict[str, Any] = dict(
        task=args.sweep,
        seed=args.seed,
        batch_size=args.batch_size,
        n_characteristics=args.n_characteristics,
        top_n=args.top_n,
        n_boot=args.n_boot,
        elicit_tokens=args.elicit_tokens,
        response_tokens=args.response_tokens,
    )
    if quick:  # a smoke-sized sweep: every step runs, the numbers mean little
        settings.update(
            n_prompts=8,
            n_fit=4,
            kl_targets=(0.1,),
            n_characteristics=2,
            elicit_tokens=24,
            response_tokens=24,
            max_new_tokens=32 if args.sweep == "math" else 16,
            null_for=("alignez",),
            n_boot=500,
        )
    for name in ("n_prompts", "n_fit", "max_new_tokens"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    if args.kl_targets:
        try:
            settings["kl_targets"] = tuple(float(v) for v in args.kl_targets.split(","))
        except ValueError:
            raise CLIError(f"--kl-targets takes comma-separated numbers, got {args.kl_targets!r}") from None
    if args.methods:
        settings["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.rank == "null":
        settings["rank"] = "null"
    if args.elicit_prefill is not None:
        if args.pairs_file:
            raise CLIError("--elicit-prefill applies to self-generated pairs, not to --pairs-file")
        from .preferences import prefill_text

        settings["elicit_prefill"] = prefill_text(args.elicit_prefill)
    if args.judge:
        settings["judge"] = "self" if args.judge == "self" else args.judge
    if args.prompts:
        if args.sweep == "math":
            raise CLIError("--prompts does not apply to the math sweep: its problems are generated with exact answers")
        try:
            n = len(load_prompts(args.prompts))
        except PromptFileError as exc:
            raise CLIError(str(exc)) from None
        settings["prompts_file"] = args.prompts
        settings["n_prompts"] = min(settings.get("n_prompts", n), n)
    if args.pairs_file:
        from .efficacy import TASK_OBJECTIVE
        from .preferences import PreferenceFileError, read_pairs

        try:
            read_pairs(args.pairs_file, objective=TASK_OBJECTIVE[args.sweep])
        except (OSError, PreferenceFileError) as exc:
            raise CLIError(str(exc)) from None
        settings["pairs_file"] = args.pairs_file
    try:
        return SweepConfig(**settings)
    except ValueError as exc:
        raise CLIError(f"{exc} (activation methods: {', '.join(ACTIVATION_METHODS)}; and prompt)") from None


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .efficacy import run_sweep

    resume = _check_resume(args)
    config = _sweep_config(args)
    judge_spec = config.judge.partition(":")[2] if config.task == "helpful" and config.judge != "self" else None
    final = _out_dir(args.out, args.force, f"sweep-{config.task}", resume=resume)
    if resume and (final / "results.json").is_file() and not (final / "checkpoint").is_dir():
        raise CLIError(
            f"--resume: the sweep in {final} has finished (results.json, no checkpoint/): nothing to continue"
        )
    model = _load(args)
    args.resume_hint = f"{final}/checkpoint/"  # each finished step of the sweep, for --resume
    judge_model = None
    if judge_spec:
        from .models import ModelSpecError, load_model

        try:
            judge_model = load_model(judge_spec, verbose=not args.quiet)
        except ModelSpecError as exc:
            raise CLIError(f"--judge {config.judge}: {exc}") from None
    with staged_folder(final) as out:
        run_sweep(
            model,
            config,
            out,
            judge_model=judge_model,
            say=lambda *parts: _say(args, *parts),
            verbose=not args.quiet,
            resume=resume,
        )
    _say(args, (final / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {final}/ (results.json, results.md, frontier.png, generations.jsonl, pairs.jsonl)")
    return 0


def _cmd_compose(args: argparse.Namespace) -> int:
    """`alignez eval --compose a,b`: the two-objective trade-off (compose.run_compose)."""
    from .compose import DEFAULT_ETAS, check_compose, run_compose
    from .preferences import prefill_text

    if args.resume:
        raise CLIError("--resume does not apply to --compose (alignez eval and eval --sweep resume)")
    for flag in ("sweep", "kl_targets", "rank", "methods", "judge", "pairs_file", "prompts", "per_category"):
        if getattr(args, flag) not in (None, False):
            raise CLIError(f"--{flag.replace('_', '-')} does not apply to --compose")
    try:
        etas: Any = DEFAULT_ETAS if args.etas is None else [float(v) for v in args.etas.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--etas takes comma-separated numbers, got {args.etas!r}") from None
    if args.quick and args.etas is None:
        etas = (0.25, 0.5, 0.75)
    try:
        objectives, etas = check_compose(args.compose, etas)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    settings: dict[str, Any] = dict(
        seed=args.seed,
        batch_size=args.batch_size,
        n_characteristics=args.n_characteristics,
        elicit_tokens=args.elicit_tokens,
        response_tokens=args.response_tokens,
        n_boot=args.n_boot,
        alpha=args.alpha,
        edit=args.edit,
        top_n=args.top_n,
        elicit_prefill=prefill_text(args.elicit_prefill),
    )
    if args.quick:  # smoke-sized: every step runs, the numbers mean little
        settings.update(
            n_prompts=8, n_fit=4, n_characteristics=2, elicit_tokens=24, response_tokens=24, max_new_tokens=16
        )
        settings["n_boot"] = min(settings["n_boot"], 500)
    for name in ("n_prompts", "n_fit", "max_new_tokens"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    final = _out_dir(args.out, args.force, f"compose-{'-'.join(objectives)}")
    model = _load(args)
    with staged_folder(final) as out:
        run_compose(
            model, objectives, etas, out=out, say=lambda *parts: _say(args, *parts), verbose=not args.quiet, **settings
        )
    _say(args, (final / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {final}/ (results.json, results.md, tradeoff.png, generations.jsonl, pairs-*.jsonl)")
    return 0


def cmd_prefs(args: argparse.Namespace) -> int:
    from .preferences import generate_preferences, prefill_text

    queries = _read_queries(args)
    if args.greedy and args.n_responses > 1:
        raise CLIError("--n-responses above 1 needs sampling: greedy answers would all be the same; drop --greedy")
    settings = _pref_settings_of(
        args,
        n_responses=args.n_responses,
        elicit_prefill=prefill_text(args.elicit_prefill),
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    resume = _check_resume(args)
    out = _check_out_file(args.out, args.force, resume)
    if resume:
        _precheck_resume(out)
    model = _load(args)
    args.resume_hint = out
    prefs = generate_preferences(model, queries, **settings.to_dict(), verbose=not args.quiet, out=out, resume=resume)
    print(f"wrote {len(prefs)} pairs to {out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .preferences import PreferenceSet
    from .subspace import EmptySubspaceError, fit_subspace

    prefs_path = Path(args.prefs)
    if not prefs_path.is_file():
        raise CLIError(f"--prefs: no such file: {prefs_path}")
    try:
        prefs = PreferenceSet.load(prefs_path)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.rank_rule == "null" and args.n_null == 0:
        raise CLIError("--rank-rule null needs --n-null >= 1 (the number of random pos/neg swaps, e.g. 200)")
    try:
        # the sign-flip null is computed under both rules (cheap): with the variance rule it
        # only reports, per layer, how many directions beat it (--n-null 0 skips it)
        settings = FitSettings(
            site=args.site,
            layers=_parse_layers(args.layers),
            tau=args.tau,
            variance=args.variance,
            rank="null" if args.rank_rule == "null" else None,
            max_rank=args.max_rank,
            n_null=max(args.n_null, 1),
            null_seed=args.seed,
            null_test=args.n_null > 0,
            batch_size=args.batch_size,
        )
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    out = _check_out_file(args.out, args.force)
    model = _load(args)
    try:
        sub = fit_subspace(model, prefs, **settings.to_dict(), verbose=not args.quiet)
    except (EmptySubspaceError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    sub.save(out)
    _say(args, sub.summary())
    print(f"wrote the subspace to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ._stream import RowWriter, compare_headers, dump_line, resumed_rows
    from .models import model_signature
    from .subspace import AlignmentSubspace, SubspaceFileError, SubspaceMismatchError

    queries = _read_queries(args)
    resume = _check_resume(args)
    out = _check_out_file(args.out, args.force, resume)
    existing = _precheck_resume(out) if resume else None
    try:
        sub = AlignmentSubspace.load(args.subspace)
    except SubspaceFileError as exc:
        raise CLIError(str(exc)) from None
    steerer = _steerer(args, sub)
    model = _load(args)
    try:
        sub.check_model(model)
    except SubspaceMismatchError as exc:
        raise CLIError(str(exc)) from None
    _check_prompts(args, model, queries)
    header = {
        "type": "header",
        "format": GENERATIONS_FORMAT,
        "version": 1,
        "command": "generate",
        "model": model_signature(model)["model_id"],
        "objective": sub.objective_name,
        "subspace_sha256": hashlib.sha256(Path(args.subspace).read_bytes()).hexdigest(),
        "settings": {**_steer_settings(args, steerer), "batch_size": args.batch_size},
    }
    done: list[dict] = []
    if existing is not None:
        compare_headers(existing.header, header, out)
        done = resumed_rows(out, existing.rows, queries, args.batch_size)
    args.resume_hint = out
    with RowWriter(out, dump_line(header), existing.end_of(len(done)) if existing else None) as writer:
        rows = _generate_rows(args, model, steerer, queries, done=done, write=writer.write)
    _say(args, _side_by_side(rows))
    print(f"wrote {len(rows)} generations to {out}" + (f" ({len(done)} kept from before)" if done else ""))
    return 0


GENERATIONS_FORMAT = "alignez-generations"


def _precheck_resume(out: Path) -> Any:
    """The complete lines of the file `--resume` continues (None: missing, start fresh), read
    before the model loads; a file that is not a streamed output is refused here."""
    from ._stream import read_existing

    return read_existing(out)


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, EMBEDDED_MODELS

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"embedded key ({', '.join(EMBEDDED_MODELS)}), Hugging Face name or local "
        f"folder (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--seed", type=_SEED, default=0, help=f"seed for sampling and batching, 0..{SEED_LIMIT - 1} (default: 0)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables; print only the result line")
    p.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--batch-size",
        type=_POSITIVE,
        default=PreferenceSettings.batch_size,
        help=f"prompts per forward/generate call (default: {PreferenceSettings.batch_size})",
    )
    p.add_argument("--threads", type=_COUNT, default=0, help="torch CPU threads (default: torch's choice)")


def _long_run_options(p: argparse.ArgumentParser, resume: bool = True) -> None:
    """--max-prompt-tokens (every generating command) and --resume (the streamed ones)."""
    p.add_argument(
        "--max-prompt-tokens",
        type=_POSITIVE,
        default=PreferenceSettings.max_prompt_tokens,
        metavar="N",
        help="refuse, before any generation, a query whose prompt has more than N tokens "
        f"(default: {PreferenceSettings.max_prompt_tokens})",
    )
    if resume:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the output an interrupted run left (same command and settings): its complete "
            "rows are kept and the rest is generated; the result is the file one uninterrupted run writes. "
            "A missing output starts fresh; not with --force",
        )


def _gen_options(p: argparse.ArgumentParser, elicit: int, response: int) -> None:
    p.add_argument(
        "--objective", default="helpful", help="helpful, harmless, humor, creative or math (default: helpful)"
    )
    p.add_argument(
        "--n-characteristics",
        type=_POSITIVE,
        default=PreferenceSettings.n_characteristics,
        help="at most this many characteristics per query, one pair each (fewer when the model lists "
        f"fewer) (default: {PreferenceSettings.n_characteristics})",
    )
    p.add_argument(
        "--elicit-tokens", type=_POSITIVE, default=elicit, help=f"tokens per characteristics list (default: {elicit})"
    )
    p.add_argument(
        "--response-tokens", type=_POSITIVE, default=response, help=f"tokens per paired answer (default: {response})"
    )


_ALPHA_HELP = (
    "step size (default: per edit and mode, the same in every command: "
    + ", ".join(f"{edit} {mode} {default_alpha(edit, mode):+g}" for edit in EDITS for mode in MODES)
    + ")"
)


def _edit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--edit",
        default=SteerSettings.edit,
        choices=list(EDITS),
        help="oriented (default: never pushes away from the preferred side) or paper (the exact "
        "formula, for reproduction); see docs/method.md",
    )
    p.add_argument("--alpha", type=_FINITE, default=None, help=_ALPHA_HELP)


def _steer_options(p: argparse.ArgumentParser, max_new: int) -> None:
    _edit_options(p)
    p.add_argument("--scale", default=SteerSettings.scale, help="fitted (default), paper (s=1) or a number")
    p.add_argument(
        "--filter",
        default=SteerSettings.direction_filter,
        choices=list(FILTERS),
        help=f"per-query direction filter (default: {SteerSettings.direction_filter})",
    )
    p.add_argument(
        "--top-n",
        type=_POSITIVE,
        default=SteerSettings.top_n,
        help=f"layers edited per query (default: {SteerSettings.top_n})",
    )
    p.add_argument("--layers", default=None, help="fixed comma-separated layers instead of top-n")
    p.add_argument("--positions", default=SteerSettings.positions, choices=list(POSITIONS))
    p.add_argument(
        "--max-new-tokens", type=_POSITIVE, default=max_new, help=f"new tokens per answer (default: {max_new})"
    )


def _analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-components", type=_POSITIVE, default=3, help="directions studied by the ablation (default: 3)"
    )
    p.add_argument(
        "--ablation-tokens", type=_POSITIVE, default=8, help="greedy tokens per ablation variant (default: 8)"
    )
    p.add_argument("--n-attributions", type=_POSITIVE, default=2, help="prompts to attribute (default: 2)")
    p.add_argument("--attribution-tokens", type=_POSITIVE, default=24, help="tokens per attribution (default: 24)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignez",
        description="AlignEZ for TransformerLens: self-generated preferences -> alignment "
        "subspace -> steered generation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="the whole method on built-in queries, base vs steered side by side",
        description="Self-generates helpful/useless pairs for a few built-in queries, fits "
        "the subspace, and prints base vs steered answers. Writes pairs.jsonl, "
        "subspace.safetensors, generations.jsonl and summary.json to --out.",
    )
    _common(p)
    p.add_argument("--out", default=None, help="output folder (default: alignez-out/demo-<time>)")
    p.add_argument(
        "--n-queries",
        type=int,
        default=len(DEMO_QUERIES),
        choices=range(1, len(DEMO_QUERIES) + 1),
        metavar=f"1..{len(DEMO_QUERIES)}",
        help="how many built-in queries",
    )
    _gen_options(p, elicit=40, response=64)
    _steer_options(p, max_new=48)
    p.add_argument("--no-report", action="store_true", help="skip the analyses and the HTML report")
    _analysis_options(p)
    _long_run_options(p, resume=False)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "analyze",
        help="layer signal, ablation, attribution and one HTML report",
        description="Runs the analyses on a fitted subspace and its pairs and writes "
        "report.html (self-contained) plus the numbers as JSON to --out.",
    )
    _common(p)
    p.add_argument("--subspace", required=True, help="subspace file from `alignez fit`")
    p.add_argument("--prefs", required=True, help="the pairs JSONL the subspace was fitted on")
    p.add_argument("--prompts", required=True, help='prompts to steer: one per line, or JSONL with "query"')
    p.add_argument("--out", default=None, help="output folder (default: alignez-out/analyze-<time>)")
    _steer_options(p, max_new=48)
    _analysis_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "eval",
        help="compare AlignEZ with baselines under a judge, with side effects",
        description="Self-generates pairs for the prompts, fits AlignEZ and the baselines on "
        "them, generates base and steered answers, judges each method against the "
        "base (A/B order randomised), and measures side effects. Writes "
        "results.json, results.md and netwin.png to --out.",
    )
    _common(p)
    p.add_argument(
        "--prompts",
        default=None,
        help='JSONL with "query" and "category", or one prompt per line '
        "(default: the built-in set: advice, writing, math, red-teaming)",
    )
    p.add_argument(
        "--per-category", type=_POSITIVE, default=None, help="built-in prompts per category (default: all 6)"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated: alignez, diffmean, pca, prompt, iti (default: alignez, diffmean, pca, prompt); "
        "with --sweep also alignez-paper, alignez-null and the diagnostics alignez-layer (DiffMean's single "
        "layer) and alignez-theta1 (θ1 only) (default: alignez, alignez-paper, alignez-null, diffmean, pca, prompt)",
    )
    p.add_argument(
        "--pairs-file",
        default=None,
        help="fit every method on these pairs instead of self-generated ones: labelled JSONL with "
        "prompt/chosen/rejected (docs/preferences.md) or a saved PreferenceSet",
    )
    p.add_argument("--iti-k", type=_POSITIVE, default=8, help="iti: heads to shift (default: 8)")
    p.add_argument("--iti-alpha", type=_FINITE, default=3.0, help="iti: strength α (default: 3.0)")
    p.add_argument(
        "--judge",
        default=None,
        help="self (the steered model scores the verdict by log-probability), logprob:<model spec>, "
        "http (OpenAI-compatible endpoint from ALIGNEZ_JUDGE_BASE_URL/_MODEL/_API_KEY), "
        "profanity or sentiment (offline scorers) (default: self; for --sweep helpful: "
        "logprob:qwen2.5-coder-0.5b-instruct)",
    )
    p.add_argument("--out", default=None, help="output folder (default: alignez-out/eval-<time>)")
    p.add_argument(
        "--sweep",
        default=None,
        choices=["tone", "harmless", "math", "helpful"],
        help="efficacy sweep of one objective on held-out prompts: every activation method calibrated "
        "to target KLs on neutral text, with mirror and null controls (docs/evaluation.md)",
    )
    p.add_argument(
        "--compose",
        default=None,
        metavar="A,B",
        help="two objectives at once (tone, harmless, math): base, each alone, and eta*A + (1-eta)*B for "
        "each eta, every answer set scored by both offline scorers; writes tradeoff.png (docs/evaluation.md)",
    )
    p.add_argument(
        "--etas",
        default=None,
        help="--compose: comma-separated weights of A, strictly between 0 and 1 (default: 0.1,0.2,...,0.9)",
    )
    p.add_argument(
        "--elicit-prefill",
        nargs="?",
        const="list",
        default=None,
        metavar="TEXT",
        help="--sweep/--compose: start each elicitation reply with TEXT; the flag alone (or 'list') starts a "
        "numbered list of traits (preferences.LIST_PREFILL) (default: no prefill, the paper's prompt)",
    )
    p.add_argument(
        "--quick", action="store_true", help="--sweep or --compose at smoke-test size (8 prompts, one KL target)"
    )
    p.add_argument("--n-prompts", type=_POSITIVE, default=None, help="--sweep: evaluation prompts (default: 120)")
    p.add_argument(
        "--n-fit",
        type=_POSITIVE,
        default=None,
        help="--sweep: held-out prompts the pairs are generated from (default: 48)",
    )
    p.add_argument(
        "--kl-targets",
        default=None,
        help="--sweep: comma-separated neutral KLs per token to calibrate to (default: 0.03,0.1,0.3)",
    )
    p.add_argument(
        "--rank",
        default=None,
        choices=["variance", "null"],
        help="--sweep: the subspace's rank rule (default: variance, the paper's 90%% rule)",
    )
    _gen_options(p, elicit=40, response=64)
    _edit_options(p)
    p.add_argument(
        "--top-n",
        type=_POSITIVE,
        default=SteerSettings.top_n,
        help=f"AlignEZ layers per prompt (default: {SteerSettings.top_n})",
    )
    p.add_argument(
        "--layer",
        type=_COUNT,
        default=None,
        help="layer of the DiffMean and PCA baselines (default: the layer AlignEZ picks most often)",
    )
    p.add_argument(
        "--coef",
        type=_FINITE,
        default=EvalSettings.coef,
        help=f"DiffMean / PCA coefficient (default: {EvalSettings.coef})",
    )
    p.add_argument(
        "--max-new-tokens", type=_POSITIVE, default=None, help="new tokens per answer (default: 48; --sweep math: 96)"
    )
    p.add_argument(
        "--n-boot",
        type=_POSITIVE,
        default=EvalSettings.n_boot,
        help=f"bootstrap resamples (default: {EvalSettings.n_boot})",
    )
    _long_run_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "prefs",
        help="self-generate preference pairs to a JSONL file",
        description="The model describes good and bad answers to each query and writes both.",
    )
    _common(p)
    p.add_argument("--query", action="append", help="a query (repeatable)")
    p.add_argument("--queries", help='a file of queries: one per line, or JSONL with a "query" field')
    p.add_argument("--out", default="pairs.jsonl", help="output JSONL (default: pairs.jsonl)")
    _gen_options(p, elicit=PreferenceSettings.elicit_tokens, response=PreferenceSettings.response_tokens)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--temperature", type=_POSITIVE_FLOAT, default=PreferenceSettings.temperature)
    p.add_argument("--top-p", type=_FRACTION, default=PreferenceSettings.top_p)
    p.add_argument(
        "--n-responses",
        type=_POSITIVE,
        default=PreferenceSettings.n_responses,
        help="sampled answers (and so pairs) per characteristic (default: 1)",
    )
    p.add_argument(
        "--elicit-prefill",
        nargs="?",
        const="list",
        default="",
        metavar="TEXT",
        help="start each elicitation reply with TEXT; the flag alone (or 'list') starts a numbered "
        "list of traits (preferences.LIST_PREFILL), which stops chat models from "
        "answering the query instead (default: no prefill, the paper's prompt)",
    )
    _long_run_options(p)
    p.set_defaults(func=cmd_prefs)

    p = sub.add_parser(
        "fit",
        help="fit the alignment subspace from a pairs file",
        description="Captures last-token activations of every pair and fits the per-layer subspace.",
    )
    _common(p)
    p.add_argument("--prefs", required=True, help="pairs JSONL from `alignez prefs`")
    p.add_argument("--out", default="subspace.safetensors", help="output file (default: subspace.safetensors)")
    p.add_argument("--site", default=FitSettings.site, choices=list(SITE_NAMES))
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument(
        "--tau", type=_TAU, default=FitSettings.tau, help=f"pair filter on cos(pos, neg) (default: {FitSettings.tau})"
    )
    p.add_argument(
        "--variance",
        type=_FRACTION,
        default=FitSettings.variance,
        help=f"explained variance to keep (default: {FitSettings.variance})",
    )
    p.add_argument("--max-rank", type=_POSITIVE, default=None, help="cap on directions per layer")
    p.add_argument(
        "--rank-rule",
        default="variance",
        choices=["variance", "null"],
        help="variance: the smallest rank reaching --variance (the paper's, default); null: the "
        "leading directions whose mean pos-neg gap beats random pos/neg swaps",
    )
    p.add_argument(
        "--n-null",
        type=_COUNT,
        default=FitSettings.n_null,
        help="random pos/neg swaps of the null, seeded by --seed; the summary shows per layer "
        "how many directions beat it (default: 200; 0 skips it with --rank-rule variance)",
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "generate",
        help="base and steered answers with a fitted subspace",
        description="Greedy base and steered generation, one batched generate call per batch.",
    )
    _common(p)
    p.add_argument("--subspace", required=True, help="subspace file from `alignez fit`")
    p.add_argument("--query", action="append", help="a query (repeatable)")
    p.add_argument("--queries", help='a file of queries: one per line, or JSONL with a "query" field')
    p.add_argument("--out", default="generations.jsonl", help="output JSONL (default: generations.jsonl)")
    _steer_options(p, max_new=64)
    _long_run_options(p)
    p.set_defaults(func=cmd_generate)
    return parser


def _quiet_libraries() -> None:
    """--quiet: no progress bars from transformers or the hub (loading weights, downloads)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def _log_to_stdout(quiet: bool) -> None:
    """Show the library's progress messages (logging, INFO) as `[alignez] ...` lines unless --quiet."""
    import logging

    for name in ("alignez_tl", "analyses"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_alignez_cli", False)]:
            logger.removeHandler(handler)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[alignez] %(message)s"))
        handler._alignez_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _check_model_shape(args: argparse.Namespace) -> None:
    """Options the model's depth or context rules out, refused before it is loaded or converted."""
    from .models import ModelSpecError, model_shape

    if not hasattr(args, "model"):
        return
    if not str(args.model).strip():
        from .models import EMBEDDED_MODELS

        raise CLIError(
            f"--model is empty: give an embedded key ({', '.join(EMBEDDED_MODELS)}), a Hugging Face name "
            "or a local checkpoint folder"
        )
    try:
        shape = model_shape(args.model)
    except ModelSpecError as exc:
        raise CLIError(str(exc)) from None
    if shape is None:  # not readable offline: checked right after loading instead
        return
    n_ctx, n_layers = shape["n_ctx"], shape["n_layers"]
    for option in ("max_new_tokens", "elicit_tokens", "response_tokens"):
        value = getattr(args, option, None)
        if isinstance(value, int) and value >= n_ctx:
            raise CLIError(
                f"--{option.replace('_', '-')} {value} does not fit {args.model}'s context of {n_ctx} tokens "
                f"(the prompt needs at least one): use a value below {n_ctx}"
            )
    layers = list(_parse_layers(getattr(args, "layers", None)) or ())
    layer = getattr(args, "layer", None)
    named = [("--layers", v) for v in layers] + ([("--layer", layer)] if isinstance(layer, int) else [])
    for option, value in named:
        if not 0 <= value < n_layers:
            raise CLIError(f"{option} {value} is out of range: the model has layers 0..{n_layers - 1}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Any:
    """SIGTERM ends a command as Ctrl-C does (KeyboardInterrupt): every completed row is kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(args: argparse.Namespace) -> str:
    hint = getattr(args, "resume_hint", None)
    if hint is None:
        return f"alignez {args.command}: interrupted; files already written are complete"
    return (
        f"alignez {args.command}: interrupted; {hint} keeps every completed row: rerun the same command "
        "with --resume to continue"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    # An argument that was not valid UTF-8 arrives with lone surrogates; messages that quote
    # it must still print (Python's own stderr does this; a redirected or captured one may not).
    reconfigure = getattr(sys.stderr, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stdout(args.quiet)
    if args.quiet:
        _quiet_libraries()
    try:
        _check_model_shape(args)
        out = getattr(args, "out", None)
        try:
            lock = output_lock(out) if out else contextlib.nullcontext()
            with lock, _sigterm_interrupts():
                return int(args.func(args))
        except FileExistsError as exc:
            if "another alignez run" not in str(exc):
                raise
            raise CLIError(str(exc)) from None
    except AlignezError as exc:  # a refusal of the library or the command: one line, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"alignez {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"alignez {args.command}: internal error: this is a bug in alignez-tl {package_version()}; please "
            "report it with the command line and the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
