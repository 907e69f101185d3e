"""Fuzzing the two doors user input comes through: the file loaders and the command line.

The contract under test (docs/bad_input.md): whatever the input, a loader either
returns a value or raises an `AlignezError` that names the file, and the `alignez`
command either works or prints one error line and exits 2, never a traceback, and
leaves no partial or temporary file behind. Hypothesis draws the inputs, derandomised
(the same examples on every run) and without an example database.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignez_tl import AlignmentSubspace, PreferenceSet, cli, fit_subspace
from alignez_tl.errors import AlignezError, CLIError
from alignez_tl.preferences import read_pairs
from alignez_tl.prompts import load_prompts

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

QUERIES = ["How do I bake bread?", "What is photosynthesis?", "How do I tie a knot?", "Why is the sea salty?"]
PAIRS = [
    ("Knead the dough, let it rise, then bake it at 220 C.", "No."),
    ("Plants turn light, water and carbon dioxide into sugar.", "Figure it out."),
    ("Make a loop, pass the end through it, and pull both ends tight.", "Whatever."),
    ("Rivers carry dissolved minerals to the sea, and evaporation leaves the salt.", "Who cares."),
]


@pytest.fixture(scope="module")
def valid_files(llama, tmp_path_factory):
    """One valid file of every kind a loader reads: the seeds of the mutations."""
    folder = tmp_path_factory.mktemp("valid")
    prefs = PreferenceSet.from_pairs(QUERIES, *zip(*PAIRS), "helpful")
    prefs.save(folder / "pairs.jsonl")
    fit_subspace(llama, prefs, tau=1.0, verbose=False, layers=[0, 1]).save(folder / "sub.safetensors")
    (folder / "prompts.jsonl").write_text(
        "\n".join(json.dumps({"query": q, "category": "how-to"}) for q in ("How do I rest?", "Why is the sky blue?"))
        + "\n",
        encoding="utf-8",
    )
    (folder / "labelled.jsonl").write_text(
        "\n".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) for q, (c, r) in zip(QUERIES, PAIRS)) + "\n",
        encoding="utf-8",
    )
    return {
        name: (folder / name).read_bytes()
        for name in ("pairs.jsonl", "sub.safetensors", "prompts.jsonl", "labelled.jsonl")
    }


LOADERS = {
    "pairs.jsonl": PreferenceSet.load,
    "sub.safetensors": AlignmentSubspace.load,
    "prompts.jsonl": load_prompts,
    "labelled.jsonl": read_pairs,
}


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply byte edits: (kind, position, value) with kind 0 flip, 1 delete, 2 insert, 3 truncate."""
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            buf.append(value)
            continue
        at = pos % len(buf)
        if kind == 0:
            buf[at] ^= value or 1
        elif kind == 1:
            del buf[at]
        elif kind == 2:
            buf.insert(at, value)
        else:
            del buf[at:]
    return bytes(buf)


@FUZZ
@given(
    kind=st.sampled_from(sorted(LOADERS)),
    ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_files_load_or_raise_an_alignez_error(valid_files, tmp_path, kind, ops):
    path = tmp_path / kind
    path.write_bytes(_mutate(valid_files[kind], ops))
    try:
        LOADERS[kind](path)
    except AlignezError as exc:
        assert str(path) in str(exc) or path.name in str(exc), f"the error does not name the file: {exc}"


@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), data=st.binary(max_size=4096))
def test_random_bytes_load_or_raise_an_alignez_error(tmp_path, kind, data):
    path = tmp_path / kind
    path.write_bytes(data)
    try:
        LOADERS[kind](path)
    except AlignezError:
        pass


# --------------------------------------------------------------------------- the command line


def _options_by_command() -> dict[str, list[str]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {
        # --debug prints the traceback behind an error on purpose; --help exits 0
        name: sorted(
            s
            for action in p._actions
            for s in action.option_strings
            if s.startswith("--") and s not in ("--debug", "--help")
        )
        for name, p in sub.choices.items()
    }


OPTIONS = _options_by_command()
NASTY = [
    "",
    " ",
    "0",
    "-1",
    "1",
    "3",
    "1e30",
    "nan",
    "inf",
    "abc",
    "1,1",
    ",",
    "0.5,1.5",
    "tone,harmless",
    "99999999999999999999",
    "hi\udcff",
    "a/b",
    "/proc/self/x",
    "out/",
    "missing.jsonl",
    "FILE:pairs.jsonl",
    "FILE:sub.safetensors",
    "FILE:noise.bin",
    "FILE:folder",
]


class ModelLoadReached(CLIError):
    pass


@pytest.fixture
def cli_sandbox(valid_files, tmp_path, monkeypatch):
    """A working folder with files of every kind; loading a model stops the command there."""
    for name, data in valid_files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "noise.bin").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(512)))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder-model").mkdir()  # a checkpoint folder as far as the checks before loading can tell
    (tmp_path / "folder-model" / "config.json").write_text(
        json.dumps({"num_hidden_layers": 4, "max_position_embeddings": 256}), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)

    def stop(args):
        raise ModelLoadReached("the checks passed; loading the model (stopped here by the fuzz test)")

    monkeypatch.setattr(cli, "_load", stop)
    return tmp_path


def _listing(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))
    }


# argv that reaches the model load: the fuzz perturbs these as well as starting from nothing
SKELETONS = {
    "demo": [],
    "prefs": ["--query", "hi"],
    "fit": ["--prefs", "pairs.jsonl"],
    "generate": ["--subspace", "sub.safetensors", "--query", "hi"],
    "analyze": ["--subspace", "sub.safetensors", "--prefs", "pairs.jsonl", "--prompts", "prompts.jsonl"],
    "eval": [],
}


def test_skeletons_reach_the_model_load(cli_sandbox, capsys):
    assert sorted(SKELETONS) == sorted(OPTIONS)
    for command, args in SKELETONS.items():
        code = cli.main([command, *args, "--model", str(cli_sandbox / "folder-model"), "--out", f"{command}-out"])
        err = capsys.readouterr().err
        assert code == 2 and "loading the model (stopped here by the fuzz test)" in err, (command, err)


@FUZZ
@given(
    skeleton=st.booleans(),
    command=st.sampled_from(sorted(OPTIONS)),
    picks=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(NASTY), st.booleans()), max_size=6),
    junk=st.lists(st.text(alphabet=string.printable, max_size=12), max_size=2),
)
def test_cli_argv_never_gives_a_traceback_or_a_partial_file(cli_sandbox, capsys, skeleton, command, picks, junk):
    folder = cli_sandbox
    before = _listing(folder)
    argv = [command, *(SKELETONS[command] if skeleton else [])]
    for index, value, with_value in picks:
        options = OPTIONS[command]
        argv.append(options[index % len(options)])
        if with_value:
            argv.append(str(folder / value[5:]) if value.startswith("FILE:") else value)
    argv += junk
    if skeleton:
        argv += ["--model", str(folder / "folder-model")]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, f"alignez {argv}: {err}"
    assert code == 2, f"alignez {argv} exited {code}: {err}"
    assert _listing(folder) == before, f"alignez {argv} left files behind"
