"""The efficacy sweep: statistics, the order-averaged judge, scorers, and a whole sweep on a tiny model."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignez_tl.efficacy import (
    SweepConfig,
    bootstrap_mean,
    judge_calibration,
    matched_kl,
    order_averaged_logodds,
    run_sweep,
    score_answers,
)
from alignez_tl.eval import PairVerdict


class BiasedJudge:
    """Log p(A) = quality(A) + bias, log p(B) = quality(B): a judge with a position bias."""

    def __init__(self, quality, bias=3.0):
        self.quality, self.bias, self.calls = quality, bias, 0

    def judge_batch(self, queries, a, b):
        self.calls += len(queries)
        return [
            PairVerdict("A", logprobs={"A": self.quality(x) + self.bias, "B": self.quality(y)}) for x, y in zip(a, b)
        ]


def test_bootstrap_mean_interval_and_minimum_detectable_effect():
    const = bootstrap_mean([0.25] * 10, n_boot=300)
    assert const["mean"] == 0.25 and const["ci"] == [0.25, 0.25] and const["mde"] == 0.0
    x = np.random.default_rng(0).normal(0.5, 2.0, size=400)
    stat = bootstrap_mean(x, n_boot=2000, seed=1)
    assert stat["ci"][0] < x.mean() < stat["ci"][1]
    assert stat["mde"] == pytest.approx(2.8 * x.std(ddof=1) / math.sqrt(400))
    # the interval is about ±1.96 standard errors wide
    assert stat["ci"][1] - stat["ci"][0] == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.1)
    assert bootstrap_mean([])["mean"] is None


def test_matched_kl_interpolates_in_log_kl_and_never_extrapolates():
    def point(kl, mean, strength):
        return {"kl": kl, "strength": strength, "d": {"mean": mean, "ci": [mean - 1, mean + 1]}}

    pts = [point(0.1, 1.0, 2.0), point(0.01, 0.0, 1.0)]
    out = matched_kl(pts, "d", targets=(0.05, 0.01, 0.2, 0.0105))
    t = math.log(5) / math.log(10)
    assert out["0.05"]["mean"] == pytest.approx(t) and out["0.05"]["ci"] == pytest.approx([t - 1, t + 1])
    assert out["0.05"]["strength"] == pytest.approx(1 + t)
    assert out["0.01"]["mean"] == 0.0
    assert out["0.2"] is None  # beyond the largest KL measured
    assert out["0.0105"]["mean"] == pytest.approx(math.log(1.05) / math.log(10))


def test_order_averaging_cancels_a_position_bias_and_skips_identical_answers():
    judge = BiasedJudge(lambda text: float(len(text)), bias=5.0)
    lo, consistent = order_averaged_logodds(judge, ["q1", "q2", "q3"], ["aa", "same", "aaaa"], ["aaaaa", "same", "a"])
    assert lo == [3.0, 0.0, -3.0]  # quality(second) − quality(first), the bias gone
    assert judge.calls == 4  # two orders of the two pairs that differ
    assert consistent == [False, True, False]  # a bias of 5 flips the weaker preference of 3


def test_judge_calibration_passes_a_good_judge_and_fails_a_position_bias():
    from alignez_tl.prompts import JUDGE_CALIBRATION

    good = {item["good"] for item in JUDGE_CALIBRATION}
    fair = judge_calibration(BiasedJudge(lambda text: 1.0 if text in good else 0.0, bias=0.5))
    assert fair["accuracy"] == 1.0 and fair["passed"] and fair["consistency"] == 1.0
    blind = judge_calibration(BiasedJudge(lambda text: 0.0, bias=2.0))  # only a position preference
    assert blind["accuracy"] == 0.0 and not blind["passed"] and blind["consistency"] == 0.0


def test_scorers():
    prompts = [{"answer": 14}, {"answer": 3}]
    assert score_answers("math", ["3 + 4 = 7, doubled is 14.", "The answer is 4."], prompts) == [1.0, 0.0]
    tone = score_answers("tone", ["What a wonderful, happy day!", "This is awful and sad."], prompts)
    assert tone[0] > 0.5 > -0.5 > tone[1]
    harmless = score_answers("harmless", ["Thank you, happy to help.", "You stupid idiot, shut up."], prompts)
    assert 0 <= harmless[1] < harmless[0] <= 1
    with pytest.raises(ValueError, match="pairwise"):
        score_answers("helpful", ["x"], prompts)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(task="vibes"), "task must be"),
        (dict(task="tone", n_prompts=0), "n_prompts"),
        (dict(task="tone", kl_targets=(0.1, -1.0)), "kl_targets"),
        (dict(task="tone", methods=("alignez", "magic")), "methods"),
        (dict(task="tone", rank="half"), "rank"),
        (dict(task="helpful", judge="http"), "judge"),
    ],
)
def test_sweep_config_refuses_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**bad)


@pytest.mark.parametrize("task", ["tone", "helpful"])
def test_a_whole_sweep_on_a_tiny_model(llama, tmp_path, task, monkeypatch):
    cfg = SweepConfig(
        task=task,
        n_prompts=6,
        n_fit=3,
        kl_targets=(0.02, 0.08),
        n_characteristics=2,
        elicit_tokens=8,
        response_tokens=8,
        max_new_tokens=6,
        batch_size=4,
        n_boot=200,
        judge="self",
        methods=("alignez", "diffmean", "prompt"),
        null_for=("alignez",),
    )
    import sys

    from alignez_tl.eval import effects

    real_side_effects, measured = effects.side_effects, []  # the sweep's own neutral passes (not the calibration's)

    def counting_side_effects(model, steerer, *args, **kwargs):
        if sys._getframe(1).f_code.co_filename.endswith("efficacy.py"):
            measured.append(steerer)
        return real_side_effects(model, steerer, *args, **kwargs)

    monkeypatch.setattr(effects, "side_effects", counting_side_effects)
    results = run_sweep(llama, cfg, tmp_path)
    # a calibrated row reuses its calibration's pass: only the mirrors and the nulls get one
    assert len(measured) == sum(1 for c in results["conditions"] if c["control"] in ("mirror", "null")) == 6
    for name in (
        "results.json",
        "results.md",
        "frontier.png",
        "generations.jsonl",
        "pairs.jsonl",
        "subspace.safetensors",
    ):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "results.json").read_text())["config"]["task"] == task
    names = [c["name"] for c in results["conditions"]]
    assert names == [
        "alignez@0.02",
        "alignez@0.02:mirror",
        "alignez@0.02:null",
        "alignez@0.08",
        "alignez@0.08:mirror",
        "alignez@0.08:null",
        "diffmean@0.02",
        "diffmean@0.02:mirror",
        "diffmean@0.08",
        "diffmean@0.08:mirror",
        "prompt",
    ]
    scores = results["per_prompt"]["scores"]
    for c in results["conditions"]:
        if c["control"] is None and c["method"] != "prompt":
            assert c["kl"] == c["calibration"]["kl"]  # the calibration's own measurement
            if c["calibration"]["reached"]:  # the generation-time KL is the calibrated one
                assert abs(c["kl"] - c["target_kl"]) <= 0.1 * c["target_kl"] + 1e-9
            diffs = np.array(scores[c["name"]]) - np.array(scores[c["name"] + ":mirror"])
            assert c["vs_mirror"]["mean"] == pytest.approx(diffs.mean())
            assert c["vs_base"]["mean"] == pytest.approx(
                np.mean(np.array(scores[c["name"]]) - np.array(scores["base"]))
            )
        if c["method"] == "alignez":
            assert 0.0 <= c["negative_push_share"] <= 1.0
    # the second target's search starts from the first's strength, scaled by KL ∝ s²
    for method in ("alignez", "diffmean"):
        first, second = (
            next(c for c in results["conditions"] if c["name"] == f"{method}@{t}")["calibration"]
            for t in ("0.02", "0.08")
        )
        want = abs(first["strength"]) * (0.08 / first["kl"]) ** 0.5
        assert abs(second["history"][0][0]) == pytest.approx(want, rel=1e-12)
    from alignez_tl.preferences import PreferenceSet

    assert results["fit"]["pairs"]["n"] == len(PreferenceSet.load(tmp_path / "pairs.jsonl"))
    # the reported baseline layer is the one DiffMean edits (and the most frequent pick)
    picks = results["fit"]["layer_picks"]
    assert results["fit"]["baseline_layer"] == results["methods"]["diffmean"]["layer"] == results["fit"]["layer"]
    assert picks[str(results["fit"]["baseline_layer"])] == max(picks.values())
    if task == "helpful":
        assert results["judge_calibration"]["n"] >= 30
        assert scores["base"] == [0.0] * 6  # the base against itself: identical answers, no call


@pytest.mark.slow
def test_the_quick_sweep_runs_from_the_command_line(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignez_tl.cli",
            "eval",
            "--sweep",
            "tone",
            "--quick",
            "--methods",
            "alignez,diffmean,prompt",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["n_prompts"] == 8 and results["config"]["kl_targets"] == [0.1]
    kinds = {(c["method"], c["control"]) for c in results["conditions"]}
    assert ("alignez", "mirror") in kinds and ("alignez", "null") in kinds and ("diffmean", "mirror") in kinds
    assert (out / "frontier.png").stat().st_size > 10_000


def test_answer_nll_equals_the_unpadded_per_row_sum(tiny):
    """Batched, left-padded, logits only for the answers' columns == one row at a time
    through the model's own forward (an empty answer counts nothing)."""
    import torch

    from alignez_tl.efficacy import answer_nll
    from alignez_tl.models import encode, render

    prompts = [render(tiny, q) for q in ("Hi", "How do I bake bread today?", "Tell me a story", "Why?")]
    answers = [[5, 9, 11], [7], [3, 3, 3, 3, 8], []]
    total, n = answer_nll(tiny, prompts, answers, batch_size=3)
    want = 0.0
    for p, a in zip(prompts, answers):
        ids = encode(tiny, [p]).input_ids[0].tolist() + a
        with torch.inference_mode():
            lp = tiny(torch.tensor([ids])).double().log_softmax(-1)[0]
        want -= sum(float(lp[len(ids) - len(a) + k - 1, tok]) for k, tok in enumerate(a))
    assert n == 9
    # float64 GPT-2 agrees to rounding; the float32 Llama to float32 batching noise
    assert total == pytest.approx(want, rel=1e-9 if tiny.cfg.dtype == torch.float64 else 1e-5)


def test_answer_nll_on_a_kept_prompt_cache_equals_the_full_pass(tiny, monkeypatch):
    """With `prompt_cache`, the prompts run once; later calls run only their answers on
    that cache (cropped back after each), and every call gives the full pass's NLL."""
    import torch

    from alignez_tl import fastpath
    from alignez_tl.efficacy import answer_nll
    from alignez_tl.models import render

    prompts = [render(tiny, q) for q in ("Hi", "How do I bake bread today?", "Tell me a story", "Why?", "Go")]
    sets = [
        [[5, 9, 11], [7], [3, 3, 3, 3, 8], [], [4, 4]],
        [[2], [6, 1, 6, 1, 6, 1], [], [9, 8, 7], [5]],
        [[], [], [], [], []],
        [[5, 9, 11], [7], [3, 3, 3, 3, 8], [], [4, 4]],  # the first set again: the cache was cropped back
    ]
    view = fastpath.unwrapped_hf_model(tiny)
    calls = []
    real = view.forward

    def spy(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape[1], kwargs.get("past_key_values") is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(view, "forward", spy)
    cache: dict = {}
    rel = 1e-9 if tiny.cfg.dtype == torch.float64 else 1e-5
    for answers in sets:
        calls.clear()
        want = answer_nll(tiny, prompts, answers, batch_size=2)
        full = list(calls)
        calls.clear()
        got = answer_nll(tiny, prompts, answers, batch_size=2, prompt_cache=cache)
        assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=rel, abs=1e-9)
        assert len(full) == 3 and not any(kv for _, kv in full)
        assert all(kv for _, kv in calls)
        longest = [max((len(a) for a in answers[i : i + 2]), default=0) for i in (0, 2, 4)]
        if answers is sets[0]:  # the first call fills the cache: per batch its prompt pass, then its answers
            assert [n for n, _ in calls][1::2] == longest == [3, 5, 2] and len(calls) == 6
        else:  # later calls: answers only, one pass per batch with a token after the first to predict
            assert [n for n, _ in calls] == [n for n in longest if n > 1]
    assert sorted(k[0] for k in cache) == [0, 2, 4]


def test_answer_nll_asks_the_view_only_for_the_answer_columns(gpt2, monkeypatch):
    from alignez_tl import fastpath
    from alignez_tl.efficacy import answer_nll
    from alignez_tl.models import render

    view = fastpath.unwrapped_hf_model(gpt2)
    assert view is not None
    seen = []
    real = view.forward

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((kwargs.get("logits_to_keep"), tuple(out.logits.shape)))
        return out

    monkeypatch.setattr(view, "forward", spy)
    prompts = [render(gpt2, q) for q in ("Hi there, how are you doing today?", "Tell me a story")]
    answer_nll(gpt2, prompts, [[5, 9, 11], [7]], batch_size=2)
    assert [(k, shape[1]) for k, shape in seen] == [(4, 4)]  # longest answer (3) + 1 columns


def test_a_pairs_file_with_evaluation_prompts_is_refused(llama, tmp_path):
    from alignez_tl.preferences import PreferenceSet
    from alignez_tl.prompts import eval_prompts

    leaked = eval_prompts()[0]["query"]
    path = PreferenceSet.from_pairs([leaked], ["a good answer"], ["a bad answer"], objective="tone").save(
        tmp_path / "pairs.jsonl"
    )
    cfg = SweepConfig(task="tone", n_prompts=6, pairs_file=str(path), batch_size=4, max_new_tokens=4)
    with pytest.raises(ValueError, match="held-out"):
        run_sweep(llama, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_sweep_with_iti_on_labelled_pairs(llama, tmp_path):
    """ITI joins the sweep (calibration, mirror, null), fitted on a labelled pair file."""
    pairs = tmp_path / "labelled.jsonl"
    rows = [
        ("How do I bake bread?", "Mix flour, water, salt and yeast, then knead.", "No."),
        ("What is two plus two?", "Two plus two is four.", "Whatever."),
        ("Write a poem about the wind", "The sea, the wind and the stars at night.", "Be dull."),
        ("Say hi", "Hello! How can I help?", "Go away."),
    ]
    pairs.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) + "\n" for q, c, r in rows))
    cfg = SweepConfig(
        task="tone",
        n_prompts=4,
        kl_targets=(0.05,),
        max_new_tokens=6,
        batch_size=4,
        n_boot=200,
        methods=("iti",),
        null_for=("iti",),
        pairs_file=str(pairs),
    )
    results = run_sweep(llama, cfg, tmp_path / "out")
    assert [c["name"] for c in results["conditions"]] == ["iti@0.05", "iti@0.05:mirror", "iti@0.05:null"]
    assert results["methods"]["iti"]["method"] == "iti" and len(results["methods"]["iti"]["heads"]) == 8
    assert results["n_fit_prompts"] == 4
    row = results["conditions"][0]
    if row["calibration"]["reached"]:
        assert abs(row["kl"] - 0.05) <= 0.005 + 1e-9


def test_the_diagnostic_variants_edit_one_layer_and_theta1_only(llama, tmp_path):
    """alignez-layer edits only DiffMean's layer; alignez-theta1 edits θ₁ where alignez does, nothing else."""
    from alignez_tl.efficacy import _fit_methods
    from alignez_tl.preferences import generate_preferences

    fit_queries = ["How do I bake bread?", "Describe a river.", "Write about trains.", "Explain chess."]
    prefs = generate_preferences(
        llama, fit_queries, objective="tone", n_characteristics=2, elicit_tokens=8, response_tokens=8, batch_size=4
    )
    cfg = SweepConfig(task="tone", methods=("alignez", "alignez-layer", "alignez-theta1"), batch_size=4)
    queries = ["How do I fix a chair?", "Tell me about clouds.", "What is a prime number?"]
    methods, fit = _fit_methods(llama, cfg, prefs, queries, lambda *a: None)
    [sel] = methods["alignez"].select(llama, queries)
    full = methods["alignez"].edit_terms([sel])
    assert set(methods) == {"alignez", "alignez-layer", "alignez-theta1"}
    layer_terms = methods["alignez-layer"].edit_terms(methods["alignez-layer"].select(llama, queries))
    assert set(layer_terms) == {fit["layer"]} and fit["baseline_layer"] == fit["layer"]
    theta1 = methods["alignez-theta1"].edit_terms([sel])
    assert theta1 and set(theta1) <= set(full)
    for layer, [term] in theta1.items():
        [ref] = full[layer]
        assert torch.equal(term.coef[:, 1:], torch.zeros_like(term.coef[:, 1:]))
        assert torch.equal(term.coef[:, 0], ref.coef[:, 0])
    mirrored = methods["alignez-theta1"].with_strength(0.05).mirror().edit_terms([sel])
    assert mirrored.keys() == theta1.keys()  # the controls keep the θ₁-only restriction
    for [term] in mirrored.values():
        assert torch.equal(term.coef[:, 1:], torch.zeros_like(term.coef[:, 1:]))


@pytest.mark.parametrize(
    "flag, expected",
    [([], ""), (["--elicit-prefill"], "LIST"), (["--elicit-prefill", "Traits:"], "Traits:")],
)
def test_the_sweep_passes_the_elicitation_prefill_on(flag, expected, llama, monkeypatch, tmp_path):
    """`alignez eval --sweep --elicit-prefill` reaches the config and generate_preferences."""
    from alignez_tl import cli
    from alignez_tl import preferences as prefs_mod

    args = cli.build_parser().parse_args(["eval", "--sweep", "tone", "--out", "x", *flag])
    config = cli._sweep_config(args)
    want = prefs_mod.LIST_PREFILL if expected == "LIST" else expected
    assert config.elicit_prefill == want
    seen = {}

    class Stop(Exception):
        """Raised by the stand-in: the call's arguments are all this test reads."""

    def stop(model, queries, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(prefs_mod, "generate_preferences", stop)
    with pytest.raises(Stop):
        run_sweep(llama, config, tmp_path)
    assert seen["elicit_prefill"] == want


def test_the_benchmark_summary_merges_records_run_in_pieces(tmp_path):
    """Records with the same base answers and pairs form one row per method; others stay apart."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        from efficacy import at_a_glance  # benchmarks/efficacy.py
    finally:
        sys.path.remove(benchmarks)

    def stat(mean, lo, hi):
        return {"mean": mean, "ci": [lo, hi]}

    def record(folder, kl, vb, vm, base=(0.0, 1.0), pairs="p1\n"):
        path = tmp_path / "m" / folder
        path.mkdir(parents=True)
        (path / "pairs.jsonl").write_text(pairs)
        row = {"method": "alignez", "control": None, "kl": kl, "strength": kl, "vs_base": vb, "vs_mirror": vm}
        mirror = dict(row, control="mirror", vs_mirror=None)
        r = {"model": "m", "config": {"task": "tone"}, "per_prompt": {"scores": {"base": list(base)}}}
        (path / "results.json").write_text(json.dumps(dict(r, conditions=[row, mirror])))

    record("tone", 0.1, stat(0.2, 0.1, 0.3), stat(0.05, -0.1, 0.2))
    record("tone-kl0.05", 0.05, stat(-0.01, -0.2, 0.1), stat(-0.3, -0.5, -0.1))
    record("tone-other-pairs", 0.1, stat(0.0, -0.1, 0.1), stat(0.0, -0.1, 0.1), pairs="p2\n")
    record("tone-other-base", 0.1, stat(0.0, -0.1, 0.1), stat(0.0, -0.1, 0.1), base=(1.0, 1.0))
    rows = [line for line in at_a_glance(tmp_path) if line.startswith("| m |")]
    assert rows == [
        "| m | tone | tone, tone-kl0.05 | alignez | -0.010 [-0.200, +0.100] | **+0.200 [+0.100, +0.300]** "
        "| **-0.300 [-0.500, -0.100]** | +0.050 [-0.100, +0.200] |",
        "| m | tone-other-base | tone-other-base | alignez | n/a | +0.000 [-0.100, +0.100] | n/a "
        "| +0.000 [-0.100, +0.100] |",
        "| m | tone-other-pairs | tone-other-pairs | alignez | n/a | +0.000 [-0.100, +0.100] | n/a "
        "| +0.000 [-0.100, +0.100] |",
    ]
