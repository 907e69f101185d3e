"""The two-objective trade-off (alignez_tl/compose.py, `alignez eval --compose`)."""

import json

import pytest

from alignez_tl import cli
from alignez_tl.compose import DEFAULT_ETAS, check_compose, mix, run_compose
from alignez_tl.preferences import PreferenceSet, generate_preferences
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace

QUERIES = ["How do I bake bread?", "Tell me about the sea.", "What should I do today?"]
GEN = dict(max_new_tokens=6, batch_size=4, seed=0, return_tokens=True)
SMALL = dict(
    n_prompts=4,
    n_fit=3,
    max_new_tokens=6,
    n_characteristics=2,
    elicit_tokens=6,
    response_tokens=6,
    batch_size=4,
    n_boot=100,
    alpha=1.0,
)


def _steerer(model, objective):
    prefs = generate_preferences(
        model, QUERIES, objective=objective, n_characteristics=2, elicit_tokens=6, response_tokens=6, verbose=False
    )
    return Steerer(fit_subspace(model, prefs, verbose=False), 1.0)


@pytest.mark.parametrize(
    "objectives, etas, match",
    [
        (("tone", "nonsense"), DEFAULT_ETAS, "unknown"),
        (("tone", "helpful"), DEFAULT_ETAS, "unscorable"),
        (("tone", "tone"), DEFAULT_ETAS, "twice"),
        (("tone",), DEFAULT_ETAS, "exactly two"),
        (("tone", "harmless", "math"), DEFAULT_ETAS, "exactly two"),
        (("tone", "harmless"), (0.5, 1.0), "strictly between"),
        (("tone", "harmless"), (0.0,), "strictly between"),
        (("tone", "harmless"), (-0.2,), "strictly between"),
        (("tone", "harmless"), (float("nan"),), "strictly between"),
        (("tone", "harmless"), (), "strictly between"),
        (("tone", "harmless"), ("x",), "strictly between"),
    ],
)
def test_bad_input_is_refused_before_model_work(objectives, etas, match):
    with pytest.raises(ValueError, match=match):
        check_compose(objectives, etas)
    with pytest.raises(ValueError, match=match):
        run_compose(None, objectives, etas)  # no model: the check comes first


def test_check_compose_normalises():
    assert check_compose("Tone, harmless", (0.5, 0.25, 0.5)) == (("tone", "harmless"), (0.5, 0.25))


def test_the_ends_of_the_mix_are_the_single_objectives(llama):
    tone, harmless = _steerer(llama, "tone"), _steerer(llama, "harmless")
    ids_a, _ = tone.generate(llama, QUERIES, **GEN)
    ids_b, _ = harmless.generate(llama, QUERIES, **GEN)
    assert ids_a != ids_b  # the two objectives steer differently, so the checks below can fail
    assert mix(tone, harmless, 1.0).generate(llama, QUERIES, **GEN)[0] == ids_a
    assert mix(tone, harmless, 0.0).generate(llama, QUERIES, **GEN)[0] == ids_b
    composed = mix(tone, harmless, 0.3)
    assert [t.weight for t in composed.terms] == pytest.approx([0.3, 0.7])


def test_run_compose_on_a_tiny_model(llama, tmp_path):
    etas = (0.25, 0.75)
    results = run_compose(llama, ("tone", "harmless"), etas, out=tmp_path, **SMALL)
    for name in (
        "results.json",
        "results.md",
        "tradeoff.png",
        "generations.jsonl",
        "pairs-tone.jsonl",
        "pairs-harmless.jsonl",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [p["eta"] for p in saved["points"]] == [None, 1.0, 0.75, 0.25, 0.0]  # one entry per η, base first
    for p in saved["points"]:
        assert set(p["scores"]) == {"tone", "harmless"} and all(s["n"] == 4 for s in p["scores"].values())
        if p["eta"] is not None:
            diffs = [
                s - b
                for s, b in zip(
                    saved["per_prompt"]["scores"][p["name"]]["tone"], saved["per_prompt"]["scores"]["base"]["tone"]
                )
            ]
            assert p["vs_base"]["tone"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    # η = 1 is tone's own steerer: refit from the saved pairs, the same answers
    prefs = PreferenceSet.load(tmp_path / "pairs-tone.jsonl")
    alone = Steerer(fit_subspace(llama, prefs, batch_size=4, verbose=False), 1.0)
    queries = results["per_prompt"]["queries"]
    _, text = alone.generate(llama, queries, max_new_tokens=6, batch_size=4, seed=0, return_tokens=True)
    assert text == results["per_prompt"]["answers"]["eta=1"]
    gens = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(gens) == 4 and set(gens[0]) == {"query", "base", "eta=1", "eta=0.75", "eta=0.25", "eta=0"}
    assert "| eta=0.75 | 0.75 | 0.25 |" in (tmp_path / "results.md").read_text(encoding="utf-8")


def test_the_cli_refuses_bad_compose_input_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not be loaded"))
    for argv, message in (
        (["--compose", "tone,nonsense"], "unknown"),
        (["--compose", "tone,tone"], "twice"),
        (["--compose", "tone,harmless", "--etas", "0.5,1.5"], "strictly between"),
        (["--compose", "tone,harmless", "--etas", "a"], "comma-separated"),
        (["--compose", "tone,harmless", "--sweep", "tone"], "does not apply"),
        (["--etas", "0.5"], "--compose only"),
        (["--elicit-prefill"], "--compose only"),
    ):
        code = cli.main(["eval", "--out", str(tmp_path / "o"), *argv])
        assert code == 2 and message.lower() in capsys.readouterr().err.lower(), argv
    assert not (tmp_path / "o").exists()


def test_a_quick_compose_from_the_command_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "compose"
    argv = ["eval", "--model", tiny_dir, "--compose", "tone,harmless", "--quick", "--quiet", "--out", str(out)]
    argv += ["--n-prompts", "3", "--n-fit", "2", "--etas", "0.5", "--max-new-tokens", "5", "--alpha", "1"]
    argv += ["--elicit-prefill"]
    code = cli.main(argv)
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["n_prompts"] == 3 and [p["eta"] for p in results["points"]] == [None, 1.0, 0.5, 0.0]
    assert (out / "tradeoff.png").is_file()
    assert results["config"]["elicit_prefill"].startswith("Your answer to this query should")
