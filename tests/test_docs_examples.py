"""The docs as tests: every code block of README.md and docs/quickstart.md runs.

Python blocks of one page run in order in one fresh interpreter, in an empty folder, as
a reader pasting them would run them; every answer they produce (what they print, and
the text `model.generate` returns) must be non-empty and not collapsed into loops.
Shell blocks run line by line; the `alignez` lines run the installed command, and the
answers the step-by-step run writes are checked the same way. The `make` lines and the
commands `make test` itself runs are the only lines not run here: CI runs those (`make
demo` and `make test` are the README's two commands), and running them from a test
would run the suite from inside itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from alignez_tl.eval import is_degenerate

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

# lines of shell blocks that are not run here, and why (the test fails when a page gains another)
NOT_RUN = {
    "make demo": "CI runs it: the README's first command",
    "make test": "CI runs it: the README's second command (it runs this test)",
    ".venv/bin/python -m pytest -q": "what make test runs (this test is part of it)",
    ".venv/bin/mkdocs build --strict -q": "what make test runs after pytest",
}

pytestmark = pytest.mark.slow

RUNNER = r"""
import builtins, json, sys
printed = []
_print = builtins.print
def record(*args, **kwargs):
    printed.extend(args)
    _print(*args, **kwargs)
builtins.print = record
namespace = {"__name__": "__main__"}
for block in json.loads(sys.argv[1]):
    exec(compile(block, "<docs block>", "exec"), namespace)
answers = []
def collect(value):
    if isinstance(value, str):
        answers.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            collect(v)
for value in printed:
    collect(value)
collect(namespace.get("out"))
_print("ANSWERS " + json.dumps(answers))
"""


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}


def assert_fluent(answers: list[str], where: str) -> None:
    assert answers, f"{where}: no answers to check"
    for answer in answers:
        assert answer.strip(), f"{where}: an empty answer"
        assert not is_degenerate(answer), f"{where}: a degenerate answer: {answer!r}"


def test_every_page_has_the_blocks_this_test_expects():
    for page in PAGES:
        assert blocks(page, "python") and blocks(page, "bash"), page
        for body in blocks(page, "bash"):
            for line in body.splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    command = " ".join(words)
                    assert words[0] == "alignez" or command in NOT_RUN, f"{page.name}: cannot run {line!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_and_answer_fluently(page, tmp_path):
    code = blocks(page, "python")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(code)],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"{page.name}: the Python blocks failed:\n{proc.stderr[-4000:]}"
    line = next(l for l in proc.stdout.splitlines()[::-1] if l.startswith("ANSWERS "))
    answers = json.loads(line[len("ANSWERS ") :])
    assert_fluent(answers, page.name)
    if page.name == "quickstart.md":  # the files its last block writes load back
        assert (tmp_path / "prefs.jsonl").is_file() and (tmp_path / "helpful.safetensors").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_blocks_run(page, tmp_path):
    ran = 0
    for body in blocks(page, "bash"):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "alignez":
                continue
            proc = subprocess.run(words, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=1800)
            assert proc.returncode == 0, f"{page.name}: {line!r} failed:\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr
            ran += 1
    assert ran or page.name == "README.md"
    generations = tmp_path / "gens.jsonl"
    if generations.exists():
        rows = [json.loads(l) for l in generations.read_text(encoding="utf-8").splitlines() if l.strip()]
        answers = [r[k] for r in rows for k in ("base", "steered") if k in r]
        assert_fluent(answers, f"{page.name}: gens.jsonl")
