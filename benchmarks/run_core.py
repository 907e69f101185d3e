#!/usr/bin/env python
"""Core performance figures of alignez-tl, as ratios against fair baselines.

Run from the repository root (``make bench`` runs ``.venv/bin/python benchmarks/run_core.py``):

    python benchmarks/run_core.py                 # full run (~14 min at --repeats 5 on an idle 2-core CPU, + the demo)
    python benchmarks/run_core.py --quick         # smoke run: every code path, tiny sizes

The model is loaded once. Every comparison runs baseline (A) and candidate (B) in the
same process, interleaved (A B, then B A, ...). Each repeat gives one paired ratio
(adjacent runs share the machine's load); the headline is the median of those ratios
over `--repeats`, computed on process CPU time (torch runs on `--threads` threads and
the work is CPU-bound, so on an idle machine CPU time ~ wall time, while on a shared
machine it is not inflated by other jobs). Wall-time ratios, the ratio of the medians
and the ratio of the minima are reported too. What is measured:

1. steering      steered vs unsteered greedy generation (64 new tokens, batch 1 and 8),
                 through `Steerer.generate` (per-query layer selection included), and the
                 same generation loop with selections computed beforehand.
2. prefgen       `generate_preferences` (or `generate_plain`) throughput in new tokens/s
                 vs raw Hugging Face `generate` of the same weights, not wrapped by the
                 TransformerLens bridge: same batches, seeds and sampling settings.
3. capture       `capture_tokens` at all layers vs `run_with_cache`: time, and memory
                 (bytes of the returned tensors; peak-RSS delta in a fresh process each).
4. demo          wall time of `alignez demo --quiet` with a warm model cache.

Results go to a JSON file (written atomically) and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "core.json"
QUICK_OUT = ROOT / "benchmarks" / "results" / "core-quick.json"

# Benchmark the checkout this script lives in, whatever is installed (a stale editable
# install can otherwise resolve `alignez_tl` to an empty namespace package).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {
    "steering_full_path_b1": ("<=", 1.03),
    "steering_full_path_b8": ("<=", 1.03),
    "steering_generation_only_b1": ("<=", 1.05),
    "steering_generation_only_b8": ("<=", 1.05),
    "prefgen_throughput": (">=", 0.95),
    "capture_vs_plain_forward_time": ("<=", 1.05),
    "capture_vs_plain_forward_rss": ("<=", 1.1),
    "capture_speedup": (">=", 3.0),
    "capture_memory_rss": (">=", 10.0),
    "capture_memory_bytes": (">=", 10.0),
}

# Queries that ask for long answers, so greedy decoding rarely stops before 64 tokens.
GEN_QUERIES = [
    "Write a long, detailed story about a dragon who learns to bake bread.",
    "Explain in detail, step by step, how photosynthesis works in plants.",
    "Describe the history of the Roman Empire in as much detail as you can.",
    "Write a detailed guide to planning a two-week trip to Japan.",
    "Explain at length how a computer compiles and runs a program.",
    "Write a long essay about why sleep matters for health.",
    "Describe in detail how to grow tomatoes in a small garden.",
    "Write a detailed explanation of how the internet routes a message.",
]

FIT_PAIRS = [
    (
        "How do I learn to cook?",
        "Start with simple recipes such as eggs, rice and soups, learn basic knife skills, and cook a few times a week.",
        "Just order takeout, cooking is not worth it.",
    ),
    (
        "How can I sleep better?",
        "Keep a regular schedule, avoid screens an hour before bed, and keep your bedroom dark and cool.",
        "Sleep is overrated, stay up late.",
    ),
    (
        "What is a good way to save money?",
        "Track your spending, set a monthly budget, and move a fixed amount to savings on payday.",
        "Spend it all, money comes and goes.",
    ),
    (
        "How do I start running?",
        "Begin with short run-walk intervals three times a week and increase the distance slowly to avoid injury.",
        "Run a marathon tomorrow, no training needed.",
    ),
    (
        "How can I learn a new language?",
        "Practise a little every day, use spaced repetition for vocabulary, and talk with native speakers.",
        "Languages cannot be learned after childhood.",
    ),
    (
        "How do I write a good essay?",
        "Plan an outline, state a clear thesis, support each point with evidence, and revise your draft.",
        "Write whatever comes to mind and never revise.",
    ),
    (
        "How should I prepare for a job interview?",
        "Research the company, practise answers to common questions, and prepare questions of your own.",
        "Do not prepare, interviews are luck.",
    ),
    (
        "How do I keep houseplants alive?",
        "Check the light each plant needs, water when the top soil is dry, and use pots with drainage.",
        "Water them every hour and keep them in a closet.",
    ),
]

PREF_QUERIES = [
    "How do I learn to cook?",
    "Explain recursion to a child.",
    "How can I improve my sleep?",
    "What should I pack for a hiking trip?",
]


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratio_stats(a: list[float], b: list[float]) -> dict[str, Any]:
    """Ratios B/A of paired runs: their median (headline), the ratio of medians and of minima."""
    paired = [ratio(y, x) for x, y in zip(a, b)]
    return {
        "ratio": median(paired),
        "paired": paired,
        "of_medians": ratio(median(b), median(a)),
        "of_minima": ratio(min(b), min(a)) if a and b else None,
    }


def interleaved(repeats: int, a: Callable[[], dict], b: Callable[[], dict]) -> tuple[list[dict], list[dict]]:
    """Run A and B `repeats` times each, alternating the order (AB, BA, AB, ...)."""
    ra, rb = [], []
    for r in range(repeats):
        if r % 2 == 0:
            ra.append(a())
            rb.append(b())
        else:
            rb.append(b())
            ra.append(a())
    return ra, rb


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    out, wall, _ = timed2(fn)
    return out, wall


def timed2(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process, all its threads)."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def version(pkg: str) -> Optional[str]:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    cpu_model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer-lens") or version("transformer_lens"),
        "alignez_tl": version("alignez-tl") or version("alignez_tl"),
        "torch_threads": threads,
        "loadavg_start": loadavg(),
    }


def quiet():
    """Silence library warnings while timing (they are printed once per process anyway)."""
    ctx = contextlib.ExitStack()
    ctx.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return ctx


# --------------------------------------------------------------------------- 1. steering


def steering_backend(model: Any, requested: str) -> tuple[dict[str, Any], Any]:
    """Which generation engine Steerer.generate uses here, and the HF view it runs on (or None)."""
    import inspect

    import alignez_tl as ez

    has_backend = "backend" in inspect.signature(ez.Steerer.generate).parameters
    if not has_backend:
        return {"requested": requested, "used": "tl", "note": "Steerer.generate has no backend option"}, None
    view = None
    if requested in ("auto", "hf"):
        try:
            from alignez_tl.fastpath import unwrapped_hf_model

            view = unwrapped_hf_model(model)
        except ImportError:
            view = None
    used = "hf" if view is not None else "tl"
    return {
        "requested": requested,
        "used": used,
        "note": "hf = Hugging Face generate on the un-wrapped view of the bridge's weights, with "
        "the hooks as native PyTorch hooks; tl = TransformerLens generate under "
        "model.hooks",
    }, view


@contextlib.contextmanager
def min_new_tokens(hf: Any, n: Optional[int]):
    """Make a Hugging Face model's generate() produce at least n tokens (EOS masked until then)."""
    if hf is None or n is None:
        yield False
        return
    old = hf.generation_config.min_new_tokens
    hf.generation_config.min_new_tokens = n
    try:
        yield True
    finally:
        hf.generation_config.min_new_tokens = old


def bench_steering(model: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import torch

    import alignez_tl as ez
    from alignez_tl import steering as steering_mod

    try:  # the one generation module (older checkouts: the loop lived in steering.py)
        from alignez_tl import generation as gen_mod
    except ImportError:
        gen_mod = None
    from alignez_tl.models import stop_token_ids

    new = cfg["steer_tokens"]
    repeats = cfg["repeats"]
    log(f"steering: fitting a subspace from {len(FIT_PAIRS)} synthetic pairs")
    pairs = [(ez.render(model, q, p), ez.render(model, q, n)) for q, p, n in FIT_PAIRS]
    (sub, fit_s) = timed(lambda: ez.fit_subspace(model, pairs, tau=1.0, verbose=False))
    steerer = ez.Steerer(sub, top_n=5)
    stops = stop_token_ids(model)
    backend, view = steering_backend(model, cfg["backend"])
    bkw = {"backend": cfg["backend"]} if "backend" in inspect.signature(ez.Steerer.generate).parameters else {}
    shared_loop = gen_mod.generate if gen_mod is not None else getattr(steering_mod, "generate_with_hooks", None)
    loop_name = "generation.generate" if gen_mod is not None else "steering.generate_with_hooks"
    out: dict[str, Any] = {
        "max_new_tokens": new,
        "decoding": "greedy",
        "backend": backend,
        "subspace": {
            "n_pairs": len(pairs),
            "fit_s": round(fit_s, 3),
            "tau": 1.0,
            "tau_note": "synthetic pairs' last tokens are too similar for the paper's 0.8; "
            "this benchmark measures cost, not steering quality",
            "ranks": {str(k): v for k, v in sub.ranks().items()},
        },
        "top_n": 5,
        "method": (
            "full_path: Steerer.generate(queries, steer=False) [A] vs steer=True [B]; the steered "
            "time includes per-query layer selection (read from the prefill on the fast path with "
            "the KV cache where generation.Prefill exists: one extra token's forward; else a capture "
            "forward over the prompts inside hooks()). generation_only: the same generation loop with hooks from "
            "steerer.hooks(model, selections=<select() computed beforehand, untimed>, prompt_len=P) "
            "[B] vs no hooks [A] (the shared loop, generation.generate or steering.generate_with_hooks, else "
            "model.generate(stop_at_eos=False) under model.hooks). Equal lengths: on the hf backend "
            "min_new_tokens=max_new_tokens is set on the model's generation_config, so every run "
            "makes exactly max_new_tokens steps; where lengths still differ, per-step time "
            "(wall / decoding steps) is the basis."
        ),
    }

    def steps_of(rows: list[list[int]]) -> int:
        # a row shorter than max_new_tokens stopped at a stop token (which was generated too)
        return max(min(len(r) + 1, new) for r in rows)

    def finish(ra: list[dict], rb: list[dict]) -> dict[str, Any]:
        res = summarize_pair(ra, rb, keys=("wall_s", "s_per_step", "cpu_s", "cpu_s_per_step"))
        res["equal_lengths"] = all(r["steps"] == new for r in ra + rb)
        wall, cpu = ("wall_s", "cpu_s") if res["equal_lengths"] else ("s_per_step", "cpu_s_per_step")
        res["ratio"] = res[f"ratio_{cpu}"]["ratio"]
        res["ratio_of_medians"] = res[f"ratio_{cpu}"]["of_medians"]
        res["ratio_of_minima"] = res[f"ratio_{cpu}"]["of_minima"]
        res["ratio_wall"] = res[f"ratio_{wall}"]["ratio"]
        res["ratio_wall_of_minima"] = res[f"ratio_{wall}"]["of_minima"]
        res["ratio_basis"] = (
            ("process CPU time" if res["equal_lengths"] else "process CPU time per decoding step")
            + (
                " (all runs made exactly max_new_tokens steps)"
                if res["equal_lengths"]
                else " (some runs stopped early at EOS)"
            )
            + "; ratio_wall: the same on wall time"
        )
        return res

    with min_new_tokens(view, new) as forced:
        out["min_new_tokens_forced"] = forced
        for bs in cfg["steer_batches"]:
            queries = GEN_QUERIES[:bs]
            texts = [ez.render(model, q) for q in queries]
            with quiet(), min_new_tokens(view, 2):  # warm-up both paths (lazy inits), untimed
                steerer.generate(model, queries, max_new_tokens=2, steer=False, batch_size=bs, **bkw)
                steerer.generate(model, queries, max_new_tokens=2, steer=True, batch_size=bs, **bkw)

            def full(steer: bool) -> dict:
                with quiet():
                    (ids, _), wall, cpu = timed2(
                        lambda: steerer.generate(
                            model, queries, max_new_tokens=new, steer=steer, batch_size=bs, return_tokens=True, **bkw
                        )
                    )
                steps = steps_of(ids)
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "steps": steps,
                    "row_tokens": [len(r) for r in ids],
                    "s_per_step": wall / steps,
                    "cpu_s_per_step": cpu / steps,
                }

            log(f"steering: full path, batch {bs}, {repeats} repeats ({backend['used']} backend)")
            ra, rb = interleaved(repeats, lambda: full(False), lambda: full(True))
            res_full = finish(ra, rb)

            sel_times: list[float] = []

            def gen(steer: bool, max_new: int = new) -> dict:
                sel = None
                if steer:
                    sel, sel_s = timed(lambda: steerer.select(model, queries))
                    sel_times.append(sel_s)
                gc.collect()
                n_hooks = []
                c0, t0 = time.process_time(), time.perf_counter()
                if shared_loop is not None:

                    def hooks_for(start: int, stop: int, batch: Any) -> list:
                        h = (
                            []
                            if not steer
                            else steerer.hooks(
                                model,
                                selections=[s_[start:stop] for s_ in sel],
                                prompt_len=int(batch.input_ids.shape[1]),
                            )
                        )
                        n_hooks.append(len(h))
                        return h

                    with quiet():
                        rows = shared_loop(model, texts, hooks_for, max_new_tokens=max_new, batch_size=bs, **bkw)
                    steps = steps_of(rows) if max_new == new else max_new
                else:
                    enc = ez.encode(model, texts)
                    kwargs: dict[str, Any] = dict(
                        max_new_tokens=max_new,
                        do_sample=False,
                        stop_at_eos=False,
                        eos_token_id=stops,
                        verbose=False,
                        use_past_kv_cache=True,
                    )
                    if enc.padded:
                        kwargs["attention_mask"] = enc.attention_mask
                    hooks = (
                        []
                        if not steer
                        else steerer.hooks(model, selections=sel, prompt_len=int(enc.input_ids.shape[1]))
                    )
                    n_hooks.append(len(hooks))
                    with quiet(), torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                        o = model.generate(enc.input_ids, **kwargs)
                    steps = int(o.shape[1]) - int(enc.input_ids.shape[1])
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "steps": steps,
                    "s_per_step": wall / steps,
                    "cpu_s_per_step": cpu / steps,
                    "n_hooks": sum(n_hooks),
                }

            with min_new_tokens(view, 2):
                gen(False, 2), gen(True, 2)  # warm-up of the exact calls (untimed)
            sel_times.clear()
            log(f"steering: generation only, batch {bs}, {repeats} repeats")
            ra, rb = interleaved(repeats, lambda: gen(False), lambda: gen(True))
            res_gen = finish(ra, rb)
            res_gen["loop"] = loop_name if shared_loop is not None else "model.generate under model.hooks"
            res_gen["n_hooks"] = rb[0]["n_hooks"]
            res_gen["select_s_median"] = median(sel_times)
            res_gen["select_s_note"] = (
                "steerer.select() for this batch, timed separately; it is part "
                "of the full-path steered time, not of generation_only"
            )
            out[f"batch_{bs}"] = {"full_path": res_full, "generation_only": res_gen}
    return out


def summarize_pair(ra: list[dict], rb: list[dict], keys: tuple[str, ...]) -> dict[str, Any]:
    res: dict[str, Any] = {"A_runs": ra, "B_runs": rb}
    for k in keys:
        ma, mb = median([r[k] for r in ra]), median([r[k] for r in rb])
        res[f"A_{k}_median"] = ma
        res[f"B_{k}_median"] = mb
        res[f"ratio_{k}"] = ratio_stats([r[k] for r in ra], [r[k] for r in rb])
    return res


# --------------------------------------------------------------------------- 2. preference generation


def bench_prefgen(model: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    import alignez_tl as ez
    from alignez_tl import models
    from alignez_tl.fastpath import unwrapped_hf_model

    try:  # where preference writing calls generate_plain (older checkouts: models)
        from alignez_tl import generation as plain_mod
    except ImportError:
        plain_mod = models  # type: ignore[assignment]

    new = cfg["pref_tokens"]
    repeats = cfg["repeats"]
    sampling = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0)
    bs = 8
    path = models.cache_dir() / "models" / "smollm2-135m-instruct"
    if cfg["model"] != "smollm2-135m-instruct":
        path = models.cache_dir() / "models" / cfg["model"]
    log(f"prefgen: loading the raw Hugging Face model from {path}")
    raw = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    hf = unwrapped_hf_model(model)
    stops = plain_mod.stop_token_ids(model)
    pad = models.pad_id(model.tokenizer)

    gp = None
    gp_reason = None
    try:
        from alignez_tl.preferences import generate_preferences as gp
    except Exception as exc:  # noqa: BLE001 - report, fall back
        gp_reason = f"alignez_tl.preferences.generate_preferences not importable: {exc!r}"

    # Every call to generate_plain (what generate_preferences uses) is recorded, so the raw
    # baseline replays exactly the same batches with the same seeds.
    calls: list[dict] = []
    real_generate_plain = plain_mod.generate_plain

    def recording_generate_plain(m, batch, **kw):
        c0, t0 = time.process_time(), time.perf_counter()
        rows = real_generate_plain(m, batch, **kw)
        calls.append(
            {
                "input_ids": batch.input_ids.clone(),
                "attention_mask": batch.attention_mask.clone(),
                "kw": dict(kw),
                "rows": rows,
                "s": time.perf_counter() - t0,
                "cpu": time.process_time() - c0,
            }
        )
        return rows

    def raw_generate(call: dict) -> list[list[int]]:
        kw = call["kw"]
        ids, mask = call["input_ids"], call["attention_mask"]
        torch.manual_seed(kw["seed"])
        with torch.inference_mode():
            o = raw.generate(  # noqa: F821 (deleted only after its last call)
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=kw["max_new_tokens"],
                min_new_tokens=kw["max_new_tokens"] if hf is not None else None,
                do_sample=kw["do_sample"],
                temperature=kw["temperature"],
                top_p=kw["top_p"],
                top_k=kw["top_k"],
                pad_token_id=pad,
                eos_token_id=stops,
            )
        return [plain_mod.trim_generated(r.tolist(), stops) for r in o[:, ids.shape[1] :]]

    # generate_plain passes no min_new_tokens; the generation_config of the model it runs on
    # supplies it, so both sides make exactly `new` tokens per row (EOS is masked until then).
    engine = {
        "generate_plain_runs_on": None
        if hf is None
        else (
            "the bridge's wrapped HF model"
            if hf is getattr(model, "original_model", None)
            else f"an un-wrapped {type(hf).__name__} view sharing the bridge's weights"
        ),
        "attn_implementation_library": None if hf is None else getattr(hf.config, "_attn_implementation", None),
        "attn_implementation_raw": getattr(raw.config, "_attn_implementation", None),
    }
    plain_mod.generate_plain = recording_generate_plain
    forced = min_new_tokens(hf, new)
    min_forced = forced.__enter__()
    try:
        if gp is not None:
            subject = "generate_preferences"

            def run_a(max_new: int = new) -> dict:
                calls.clear()
                with quiet():
                    prefs, wall, cpu = timed2(
                        lambda: gp(
                            model,
                            PREF_QUERIES,
                            "helpful",
                            n_characteristics=1,
                            elicit_tokens=max_new,
                            response_tokens=max_new,
                            seed=0,
                            batch_size=bs,
                            verbose=False,
                            **sampling,
                        )
                    )
                rows = [r for c in calls for r in c["rows"]]
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "gen_s": sum(c["s"] for c in calls),
                    "gen_cpu_s": sum(c["cpu"] for c in calls),
                    "n_calls": len(calls),
                    "batch_sizes": [len(c["rows"]) for c in calls],
                    "tokens": sum(len(r) for r in rows),
                    "n_pairs": len(prefs),
                }
        else:
            subject = "generate_plain"
            enc = ez.encode(model, [ez.render(model, q) for q in GEN_QUERIES[:bs]])

            def run_a(max_new: int = new) -> dict:
                calls.clear()
                rows, wall, cpu = timed2(
                    lambda: plain_mod.generate_plain(model, enc, max_new_tokens=max_new, seed=1234, **sampling)
                )
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "gen_s": wall,
                    "gen_cpu_s": cpu,
                    "n_calls": 1,
                    "batch_sizes": [len(rows)],
                    "tokens": sum(len(r) for r in rows),
                }

        log(f"prefgen: warm-up ({subject})")
        with min_new_tokens(hf, 2):
            run_a(2)
            for c in list(calls):
                raw_generate(c)
        recorded: list[dict] = []
        library_rows: list[list[list[int]]] = []

        def a() -> dict:
            r = run_a()
            recorded[:] = [dict(c) for c in calls]
            library_rows.append([row for c in calls for row in c["rows"]])
            return r

        def b() -> dict:
            if not recorded:  # B first: record the batches once (deterministic for a seed)
                a()
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            rows = [row for c in recorded for row in raw_generate(c)]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(len(r) for r in rows), "rows": rows}

        log(f"prefgen: {subject} vs raw HF generate, {repeats} repeats")
        # AB order first so B can replay A's batches
        ra, rb = interleaved(repeats, a, b)
    finally:
        plain_mod.generate_plain = real_generate_plain
        forced.__exit__(None, None, None)

    identical = all(rb_i["rows"] == library_rows[-1] for rb_i in rb)
    for r in rb:
        del r["rows"]
    for r in ra:
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_s"]
        r["gen_tokens_per_s"] = r["tokens"] / r["gen_s"]
        r["gen_tokens_per_cpu_s"] = r["tokens"] / r["gen_cpu_s"]
    for r in rb:
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_s"]
    tps_a = median([r["tokens_per_s"] for r in ra])
    gen_tps_a = median([r["gen_tokens_per_s"] for r in ra])
    tps_b = median([r["tokens_per_s"] for r in rb])
    # throughput ratio library / raw (higher is better); headline on process CPU time
    st = ratio_stats([r["tokens_per_cpu_s"] for r in rb], [r["tokens_per_cpu_s"] for r in ra])
    st_gen = ratio_stats([r["tokens_per_cpu_s"] for r in rb], [r["gen_tokens_per_cpu_s"] for r in ra])
    st_wall = ratio_stats([r["tokens_per_s"] for r in rb], [r["tokens_per_s"] for r in ra])
    del raw
    gc.collect()
    return {
        "subject": subject,
        "subject_note": gp_reason
        or (
            f"generate_preferences({len(PREF_QUERIES)} queries, 'helpful', n_characteristics=1, "
            f"elicit_tokens={new}, response_tokens={new}, batch_size={bs}): one elicit batch and "
            "one respond batch of 8 prompts each"
        ),
        "max_new_tokens": new,
        "batch_size": bs,
        "sampling": sampling,
        "engine": engine,
        "min_new_tokens_forced": min_forced,
        "equal_counts": all(r["tokens"] == ra[0]["tokens"] for r in ra + rb),
        "identical_tokens": identical,
        "method": (
            "library = the library path (wall time of the whole call, and the time inside generate_plain "
            "alone); raw = transformers.AutoModelForCausalLM loaded separately from the cached "
            "safetensors folder (not wrapped by the TransformerLens bridge), generate() on the very "
            "batches (left-padded, same attention masks) and seeds the library used, same sampling settings. "
            "min_new_tokens = max_new_tokens on both sides (the library via the wrapped model's "
            "generation_config) so both make the same number of tokens. Throughput = new tokens / s. "
            "Runs alternate library, raw, raw, library, ...; ratio = library / raw throughput."
        ),
        "library_runs": ra,
        "raw_runs": rb,
        "library_tokens_per_s_median": tps_a,
        "library_generation_only_tokens_per_s_median": gen_tps_a,
        "raw_hf_tokens_per_s_median": tps_b,
        "library_tokens_per_cpu_s_median": median([r["tokens_per_cpu_s"] for r in ra]),
        "raw_hf_tokens_per_cpu_s_median": median([r["tokens_per_cpu_s"] for r in rb]),
        "ratio_basis": "new tokens per second of process CPU time; ratio_wall: per wall second",
        "ratio": st["ratio"],
        "ratio_paired": st["paired"],
        "ratio_of_medians": st["of_medians"],
        "ratio_of_minima": ratio(max(r["tokens_per_cpu_s"] for r in ra), max(r["tokens_per_cpu_s"] for r in rb)),
        "ratio_wall": st_wall["ratio"],
        "ratio_wall_paired": st_wall["paired"],
        "ratio_wall_of_best": ratio(max(r["tokens_per_s"] for r in ra), max(r["tokens_per_s"] for r in rb)),
        "ratio_generation_only": st_gen["ratio"],
    }


# --------------------------------------------------------------------------- 3. capture


def capture_inputs(model: Any, quick: bool):
    import alignez_tl as ez

    n_rep = 1 if quick else 2
    texts = []
    for i in range(8):
        q = f"Question {i}: please explain the main ideas of topic number {i} in science. " * n_rep
        a = "Sure, here is a short answer. " * (n_rep + i % 3)
        texts.append(ez.render(model, q, a))
    return ez.encode(model, texts)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the storages of every tensor in obj (logits, cache dict, ...), each storage once."""
    import torch

    seen: dict[int, int] = {}

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif hasattr(x, "cache_dict"):  # ActivationCache
            visit(x.cache_dict)

    visit(obj)
    return sum(seen.values())


def capture_ops(model: Any, batch: Any) -> dict[str, Callable[[], Any]]:
    import torch

    from alignez_tl.activations import capture_tokens

    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers))
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    kw = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids()}

    def rwc_inference():
        with torch.inference_mode():
            return model.run_with_cache(batch.input_ids, names_filter=names, **kw)

    # The plain-forward baselines run the model only through the deepest captured layer,
    # as capture_tokens does (it raises StopForward from its last capture hook), so no
    # final norm or unembedding is charged to either side.
    from alignez_tl.hooks import StopForward, stop_hook
    from alignez_tl.models import padding_kwargs

    deepest = names[-1]
    pad_kw = padding_kwargs(model, batch.attention_mask)

    def plain_forward_stop():
        # the same entry point capture_tokens uses (bridge forward, inference mode, the same
        # padding kwargs), with no capture hook: one hook that only raises at the deepest layer
        with torch.inference_mode():
            try:
                with model.hooks(fwd_hooks=[(deepest, stop_hook())]):
                    model(batch.input_ids, return_type=None, **pad_kw)
            except StopForward:
                pass
        return None

    ops: dict[str, Callable[[], Any]] = {
        "capture_tokens": lambda: capture_tokens(model, batch, layers),
        "plain_forward_stop": plain_forward_stop,
    }
    try:
        from alignez_tl.fastpath import unwrapped_hf_model

        hf = unwrapped_hf_model(model)
    except ImportError:
        hf = None
    base = getattr(hf, "model", None) if hf is not None else None
    if base is not None and hasattr(base, "layers") and len(base.layers) >= n_layers:
        last_layer = base.layers[n_layers - 1]

        def _raise(*_a: Any) -> None:
            raise StopForward

        def hf_layers_forward():
            # the un-wrapped Hugging Face decoder (shared weights, no TransformerLens hook
            # points): embedding + the first n_layers layers; a native forward hook on the
            # last of them stops it before the final norm
            h = last_layer.register_forward_hook(_raise)
            try:
                with torch.inference_mode():
                    base(input_ids=batch.input_ids, use_cache=False, **kw)
            except StopForward:
                pass
            finally:
                h.remove()
            return None

        ops["hf_layers_forward"] = hf_layers_forward
    ops["run_with_cache_inference_mode"] = rwc_inference
    ops["run_with_cache_default"] = lambda: model.run_with_cache(batch.input_ids, names_filter=names, **kw)
    return ops


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def mem_worker(args: argparse.Namespace) -> None:
    """Fresh process: load the model, warm up, reset the peak RSS, run one op, report."""
    import torch

    torch.set_num_threads(args.threads)
    import alignez_tl as ez

    with quiet():
        model = ez.load_model(args.model, verbose=False)
        batch = capture_inputs(model, args.quick)
        ops = capture_ops(model, batch)
        tiny = ez.encode(model, ["hi"])
        small_ops = capture_ops(model, tiny)
        for fn in small_ops.values():  # lazy inits of every path, on a tiny input
            r = fn()
            del r
        gc.collect()
        reset = True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS (VmHWM, and ru_maxrss) to the current RSS
        except OSError:
            reset = False
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        st_before = _status_kb()
        t0 = time.perf_counter()
        result = ops[args._worker]()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        st_after = _status_kb()
        nbytes = tensor_bytes(result)
    print(
        json.dumps(
            {
                "op": args._worker,
                "peak_reset": reset,
                "ru_maxrss_before_kb": before,
                "ru_maxrss_after_kb": after,
                "peak_rss_delta_bytes": (after - before) * 1024,
                "vmhwm_delta_bytes": (
                    (st_after["VmHWM"] - st_before["VmRSS"]) * 1024
                    if "VmHWM" in st_after and "VmRSS" in st_before
                    else None
                ),
                "vmrss_before_kb": st_before.get("VmRSS"),
                "vmhwm_after_kb": st_after.get("VmHWM"),
                "vmrss_after_kb": st_after.get("VmRSS"),
                "returned_bytes": nbytes,
                "wall_s_single_cold": wall,
            }
        )
    )


def bench_capture(model: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    batch = capture_inputs(model, cfg["quick"])
    ops = capture_ops(model, batch)
    repeats = cfg["repeats"]
    with quiet():
        for fn in ops.values():  # warm-up
            r = fn()
            del r
    bytes_ = {}
    with quiet():
        for name, fn in ops.items():
            r = fn()
            bytes_[name] = tensor_bytes(r)
            del r
    gc.collect()

    def run(name: str) -> Callable[[], dict]:
        def f() -> dict:
            with quiet():
                r, wall, cpu = timed2(ops[name])
            del r
            return {"wall_s": wall, "cpu_s": cpu}

        return f

    log(f"capture: capture_tokens vs run_with_cache (inference mode), {repeats} repeats")
    ra, rb = interleaved(repeats, run("run_with_cache_inference_mode"), run("capture_tokens"))
    log(f"capture: capture_tokens vs run_with_cache (default grad mode), {repeats} repeats")
    ra2, rb2 = interleaved(repeats, run("run_with_cache_default"), run("capture_tokens"))

    # capture vs a plain forward through the same depth: cost ratio capture / plain (<= 1.05)
    log(f"capture: capture_tokens vs plain forward stopped at the deepest layer, {repeats} repeats")
    rp, rcp = interleaved(repeats, run("plain_forward_stop"), run("capture_tokens"))
    rh, rch = [], []
    if "hf_layers_forward" in ops:
        log(f"capture: capture_tokens vs the un-wrapped HF layers (no hook points), {repeats} repeats")
        rh, rch = interleaved(repeats, run("hf_layers_forward"), run("capture_tokens"))

    # memory: one fresh subprocess per op
    mem = {}
    for name in ops:
        log(f"capture: peak-RSS worker for {name}")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_worker",
            name,
            "--model",
            cfg["model"],
            "--threads",
            str(cfg["threads"]),
        ] + (["--quick"] if cfg["quick"] else [])
        env = {k: v for k, v in os.environ.items() if k != "ALIGNEZ_BENCH_REEXEC"}
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=600, env=env)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not line:
            mem[name] = {"error": f"rc={p.returncode}", "stderr_tail": p.stderr[-2000:]}
        else:
            mem[name] = json.loads(line[-1])

    def rss(name: str, key: str = "peak_rss_delta_bytes") -> Optional[int]:
        return mem.get(name, {}).get(key)

    t_inf = median([r["wall_s"] for r in ra])
    t_def = median([r["wall_s"] for r in ra2])
    t_cap = median([r["wall_s"] for r in rb + rb2])
    # speedup = baseline time / capture time; headline on process CPU time
    sp_inf = ratio_stats([r["cpu_s"] for r in rb], [r["cpu_s"] for r in ra])
    sp_def = ratio_stats([r["cpu_s"] for r in rb2], [r["cpu_s"] for r in ra2])
    sp_inf_wall = ratio_stats([r["wall_s"] for r in rb], [r["wall_s"] for r in ra])
    sp_def_wall = ratio_stats([r["wall_s"] for r in rb2], [r["wall_s"] for r in ra2])
    vs_plain = ratio_stats([r["cpu_s"] for r in rp], [r["cpu_s"] for r in rcp])
    vs_plain_wall = ratio_stats([r["wall_s"] for r in rp], [r["wall_s"] for r in rcp])
    vs_hf = ratio_stats([r["cpu_s"] for r in rh], [r["cpu_s"] for r in rch]) if rh else None
    vs_hf_wall = ratio_stats([r["wall_s"] for r in rh], [r["wall_s"] for r in rch]) if rh else None
    plain_vs = {
        "method": (
            "capture_tokens (all layers, resid_post, last real token) [B] vs a plain forward over "
            "the same left-padded batch that stops at the same depth [A]: plain_forward_stop = the "
            "bridge forward capture_tokens itself makes (model(ids, return_type=None, padding "
            "kwargs) under torch.inference_mode), with no capture hooks, only one hook at "
            "blocks.{L-1}.hook_resid_post that raises StopForward, so neither side runs the final "
            "norm or the unembedding; this isolates what capture adds (its hooks, the "
            "last-token gather, the stack). hf_layers_forward = the un-wrapped Hugging Face "
            "decoder sharing the bridge's weights (no TransformerLens hook points at all): "
            "embedding + the first L layers, stopped by a native forward hook on layer L-1; it "
            "shows the bridge's own overhead on top. Ratios = capture / plain (lower is better), "
            "paired, process CPU time; peak RSS: capture's peak-RSS delta / the plain forward's, "
            "each in a fresh worker process."
        ),
        "plain_forward_stop_runs": rp,
        "capture_runs_vs_plain": rcp,
        "time_ratio": vs_plain["ratio"],
        "time_ratio_stats": vs_plain,
        "time_ratio_wall": vs_plain_wall["ratio"],
        "time_ratio_wall_stats": vs_plain_wall,
        "hf_layers_forward_runs": rh,
        "capture_runs_vs_hf": rch,
        "time_ratio_vs_hf_layers": None if vs_hf is None else vs_hf["ratio"],
        "time_ratio_vs_hf_layers_stats": vs_hf,
        "time_ratio_vs_hf_layers_wall": None if vs_hf_wall is None else vs_hf_wall["ratio"],
        "rss_ratio": ratio(rss("capture_tokens"), rss("plain_forward_stop")),
        "rss_ratio_vmhwm": ratio(
            rss("capture_tokens", "vmhwm_delta_bytes"), rss("plain_forward_stop", "vmhwm_delta_bytes")
        ),
        "rss_ratio_vs_hf_layers": ratio(rss("capture_tokens"), rss("hf_layers_forward")),
    }
    return {
        "vs_plain_forward": plain_vs,
        "batch_shape": list(batch.input_ids.shape),
        "real_tokens_per_row": batch.attention_mask.sum(1).tolist(),
        "layers": int(model.cfg.n_layers),
        "site": "resid_post",
        "method_time": (
            "paired ratios of process CPU time (speedup_*) and of wall time "
            "(speedup_*_wall), interleaved in one process after a warm-up; "
            "the same left-padded batch, attention_mask and position_ids on both sides. "
            "run_with_cache is timed as a user calls it (autograd on, as TransformerLens "
            "leaves it) and under torch.inference_mode() (the stricter baseline)."
        ),
        "method_memory_bytes": (
            "bytes of the storages of every tensor returned (logits + cache "
            "for run_with_cache, the [batch, layers, d_model] tensor for "
            "capture_tokens), measured in this process"
        ),
        "method_memory_rss": (
            "peak-RSS delta in a fresh subprocess per op: load model, warm up every "
            "path on a 1-token input, reset the peak via /proc/self/clear_refs, "
            "then ru_maxrss after the op minus ru_maxrss before (includes the "
            "kept result). The worker is started through a small intermediate "
            "process, because Linux folds the pre-exec memory's peak (a copy of "
            "this large process) into a new process's ru_maxrss. "
            "Cross-check: VmHWM after minus VmRSS before (/proc/self/status)."
        ),
        "capture_runs": {"vs_inference_mode": rb, "vs_default": rb2},
        "run_with_cache_inference_mode_runs": ra,
        "run_with_cache_default_runs": ra2,
        "capture_tokens_wall_s_median": t_cap,
        "run_with_cache_inference_mode_wall_s_median": t_inf,
        "run_with_cache_default_wall_s_median": t_def,
        "speedup_vs_inference_mode": sp_inf["ratio"],
        "speedup_vs_default": sp_def["ratio"],
        "speedup_vs_inference_mode_stats": sp_inf,
        "speedup_vs_default_stats": sp_def,
        "speedup_vs_inference_mode_wall": sp_inf_wall["ratio"],
        "speedup_vs_default_wall": sp_def_wall["ratio"],
        "speedup_vs_inference_mode_wall_stats": sp_inf_wall,
        "speedup_vs_default_wall_stats": sp_def_wall,
        "returned_bytes": bytes_,
        "memory_bytes_ratio_vs_inference_mode": ratio(
            bytes_["run_with_cache_inference_mode"], bytes_["capture_tokens"]
        ),
        "memory_bytes_ratio_vs_default": ratio(bytes_["run_with_cache_default"], bytes_["capture_tokens"]),
        "rss_workers": mem,
        "memory_rss_ratio_vs_inference_mode": ratio(rss("run_with_cache_inference_mode"), rss("capture_tokens")),
        "memory_rss_ratio_vs_default": ratio(rss("run_with_cache_default"), rss("capture_tokens")),
        "memory_vmhwm_ratio_vs_inference_mode": ratio(
            rss("run_with_cache_inference_mode", "vmhwm_delta_bytes"), rss("capture_tokens", "vmhwm_delta_bytes")
        ),
        "memory_vmhwm_ratio_vs_default": ratio(
            rss("run_with_cache_default", "vmhwm_delta_bytes"), rss("capture_tokens", "vmhwm_delta_bytes")
        ),
    }


# --------------------------------------------------------------------------- 4. demo


def bench_demo(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["quick"] or cfg["skip_demo"]:
        return {"wall_s": None, "reason": "skipped (--quick)" if cfg["quick"] else "skipped (--skip-demo)"}
    if importlib.util.find_spec("alignez_tl.cli") is None:
        return {"wall_s": None, "reason": "alignez_tl.cli does not exist yet"}
    exe = Path(sys.executable).with_name("alignez")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alignez_tl.cli"]
    probe = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    if "demo" not in probe.stdout + probe.stderr:
        return {
            "wall_s": None,
            "reason": "the CLI has no `demo` subcommand yet",
            "help_tail": (probe.stdout + probe.stderr)[-1000:],
        }
    with tempfile.TemporaryDirectory(prefix="alignez-bench-demo-") as tmp:
        full = cmd + ["demo", "--quiet", "--out", tmp]
        log(f"demo: {' '.join(full)} (timeout {cfg['demo_timeout']} s)")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(full, capture_output=True, text=True, cwd=str(ROOT), timeout=cfg["demo_timeout"])
        except subprocess.TimeoutExpired:
            return {"wall_s": None, "reason": f"timed out after {cfg['demo_timeout']} s", "command": " ".join(full)}
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        outputs = sorted(str(p_.relative_to(tmp)) for p_ in Path(tmp).rglob("*") if p_.is_file())
    res = {
        "wall_s": wall if p.returncode == 0 else None,
        "cpu_s": cpu,
        "returncode": p.returncode,
        "command": " ".join(cmd[:1] + ["demo", "--quiet", "--out", "<tmpdir>"]),
        "outputs": outputs,
        "n_runs": 1,
        "note": "one run, model cache warm (the benchmark loaded the model before); cpu_s is the "
        "demo process's CPU time (all its threads: the CLI picks its own thread count)",
        "loadavg_after": loadavg(),
    }
    if p.returncode != 0:
        res["reason"] = f"exit status {p.returncode}"
        res["wall_s_failed_run"] = wall
        res["stderr_tail"] = p.stderr[-2000:]
    return res


# --------------------------------------------------------------------------- report


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check(name: str, value: Optional[float]) -> dict[str, Any]:
    op, target = TARGETS[name]
    met = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"value": value, "target": f"{op} {target}", "met": met}


def summary(res: dict[str, Any]) -> dict[str, Any]:
    out = {}
    st = res.get("steering") or {}
    for bs in (1, 8):
        b = st.get(f"batch_{bs}")
        if b:
            out[f"steering_full_path_b{bs}"] = check(f"steering_full_path_b{bs}", b["full_path"]["ratio"])
            out[f"steering_generation_only_b{bs}"] = check(
                f"steering_generation_only_b{bs}", b["generation_only"]["ratio"]
            )
    pg = res.get("preference_generation")
    if pg:
        out["prefgen_throughput"] = check("prefgen_throughput", pg["ratio"])
    cp = res.get("capture")
    if cp:
        pv = cp.get("vs_plain_forward") or {}
        out["capture_vs_plain_forward_time"] = check("capture_vs_plain_forward_time", pv.get("time_ratio"))
        out["capture_vs_plain_forward_rss"] = check("capture_vs_plain_forward_rss", pv.get("rss_ratio"))
        out["capture_speedup"] = check("capture_speedup", cp["speedup_vs_inference_mode"])
        out["capture_memory_rss"] = check("capture_memory_rss", cp["memory_rss_ratio_vs_inference_mode"])
        out["capture_memory_bytes"] = check("capture_memory_bytes", cp["memory_bytes_ratio_vs_inference_mode"])
    return out


def tgt(name: str) -> str:
    op, target = TARGETS[name]
    return f"{op} {target:g}"


def fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def mib(cp: dict[str, Any], name: str) -> str:
    v = cp.get("rss_workers", {}).get(name, {}).get("peak_rss_delta_bytes")
    return "n/a" if v is None else f"{v / 2**20:.1f}"


def print_table(res: dict[str, Any]) -> None:
    rows = []
    st = res.get("steering") or {}
    for bs in (1, 8):
        b = st.get(f"batch_{bs}")
        if not b:
            continue
        f, g = b["full_path"], b["generation_only"]
        rows.append(
            (
                f"steered/unsteered, full path, batch {bs} ({st['backend']['used']})",
                f"{fmt(f['ratio'])}x ({'' if f['equal_lengths'] else 'per step; '}of medians "
                f"{fmt(f['ratio_of_medians'])}, of minima {fmt(f['ratio_of_minima'])}; wall "
                f"{fmt(f['ratio_wall'])}); {fmt(f['A_cpu_s_median'], 2)} vs "
                f"{fmt(f['B_cpu_s_median'], 2)} CPU s",
                tgt(f"steering_full_path_b{bs}"),
            )
        )
        rows.append(
            (
                f"steered/unsteered, generation only, batch {bs} ({st['backend']['used']})",
                f"{fmt(g['ratio'])}x ({'' if g['equal_lengths'] else 'per step; '}of medians "
                f"{fmt(g['ratio_of_medians'])}, of minima {fmt(g['ratio_of_minima'])}; wall "
                f"{fmt(g['ratio_wall'])}); {fmt(g['A_cpu_s_median'], 2)} vs "
                f"{fmt(g['B_cpu_s_median'], 2)} CPU s; select() {fmt(g['select_s_median'], 2)} s",
                tgt(f"steering_generation_only_b{bs}"),
            )
        )
    pg = res.get("preference_generation")
    if pg:
        rows.append(
            (
                f"{pg['subject']} / raw HF tokens/s",
                f"{fmt(pg['ratio'])}x (of medians {fmt(pg['ratio_of_medians'])}, of best "
                f"{fmt(pg['ratio_of_minima'])}; wall {fmt(pg['ratio_wall'])}); "
                f"{fmt(pg['library_tokens_per_cpu_s_median'], 1)} vs "
                f"{fmt(pg['raw_hf_tokens_per_cpu_s_median'], 1)} tok/CPU s; generation only "
                f"{fmt(pg['ratio_generation_only'])}x; identical tokens: {pg['identical_tokens']}",
                tgt("prefgen_throughput"),
            )
        )
    cp = res.get("capture")
    if cp:
        pv = cp.get("vs_plain_forward") or {}
        ts = pv.get("time_ratio_stats") or {}
        paired = [x for x in ts.get("paired") or [] if x is not None]
        hs = pv.get("time_ratio_vs_hf_layers_stats") or {}
        rows.append(
            (
                "capture / plain forward to the same depth, time",
                f"{fmt(pv.get('time_ratio'))}x (paired {fmt(min(paired) if paired else None)}.."
                f"{fmt(max(paired) if paired else None)}; of medians {fmt(ts.get('of_medians'))}; wall "
                f"{fmt(pv.get('time_ratio_wall'))}); vs un-wrapped HF layers {fmt(hs.get('ratio'))}x; "
                f"vs run_with_cache {fmt(cp['speedup_vs_inference_mode'], 2)}x faster",
                tgt("capture_vs_plain_forward_time"),
            )
        )
        rows.append(
            (
                "capture / plain forward to the same depth, peak RSS",
                f"{fmt(pv.get('rss_ratio'))}x (VmHWM {fmt(pv.get('rss_ratio_vmhwm'))}x); "
                f"{mib(cp, 'capture_tokens')} vs {mib(cp, 'plain_forward_stop')} MiB; vs un-wrapped HF "
                f"layers {fmt(pv.get('rss_ratio_vs_hf_layers'))}x ({mib(cp, 'hf_layers_forward')} MiB)",
                tgt("capture_vs_plain_forward_rss"),
            )
        )
        rows.append(
            (
                "capture speedup vs run_with_cache",
                f"{fmt(cp['speedup_vs_inference_mode'], 2)}x (inference mode), "
                f"{fmt(cp['speedup_vs_default'], 2)}x (default grad mode); wall "
                f"{fmt(cp['speedup_vs_inference_mode_wall'], 2)}x / {fmt(cp['speedup_vs_default_wall'], 2)}x; "
                f"{fmt(cp['capture_tokens_wall_s_median'], 2)} vs "
                f"{fmt(cp['run_with_cache_inference_mode_wall_s_median'], 2)} s",
                ">= 3",
            )
        )
        rows.append(
            (
                "capture memory, returned bytes ratio",
                f"{fmt(cp['memory_bytes_ratio_vs_inference_mode'], 1)}x "
                f"({cp['returned_bytes']['run_with_cache_inference_mode']} vs "
                f"{cp['returned_bytes']['capture_tokens']} B)",
                ">= 10",
            )
        )
        rows.append(
            (
                "capture memory, peak-RSS delta ratio",
                f"{fmt(cp['memory_rss_ratio_vs_inference_mode'], 1)}x (inference mode), "
                f"{fmt(cp['memory_rss_ratio_vs_default'], 1)}x (default grad mode); "
                f"{mib(cp, 'capture_tokens')} vs {mib(cp, 'run_with_cache_inference_mode')} vs "
                f"{mib(cp, 'run_with_cache_default')} MiB",
                ">= 10",
            )
        )
    dm = res.get("demo")
    if dm:
        rows.append(
            (
                "alignez demo wall time",
                f"{fmt(dm.get('wall_s'), 1)} s" + (f" ({dm['reason']})" if dm.get("reason") else ""),
                "-",
            )
        )
    w = max(len(r[0]) for r in rows) if rows else 10
    m = res["machine"]
    print(
        f"\nalignez-tl core benchmark  {m['date']}  {m['platform']}  cpus={m['cpu_count']} "
        f"threads={m['torch_threads']}  torch {m['torch']}  transformers {m['transformers']}  "
        f"transformer-lens {m['transformer_lens']}  repeats={res['settings']['repeats']}"
    )
    print(
        "ratios: median of per-repeat paired ratios of process CPU time (steering: steered/unsteered; "
        "prefgen: library/raw tokens per CPU s; capture: run_with_cache/capture); wall-time ratios alongside"
    )
    print(f"{'measure'.ljust(w)}  {'target':8}  result")
    print(f"{'-' * w}  {'-' * 8}  {'-' * 40}")
    for name, val, target in rows:
        print(f"{name.ljust(w)}  {target:8}  {val}")
    for part, tb in (res.get("errors") or {}).items():
        print(f"{part}: FAILED: {tb.strip().splitlines()[-1]}")
    print()


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="model spec for load_model")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, tiny sizes, no demo")
    p.add_argument(
        "--out",
        default=None,
        help=f"result JSON (default {DEFAULT_OUT.relative_to(ROOT)}; {QUICK_OUT.relative_to(ROOT)} with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument(
        "--only",
        default="steering,prefgen,capture,demo",
        help="comma-separated subset of: steering, prefgen, capture, demo",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "hf", "tl"],
        help="steering generation engine passed to Steerer.generate, where it has one",
    )
    p.add_argument("--skip-demo", action="store_true", help="do not run `alignez demo`")
    p.add_argument("--demo-timeout", type=int, default=600, help="seconds before the demo is abandoned")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args._worker:
        if os.environ.get("ALIGNEZ_BENCH_REEXEC") != "1":
            # Linux folds the peak RSS of the memory a process had before exec (here: a copy
            # of the large parent) into its ru_maxrss, and never lowers it. This first stage
            # is small (no torch yet): the real worker is its child, so its ru_maxrss starts
            # from this small process instead.
            env = dict(os.environ, ALIGNEZ_BENCH_REEXEC="1")
            return subprocess.run([sys.executable] + sys.argv, env=env).returncode
        mem_worker(args)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"steering", "prefgen", "capture", "demo"}
    if unknown:
        raise SystemExit(f"unknown --only parts: {sorted(unknown)}")
    out_path = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    cfg = {
        "model": args.model,
        "repeats": repeats,
        "quick": args.quick,
        "threads": args.threads,
        "steer_tokens": 8 if args.quick else 64,
        "steer_batches": [1, 8],
        "pref_tokens": 8 if args.quick else 48,
        "skip_demo": args.skip_demo or "demo" not in only,
        "demo_timeout": args.demo_timeout,
        "backend": args.backend,
    }
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "schema": "alignez-tl-bench-core/1",
        "machine": machine_info(args.threads),
        "settings": {k: v for k, v in cfg.items()},
    }
    import alignez_tl as ez

    log(f"loading {args.model}")
    with quiet():
        model, load_s = timed(lambda: ez.load_model(args.model, verbose=False))
    res["model"] = {
        "spec": args.model,
        "load_s": load_s,
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
        "class": type(model).__name__,
    }
    sections = [
        ("steering", "steering", bench_steering),
        ("prefgen", "preference_generation", bench_prefgen),
        ("capture", "capture", bench_capture),
    ]
    for part, key, fn in sections:
        if part not in only:
            continue
        try:
            res[key] = fn(model, cfg)
        except Exception as exc:  # noqa: BLE001 - keep the other sections' figures
            import traceback

            log(f"{part} failed: {exc!r}")
            res.setdefault("errors", {})[part] = traceback.format_exc()[-4000:]
        res["machine"]["loadavg_now"] = loadavg()
        atomic_write_json(out_path, dict(res, partial=True))  # keep what is done so far
    res["demo"] = bench_demo(cfg)
    res["targets"] = summary(res)
    res["machine"]["loadavg_end"] = loadavg()
    res["total_s"] = time.perf_counter() - t_start
    res.pop("partial", None)
    res["machine"].pop("loadavg_now", None)
    atomic_write_json(out_path, res)
    print_table(res)
    print(f"wrote {out_path} (total {res['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
