"""The `alignez` command: help, bad input caught before work, and a full run."""

import json
import subprocess
import sys

import pytest

from alignez_tl import cli


@pytest.mark.parametrize("command", ["demo", "prefs", "fit", "generate"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--seed", "--model", "--out", "--quiet"):
        assert flag in text


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_model_key_fails_before_any_work(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("alignez_tl.preferences.generate_preferences", lambda *a, **k: called.append(1))
    code, _, err = run(
        ["prefs", "--model", "no-such-model", "--query", "hi", "--out", str(tmp_path / "p.jsonl")], capsys
    )
    assert code == 2 and "unknown model 'no-such-model'" in err
    assert not called and not (tmp_path / "p.jsonl").exists()


def test_empty_queries_and_unwritable_outputs(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run(["prefs", "--queries", str(empty), "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and "no queries" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["prefs", "--query", "hi", "--out", str(blocker / "p.jsonl")], capsys)
    assert code == 2 and "not a folder" in err
    code, _, err = run(["demo", "--out", str(blocker)], capsys)
    assert code == 2 and "is a file" in err
    assert blocker.read_text() == "x"


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    out.write_text("keep me")
    code, _, err = run(["prefs", "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and out.read_text() == "keep me"
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    code, _, err = run(["demo", "--out", str(full)], capsys)
    assert code == 2 and "not empty" in err


def test_malformed_queries_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "fine"}\n{"query": \n')
    code, _, err = run(["prefs", "--queries", str(bad), "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and f"{bad}:2" in err


def test_corrupt_subspace_file_is_refused(tmp_path, capsys):
    bad = tmp_path / "s.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code, _, err = run(
        ["generate", "--subspace", str(bad), "--query", "hi", "--out", str(tmp_path / "g.jsonl")], capsys
    )
    assert code == 2 and "not a readable safetensors file" in err


def test_prefs_fit_generate_end_to_end_on_a_tiny_model(tiny_dir, tmp_path, capsys):
    prefs = tmp_path / "pairs.jsonl"
    sub = tmp_path / "sub.safetensors"
    gens = tmp_path / "gens.jsonl"
    common = ["--model", tiny_dir, "--quiet", "--seed", "1"]
    code, out, err = run(
        [
            "prefs",
            *common,
            "--query",
            "How do I bake bread?",
            "--query",
            "Hi",
            "--elicit-tokens",
            "8",
            "--response-tokens",
            "12",
            "--out",
            str(prefs),
        ],
        capsys,
    )
    assert code == 0, err
    lines = prefs.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["type"] == "header" and len(lines) >= 3
    code, out, err = run(["fit", *common, "--prefs", str(prefs), "--tau", "1.0", "--out", str(sub)], capsys)
    assert code == 0, err
    code, out, err = run(
        [
            "generate",
            *common,
            "--subspace",
            str(sub),
            "--query",
            "How do I bake bread?",
            "--alpha",
            "4",
            "--max-new-tokens",
            "6",
            "--out",
            str(gens),
        ],
        capsys,
    )
    assert code == 0, err
    header, row = [json.loads(line) for line in gens.read_text(encoding="utf-8").splitlines()]
    assert header["type"] == "header" and header["format"] == "alignez-generations"  # streamed: header first
    assert set(row) >= {"query", "base", "steered", "changed", "layers"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gens.jsonl", "pairs.jsonl", "sub.safetensors"]


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "alignez_tl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """One `alignez demo` run on the embedded model, shared by the slow tests below."""
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "alignez_tl.cli", "demo", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in proc.stdout
    return out


@pytest.mark.slow
def test_demo_on_the_embedded_model(demo_out):
    out = demo_out
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.json",
        "attribution.json",
        "generations.jsonl",
        "layer_signal.json",
        "lens.json",
        "pairs.jsonl",
        "report.html",
        "subspace.safetensors",
        "summary.json",
    ]
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4
    assert any(r["steered"] != r["base"] for r in rows)
    assert all(r["layers"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] > 0 and summary["changed"] == sum(r["changed"] for r in rows)
    from alignez_tl import AlignmentSubspace, PreferenceSet

    assert len(PreferenceSet.load(out / "pairs.jsonl")) == summary["pairs"]
    assert AlignmentSubspace.load(out / "subspace.safetensors").model["model_id"] == "smollm2-135m-instruct"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert all(
        f'id="{s}"' in html for s in ("spectrum", "layer-signal", "subspace-lens", "ablation", "attribution", "answers")
    )
    assert "not computed" not in html


@pytest.mark.slow
def test_analyze_on_the_embedded_model(demo_out, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I keep houseplants alive?\nExplain why the sky is blue.\n", encoding="utf-8")
    out = tmp_path / "analysis"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignez_tl.cli",
            "analyze",
            "--subspace",
            str(demo_out / "subspace.safetensors"),
            "--prefs",
            str(demo_out / "pairs.jsonl"),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--quiet",
            "--n-attributions",
            "1",
            "--max-components",
            "2",
            "--max-new-tokens",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.json",
        "attribution.json",
        "generations.jsonl",
        "layer_signal.json",
        "lens.json",
        "report.html",
    ]
    signal = json.loads((out / "layer_signal.json").read_text(encoding="utf-8"))
    assert signal["recommended"] and signal["rule"]
    [attribution] = json.loads((out / "attribution.json").read_text(encoding="utf-8"))
    assert attribution["n_forward_passes"] == 2
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('<img class="figure"') == 5 and "How do I keep houseplants alive?" in html
    lens = json.loads((out / "lens.json").read_text(encoding="utf-8"))
    assert lens["layers"] and lens["settings"]["n_splits"] == 20


def _pairs_file(path, mirrored=False):
    """A small pairs file written by hand: every positive ends in a shared phrase, every
    negative in another (a consistent gap), or, mirrored, each pair also reversed."""
    from alignez_tl.objectives import get_objective
    from alignez_tl.preferences import PreferencePair, PreferenceSet

    queries = [
        "How do I bake bread?",
        "How do I sleep better?",
        "How do I save money?",
        "How do I learn to swim?",
        "How do I paint a wall?",
        "How do I fix a bike?",
    ]
    pairs = [
        PreferencePair(
            q,
            f"Here is a clear, careful answer to that, step {i}. Glad to help!",
            f"No idea, figure it out {i}. Go away.",
            objective="helpful",
            index=i,
        )
        for q in queries
        for i in range(2)
    ]
    if mirrored:
        pairs += [
            PreferencePair(p.query, p.negative, p.positive, objective="helpful", index=p.index + 2) for p in pairs
        ]
    PreferenceSet(pairs, get_objective("helpful")).save(path)
    return path


def test_fit_reports_the_null_under_the_variance_rule(tiny_dir, tmp_path, capsys):
    from alignez_tl import AlignmentSubspace

    prefs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "sub.safetensors"
    code, text, err = run(
        [
            "fit",
            "--model",
            tiny_dir,
            "--prefs",
            str(prefs),
            "--tau",
            "1.0",
            "--n-null",
            "64",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "above-null" in text and "gap-share" in text and "rank rule variance" in text
    sub = AlignmentSubspace.load(out)
    assert sub.settings["rank_rule"] == "variance" and sub.settings["null_test"] is True
    assert (sub.settings["n_null"], sub.settings["null_seed"]) == (64, 3)
    assert all(layer.has_null for layer in sub.layers.values())
    # the ranks are the variance rule's, as without the null
    code, text, err = run(
        [
            "fit",
            "--model",
            tiny_dir,
            "--prefs",
            str(prefs),
            "--tau",
            "1.0",
            "--n-null",
            "0",
            "--quiet",
            "--force",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert text.strip().splitlines() == [f"wrote the subspace to {out}"]  # --quiet: the result line only
    plain = AlignmentSubspace.load(out)
    assert plain.ranks() == sub.ranks() and "n_null" not in plain.settings
    assert not any(layer.has_null for layer in plain.layers.values())


def test_fit_with_the_null_rank_rule(tiny_dir, tmp_path, capsys):
    from alignez_tl import AlignmentSubspace

    prefs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "sub.safetensors"
    code, text, err = run(
        ["fit", "--model", tiny_dir, "--prefs", str(prefs), "--tau", "1.0", "--rank-rule", "null", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    sub = AlignmentSubspace.load(out)
    assert sub.settings["rank_rule"] == "null" and sub.settings["n_null"] == 200
    assert all(layer.rank == layer.n_above_null for layer in sub.layers.values())
    assert any(layer.rank > 0 for layer in sub.layers.values())
    # pairs that also appear reversed have no mean gap: nothing beats the null, said clearly
    mirrored = _pairs_file(tmp_path / "mirrored.jsonl", mirrored=True)
    code, _, err = run(
        [
            "fit",
            "--model",
            tiny_dir,
            "--prefs",
            str(mirrored),
            "--tau",
            "1.0",
            "--quiet",
            "--rank-rule",
            "null",
            "--out",
            str(tmp_path / "none.safetensors"),
        ],
        capsys,
    )
    assert code == 2 and "no direction beat the sign-flip null" in err
    assert not (tmp_path / "none.safetensors").exists()


def test_fit_null_options_are_checked_before_loading_the_model(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(cli, "_load", no_model)
    prefs = _pairs_file(tmp_path / "pairs.jsonl")
    out = str(tmp_path / "s.safetensors")
    code, _, err = run(["fit", "--prefs", str(prefs), "--rank-rule", "null", "--n-null", "0", "--out", out], capsys)
    assert code == 2 and "--n-null >= 1" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", "--prefs", str(prefs), "--rank-rule", "svd", "--out", out])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["fit", "--prefs", str(prefs), "--n-null", "-3", "--out", out])
    assert "--n-null" in capsys.readouterr().err


def test_one_error_hierarchy_and_its_old_bases():
    from alignez_tl import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AlignezError), name
    for name in ("SubspaceFileError", "PreferenceFileError", "PromptFileError", "ModelSpecError", "EvalError"):
        assert issubclass(getattr(errors, name), ValueError), name  # `except ValueError` still catches them
    assert issubclass(errors.JudgeError, RuntimeError)


def _failing(exc):
    def command(args):
        raise exc

    return command


def test_library_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    from alignez_tl.errors import SubspaceMismatchError

    argv = ["fit", "--prefs", str(tmp_path / "p.jsonl")]
    monkeypatch.setattr(cli, "cmd_fit", _failing(SubspaceMismatchError("d_model 64 vs 32; refit on this model")))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "alignez fit: error: d_model 64 vs 32; refit on this model\n"  # no traceback
    assert cli.main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("alignez fit: error: d_model 64 vs 32; refit on this model\n")
    monkeypatch.setattr(cli, "cmd_fit", _failing(ZeroDivisionError("oops")))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops" in err and "this is a bug in alignez-tl" in err


def test_quiet_shows_no_progress_bar_of_any_library(tiny_dir, tmp_path, capfd):
    """--quiet: neither our bars nor transformers' 'Loading weights' bar reach the terminal."""
    from alignez_tl import PreferenceSet, cli

    prefs = tmp_path / "pairs.jsonl"
    PreferenceSet.from_pairs(["How do I rest?"], ["Sleep eight hours."], ["No."], "helpful").save(prefs)
    out = tmp_path / "s.safetensors"
    assert (
        cli.main(["fit", "--model", tiny_dir, "--prefs", str(prefs), "--tau", "1.0", "--quiet", "--out", str(out)]) == 0
    )
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert out.is_file()
