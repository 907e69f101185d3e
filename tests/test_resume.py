"""Runs that survive interruption: streamed JSONL outputs and `--resume`.

Each test kills a run after a random number of batches (k drawn from a seeded RNG, by
making the row writer raise KeyboardInterrupt, as Ctrl-C or SIGTERM does), resumes it,
and checks that the output file is byte for byte the one an uninterrupted run writes.
"""

import json
import random

import pytest

from alignez_tl import PreferenceSet, cli, generate_preferences
from alignez_tl._stream import RowWriter, compare_headers, read_existing
from alignez_tl.errors import ResumeError
from alignez_tl.preferences import _groups

QUERIES = [
    "How do I bake bread?",
    "Hi",
    "Explain why the sky is blue.",
    "What is two plus two?",
    "Write a haiku about rain.",
    "How can I sleep better?",
    "Name a prime number.",
]


def kill_after(monkeypatch, k):
    """Make the k+1-th write of rows (the header's write not counted) raise KeyboardInterrupt."""
    real = RowWriter.write_lines
    calls = {"rows": 0}

    def write_lines(self, lines):
        if lines and json.loads(lines[0]).get("type") == "header":
            return real(self, lines)
        if calls["rows"] == k:
            raise KeyboardInterrupt
        calls["rows"] += 1
        return real(self, lines)

    monkeypatch.setattr(RowWriter, "write_lines", write_lines)
    return calls


@pytest.fixture(scope="module")
def subspace_file(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-sub")
    prefs = folder / "pairs.jsonl"
    PreferenceSet.from_pairs(
        ["How do I bake bread?", "What is rain?", "Say hi"],
        ["Mix flour, water and yeast, then knead.", "Water that falls from clouds.", "Hello! How can I help?"],
        ["No.", "Whatever.", "Go away."],
        "helpful",
    ).save(prefs)
    sub = folder / "sub.safetensors"
    assert (
        cli.main(["fit", "--model", tiny_dir, "--prefs", str(prefs), "--tau", "1.0", "--quiet", "--out", str(sub)]) == 0
    )
    return sub


def queries_file(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    return path


def test_generate_killed_at_a_random_batch_resumes_to_the_same_file(
    tiny_dir, subspace_file, tmp_path, monkeypatch, capsys
):
    argv = ["generate", "--model", tiny_dir, "--subspace", str(subspace_file), "--queries", str(queries_file(tmp_path))]
    argv += ["--quiet", "--alpha", "4", "--max-new-tokens", "5", "--batch-size", "2", "--seed", "3"]
    full = tmp_path / "full.jsonl"
    assert cli.main(argv + ["--out", str(full)]) == 0
    n_batches = -(-len(QUERIES) // 2)
    for trial, k in enumerate(random.Random(0).sample(range(n_batches), 2)):
        out = tmp_path / f"cut{trial}.jsonl"
        with monkeypatch.context() as m:
            kill_after(m, k)
            assert cli.main(argv + ["--out", str(out)]) == 130
        err = capsys.readouterr().err
        assert f"{out} keeps every completed row: rerun the same command with --resume" in err
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 + 2 * k  # the header and k whole batches
        assert cli.main(argv + ["--out", str(out), "--resume"]) == 0, capsys.readouterr().err
        assert out.read_bytes() == full.read_bytes(), f"k={k}"
    # resuming a finished file changes nothing
    assert cli.main(argv + ["--out", str(full), "--resume"]) == 0
    assert full.read_bytes() == (tmp_path / "cut0.jsonl").read_bytes()


def test_prefs_killed_at_a_random_batch_resumes_to_the_same_file(tiny_dir, tmp_path, monkeypatch, capsys):
    """Sampled (seeded) pairs: the resumed file is the uninterrupted one, and PreferenceSet.load reads it."""
    argv = ["prefs", "--model", tiny_dir, "--queries", str(queries_file(tmp_path)), "--quiet", "--seed", "5"]
    argv += ["--elicit-tokens", "8", "--response-tokens", "6", "--batch-size", "3", "--n-characteristics", "2"]
    full = tmp_path / "full.jsonl"
    assert cli.main(argv + ["--out", str(full)]) == 0
    rng = random.Random(1)
    for trial in range(2):
        k = rng.randrange(len(QUERIES))
        out = tmp_path / f"cut{trial}.jsonl"
        with monkeypatch.context() as m:
            kill_after(m, k)
            assert cli.main(argv + ["--out", str(out)]) == 130
        assert "--resume" in capsys.readouterr().err
        assert cli.main(argv + ["--out", str(out), "--resume"]) == 0, capsys.readouterr().err
        assert out.read_bytes() == full.read_bytes(), f"k={k}"
    prefs = PreferenceSet.load(full)
    assert prefs.queries == QUERIES and prefs.settings["seed"] == 5


def test_library_resume_drops_a_query_cut_between_its_lines(llama, tmp_path):
    """A file cut inside a query's group of pairs (a kill between two of its lines) resumes that query whole."""
    kwargs = dict(elicit_tokens=8, response_tokens=6, batch_size=3, n_responses=2, seed=2, verbose=False)
    full = tmp_path / "full.jsonl"
    whole = generate_preferences(llama, QUERIES[:4], out=full, **kwargs)
    assert PreferenceSet.load(full).pairs == whole.pairs
    lines = full.read_bytes().splitlines(keepends=True)
    first_group = len(_groups(whole.pairs)[0])
    assert first_group >= 2  # two samples per characteristic: a kill can fall between its lines
    for keep in (1, 2, len(lines) - 1):  # the header only; half of the first query; all but the last line
        cut = tmp_path / f"cut{keep}.jsonl"
        cut.write_bytes(b"".join(lines[:keep]) + b'{"type": "pa')  # and a partial last line
        again = generate_preferences(llama, QUERIES[:4], out=cut, resume=True, **kwargs)
        assert cut.read_bytes() == full.read_bytes()
        assert again.pairs == whole.pairs
    with pytest.raises(ResumeError, match="settings.seed"):
        generate_preferences(llama, QUERIES[:4], out=full, resume=True, **{**kwargs, "seed": 3})
    with pytest.raises(ResumeError, match="query 1"):
        generate_preferences(llama, [QUERIES[0], "Another query", *QUERIES[2:4]], out=full, resume=True, **kwargs)


def test_eval_killed_at_a_random_batch_resumes_to_the_same_files(tiny_dir, tmp_path, monkeypatch, capsys):
    argv = ["eval", "--model", tiny_dir, "--per-category", "1", "--quiet", "--elicit-tokens", "6"]
    argv += ["--response-tokens", "6", "--max-new-tokens", "5", "--alpha", "4", "--n-boot", "100"]
    argv += ["--judge", "sentiment", "--methods", "alignez,diffmean", "--batch-size", "2", "--seed", "4"]
    full = tmp_path / "full"
    assert cli.main(argv + ["--out", str(full)]) == 0, capsys.readouterr().err
    rng = random.Random(2)
    # 4 prompts: the pairs are written per query (4 writes), the generations per batch (2 writes)
    for trial, k in enumerate([rng.randrange(4), 4 + rng.randrange(2)]):
        out = tmp_path / f"cut{trial}"
        with monkeypatch.context() as m:
            kill_after(m, k)
            assert cli.main(argv + ["--out", str(out)]) == 130
        assert "--resume" in capsys.readouterr().err
        assert not (out / "results.json").exists()
        assert cli.main(argv + ["--out", str(out), "--resume"]) == 0, capsys.readouterr().err
        for name in ("pairs.jsonl", "generations.jsonl", "comparisons.jsonl", "subspace.safetensors"):
            assert (out / name).read_bytes() == (full / name).read_bytes(), (name, k)
        a, b = (json.loads((d / "results.json").read_text()) for d in (full, out))
        assert a["results"] == b["results"] and a["side_effects"] == b["side_effects"]


def test_read_existing_and_compare_headers(tmp_path):
    path = tmp_path / "x.jsonl"
    assert read_existing(path) is None
    path.write_bytes(b'{"type": "header", "settings": {"a": 1, "b": [1, 2]}}\n{"i": 0}\n{"i": 1}\n{"i"')
    found = read_existing(path)
    assert found.rows == [{"i": 0}, {"i": 1}] and found.partial
    assert found.end_of(0) == found.header_end and found.end_of(2) == len(path.read_bytes()) - 4
    compare_headers(found.header, {"type": "header", "settings": {"a": 1, "b": [1, 2]}}, path)
    with pytest.raises(ResumeError, match=r"another settings\.b \(\[1, 2\] in the file, \[1, 3\] now\)"):
        compare_headers(found.header, {"type": "header", "settings": {"a": 1, "b": [1, 3]}}, path)
    with pytest.raises(ResumeError, match=r"settings\.c"):
        compare_headers(found.header, {"type": "header", "settings": {"a": 1, "b": [1, 2], "c": 0}}, path)
    path.write_bytes(b'{"i": 0}\n')
    with pytest.raises(ResumeError, match="no header line"):
        read_existing(path)
    path.write_bytes(b'{"type": "header"}\nnot json\n{"i": 1}\n')
    with pytest.raises(ResumeError, match="line 2 is not a complete JSON line"):
        read_existing(path)


def test_a_sweep_interrupted_between_conditions_resumes_to_the_same_results(llama, tmp_path, monkeypatch):
    from alignez_tl import baselines, calibration, preferences
    from alignez_tl.efficacy import SweepConfig, run_sweep

    cfg = SweepConfig(
        task="tone",
        n_prompts=4,
        n_fit=2,
        kl_targets=(0.02, 0.08),
        n_characteristics=1,
        elicit_tokens=6,
        response_tokens=6,
        max_new_tokens=5,
        batch_size=4,
        n_boot=100,
        methods=("alignez", "diffmean"),
        null_for=("alignez",),
    )
    full = run_sweep(llama, cfg, tmp_path / "full")
    assert full["resumed_steps"] == 0 and not (tmp_path / "full" / "checkpoint").exists()

    real = calibration.calibrate_strength
    out = tmp_path / "cut"
    with monkeypatch.context() as m:  # killed while calibrating the second target (Ctrl-C)
        calls = []

        def calibrate_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        m.setattr(calibration, "calibrate_strength", calibrate_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(llama, cfg, out)
    kept = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert kept == sorted(
        ["header.json", "clock.json", "pairs.json", "base.json"]
        + [f"alignez@0.02{c}.json" for c in ("", ":mirror", ":null")]
    )
    assert not (out / "results.json").exists()

    with pytest.raises(ResumeError, match=r"another config\.n_boot \(100 in the file, 200 now\)"):
        run_sweep(llama, SweepConfig(**{**cfg.to_dict(), "n_boot": 200}), out, resume=True)

    with monkeypatch.context() as m:  # what was finished is read back, never recomputed
        recalibrated = []

        def counted(*args, **kwargs):
            recalibrated.append(1)
            return real(*args, **kwargs)

        def refuse(*args, **kwargs):
            raise AssertionError("a finished step ran again")

        m.setattr(calibration, "calibrate_strength", counted)
        m.setattr(preferences, "generate_preferences", refuse)
        m.setattr(baselines.NoSteerer, "generate", refuse)
        resumed = run_sweep(llama, cfg, out, resume=True)
    assert len(recalibrated) == 3  # alignez@0.08, diffmean@0.02, diffmean@0.08
    assert resumed["resumed_steps"] == 5  # the pairs, the base answers, alignez@0.02 and its two controls
    assert not (out / "checkpoint").exists()

    def comparable(results):
        return json.loads(
            json.dumps({k: v for k, v in results.items() if k not in ("wall_seconds", "resumed_steps")}, default=str)
        )

    assert comparable(resumed) == comparable(full)
    for name in ("generations.jsonl", "pairs.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert "resumed after an interruption: 5 finished steps read back" in (out / "results.md").read_text()


def test_a_killed_command_line_sweep_says_how_to_resume_and_resumes(tiny_dir, tmp_path, monkeypatch, capsys):
    from alignez_tl import calibration

    out = tmp_path / "sweep"
    argv = ["eval", "--sweep", "tone", "--model", tiny_dir, "--quick", "--quiet", "--methods", "diffmean"]
    argv += ["--out", str(out)]
    with monkeypatch.context() as m:

        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        m.setattr(calibration, "calibrate_strength", killed)
        assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"{out}/checkpoint/ keeps every completed row: rerun the same command with --resume" in err, err
    assert (out / "checkpoint" / "base.json").is_file() and not (out / "results.json").exists()
    assert cli.main(argv) == 2  # the interrupted folder is not overwritten by accident
    assert "is not empty" in capsys.readouterr().err
    assert cli.main(argv + ["--resume"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_steps"] == 2 and not (out / "checkpoint").exists()  # the pairs, the base answers
    assert cli.main(argv + ["--resume"]) == 2
    assert "has finished" in capsys.readouterr().err
