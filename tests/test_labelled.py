"""Ground-truth pairs: `PreferenceSet.from_labelled`, the shipped file, and every method fitted on it."""

import json

import pytest
import torch

from alignez_tl import fit_subspace
from alignez_tl.baselines import DiffMeanSteerer, ITISteerer, PCASteerer
from alignez_tl.preferences import (
    LABELLED_PAIRS_PATH,
    PreferenceFileError,
    PreferenceSet,
    labelled_pairs,
    read_pairs,
)
from alignez_tl.prompts import EVAL_CATEGORIES, eval_prompts, fit_prompts


def _write(tmp_path, name, records):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_shipped_file_covers_every_category_and_round_trips(tmp_path):
    prefs = labelled_pairs()
    assert len(prefs) == 60 and prefs.objective.name == "helpful"
    cats = [p.meta["category"] for p in prefs]
    assert sorted(set(cats)) == sorted(EVAL_CATEGORIES) and all(cats.count(c) == 10 for c in EVAL_CATEGORIES)
    assert not set(prefs.queries) & {p["query"] for p in eval_prompts()}  # usable for the held-out sweep
    assert not set(prefs.queries) & {p["query"] for p in fit_prompts()}
    saved = prefs.save(tmp_path / "saved.jsonl")
    assert PreferenceSet.load(saved) == prefs
    assert read_pairs(saved) == prefs and read_pairs(LABELLED_PAIRS_PATH, objective="helpful") == prefs
    assert PreferenceSet.from_labelled(LABELLED_PAIRS_PATH, objective="helpful") == prefs


def test_field_aliases_chat_messages_and_hh_transcripts(tmp_path):
    msgs = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]  # noqa: E731
    path = _write(
        tmp_path,
        "mixed.jsonl",
        [
            {"prompt": "Q1", "chosen": "good one", "rejected": "bad one", "score_chosen": 9},
            "",
            {"question": "Q2", "preferred": "good two", "dispreferred": "bad two"},
            {"query": "Q3", "positive": "good three", "negative": "bad three"},
            {"prompt": "Q4", "chosen": msgs("Q4", "good four"), "rejected": msgs("Q4", "bad four")},
            {"chosen": msgs("Q5", "good five"), "rejected": msgs("Q5", "bad five")},
            {"chosen": "\n\nHuman: Q6\n\nAssistant: good six", "rejected": "\n\nHuman: Q6\n\nAssistant: bad six"},
            {"prompt": "Q1", "chosen": "another good", "rejected": "bad one"},
        ],
    )
    prefs = PreferenceSet.from_labelled(path, objective="harmless")
    assert [(p.query, p.positive, p.negative) for p in prefs] == [
        ("Q1", "good one", "bad one"),
        ("Q2", "good two", "bad two"),
        ("Q3", "good three", "bad three"),
        ("Q4", "good four", "bad four"),
        ("Q5", "good five", "bad five"),
        ("Q6", "good six", "bad six"),
        ("Q1", "another good", "bad one"),
    ]
    assert [p.index for p in prefs] == [0, 0, 0, 0, 0, 0, 1]
    assert [p.meta["line"] for p in prefs] == [1, 3, 4, 5, 6, 7, 8]
    assert prefs.objective.name == "harmless" and all(p.objective == "harmless" for p in prefs)
    assert PreferenceSet.from_labelled(path).objective.name == "custom"


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"prompt": "q", "chosen": "a"', "malformed JSON"),
        ({"prompt": "q", "chosen": "a"}, "missing field: one of 'rejected', 'dispreferred', 'negative'"),
        ({"prompt": "q", "rejected": "a"}, "missing field: one of 'chosen', 'preferred', 'positive'"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
        ({"prompt": "q", "chosen": "same", "rejected": " same "}, "are the same text"),
        (
            {"prompt": "q", "query": "q", "chosen": "a", "rejected": "b"},
            "the prompt given twice, as 'prompt' and 'query'",
        ),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string, got int"),
        ({"prompt": "q", "chosen": {"text": "a"}, "rejected": "b"}, "field 'chosen' must be a string or a list"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}, "holds no 'assistant'"),
        ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "string 'role' and 'content'"),
        ({"chosen": "a", "rejected": "b"}, "no prompt field"),
        (
            {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: y\n\nAssistant: b"},
            "transcripts differ before the last answer",
        ),
        ({"type": "header", "format": "alignez-preferences"}, "this is a saved PreferenceSet"),
    ],
)
def test_bad_lines_name_the_file_and_the_line(tmp_path, line, message):
    good = {"prompt": "fine", "chosen": "yes", "rejected": "no"}
    path = _write(tmp_path, "bad.jsonl", [good, "", line])
    with pytest.raises(PreferenceFileError, match=rf"bad\.jsonl:3: .*{_escape(message)}"):
        PreferenceSet.from_labelled(path)


def _escape(text):
    import re

    return re.escape(text)


def test_duplicates_non_utf8_bom_and_empty_files(tmp_path):
    rec = {"prompt": "q", "chosen": "a", "rejected": "b"}
    dup = _write(tmp_path, "dup.jsonl", [rec, {"prompt": "r", "chosen": "a", "rejected": "b"}, rec])
    with pytest.raises(PreferenceFileError, match=r"dup\.jsonl:3: duplicate of the pair on line 1"):
        PreferenceSet.from_labelled(dup)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((json.dumps(rec) + "\n").encode() + '{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(PreferenceFileError, match=r"latin\.jsonl:2: not UTF-8 text"):
        PreferenceSet.from_labelled(latin)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(rec) + "\n").encode())
    assert len(PreferenceSet.from_labelled(bom)) == 1
    empty = _write(tmp_path, "empty.jsonl", ["", "  "])
    with pytest.raises(PreferenceFileError, match=r"empty\.jsonl: no pairs"):
        PreferenceSet.from_labelled(empty)


@pytest.mark.filterwarnings("ignore:.*longer than the context")  # the tiny tokenizer's 400 tokens spell long texts
def test_every_method_fits_on_labelled_pairs(llama):
    prefs = labelled_pairs()[:24]
    sub = fit_subspace(llama, prefs, tau=1.0, verbose=False)
    assert sub.objective["name"] == "helpful" and sum(sub.ranks().values()) > 0
    dm = DiffMeanSteerer.fit(llama, prefs, layer=2)
    pca = PCASteerer.fit(llama, prefs, layer=2, coef_scale="rms")
    iti = ITISteerer.fit(llama, prefs, top_k=4)
    assert dm.objective["name"] == pca.objective["name"] == iti.objective["name"] == "helpful"
    assert dm.info["n_pairs"] == 24 and iti.info["n_pairs"] == 24
    assert torch.isfinite(dm.vector).all() and torch.isfinite(iti.shifts).all()
