"""`alignez eval`: the whole comparison protocol in one command.

1. the model writes its own preference pairs for the evaluation prompts;
2. AlignEZ's subspace and every baseline are fitted on that same PreferenceSet;
3. base answers and each method's answers are generated (greedy, batched);
4. a judge compares each method with the base, A/B order randomised with the seed;
5. side effects on neutral text (KL, perplexity) and on the answers (length,
   degenerate repetition).

Writes `results.json`, `results.md` (a table), `netwin.png` (net win with 95% intervals
per method), `comparisons.jsonl`, `generations.jsonl`, `pairs.jsonl` and
`subspace.safetensors` into the output folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from ._io import atomic_write, atomic_write_text
from .errors import EvalError
from .settings import METHODS, EvalSettings

JUDGES = "self, logprob:<model spec>, http, profanity, sentiment"


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise EvalError(f"--methods takes a comma-separated subset of {','.join(METHODS)}; got {text!r}")
    return list(dict.fromkeys(methods))


def check_judge(spec: str) -> str:
    kind = spec.split(":", 1)[0]
    if kind not in ("self", "logprob", "http", "profanity", "sentiment"):
        raise EvalError(f"--judge must be one of {JUDGES}; got {spec!r}")
    if kind == "logprob" and not spec.partition(":")[2]:
        raise EvalError("--judge logprob:<model> needs a model spec, e.g. logprob:qwen2.5-coder-0.5b-instruct")
    if kind == "http":  # the endpoint's configuration comes from the environment: check it now
        from .eval.http_judge import HTTPJudge

        try:
            HTTPJudge()
        except ValueError as exc:
            raise EvalError(f"--judge http: {exc}") from None
    return spec


def make_judge(spec: str, model: Any, verbose: bool) -> Any:
    from .eval.http_judge import HTTPJudge
    from .eval.logprob_judge import LogprobJudge
    from .eval.scorers import profanity_scorer, sentiment_scorer
    from .models import load_model

    kind, _, arg = spec.partition(":")
    if kind == "self":
        return LogprobJudge(model, name="self")
    if kind == "logprob":
        from .models import ModelSpecError

        try:
            judge_model = load_model(arg, verbose=verbose)
        except ModelSpecError as exc:
            raise EvalError(f"--judge {spec}: {exc}") from None
        return LogprobJudge(judge_model, name=arg)
    if kind == "http":
        return HTTPJudge()
    if kind == "profanity":
        return profanity_scorer()
    return sentiment_scorer()


def build_methods(
    settings: EvalSettings, model: Any, prefs: Any, sub: Any, queries: list[str]
) -> tuple[dict[str, Any], int]:
    """The steerers to compare, all fitted on the same PreferenceSet, and the baselines' layer."""
    from .baselines import DiffMeanSteerer, ITISteerer, PCASteerer, PromptSteerer
    from .steering import Steerer

    alignez = Steerer.from_settings(sub, settings.steer)
    layer = settings.layer
    if layer is None:  # the layer AlignEZ edits most often on these prompts
        [selections] = alignez.select(model, queries)
        counts = Counter(layer for sel in selections for layer in sel.layers)
        middle = sub.layer_indices[len(sub.layer_indices) // 2]
        layer = min(counts, key=lambda layer: (-counts[layer], layer)) if counts else middle
    out: dict[str, Any] = {}
    for name in settings.methods:
        if name == "alignez":
            out[name] = alignez
        elif name == "diffmean":
            out[name] = DiffMeanSteerer.fit(model, prefs, layer=layer, coef=settings.coef, verbose=False)
        elif name == "pca":
            out[name] = PCASteerer.fit(model, prefs, layer=layer, coef=settings.coef, coef_scale="rms", verbose=False)
        elif name == "iti":
            out[name] = ITISteerer.fit(
                model, prefs, top_k=settings.iti_top_k, alpha=settings.iti_alpha, seed=settings.seed
            )
        else:
            out[name] = PromptSteerer.fit(model, prefs)
    return out, layer


def plot_netwin(results: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    names = list(results)
    net = [results[n]["summary"]["overall"]["net_win"] for n in names]
    lo_hi = [results[n]["summary"]["overall"]["ci"]["net_win"] or [v, v] for n, v in zip(names, net)]
    err = [[v - lo for v, (lo, _) in zip(net, lo_hi)], [hi - v for v, (_, hi) in zip(net, lo_hi)]]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    colours = ["#2e7d32" if v > 0 else "#c62828" if v < 0 else "#757575" for v in net]
    ax.bar(names, net, yerr=err, capsize=6, color=colours)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("net win vs base (W − L, points)")
    ax.set_title("net win with 95% bootstrap intervals")
    ax.set_ylim(-105, 105)
    fig.tight_layout()
    return fig


def markdown_table(results: dict[str, Any], side: dict[str, Any]) -> str:
    lines = [
        "| method | win % | lose % | tie % | net win [95% CI] | wrong-way % | KL/token | ppl ratio | length change "
        "| became degenerate % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        o = res["summary"]["overall"]
        ci = o["ci"]["net_win"]
        ci_text = f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "n/a"
        s = side.get(name, {})
        g = s.get("generation", s)  # activation methods nest the answer statistics
        fmt = lambda v, f="{:.3g}": "n/a" if v is None else f.format(v)  # noqa: E731
        lines.append(
            f"| {name} | {o['win']:.1f} | {o['lose']:.1f} | {o['tie']:.1f} | {o['net_win']:.1f} {ci_text} | "
            f"{o['wrong_way']:.1f} | {fmt(s.get('kl'))} | {fmt(s.get('ppl_ratio'))} | "
            f"{fmt(g.get('length_change'))} | {fmt(g.get('became_degenerate'), '{:.1f}')} |"
        )
    return "\n".join(lines) + "\n"


GENERATIONS_FORMAT = "alignez-eval-generations"


def _stream_generations(
    settings: EvalSettings,
    model: Any,
    path: Path,
    methods: dict[str, Any],
    queries: list[str],
    categories: list[str],
    resume: bool,
    verbose: bool,
) -> list[dict]:
    """generations.jsonl, one row per prompt, written (and kept on a resume) per batch.

    Batch b of `batch_size` prompts is generated with seed `seed + b`, as one `generate`
    call over all prompts seeds its b-th batch, so where a run starts does not change a row.
    """
    from tqdm.auto import tqdm

    from ._stream import RowWriter, compare_headers, dump_line, read_existing, resumed_rows
    from .models import model_signature

    recorded = settings.to_dict()
    for name in ("judge", "n_boot"):  # they do not change an answer: a resume may change them
        recorded.pop(name)
    recorded["prefs"].pop("max_prompt_tokens")
    header = {
        "type": "header",
        "format": GENERATIONS_FORMAT,
        "version": 1,
        "model": model_signature(model)["model_id"],
        "objective": settings.objective,
        "pairs_sha256": hashlib.sha256((path.parent / "pairs.jsonl").read_bytes()).hexdigest(),
        "settings": recorded,
    }
    existing = read_existing(path) if resume else None
    rows: list[dict] = []
    if existing is not None:
        compare_headers(existing.header, header, path)
        rows = resumed_rows(path, existing.rows, queries, settings.prefs.batch_size)
    bs, seed = settings.prefs.batch_size, settings.seed
    first = settings.methods[0]
    gen = dict(max_new_tokens=settings.max_new_tokens, batch_size=bs, verbose=False)
    with RowWriter(path, dump_line(header), existing.end_of(len(rows)) if existing else None) as writer:
        with tqdm(total=len(queries), initial=len(rows), unit="row", desc="rows", disable=not verbose) as bar:
            for start in range(len(rows), len(queries), bs):
                chunk = queries[start : start + bs]
                b_seed = seed + start // bs
                base = methods[first].generate(model, chunk, steer=False, seed=b_seed, **gen)
                answers = {name: m.generate(model, chunk, seed=b_seed, **gen) for name, m in methods.items()}
                new = [
                    {"query": q, "category": c, "base": base[i], **{n: answers[n][i] for n in methods}}
                    for i, (q, c) in enumerate(zip(chunk, categories[start : start + bs]))
                ]
                writer.write(new)
                rows = rows + new
                bar.update(len(new))
    return rows


def run_eval(
    settings: EvalSettings,
    model: Any,
    out: Path,
    prompts: list[dict],
    say: Callable[..., None] = lambda *parts: None,
    *,
    verbose: bool = False,
    prompts_file: Optional[str] = None,
    pairs_file: Optional[str] = None,
    resume: bool = False,
) -> Path:
    """Steps 1–5 of the protocol on a loaded `model`; returns the path of results.json.

    `pairs_file` (a labelled JSONL, `PreferenceSet.from_labelled`, or a saved
    PreferenceSet) replaces step 1: every method is fitted on those pairs instead of
    self-generated ones.

    `pairs.jsonl` (self-generated pairs) and `generations.jsonl` are streamed: a header
    line, then whole rows per batch, so an interrupted run keeps every completed row.
    `resume=True` continues them in `out` (a file written with another model, objective
    or settings is refused, naming the field) and gives the files of one uninterrupted
    run; the subspace is fitted again (it is deterministic) and the judging, side
    effects and result files follow as usual.
    """
    from .eval.effects import generation_stats, side_effects
    from .eval.judges import pairwise_compare
    from .eval.records import save_comparisons
    from .eval.stats import per_prompt, summarize
    from .preferences import PreferenceFileError, generate_preferences, read_pairs
    from .prompts import NEUTRAL_TEXTS
    from .subspace import fit_subspace

    t0 = time.perf_counter()
    n_layers = int(model.cfg.n_layers)
    if settings.layer is not None and settings.layer >= n_layers:
        raise EvalError(f"--layer {settings.layer} is out of range: the model has layers 0..{n_layers - 1}")
    from .generation import check_prompt_tokens
    from .models import render

    queries = [p["query"] for p in prompts]
    categories = [p["category"] for p in prompts]
    check_prompt_tokens(model, [render(model, q) for q in queries], settings.prefs.max_prompt_tokens)
    judge = make_judge(settings.judge, model, verbose)
    batch_size, seed = settings.prefs.batch_size, settings.seed
    if pairs_file:
        try:
            prefs = read_pairs(pairs_file, objective=settings.objective)
        except PreferenceFileError as exc:
            raise EvalError(str(exc)) from None
        say(f"[1/5] {len(prefs)} pairs from {pairs_file}")
        prefs.save(out / "pairs.jsonl")
    else:
        say(f"[1/5] self-generating {settings.objective} preference pairs for {len(queries)} prompts")
        prefs = generate_preferences(
            model, queries, **settings.prefs.to_dict(), verbose=verbose, out=out / "pairs.jsonl", resume=resume
        )
    say("[2/5] fitting AlignEZ and the baselines on the same pairs")
    sub = fit_subspace(model, prefs, **settings.fit.to_dict(), verbose=verbose)
    sub.save(out / "subspace.safetensors")
    methods, baseline_layer = build_methods(settings, model, prefs, sub, queries)
    say("[3/5] generating base and steered answers")
    path = out / "generations.jsonl"
    rows = _stream_generations(settings, model, path, methods, queries, categories, resume, verbose)
    base = [r["base"] for r in rows]
    answers = {name: [r[name] for r in rows] for name in methods}
    say(f"[4/5] judging with {settings.judge}")
    results: dict[str, Any] = {}
    all_comparisons = []
    for name in methods:
        comps = pairwise_compare(judge, queries, base, answers[name], seed=seed, objective=settings.objective)
        for c in comps:
            c.detail = {**(c.detail or {}), "method": name}
        all_comparisons += comps
        results[name] = {
            "summary": summarize(comps, by=categories, seed=seed, n_boot=settings.n_boot),
            "per_prompt": per_prompt(comps),
        }
    save_comparisons(out / "comparisons.jsonl", all_comparisons)
    say("[5/5] side effects on neutral text and on the answers")
    side: dict[str, Any] = {}
    for name, m in methods.items():
        if name == "prompt":  # no activation edit: only the answers can change
            side[name] = generation_stats(base, answers[name], tokenizer=model.tokenizer)
        else:
            side[name] = side_effects(
                model, m, NEUTRAL_TEXTS, base_answers=base, steered_answers=answers[name], batch_size=batch_size
            )
    fig = plot_netwin(results)
    atomic_write(out / "netwin.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    atomic_write_text(
        out / "results.md",
        f"# alignez eval: {settings.objective}, judge {settings.judge}\n\n"
        f"{len(queries)} prompts, model {settings.model}, seed {seed}.\n\n" + markdown_table(results, side),
    )
    payload = {
        "settings": settings.to_dict(),
        "prompts_file": prompts_file,
        "pairs_file": pairs_file,
        "queries": queries,
        "categories": categories,
        "methods": list(methods),
        "baseline_layer": baseline_layer,
        "results": results,
        "side_effects": side,
        "ranks": {str(k): v for k, v in sub.ranks().items()},
        "pairs": prefs.summary(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "files": [
            "results.json",
            "results.md",
            "netwin.png",
            "comparisons.jsonl",
            "generations.jsonl",
            "pairs.jsonl",
            "subspace.safetensors",
        ],
    }
    return atomic_write_text(
        out / "results.json", json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n"
    )
