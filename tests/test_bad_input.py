"""The bad-input catalogue: one test per case of docs/bad_input.md.

Each case feeds one kind of bad input to the public API or the `alignez` command and
checks the exact outcome: the exception type and what its message says, that it came
before any model work, and that no output file is left half-written (or the documented
recovery: a truncation with a warning, a `--force` overwrite). The meta-test at the end
keeps this module and the docs page in step: every case id in the page's table has
exactly one `test_bNN_...` function here, and every such function has a row there.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from alignez_tl import (
    AlignmentSubspace,
    EmptySubspaceError,
    LayerSubspace,
    PreferenceSet,
    Steerer,
    SubspaceFileError,
    SubspaceMismatchError,
    cli,
    encode,
    fit_subspace,
    generate_preferences,
    hook_name,
    load_model,
    render,
)
from alignez_tl.eval import (
    HTTPJudge,
    JudgeError,
    LogprobJudge,
    load_comparisons,
    pairwise_compare,
    save_comparisons,
)
from alignez_tl.models import ModelSpecError
from alignez_tl.preferences import PreferenceFileError, PreferencePair
from alignez_tl.prompts import PromptFileError, load_prompts
from alignez_tl.subspace import FORMAT, FORMAT_VERSION, SUPPORTED_VERSIONS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_input.md"
KEY = "sk-catalogue-SECRET-0123456789"

PAIRS = [
    ("A helpful answer explains each step with an example.", "No."),
    ("Mix flour, water, salt and yeast, then knead the dough.", "Whatever, figure it out."),
    ("Plants turn light, water and carbon dioxide into sugar.", "I refuse to answer."),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sub_llama(llama):
    return fit_subspace(llama, PAIRS, tau=1.0, verbose=False, objective="helpful")


@pytest.fixture(scope="module")
def sub_gpt2(gpt2):
    return fit_subspace(gpt2, PAIRS, tau=1.0, verbose=False, objective="helpful")


@pytest.fixture(scope="module")
def saved(sub_llama, tmp_path_factory):
    """A valid subspace file and its raw parts (tensors, provenance), to corrupt."""
    from safetensors import safe_open

    path = sub_llama.save(tmp_path_factory.mktemp("saved") / "sub.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["alignez"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return path, tensors, meta


def rewrite(path, tensors, meta, **changes):
    """Write a safetensors file from `tensors` (with `changes`) and `meta` (a dict or raw str)."""
    from safetensors.torch import save_file

    tensors = {**tensors, **changes}
    header = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={"alignez": header})
    return path


@pytest.fixture
def prefs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    PreferenceSet.from_pairs([q for q, _ in PAIRS], [p for p, _ in PAIRS], ["No."] * 3, "helpful").save(path)
    return path


def run_cli(args, capsys):
    """`alignez ARGS` in this process: (exit code, stdout, stderr); argparse exits count too."""
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""

    def refuse(args):
        raise AssertionError("the model was loaded: the error came too late")

    monkeypatch.setattr(cli, "_load", refuse)


def assert_each_refused(command: str, cases, out: Path, capsys) -> None:
    """`alignez COMMAND ARGS --out OUT` exits 2 with `message` and no traceback, writing nothing, for each case."""
    for args, message in cases:
        code, _, err = run_cli([command, *args, "--out", str(out)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert not out.exists()


def assert_complete(folder: Path) -> list[str]:
    """Every file in `folder` parses completely, and no temporary file is left over."""
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        assert not name.endswith(".tmp") and not name.startswith("."), f"leftover temporary file {name}"
        path = folder / name
        if name.endswith(".jsonl"):
            text = path.read_text(encoding="utf-8")
            assert text.endswith("\n")
            for line in text.splitlines():
                json.loads(line)
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".safetensors"):
            AlignmentSubspace.load(path)
    return names


# --------------------------------------------------------------------------- wrong types


def test_b01_query_string_instead_of_list_refused(llama, sub_llama):
    with pytest.raises(TypeError, match=r"single string; wrap it in a list: \['How do I bake bread\?'\]"):
        generate_preferences(llama, "How do I bake bread?")
    with pytest.raises(TypeError, match="single string: wrap it in a list"):
        Steerer(sub_llama).generate(llama, "How do I bake bread?")
    with pytest.raises(TypeError, match="single string"):
        Steerer(sub_llama).select(llama, "How do I bake bread?")


def test_b02_alpha_string_refused(sub_llama, capsys, no_model_load):
    with pytest.raises(TypeError, match="alpha must be a number, got str"):
        Steerer(sub_llama, alpha="0.5")
    code, _, err = run_cli(["generate", "--subspace", "s.safetensors", "--query", "hi", "--alpha", "high"], capsys)
    assert code == 2 and "argument --alpha: expected a finite number, got 'high'" in err


def test_b03_float_layers_refused(llama, sub_llama, capsys, no_model_load, tmp_path):
    with pytest.raises(TypeError, match="layer indices must be ints, got 0.0"):
        fit_subspace(llama, PAIRS, layers=[0.0, 1.0])
    with pytest.raises(TypeError, match="layer indices must be ints, got 1.0"):
        Steerer(sub_llama, layers=[1.0])
    prefs = tmp_path / "p.jsonl"
    PreferenceSet.from_pairs(["q"], ["a"], ["b"]).save(prefs)
    code, _, err = run_cli(
        ["fit", "--prefs", str(prefs), "--layers", "1.5", "--out", str(tmp_path / "s.safetensors")], capsys
    )
    assert code == 2 and "--layers takes comma-separated integers, got '1.5'" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_b04_non_model_object_refused(sub_llama):
    with pytest.raises(TypeError, match=r"fit_subspace needs a TransformerLens model .* got object"):
        fit_subspace(object(), PAIRS)
    with pytest.raises(TypeError, match=re.escape("got str; load it first: model = alignez_tl.load_model('gpt2')")):
        fit_subspace("gpt2", PAIRS)
    with pytest.raises(TypeError, match="generate_preferences needs a TransformerLens model"):
        generate_preferences({"cfg": None}, ["hi"])
    with pytest.raises(TypeError, match="steering needs a TransformerLens model"):
        Steerer(sub_llama).generate(object(), ["hi"])
    with pytest.raises(ModelSpecError, match="load_model got a list"):
        load_model([1, 2])


def test_b05_wrong_pair_and_subspace_types_refused(llama, sub_llama):
    with pytest.raises(TypeError, match=r"pair 1 is not a \(positive_text, negative_text\) tuple of strings"):
        fit_subspace(llama, [("good", "bad"), ("good", 3)])
    with pytest.raises(TypeError, match="fit_subspace takes a PreferenceSet"):
        fit_subspace(llama, "good answer, bad answer")
    with pytest.raises(TypeError, match=r"got str \(load a saved one with AlignmentSubspace.load\(path\)\)"):
        Steerer("subspace.safetensors")
    with pytest.raises(TypeError, match="queries must be a list of strings, not a single string"):
        PreferenceSet.from_pairs("q", ["a"], ["b"])
    with pytest.raises(TypeError, match="negative #0 must be a string, got NoneType"):
        PreferenceSet.from_pairs(["q"], ["a"], [None])


# --------------------------------------------------------------------------- empty inputs


def test_b06_no_queries_refused(llama, sub_llama, tmp_path, capsys, no_model_load):
    with pytest.raises(ValueError, match="queries is empty; pass at least one query string"):
        generate_preferences(llama, [])
    with pytest.raises(ValueError, match="the query list is empty"):
        Steerer(sub_llama).generate(llama, [])
    blank = tmp_path / "queries.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    code, _, err = run_cli(["prefs", "--queries", str(blank), "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and "no queries: pass --query TEXT (repeatable) or --queries FILE" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_b07_empty_pair_list_refused(llama):
    with pytest.raises(EmptySubspaceError, match="no pairs given: there is nothing to fit"):
        fit_subspace(llama, [])
    empty = PreferenceSet.from_pairs([], [], [], "helpful")
    with pytest.raises(EmptySubspaceError, match="the preference set is empty"):
        fit_subspace(llama, empty)


def test_b08_empty_strings_refused(llama, sub_llama):
    with pytest.raises(ValueError, match=r"queries\[1\] is empty"):
        generate_preferences(llama, ["fine", "   "])
    with pytest.raises(ValueError, match="every query must be a non-empty string; got ''"):
        Steerer(sub_llama).generate(llama, ["fine", ""])
    # Before: "" crashed mid-capture on a chat model and gave a BOS-only activation on GPT-2.
    with pytest.raises(ValueError, match="pair 1: the negative text is empty"):
        fit_subspace(llama, [("good", "bad"), ("good", " \n")])


# --------------------------------------------------------------------------- NaN / inf


def test_b09_nan_alpha_refused(sub_llama, capsys, no_model_load):
    with pytest.raises(ValueError, match="alpha must be finite, got nan"):
        Steerer(sub_llama, alpha=float("nan"))
    code, _, err = run_cli(["generate", "--subspace", "s.safetensors", "--query", "hi", "--alpha", "nan"], capsys)
    assert code == 2 and "argument --alpha: expected a finite number, got 'nan'" in err


def test_b10_inf_weight_refused(llama, sub_llama):
    with pytest.raises(ValueError, match="weight must be finite, got inf"):
        Steerer(sub_llama, weight=math.inf)
    with pytest.raises(ValueError, match="weight must be finite, got inf"):
        Steerer.compose([Steerer(sub_llama), Steerer(sub_llama)], weights=[1.0, math.inf])
    with pytest.raises(ValueError, match="scale must be finite"):
        Steerer(sub_llama, scale=math.inf)
    with pytest.raises(ValueError, match="tau must be a number"):
        fit_subspace(llama, PAIRS, tau=float("nan"))


def test_b11_nan_subspace_construction_refused(sub_llama):
    good = sub_llama.layers[0]
    nan_dirs = good.directions.clone()
    nan_dirs[0, 0] = float("nan")
    fields = {name: getattr(good, name) for name in LayerSubspace._TENSORS}
    with pytest.raises(ValueError, match="layer 0: directions holds NaN or inf"):
        LayerSubspace(layer=0, n_pairs=good.n_pairs, n_kept=good.n_kept, **{**fields, "directions": nan_dirs})
    with pytest.raises(ValueError, match="layer 0: proj_rms holds NaN or inf"):
        LayerSubspace(
            layer=0,
            n_pairs=good.n_pairs,
            n_kept=good.n_kept,
            **{**fields, "proj_rms": torch.full_like(good.proj_rms, math.inf)},
        )
    with pytest.raises(ValueError, match="proj_rms has shape"):
        LayerSubspace(layer=0, n_pairs=good.n_pairs, n_kept=good.n_kept, **{**fields, "proj_rms": torch.ones(99)})
    with pytest.raises(ValueError, match="directions are 64 wide, but d_model is 32"):
        AlignmentSubspace(layers={0: good}, site="resid_post", d_model=32)


def test_b12_nan_in_subspace_file_refused(saved, tmp_path):
    path, tensors, meta = saved
    nan = tensors["layer.1.directions"].clone()
    nan[0, 3] = float("nan")
    bad = rewrite(tmp_path / "nan.safetensors", tensors, meta, **{"layer.1.directions": nan})
    with pytest.raises(SubspaceFileError, match=r"tensor 'layer.1.directions' holds NaN or inf"):
        AlignmentSubspace.load(bad)
    inf = torch.full_like(tensors["layer.2.proj_rms"], math.inf)
    bad = rewrite(tmp_path / "inf.safetensors", tensors, meta, **{"layer.2.proj_rms": inf})
    with pytest.raises(SubspaceFileError, match=r"tensor 'layer.2.proj_rms' holds NaN or inf"):
        AlignmentSubspace.load(bad)


def test_b13_nan_activations_reaching_fit_refused(llama):
    pos = torch.randn(5, 1, 64)
    neg = torch.randn(5, 1, 64)
    pos[3, 0, 7] = float("nan")
    with pytest.raises(
        ValueError, match=r"layer 2: the activations contain NaN or inf in 1 of 5 pairs \(first: pair 3\)"
    ):
        fit_subspace(None, (pos, neg), layers=[2])
    # NaN coming out of the model itself (here planted by a hook at layer 1)
    poison = [(hook_name("resid_post", 1), lambda act, hook: act * float("nan"))]
    with llama.hooks(fwd_hooks=poison):
        with pytest.raises(ValueError, match=r"layer 2: .*NaN or inf in 3 of 3 pairs.*dtype"):
            fit_subspace(llama, PAIRS, layers=[2, 3], verbose=False)


# --------------------------------------------------------------------------- ranges


def test_b14_layer_out_of_range_refused(llama, sub_llama, tmp_path, capsys, no_model_load):
    with pytest.raises(ValueError, match=r"layer 4 is out of range: the model has layers 0..3"):
        fit_subspace(llama, PAIRS, layers=[0, 4])
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        fit_subspace(llama, PAIRS, layers=[-1])
    with pytest.raises(ValueError, match=r"layer 9 is out of range"):
        Steerer(sub_llama, layers=[9])
    PreferenceSet.from_pairs(["q"], ["a"], ["b"]).save(tmp_path / "p.jsonl")
    code, _, err = run_cli(
        ["fit", "--prefs", str(tmp_path / "p.jsonl"), "--layers", "-1", "--out", str(tmp_path / "s.safetensors")],
        capsys,
    )
    assert code == 2 and "--layers takes comma-separated layer indices >= 0, got '-1'" in err


def test_b15_positions_out_of_range_refused(llama, sub_llama):
    with pytest.raises(ValueError, match=r"positions must be one of \('generated', 'all'\), got 'last'"):
        Steerer(sub_llama, positions="last")
    steerer = Steerer(sub_llama, alpha=1.0, layers=[1, 2])
    with pytest.raises(ValueError, match="prompt_len must be a positive int"):
        steerer.hooks(llama, prompt_len=0)
    with pytest.raises(ValueError, match="prompt_len must be a positive int"):
        steerer.hooks(llama, prompt_len=-3)
    hooks = steerer.hooks(llama, prompt_len=500)
    tokens = encode(llama, ["hello there"]).input_ids
    with pytest.raises(ValueError, match=r"prompt_len=500 does not fit a forward call of \d+ positions"):
        llama.run_with_hooks(tokens, fwd_hooks=hooks)


# --------------------------------------------------------------------------- mismatches


def test_b16_d_model_mismatch_refused(llama, monkeypatch):
    narrow = fit_subspace(None, (torch.randn(6, 1, 32), torch.randn(6, 1, 32)), layers=[1])
    assert narrow.d_model == 32
    work = []
    monkeypatch.setattr("alignez_tl.steering.capture", lambda *a, **k: work.append("capture"))
    monkeypatch.setattr("alignez_tl.generation.generate", lambda *a, **k: work.append("generate"))
    steerer = Steerer(narrow, layers=[1])
    for call in (
        lambda: steerer.generate(llama, ["hi"]),
        lambda: steerer.select(llama, ["hi"]),
        lambda: steerer.hooks(llama),
    ):
        with pytest.raises(SubspaceMismatchError, match=r"d_model 32 \(subspace\) vs 64 \(model\)"):
            call()
    assert work == []  # refused before any forward pass


def test_b17_subspace_of_another_model_refused(llama, sub_gpt2, tmp_path):
    with pytest.raises(SubspaceMismatchError, match="model id 'tiny-gpt2-4x64-seed0' vs 'tiny-llama-4x64-seed0'"):
        Steerer(sub_gpt2).generate(llama, ["hi"])
    path = sub_gpt2.save(tmp_path / "gpt2.safetensors")
    with pytest.raises(SubspaceMismatchError, match="Pass strict=False to accept a different model id"):
        AlignmentSubspace.load(path, llama)
    assert AlignmentSubspace.load(path, llama, strict=False).d_model == 64  # the documented way out


def test_b18_unknown_site_refused(llama, sub_llama):
    choices = "choose one of resid_post, resid_pre, mlp_out, attn_out"
    with pytest.raises(ValueError, match=f"unknown site 'resid_mid'; {choices}"):
        fit_subspace(llama, PAIRS, site="resid_mid")
    with pytest.raises(ValueError, match="unknown site 'resid_mid'"):
        hook_name("resid_mid", 0)
    with pytest.raises(ValueError, match="unknown site 'resid_mid'"):
        AlignmentSubspace(layers=dict(sub_llama.layers), site="resid_mid", d_model=64)


def test_b19_site_mismatch_on_load_refused(saved, llama):
    path, _, _ = saved
    with pytest.raises(SubspaceMismatchError, match="fitted at site 'resid_post', requested 'mlp_out'"):
        AlignmentSubspace.load(path, site="mlp_out")
    with pytest.raises(SubspaceMismatchError, match=r"site 'resid_post' \(subspace\) vs 'attn_out' \(requested\)"):
        AlignmentSubspace.load(path, llama, site="attn_out")


# --------------------------------------------------------------------------- subspace files


def test_b20_truncated_subspace_file_refused(saved, tmp_path, capsys, no_model_load):
    path, _, _ = saved
    data = path.read_bytes()
    for cut in (7, len(data) // 2, len(data) - 1):
        short = tmp_path / f"cut{cut}.safetensors"
        short.write_bytes(data[:cut])
        with pytest.raises(SubspaceFileError, match="is not a readable safetensors file"):
            AlignmentSubspace.load(short)
    code, _, err = run_cli(
        ["generate", "--subspace", str(short), "--query", "hi", "--out", str(tmp_path / "g.jsonl")], capsys
    )
    assert code == 2 and "not a readable safetensors file" in err and not (tmp_path / "g.jsonl").exists()


def test_b21_corrupt_subspace_file_refused(saved, tmp_path):
    from safetensors.torch import save_file

    _, tensors, meta = saved
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(SubspaceFileError):
        AlignmentSubspace.load(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))
    with pytest.raises(SubspaceFileError, match="not an alignez subspace \\(no provenance\\)"):
        AlignmentSubspace.load(plain)
    with pytest.raises(SubspaceFileError, match="the provenance JSON is corrupt"):
        AlignmentSubspace.load(rewrite(tmp_path / "json.safetensors", tensors, '{"format": "alignez-sub'))
    no_width = {k: v for k, v in meta.items() if k != "d_model"}
    with pytest.raises(SubspaceFileError, match=r"provenance header is malformed \(field 'd_model' is missing\)"):
        AlignmentSubspace.load(rewrite(tmp_path / "nod.safetensors", tensors, no_width))
    other = {**meta, "format": "something-else"}
    with pytest.raises(SubspaceFileError, match="format 'something-else', expected 'alignez-subspace'"):
        AlignmentSubspace.load(rewrite(tmp_path / "fmt.safetensors", tensors, other))


def test_b22_unknown_format_version_refused(saved, tmp_path):
    _, tensors, meta = saved
    assert meta["format"] == FORMAT and meta["version"] == FORMAT_VERSION  # the version field is written
    supported = ", ".join(map(str, SUPPORTED_VERSIONS))
    for version in (2, 0, "1", None):
        path = rewrite(tmp_path / "v.safetensors", tensors, {**meta, "version": version})
        with pytest.raises(
            SubspaceFileError,
            match=re.escape(
                f"format version {version!r} is not supported; this alignez-tl reads version(s) {supported}"
            ),
        ):
            AlignmentSubspace.load(path)


def test_b23_shape_mismatch_in_file_refused(saved, tmp_path):
    _, tensors, meta = saved
    more = json.loads(json.dumps(meta))
    more["layers"]["0"]["rank"] += 1
    with pytest.raises(SubspaceFileError, match=r"layer 0 directions has shape \(\d+, 64\), metadata says"):
        AlignmentSubspace.load(rewrite(tmp_path / "rank.safetensors", tensors, more))
    wide = {**meta, "d_model": 32}
    with pytest.raises(SubspaceFileError, match=r"directions has shape \(\d+, 64\), metadata says \(\d+, 32\)"):
        AlignmentSubspace.load(rewrite(tmp_path / "wide.safetensors", tensors, wide))
    missing = {k: v for k, v in tensors.items() if k != "layer.3.proj_rms"}
    with pytest.raises(SubspaceFileError, match="tensor 'layer.3.proj_rms' is missing"):
        AlignmentSubspace.load(rewrite(tmp_path / "miss.safetensors", missing, meta))


def test_b24_dtype_mismatch_in_file_refused(saved, tmp_path):
    _, tensors, meta = saved
    for dtype in (torch.float64, torch.float16, torch.int64):
        bad = rewrite(
            tmp_path / "dtype.safetensors",
            tensors,
            meta,
            **{"layer.0.directions": tensors["layer.0.directions"].to(dtype)},
        )
        name = str(dtype).replace("torch.", "")
        with pytest.raises(SubspaceFileError, match=f"'layer.0.directions' is {name}; the format stores float32"):
            AlignmentSubspace.load(bad)


class _Plant:
    """Unpickling this calls open(marker, "w"): proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_b25_pickle_file_refused_never_executed(saved, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(SubspaceFileError, match="looks like a pickle or torch.save file; alignez-tl never unpickles"):
        AlignmentSubspace.load(evil)
    zipped = tmp_path / "torch.safetensors"
    torch.save({"layer.0.directions": torch.zeros(2, 64)}, zipped)
    with pytest.raises(SubspaceFileError, match="looks like a pickle or torch.save file"):
        AlignmentSubspace.load(zipped)
    evil_prefs = tmp_path / "evil.jsonl"
    evil_prefs.write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(PreferenceFileError, match=r"evil.jsonl:1: not UTF-8 text"):
        PreferenceSet.load(evil_prefs)
    assert not marker.exists()

    # Valid files load with every unpickling entry point disabled.
    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to unpickle")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load"):
        monkeypatch.setattr(target, refuse)
    prefs = tmp_path / "ok.jsonl"
    PreferenceSet.from_pairs(["q"], ["a"], ["b"]).save(prefs)
    assert len(PreferenceSet.load(prefs)) == 1
    assert AlignmentSubspace.load(saved[0]).d_model == 64


_PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_b26_no_pickle_in_the_sources():
    problems = []
    for folder in ("alignez_tl", "analyses"):
        for path in sorted((ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Import):
                    problems += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLERS]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLERS:
                    problems.append(f"{where} imports from {node.module}")
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = ast.unparse(node.func.value)
                    kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if node.func.attr == "load" and owner == "torch" and kwargs.get("weights_only") != "True":
                        problems.append(f"{where} torch.load without weights_only=True")
                    if node.func.attr == "load" and owner in ("np", "numpy") and kwargs.get("allow_pickle") == "True":
                        problems.append(f"{where} np.load(allow_pickle=True)")
    assert problems == []


# --------------------------------------------------------------------------- JSONL files


def test_b27_malformed_preference_jsonl_names_the_line(prefs_file, tmp_path, capsys, no_model_load):
    lines = prefs_file.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:2] + ['{"type": "pair", "query": '] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match=re.escape(f"{broken}:3: malformed JSON")):
        PreferenceSet.load(broken)
    record = json.loads(lines[1])
    typed = tmp_path / "typed.jsonl"
    typed.write_text("\n".join([lines[0], json.dumps({**record, "index": "1"})]) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match=re.escape(f"{typed}:2: field 'index' must be int, got str")):
        PreferenceSet.load(typed)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(("\n".join(lines[:2]) + "\n").encode() + '{"query": "café"}\n'.encode("latin-1"))
    with pytest.raises(PreferenceFileError, match=re.escape(f"{latin1}:3: not UTF-8 text")):
        PreferenceSet.load(latin1)
    out = tmp_path / "s.safetensors"
    code, _, err = run_cli(["fit", "--prefs", str(broken), "--out", str(out)], capsys)
    assert code == 2 and f"{broken}:3: malformed JSON" in err and not out.exists()


def test_b28_preference_file_version_refused(prefs_file, tmp_path):
    lines = prefs_file.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    future = tmp_path / "future.jsonl"
    future.write_text("\n".join([json.dumps({**header, "version": 7})] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(
        PreferenceFileError,
        match=re.escape(f"{future}:1: format version 7 is not supported (this alignez-tl reads version 1)"),
    ):
        PreferenceSet.load(future)
    headless = tmp_path / "headless.jsonl"
    headless.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match=re.escape(f"{headless}:1: not an alignez preference file")):
        PreferenceSet.load(headless)


def test_b29_malformed_query_file_names_the_line(tmp_path, capsys, no_model_load):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "fine"}\n\n{"query": \n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=re.escape(f"{bad}:3: malformed JSON")):
        load_prompts(bad)
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"query": "fine"}\n{"query": 5}\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=re.escape(f'{typed}:2: needs a non-empty "query" string')):
        load_prompts(typed)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"first query\nsecond \xff\xfe query\n")
    with pytest.raises(PromptFileError, match=re.escape(f"{binary}:2: not UTF-8 text")):
        load_prompts(binary)
    out = tmp_path / "p.jsonl"
    code, _, err = run_cli(["prefs", "--queries", str(bad), "--out", str(out)], capsys)
    assert code == 2 and f"{bad}:3: malformed JSON" in err and not out.exists()


# --------------------------------------------------------------------------- Unicode, long inputs


UNICODE = [
    "Ça va ? 你好，世界 🙂👩🏽‍🔬",
    "مرحبا بالعالم — שלום",
    "e\u0301 (combining accent) and zero\u200bwidth",
    "one\u2028two\u2029three\u0085four\x0cfive",
]


def test_b30_unicode_queries_round_trip(llama, sub_llama, tmp_path):
    path = tmp_path / "uni.jsonl"
    PreferenceSet.from_pairs(UNICODE, [q + " ✓" for q in UNICODE], ["✗"] * len(UNICODE)).save(path)
    assert len(path.read_bytes().split(b"\n")) == len(UNICODE) + 2  # header + one line per pair + final ""
    assert [p.query for p in PreferenceSet.load(path)] == UNICODE
    qfile = tmp_path / "q.jsonl"
    body = "".join(json.dumps({"query": q}, ensure_ascii=False) + "\n" for q in UNICODE)
    qfile.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))  # with a byte-order mark, raw U+2028
    # Before: splitlines() cut the last query at U+2028 into malformed JSON, and the BOM
    # turned line 1 into a plain-text query.
    assert [p["query"] for p in load_prompts(qfile)] == [q.strip() for q in UNICODE]
    texts = Steerer(sub_llama, alpha=1.0).generate(llama, UNICODE, max_new_tokens=2)
    assert len(texts) == len(UNICODE) and all(isinstance(t, str) for t in texts)


def test_b31_long_query_truncated_with_warning(llama, sub_llama):
    long_query = "bread and butter " * 150
    text = render(llama, long_query)
    full = llama.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(full) > llama.cfg.n_ctx
    with pytest.warns(UserWarning, match=r"1 text\(s\) longer than the context \(256 tokens\) were truncated"):
        batch = encode(llama, [text])
    assert batch.input_ids[0].tolist() == full[-256:] and batch.n_truncated == 1
    with pytest.warns(UserWarning, match="truncated to their last tokens"):
        [[selection]] = Steerer(sub_llama).select(llama, [long_query])
    assert selection.query == long_query and all(math.isfinite(v) for v in selection.scores.values())


def test_b32_prompt_longer_than_context(gpt2, sub_gpt2):
    steerer = Steerer(sub_gpt2, alpha=1.0)
    long_query = "bread and butter " * 150
    # Before: GPT-2's learned positions ran out and generation died with an IndexError.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [text] = steerer.generate(gpt2, [long_query], max_new_tokens=4)
    assert isinstance(text, str)
    messages = [str(w.message) for w in caught]
    assert (
        "1 prompt(s) longer than 252 tokens were cut to their last 252 tokens, so that max_new_tokens=4 "
        "fit the model's context of 256 tokens" in messages
    )
    assert any("were truncated" in m for m in messages)  # the layer choice used the last 256 tokens
    # The log-prob judge appends its verdict prefix after the prompt: it used to overflow too.
    with pytest.warns(UserWarning, match="were truncated to their last tokens"):
        verdict = LogprobJudge(gpt2).judge(long_query, "an answer", "another answer")
    assert verdict.verdict in ("A", "B", "tie")
    with pytest.raises(ValueError, match="max_new_tokens=256 does not fit the model's context of 256 tokens"):
        steerer.generate(gpt2, ["hi"], max_new_tokens=256)
    with pytest.raises(ValueError, match="elicit_tokens=300 does not fit the model's context of 256 tokens"):
        generate_preferences(gpt2, ["hi"], elicit_tokens=300, verbose=False)


# --------------------------------------------------------------------------- filtering


def test_b33_zero_pairs_after_filtering(llama):
    with pytest.raises(
        EmptySubspaceError,
        match=r"all 3 pairs were dropped at every layer: cos\(pos, neg\) ranged "
        r"over \[.*\].*Use more distinct pairs or a higher tau",
    ):
        fit_subspace(llama, PAIRS, tau=-0.99, verbose=False)
    blank = PreferenceSet.from_pairs(["q1", "q2"], ["", "fine"], ["no", "  "], "helpful")
    with pytest.raises(EmptySubspaceError, match="the preference set is empty"):
        fit_subspace(llama, blank.filter_empty())


def test_b34_rank_deficient_differences(llama):
    same = [("the same answer", "the same answer")] * 4
    with pytest.raises(EmptySubspaceError, match=r"all 4 pairs.*\(or the differences were all zero\)"):
        fit_subspace(llama, same, tau=1.0, verbose=False)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 1, 64, generator=g)
    v = torch.randn(64, generator=g)
    sub = fit_subspace(None, (base + v, base), layers=[0], variance=0.999, rank=None)
    assert sub.layers[0].rank == 1  # one real direction, no noise directions
    assert float(sub.layers[0].directions[0] @ (v / v.norm())) == pytest.approx(1.0, abs=1e-5)
    assert fit_subspace(None, (base + v, base), layers=[0], rank=5).layers[0].rank == 1  # capped


# --------------------------------------------------------------------------- HTTP judge


class _JudgeServer(ThreadingHTTPServer):
    daemon_threads = True


def _completion(text):
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def judge_server():
    """Start a local OpenAI-style endpoint: `start(reply)` with reply(handler) -> (status, body, delay)."""
    servers = []

    def start(reply):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, delay = reply(self)
                time.sleep(delay)
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        server = _JudgeServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_b35_judge_unreachable(judge_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = HTTPJudge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01, timeout=2)
    start = time.monotonic()
    with pytest.raises(
        JudgeError, match=r"failed after 2 attempt\(s\): connection refused \(is the server running\?\)"
    ):
        judge.judge("q", "a", "b")
    assert time.monotonic() - start < 2.0


def test_b36_judge_timeout(judge_server):
    url = judge_server(lambda h: (200, _completion("A"), 1.0))
    judge = HTTPJudge(url, "m", timeout=0.2, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): timed out after 0.2s"):
        judge.judge("q", "a", "b")
    assert time.monotonic() - start < 1.0


def test_b37_judge_garbage(judge_server):
    replies = iter([(200, "<html>not json</html>", 0), (200, _completion("I would say answer A"), 0)])
    url = judge_server(lambda h: next(replies))
    with pytest.raises(JudgeError, match=r"after 2 attempt\(s\): unparseable verdict 'I would say answer A'"):
        HTTPJudge(url, "m", retries=1, backoff=0.01).judge("q", "a", "b")
    url = judge_server(lambda h: (200, {"unexpected": True}, 0))
    with pytest.raises(JudgeError, match="the reply is not a chat completion"):
        HTTPJudge(url, "m", retries=0).judge("q", "a", "b")
    out = pairwise_compare(HTTPJudge(url, "m", retries=0), ["q"], ["a"], ["b"], on_error="record")
    assert out[0].outcome == "error" and "not a chat completion" in out[0].error


def test_b38_judge_api_key_never_leaks(judge_server, tmp_path, caplog):
    def echo(handler):  # a hostile server that quotes the credentials back everywhere
        auth = handler.headers["Authorization"]
        return (500, {"error": f"overloaded; you sent {auth}"}, 0)

    url = judge_server(echo)
    judge = HTTPJudge(url, "m", KEY, retries=1, backoff=0.01)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as err:
            judge.judge("q", "a", "b")
        garbage = judge_server(lambda h: (200, _completion(f"maybe {h.headers['Authorization']}"), 0))
        comps = pairwise_compare(HTTPJudge(garbage, "m", KEY, retries=0), ["q"], ["a"], ["b"], on_error="record")
    assert "you sent Bearer ***" in str(err.value) and caplog.records  # the server did get it, the retry was logged
    saved = tmp_path / "comparisons.jsonl"
    save_comparisons(saved, comps)
    assert load_comparisons(saved)[0].outcome == "error"
    texts = [
        str(err.value),
        "".join(traceback.format_exception(err.value)),
        caplog.text,
        saved.read_text(),
        repr(judge),
        str(judge),
        json.dumps(judge.config()),
        repr(vars(judge)),
        comps[0].error,
    ]
    for text in texts:
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(judge)


def test_b39_http_judge_unconfigured_refused_before_work(tmp_path, capsys, monkeypatch, no_model_load):
    for var in ("ALIGNEZ_JUDGE_BASE_URL", "ALIGNEZ_JUDGE_MODEL", "ALIGNEZ_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", "--judge", "http", "--out", str(out)], capsys)
    assert (
        code == 2 and "--judge http: HTTPJudge needs a base URL: pass base_url=... or set ALIGNEZ_JUDGE_BASE_URL" in err
    )
    assert not out.exists()
    monkeypatch.setenv("ALIGNEZ_JUDGE_BASE_URL", "ftp://judge.example")
    monkeypatch.setenv("ALIGNEZ_JUDGE_MODEL", "m")
    code, _, err = run_cli(["eval", "--judge", "http", "--out", str(out)], capsys)
    assert code == 2 and "base_url must start with http:// or https://" in err and not out.exists()


# --------------------------------------------------------------------------- the command line


def test_b40_ctrl_c_leaves_only_complete_files(tiny_dir, tmp_path):
    out = tmp_path / "run"
    argv = [
        "demo",
        "--model",
        tiny_dir,
        "--out",
        str(out),
        "--no-report",
        "--n-queries",
        "2",
        "--n-characteristics",
        "1",
        "--elicit-tokens",
        "8",
        "--response-tokens",
        "8",
        "--max-new-tokens",
        "200",
        "--batch-size",
        "1",
        "--threads",
        "1",
    ]  # steps 1-2: well under 1 s
    # SIGINT as Python's default handler takes it, even when this test's own parent ignores it.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from alignez_tl.cli import main; sys.exit(main({argv!r}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err_file, text=True, env=env, cwd=tmp_path
        )
        try:
            seen = []
            for line in proc.stdout:  # wait until it is generating, after two files were written
                seen.append(line)
                if line.startswith("[3/5]"):
                    proc.send_signal(signal.SIGINT)
                    break
            rest, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = err_path.read_text()
    assert any(line.startswith("[3/5]") for line in seen), "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "alignez demo: interrupted; files already written are complete"
    names = assert_complete(out)
    assert (
        {"pairs.jsonl", "subspace.safetensors"}
        <= set(names)
        <= {"pairs.jsonl", "subspace.safetensors", "generations.jsonl", "summary.json"}
    )
    assert "summary.json" not in names  # it was interrupted before the end


def test_b41_existing_output_needs_force(tiny_dir, prefs_file, tmp_path, capsys):
    out = tmp_path / "sub.safetensors"
    out.write_text("keep me")
    out.chmod(0o640)
    args = ["fit", "--model", tiny_dir, "--prefs", str(prefs_file), "--tau", "1.0", "--quiet", "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and f"{out} exists; pass --force to overwrite it" in err and out.read_text() == "keep me"
    code, stdout, err = run_cli(args + ["--force"], capsys)
    assert code == 0, err
    assert AlignmentSubspace.load(out).site == "resid_post"  # replaced by a whole subspace
    assert out.stat().st_mode & 0o777 == 0o640  # the overwritten file keeps its permissions
    umask = os.umask(0)
    os.umask(umask)
    assert prefs_file.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file: as open() makes it, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "sub.safetensors"]  # no .tmp left
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, _, err = run_cli(["demo", "--model", tiny_dir, "--out", str(folder)], capsys)
    assert code == 2 and "is not empty; pass --force to write into it" in err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_b42_bad_numeric_cli_options_refused(tmp_path, capsys, no_model_load):
    cases = [
        (
            ["generate", "--subspace", "s", "--query", "q", "--max-new-tokens", "0"],
            "argument --max-new-tokens: expected a positive integer, got 0",
        ),
        (["prefs", "--query", "q", "--batch-size", "-2"], "argument --batch-size: expected a positive integer, got -2"),
        (
            ["prefs", "--query", "q", "--n-characteristics", "three"],
            "argument --n-characteristics: expected a positive integer, got 'three'",
        ),
        (["prefs", "--query", "q", "--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got '1.5'"),
        (["fit", "--prefs", "p.jsonl", "--tau", "2"], "argument --tau: expected a number in (-1, 1], got '2'"),
        (["eval", "--coef", "inf"], "argument --coef: expected a finite number, got 'inf'"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(argv + ["--out", str(tmp_path / "o")], capsys)
        assert code == 2 and message in err, (argv, err)
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_b43_bad_model_spec_refused_before_work(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("alignez_tl.preferences.generate_preferences", lambda *a, **k: called.append(1))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\x00")
    for spec, message in (
        (str(a_file), "is a file; pass the folder that holds config.json"),
        ("no-such-model", "unknown model 'no-such-model'"),
    ):
        out = tmp_path / "p.jsonl"
        code, _, err = run_cli(["prefs", "--model", spec, "--query", "hi", "--out", str(out)], capsys)
        assert code == 2 and message in err and not out.exists()
        # a command with an output folder removes the folder it made for nothing
        folder = tmp_path / "new" / "demo"
        code, _, err = run_cli(["demo", "--model", spec, "--quiet", "--out", str(folder)], capsys)
        assert code == 2 and message in err and not (tmp_path / "new").exists()
    assert not called


def test_b44_eval_layer_out_of_range_refused(tiny_dir, tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("alignez_tl.preferences.generate_preferences", lambda *a, **k: called.append(1))
    out = tmp_path / "eval"
    code, _, err = run_cli(
        [
            "eval",
            "--model",
            tiny_dir,
            "--quiet",
            "--per-category",
            "1",
            "--judge",
            "profanity",
            "--layer",
            "4",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and "--layer 4 is out of range: the model has layers 0..3" in err
    assert not called and not out.exists()  # nothing written, and the folder it made is gone
    out.mkdir()  # a folder that was there before stays
    code, _, err = run_cli(
        [
            "eval",
            "--model",
            tiny_dir,
            "--quiet",
            "--per-category",
            "1",
            "--judge",
            "profanity",
            "--layer",
            "4",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and out.is_dir() and list(out.iterdir()) == []


def test_b45_blank_or_non_utf8_query_refused(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("alignez_tl.cli._load", lambda args: called.append(1))
    out = tmp_path / "p.jsonl"
    for query, message in (("   ", "empty or only whitespace"), ("hi\udcff", "is not valid UTF-8")):
        code, _, err = run_cli(["prefs", "--query", query, "--out", str(out)], capsys)
        assert code == 2 and message in err and "Traceback" not in err and not out.exists()
    assert not called


def test_b46_cache_env_pointing_at_a_file_refused(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    monkeypatch.setenv("ALIGNEZ_CACHE", str(a_file))
    out = tmp_path / "p.jsonl"
    code, _, err = run_cli(["prefs", "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and "is a file; point it at a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "not a folder" and not out.exists()


def test_b47_deeply_nested_json_refused_with_the_file(tmp_path, capsys):
    from safetensors.torch import save_file

    deep = "[" * 100_000 + "]" * 100_000
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"query": ' + deep + "}\n", encoding="utf-8")
    code, _, err = run_cli(["prefs", "--queries", str(queries), "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and f"{queries}:1: JSON nested too deeply" in err and "Traceback" not in err
    with pytest.raises(PreferenceFileError, match=r":1: JSON nested too deeply"):
        PreferenceSet.load(queries)
    sub = tmp_path / "s.safetensors"
    save_file({"x": torch.zeros(1)}, str(sub), metadata={"alignez": deep})
    with pytest.raises(SubspaceFileError, match="nested too deeply"):
        AlignmentSubspace.load(sub)


def test_b48_malformed_labelled_pair_file_names_the_line(tmp_path, capsys, no_model_load):
    good = json.dumps({"prompt": "How do I bake bread?", "chosen": "Knead, rise, bake.", "rejected": "No."})
    cases = {
        "missing.jsonl": (['{"prompt": "q", "chosen": "a"}'], "missing field: one of 'rejected'"),
        "empty_text.jsonl": (['{"prompt": "q", "chosen": "a", "rejected": " "}'], "field 'rejected' is empty"),
        "same.jsonl": (['{"prompt": "q", "chosen": "a", "rejected": "a"}'], "are the same text"),
        "dup.jsonl": ([good], "duplicate of the pair on line 1"),
        "list.jsonl": (["[1, 2]"], "expected a JSON object, got list"),
    }
    for name, (lines, message) in cases.items():
        path = tmp_path / name
        path.write_text("\n".join([good, ""] + lines) + "\n", encoding="utf-8")
        with pytest.raises(PreferenceFileError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
            PreferenceSet.from_labelled(path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((good + "\n").encode() + '{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(PreferenceFileError, match=re.escape(f"{latin}:2: not UTF-8 text")):
        PreferenceSet.from_labelled(latin)
    bad = tmp_path / "missing.jsonl"
    out = tmp_path / "run"
    code, _, err = run_cli(["eval", "--pairs-file", str(bad), "--out", str(out)], capsys)
    assert code == 2 and f"{bad}:3: missing field" in err and not out.exists()
    code, _, err = run_cli(["eval", "--sweep", "tone", "--pairs-file", str(bad), "--out", str(out)], capsys)
    assert code == 2 and f"{bad}:3: missing field" in err and not out.exists()


# --------------------------------------------------------------------------- interrupted runs and --resume


def _tiny_subspace(tiny_dir, prefs_file, tmp_path) -> Path:
    sub = tmp_path / "sub.safetensors"
    argv = ["fit", "--model", tiny_dir, "--prefs", str(prefs_file), "--tau", "1.0", "--quiet", "--out", str(sub)]
    assert cli.main(argv) == 0
    return sub


def _generate_argv(tiny_dir, sub, out, *queries, batch_size=1, max_new=4):
    argv = ["generate", "--model", tiny_dir, "--subspace", str(sub), "--out", str(out), "--quiet"]
    argv += ["--alpha", "4", "--max-new-tokens", str(max_new), "--batch-size", str(batch_size)]
    for q in queries:
        argv += ["--query", q]
    return argv


def test_b60_resume_header_mismatch_refused(tiny_dir, prefs_file, tmp_path, capsys):
    sub = _tiny_subspace(tiny_dir, prefs_file, tmp_path)
    out = tmp_path / "gens.jsonl"
    argv = _generate_argv(tiny_dir, sub, out, "How do I bake bread?", "Hi")
    assert run_cli(argv, capsys)[0] == 0
    before = out.read_bytes()
    changed = [a if a != "4" else "5" for a in argv]  # --alpha 5
    code, _, err = run_cli(changed + ["--resume"], capsys)
    last = err.strip().splitlines()[-1]  # one line (after the model's loading bar)
    assert code == 2 and "Traceback" not in err
    assert last.startswith(f"alignez generate: error: cannot resume {out}: it was written with another settings.alpha")
    assert "(4.0 in the file, 5.0 now)" in err and "--force instead of --resume" in err
    assert out.read_bytes() == before  # untouched
    pairs = tmp_path / "pairs-out.jsonl"
    prefs = ["prefs", "--model", tiny_dir, "--query", "Hi", "--elicit-tokens", "4", "--response-tokens", "4"]
    prefs += ["--quiet", "--out", str(pairs)]
    assert run_cli(prefs, capsys)[0] == 0
    code, _, err = run_cli(prefs + ["--resume", "--seed", "1"], capsys)
    assert code == 2 and "another settings.seed (0 in the file, 1 now)" in err
    code, _, err = run_cli(prefs + ["--resume", "--objective", "harmless"], capsys)
    assert code == 2 and "it was written with another objective" in err


def test_b61_resume_with_force_refused(tmp_path, capsys, no_model_load):
    out = tmp_path / "gens.jsonl"
    for argv in (
        ["generate", "--subspace", str(tmp_path / "s.safetensors"), "--query", "Hi", "--out", str(out)],
        ["prefs", "--query", "Hi", "--out", str(out)],
        ["eval", "--out", str(tmp_path / "run")],
    ):
        code, _, err = run_cli(argv + ["--resume", "--force"], capsys)
        assert code == 2 and "--resume and --force contradict each other" in err, err
    code, _, err = run_cli(["eval", "--resume"], capsys)
    assert code == 2 and "--resume needs --out" in err
    code, _, err = run_cli(["eval", "--sweep", "tone", "--resume", "--force", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--resume and --force contradict each other" in err
    finished = tmp_path / "done"  # a sweep that wrote its results has no checkpoint left to continue
    finished.mkdir()
    (finished / "results.json").write_text("{}\n")
    code, _, err = run_cli(["eval", "--sweep", "tone", "--resume", "--out", str(finished)], capsys)
    assert code == 2 and f"the sweep in {finished} has finished" in err, err
    code, _, err = run_cli(["eval", "--compose", "tone,harmless", "--resume", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--resume does not apply to --compose" in err
    assert not out.exists() and not (tmp_path / "run").exists()


def test_b62_prompt_over_max_prompt_tokens_refused(tiny_dir, prefs_file, llama, tmp_path, capsys):
    from alignez_tl.errors import PromptTooLongError
    from alignez_tl.generation import generate

    sub = _tiny_subspace(tiny_dir, prefs_file, tmp_path)
    long_query = "tell me about bread " * 40
    out = tmp_path / "gens.jsonl"
    argv = _generate_argv(tiny_dir, sub, out, "Hi", long_query) + ["--max-prompt-tokens", "64"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # one line (after the model's loading bar)
    assert re.match(r"alignez generate: error: query 1 \(counting from 0\) has \d{3,} tokens; the limit ", last)
    assert "--max-prompt-tokens) is 64" in last
    assert not out.exists()  # refused before the output was opened
    pairs = tmp_path / "pairs-out.jsonl"
    argv = ["prefs", "--model", tiny_dir, "--query", long_query, "--max-prompt-tokens", "64", "--out", str(pairs)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "query 0 (counting from 0) has" in err and not pairs.exists()
    with pytest.raises(PromptTooLongError, match="query 1 .* has [0-9,]+ tokens"):
        generate(llama, ["Hi", long_query], max_prompt_tokens=64)
    with pytest.raises(PromptTooLongError, match="query 0"):
        generate_preferences(llama, [long_query], max_prompt_tokens=64, verbose=False)


def test_b63_sigterm_keeps_complete_rows(tiny_dir, prefs_file, tmp_path):
    sub = _tiny_subspace(tiny_dir, prefs_file, tmp_path)
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"Question number {i}: how do I bake bread?\n" for i in range(40)))
    out = tmp_path / "gens.jsonl"
    argv = ["generate", "--model", tiny_dir, "--subspace", str(sub), "--queries", str(queries), "--out", str(out)]
    argv += ["--quiet", "--alpha", "4", "--max-new-tokens", "150", "--batch-size", "1", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignez_tl.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 3:  # the header and two rows
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"alignez generate: interrupted; {out} keeps every completed row: rerun the same command with --resume "
        "to continue"
    )
    data = out.read_bytes()
    assert data.endswith(b"\n")  # only complete rows
    header, *rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert header["type"] == "header" and 2 <= len(rows) < 40
    assert [r["query"] for r in rows] == queries.read_text().splitlines()[: len(rows)]


def test_b64_truncated_last_line_dropped_on_resume(tiny_dir, prefs_file, tmp_path, capsys):
    sub = _tiny_subspace(tiny_dir, prefs_file, tmp_path)
    queries = ["How do I bake bread?", "Hi", "What is rain?"]
    full = tmp_path / "full.jsonl"
    assert run_cli(_generate_argv(tiny_dir, sub, full, *queries), capsys)[0] == 0
    lines = full.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # header, row 0, half of row 1
    code, stdout, err = run_cli(_generate_argv(tiny_dir, sub, cut, *queries) + ["--resume"], capsys)
    assert code == 0, err
    assert cut.read_bytes() == full.read_bytes()
    assert "(1 kept from before)" in stdout


# --------------------------------------------------------------------------- refusals before any work (round 3)


def test_b49_seed_out_of_range_refused(tmp_path, capsys, no_model_load):
    out = tmp_path / "g.jsonl"
    for seed in ("99999999999999999999", "-1", str(2**32)):
        code, _, err = run_cli(
            ["generate", "--subspace", "s", "--query", "q", "--seed", seed, "--out", str(out)], capsys
        )
        assert code == 2 and f"argument --seed: expected an integer in 0..4294967295, got {int(seed)}" in err
        assert "Traceback" not in err and not out.exists()
    from alignez_tl.generation import seeded
    from alignez_tl.settings import PreferenceSettings

    with pytest.raises(ValueError, match=r"seed must be in 0\.\.4294967295, got -1"):
        PreferenceSettings(seed=-1)
    with pytest.raises(ValueError, match="seed must be an int in 0..4294967295"):
        with seeded(10**20):
            pass


def test_b50_options_beyond_the_models_context_or_depth_refused_before_loading(
    tiny_dir, tmp_path, capsys, no_model_load
):
    sub = tmp_path / "s.safetensors"
    sub.write_bytes(b"unused: refused before the file is read")
    out = tmp_path / "out.jsonl"
    cases = [
        (
            ["generate", "--subspace", str(sub), "--query", "q", "--max-new-tokens", "256"],
            "--max-new-tokens 256 does not fit",
        ),
        (["prefs", "--query", "q", "--elicit-tokens", "300"], "--elicit-tokens 300 does not fit"),
        (["fit", "--prefs", str(sub), "--layers", "1,4"], "--layers 4 is out of range: the model has layers 0..3"),
    ]
    for args, message in cases:
        code, _, err = run_cli([*args, "--model", tiny_dir, "--out", str(out)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not out.exists()
    assert (
        "context of 256 tokens (the prompt needs at least one): use a value below 256"
        in run_cli(
            ["generate", "--model", tiny_dir, "--subspace", str(sub), "--query", "q", "--max-new-tokens", "999"], capsys
        )[2]
    )


def test_b51_model_folder_without_config_refused(tmp_path, capsys, no_model_load):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x00")
    out = tmp_path / "p.jsonl"
    code, _, err = run_cli(["prefs", "--model", str(folder), "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and f"the folder {str(folder)!r} holds no config.json" in err and not out.exists()
    with pytest.raises(ModelSpecError, match="holds no config.json"):
        load_model(str(folder), verbose=False)


def test_b52_hub_name_neither_cached_nor_reachable_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelSpecError, match="not in the local Hugging Face cache and the hub is switched off"):
        load_model("nobody/no-such-model", verbose=False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "p.jsonl"
    code, _, err = run_cli(["prefs", "--model", "nobody/no-such-model", "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and "http://127.0.0.1:9 cannot be reached" in err and "pass the local folder" in err
    assert "Traceback" not in err and not out.exists()
    assert time.monotonic() - start < 30  # transformers alone retries for about a minute


def test_b53_subspace_file_without_layers_or_with_a_negative_layer_refused(saved, tmp_path):
    path, tensors, meta = saved
    empty = rewrite(tmp_path / "empty.safetensors", {}, {**meta, "layers": {}})
    with pytest.raises(SubspaceFileError, match="it lists no layers; a subspace file holds at least one"):
        AlignmentSubspace.load(empty)
    first = sorted(meta["layers"], key=int)[0]
    negative = {
        k.replace(f"layer.{first}.", "layer.-1."): v for k, v in tensors.items() if k.startswith(f"layer.{first}.")
    }
    neg = rewrite(tmp_path / "neg.safetensors", negative, {**meta, "layers": {"-1": meta["layers"][first]}})
    with pytest.raises(SubspaceFileError, match="layer -1 is negative; layers are numbered from 0"):
        AlignmentSubspace.load(neg)
    good = AlignmentSubspace.load(path)
    with pytest.raises(ValueError, match="needs at least one layer"):
        AlignmentSubspace(layers={}, site=good.site, d_model=good.d_model)


def test_b54_output_folder_that_only_looks_writable_refused_before_work(tmp_path, capsys, monkeypatch, no_model_load):
    # os.access says yes to root everywhere (/sys, /proc, read-only mounts): only a real file proves it
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    code, _, err = run_cli(["prefs", "--query", "hi", "--out", "/proc/self/pairs.jsonl"], capsys)
    assert code == 2 and "cannot write in /proc/self" in err and "Traceback" not in err


def test_b55_second_run_to_the_same_output_refused(tiny_dir, prefs_file, tmp_path, capsys):
    out = tmp_path / "sub.safetensors"
    lock = tmp_path / ".sub.safetensors.alignez-lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(other.pid))  # a live run holds the output
        args = ["fit", "--model", tiny_dir, "--prefs", str(prefs_file), "--tau", "1.0", "--quiet", "--out", str(out)]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and f"{out} is being written by another alignez run (process {other.pid})" in err
        assert not out.exists() and lock.read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    # the lock of a process that is gone (killed with SIGKILL) is taken over, and removed at the end
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert AlignmentSubspace.load(out).site == "resid_post" and not lock.exists()


def test_b56_symlinked_output_is_written_through(tiny_dir, prefs_file, tmp_path, capsys):
    target = tmp_path / "store" / "helpful.safetensors"
    target.parent.mkdir()
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target)  # dangling: the first run creates the target
    args = ["fit", "--model", tiny_dir, "--prefs", str(prefs_file), "--tau", "1.0", "--quiet", "--out", str(link)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    first = target.read_bytes()
    code, _, err = run_cli(args + ["--force"], capsys)
    assert code == 0, err
    assert link.is_symlink() and target.read_bytes() == first  # replaced through the link, same fit
    assert sorted(p.name for p in target.parent.iterdir()) == ["helpful.safetensors"]


def test_b57_stale_conversion_folder_removed(tmp_path, monkeypatch):
    from alignez_tl import models

    monkeypatch.setenv("ALIGNEZ_CACHE", str(tmp_path))
    folder = tmp_path / "models"
    done = folder / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".smollm2-135m-instruct-{dead.pid}-x1y2"
    live = folder / f".smollm2-135m-instruct-{os.getpid()}-a3b4"
    old = folder / ".smollm2-135m-instruct-qwerty"  # a release without the pid in the name
    other = folder / f".qwen2.5-coder-0.5b-instruct-{dead.pid}-zz"
    for d in (stale, live, old, other):
        (d / "model").mkdir(parents=True)
        (d / "model" / "part.bin").write_bytes(b"\x00" * 1024)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert models._convert_embedded(models.EMBEDDED_MODELS["smollm2-135m-instruct"], verbose=False) == done
    assert not stale.exists() and not old.exists()
    assert live.exists() and other.exists()  # a conversion under way, and another model's folder


def test_b58_compose_refusals_before_any_work(tmp_path, capsys, no_model_load):
    out = tmp_path / "compose"
    cases = [
        (["--compose", "tone"], "compose takes exactly two objectives, got 1"),
        (["--compose", "tone,tone"], "compose needs two different objectives, got 'tone' twice"),
        (["--compose", "tone,nosuch"], "nosuch"),
        (["--compose", "tone,harmless", "--etas", "0.5,1.5"], "etas must be numbers strictly between 0 and 1"),
        (["--compose", "tone,harmless", "--etas", "half"], "--etas takes comma-separated numbers, got 'half'"),
        (["--compose", "tone,harmless", "--sweep", "tone"], "--sweep does not apply to --compose"),
    ]
    assert_each_refused("eval", cases, out, capsys)


def test_b59_duplicate_layers_refused(tmp_path, capsys, no_model_load, prefs_file):
    out = tmp_path / "s.safetensors"
    code, _, err = run_cli(["fit", "--prefs", str(prefs_file), "--layers", "1,2,1", "--out", str(out)], capsys)
    assert code == 2 and "--layers lists layer 1 more than once ('1,2,1'); give each layer once" in err
    assert not out.exists()


def test_b75_cache_folder_not_writable_refused(tmp_path, capsys, monkeypatch):
    from alignez_tl import models

    monkeypatch.setenv("ALIGNEZ_CACHE", "/proc/self/alignez-cache")
    out = tmp_path / "p.jsonl"
    monkeypatch.setattr(models.EmbeddedModel, "package_dirs", lambda self: [tmp_path])  # the wheel is "installed"
    code, _, err = run_cli(["prefs", "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and "cannot convert smollm2-135m-instruct into the cache folder /proc/self/alignez-cache" in err
    assert "point $ALIGNEZ_CACHE at a writable folder" in err and "Traceback" not in err and not out.exists()


def test_b76_query_file_that_is_a_folder_refused(tmp_path, capsys, no_model_load):
    folder = tmp_path / "queries"
    folder.mkdir()
    code, _, err = run_cli(["prefs", "--queries", str(folder), "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and f"{folder} is a folder; pass a prompts file" in err
    with pytest.raises(PromptFileError, match="is a folder"):
        load_prompts(folder)


def test_b77_file_output_ending_in_a_slash_refused(tmp_path, capsys, no_model_load, prefs_file):
    out = str(tmp_path / "sub") + "/"
    code, _, err = run_cli(["fit", "--prefs", str(prefs_file), "--out", out], capsys)
    assert code == 2 and "ends with a slash, which names a folder; give a file path inside it" in err
    assert not (tmp_path / "sub").exists()


def test_b78_unknown_objective_refused_before_loading(tmp_path, capsys, no_model_load):
    for cmd in (["demo", "--out", str(tmp_path / "d")], ["prefs", "--query", "hi", "--out", str(tmp_path / "p.jsonl")]):
        code, _, err = run_cli([*cmd, "--objective", "nonsense"], capsys)
        assert code == 2 and "unknown objective 'nonsense'; valid: helpful" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_b79_wrong_kind_of_file_refused(tmp_path, capsys, no_model_load, saved, prefs_file):
    sub_path = saved[0]
    code, _, err = run_cli(["fit", "--prefs", str(sub_path), "--out", str(tmp_path / "s.safetensors")], capsys)
    assert code == 2 and "not UTF-8 text; a preference file is JSONL written by PreferenceSet.save" in err
    code, _, err = run_cli(
        ["generate", "--subspace", str(prefs_file), "--query", "hi", "--out", str(tmp_path / "g.jsonl")], capsys
    )
    assert code == 2 and f"{prefs_file} is not a readable safetensors file" in err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_b80_steering_layers_without_directions_refused(sub_llama):
    import dataclasses

    layer = sub_llama.layer_indices[0]
    ls = sub_llama.layers[layer]
    empty = dataclasses.replace(
        ls,
        directions=ls.directions[:0],
        proj_mean=ls.proj_mean[:0],
        proj_rms=ls.proj_rms[:0],
        mean_diff_proj=ls.mean_diff_proj[:0],
    )
    sub = dataclasses.replace(sub_llama, layers={**sub_llama.layers, layer: empty})
    with pytest.raises(
        ValueError, match=re.escape(f"layers ({layer},) have no directions (every pair was filtered out there)")
    ):
        Steerer(sub, layers=[layer])
    other = sub_llama.layer_indices[1]
    assert Steerer(sub, layers=[layer, other]).describe()  # one layer with directions is enough


def test_b81_bad_sweep_options_refused_before_loading(tmp_path, capsys, no_model_load):
    out = tmp_path / "e"
    cases = [
        (["--sweep", "nosuch"], "argument --sweep: invalid choice: 'nosuch'"),
        (["--sweep", "tone", "--kl-targets", "abc"], "--kl-targets takes comma-separated numbers, got 'abc'"),
        (["--sweep", "tone", "--kl-targets", "-1"], "kl_targets must be positive numbers"),
        (["--methods", "nosuch"], "--methods takes a comma-separated subset of"),
        (
            ["--sweep", "tone", "--pairs-file", "p.jsonl", "--elicit-prefill"],
            "--elicit-prefill applies to self-generated pairs, not to --pairs-file",
        ),
    ]
    assert_each_refused("eval", cases, out, capsys)


def test_b82_bad_scale_refused_before_loading(tmp_path, capsys, no_model_load, saved):
    out = tmp_path / "g.jsonl"
    for scale, message in (
        ("-1", "a numeric scale must be positive, got -1.0"),
        ("abc", "--scale takes fitted, paper or a positive number, got 'abc'"),
    ):
        code, _, err = run_cli(
            ["generate", "--subspace", str(saved[0]), "--query", "q", "--scale", scale, "--out", str(out)], capsys
        )
        assert code == 2 and message in err and not out.exists()


def test_b83_empty_model_spec_refused(tmp_path, capsys, no_model_load):
    out = tmp_path / "p.jsonl"
    code, _, err = run_cli(["prefs", "--model", "", "--query", "hi", "--out", str(out)], capsys)
    assert code == 2 and "--model is empty: give an embedded key" in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(ModelSpecError, match="empty model spec"):
        load_model("  ", verbose=False)


# --------------------------------------------------------------------------- honest checks (B65-B70)


def test_b65_subspace_moved_to_another_model_kind_judged_by_the_residual_basis(llama, sub_llama, tmp_path):
    from tiny import make_model

    # RMSNorm: compatibility mode (HookedTransformer-style processing) folds the norms and
    # leaves resid_post as it is; the subspace is accepted, also with strict=True. (The
    # bridge <-> HookedTransformer directions run in tests/test_compat.py under TL 3.9 / 2.16.)
    compat = make_model("llama", dtype=torch.float32, compatibility_mode=True)
    compat.cfg.model_name = llama.cfg.model_name
    loaded = AlignmentSubspace.load(sub_llama.save(tmp_path / "s.safetensors"), compat)
    assert loaded.model["norm"] == "RMSNorm" and loaded.model["residual_centred"] is False
    assert Steerer(loaded).generate(compat, ["Hi"], max_new_tokens=2)
    # a file written before the facts were recorded keeps the old class / mode rule
    old = {k: v for k, v in loaded.model.items() if k not in ("norm", "weights_processed", "residual_centred")}
    with pytest.raises(SubspaceMismatchError, match="compatibility mode off \\(subspace\\) vs on \\(model\\)"):
        AlignmentSubspace(**{**loaded.__dict__, "model": old}).check_model(compat, strict=False)


def test_b66_processed_vs_unprocessed_layernorm_model_refused(gpt2, sub_gpt2, tmp_path):
    from tiny import make_model

    processed = make_model("gpt2", compatibility_mode=True)  # fold_ln + center_writing_weights
    processed.cfg.model_name = gpt2.cfg.model_name
    path = sub_gpt2.save(tmp_path / "s.safetensors")
    with pytest.raises(
        SubspaceMismatchError,
        match="residual stream not centred \\(subspace\\) vs centred \\(model\\).*fold_ln=False, "
        "center_writing_weights=False.*or refit",
    ):
        AlignmentSubspace.load(path, processed, strict=False)  # strict=False does not lift it
    back = fit_subspace(processed, PAIRS, tau=1.0, verbose=False, objective="helpful")
    with pytest.raises(SubspaceMismatchError, match="residual stream centred \\(subspace\\) vs not centred"):
        Steerer(back).generate(gpt2, ["Hi"], max_new_tokens=2)
    AlignmentSubspace.load(path, gpt2)  # the model it was fitted on: accepted


def test_b67_analyze_with_preferences_the_subspace_was_not_fitted_on(llama, tmp_path, capsys, monkeypatch):
    queries = ["How do I bake bread?", "Why is the sky blue?", "How do plants grow?", "How do I tie a knot?"]
    pairs = [*PAIRS, ("Make a loop, pass the end through it, and pull both ends tight.", "Whatever.")]
    good = PreferenceSet.from_pairs(queries, [p for p, _ in pairs], [n for _, n in pairs], objective="helpful")
    sub = fit_subspace(llama, good, tau=1.0, verbose=False)
    assert sub.settings["pairs_hash"] == good.pair_hash()
    sub_path = sub.save(tmp_path / "s.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\n", encoding="utf-8")
    other_pairs = PreferenceSet.from_pairs(queries, [n for _, n in pairs], [p for p, _ in pairs], objective="helpful")
    other_objective = PreferenceSet.from_pairs(
        queries, [p for p, _ in pairs], [n for _, n in pairs], objective="harmless"
    )

    def reached(args):  # the check passed: the command went on to load the model
        raise cli.CLIError("REACHED-MODEL-LOAD")

    monkeypatch.setattr(cli, "_load", reached)

    def analyze(prefs):
        path = prefs.save(tmp_path / "p.jsonl") if isinstance(prefs, PreferenceSet) else prefs
        argv = ["analyze", "--subspace", str(sub_path), "--prefs", str(path), "--prompts", str(prompts)]
        return run_cli([*argv, "--out", str(tmp_path / "out"), "--quiet"], capsys)

    code, _, err = analyze(other_objective)
    assert code == 2 and err.count("\n") == 1
    assert "holds pairs for objective 'harmless' (boost), but the subspace was fitted for 'helpful'" in err
    code, _, err = analyze(other_pairs)
    assert code == 2 and err.count("\n") == 1 and "is not the preference set the subspace was fitted on" in err
    assert not (tmp_path / "out").exists()
    assert "REACHED-MODEL-LOAD" in analyze(good)[2]
    # a subspace from before the pair hash: a warning, and the command goes on
    old = AlignmentSubspace(
        **{**sub.__dict__, "settings": {k: v for k, v in sub.settings.items() if k != "pairs_hash"}}
    )
    sub_path = old.save(tmp_path / "s.safetensors")
    err = analyze(other_pairs)[2]
    assert "warning: the subspace records no pair hash" in err and "REACHED-MODEL-LOAD" in err


def test_b68_preference_file_rows_disagree_with_the_header(tmp_path, capsys, no_model_load):
    good = PreferenceSet.from_pairs(
        ["q1", "q1", "q1", "q2"], ["a", "b", "c", "d"], ["w", "x", "y", "z"], objective="helpful"
    )  # lines 2-4: q1 with index 0, 1, 2; line 5: q2
    path = good.save(tmp_path / "good.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()

    def variant(name, lineno, **changes):
        rows = list(lines)
        rows[lineno - 1] = json.dumps({**json.loads(rows[lineno - 1]), **changes}, ensure_ascii=False)
        out = tmp_path / name
        out.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return out

    cases = [
        (
            variant("objective.jsonl", 3, objective="harmless"),
            "objective.jsonl:3: the pair is for objective 'harmless'",
        ),
        (
            variant("repeat.jsonl", 4, index=1),
            "repeat.jsonl:4: index 1 (sample 0) repeats index 1 (sample 0) of the same query on line 3",
        ),
        (variant("back.jsonl", 3, index=5), "back.jsonl:4: index 2 (sample 0) goes back from index 5"),
        (variant("sample.jsonl", 5, sample=2), "sample.jsonl:5: sample 2 of characteristic 0 does not follow"),
    ]
    for bad, message in cases:
        with pytest.raises(PreferenceFileError, match=re.escape(message)):
            PreferenceSet.load(bad)
        code, _, err = run_cli(["fit", "--prefs", str(bad), "--out", str(tmp_path / "s.safetensors")], capsys)
        assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "s.safetensors").exists()
    # the mode lives in the header's objective only; a set whose rows name another objective is not written
    mixed = PreferenceSet(list(good.pairs), good.objective)
    mixed.pairs[1] = PreferencePair("q1", "b", "y", objective="harmless", index=1)
    with pytest.raises(PreferenceFileError, match="mixed.jsonl:3: the pair is for objective 'harmless'"):
        mixed.save(tmp_path / "mixed.jsonl")
    assert not (tmp_path / "mixed.jsonl").exists()
    assert PreferenceSet.load(path) == good  # what save writes loads


def test_b69_alpha_far_too_large(llama, sub_llama, tiny_dir, tmp_path, capsys):
    from alignez_tl.hooks import EditStrengthWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Steerer(sub_llama, alpha=50.0).generate(llama, ["Hi", "How do I bake bread?"], max_new_tokens=3)
    strong = [w for w in caught if issubclass(w.category, EditStrengthWarning)]
    assert len(strong) == 1  # once per generate call, not per layer or token
    assert strong[0].message.ratio > 10
    assert re.match(
        r"alpha=50 is probably too large for this model: the edit's norm is [\d.]+ times", str(strong[0].message)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Steerer(sub_llama, alpha=1.0).generate(llama, ["Hi"], max_new_tokens=3)
    assert not [w for w in caught if issubclass(w.category, EditStrengthWarning)]
    # the command line refuses an edit over 1000x the activation instead of writing empty answers
    sub_path = tmp_path / "s.safetensors"
    assert (
        run_cli(
            [
                "fit",
                "--model",
                tiny_dir,
                "--prefs",
                str(_tiny_prefs(tmp_path)),
                "--tau",
                "1.0",
                "--out",
                str(sub_path),
                "--quiet",
            ],
            capsys,
        )[0]
        == 0
    )
    out = tmp_path / "gens.jsonl"
    argv = ["generate", "--model", tiny_dir, "--subspace", str(sub_path), "--query", "Hi", "--alpha", "1e30"]
    code, _, err = run_cli([*argv, "--max-new-tokens", "4", "--out", str(out), "--quiet"], capsys)
    last = err.strip().splitlines()[-1]  # (transformers' weight-loading bar may come before it)
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("alignez generate: error: alpha=1e+30 is far too large for this model: the edit's norm is")
    assert not out.exists()


def _tiny_prefs(tmp_path):
    queries = ["How do I bake bread?", "Why is the sky blue?", "How do plants grow?"]
    prefs = PreferenceSet.from_pairs(queries, [p for p, _ in PAIRS], [n for _, n in PAIRS], objective="helpful")
    return prefs.save(tmp_path / "tiny_prefs.jsonl")


def test_b70_report_flags_a_reversed_first_direction(sub_llama):
    import numpy as np

    from analyses.report import Report

    class Signal:  # the two fields the flag reads, and what the panel draws
        layers = [0, 1, 2, 3]
        auroc_first = np.array([0.9, 0.3, 0.0, float("nan")])

        def plot(self):
            import matplotlib.pyplot as plt

            return plt.figure()

        def to_dict(self):
            return {"recommended": [0]}

    rows = [{"query": "q", "base": "a", "steered": "b", "layers": [1, 2, 3]}]
    html = Report(subspace=sub_llama, layer_signal=Signal(), answers=rows).to_html()
    assert '<p class="warning"><b>Warning:</b> held-out AUROC along θ1 is below 0.5 at edited layers' in html
    assert "1 (AUROC 0.30), 2 (AUROC 0.00, every held-out pair reversed)" in html
    rows = [{"query": "q", "base": "a", "steered": "b", "layers": [0, 3]}]  # not edited where reversed
    assert 'class="warning"' not in Report(subspace=sub_llama, layer_signal=Signal(), answers=rows).to_html()


def test_b71_analyze_with_too_few_pairs_refused_before_loading(llama, tmp_path, capsys, no_model_load):
    queries = ["How do I bake bread?", "Why is the sky blue?", "How do plants grow?"]
    prefs = PreferenceSet.from_pairs(queries, [p for p, _ in PAIRS], [n for _, n in PAIRS], objective="helpful")
    sub_path = fit_subspace(llama, prefs, tau=1.0, verbose=False).save(tmp_path / "s.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\n", encoding="utf-8")
    pairs = prefs.save(tmp_path / "p.jsonl")
    argv = ["analyze", "--subspace", str(sub_path), "--prefs", str(pairs), "--prompts", str(prompts)]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"--prefs {pairs} holds 3 pair(s); the analyses need at least 4" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the page and the tests agree


def test_catalogue_page_and_tests_agree():
    rows = re.findall(r"^\|\s*(B\d{2})\s*\|", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert rows, "no case rows found in docs/bad_input.md"
    assert len(rows) == len(set(rows)), f"duplicate case ids in the page: {rows}"
    assert len(rows) >= 28
    tests = [name for name in globals() if name.startswith("test_b") and callable(globals()[name])]
    by_id: dict[str, list[str]] = {}
    for name in tests:
        m = re.match(r"test_(b\d{2})_", name)
        assert m, f"{name}: a catalogue test must be named test_bNN_..."
        by_id.setdefault(m.group(1).upper(), []).append(name)
    for case in rows:
        assert len(by_id.get(case, [])) == 1, f"{case}: expected exactly one test, found {by_id.get(case, [])}"
    assert sorted(by_id) == sorted(rows), f"tests without a row: {sorted(set(by_id) - set(rows))}"
    # each row names its own test
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*(B\d{2})\s*\|", line)
        if m:
            assert f"`{by_id[m.group(1)][0]}`" in line, f"{m.group(1)}: the row does not name {by_id[m.group(1)][0]}"
