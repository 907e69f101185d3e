import re

import pytest

from alignez_tl.prompts import CATEGORIES, PromptFileError, builtin_prompts, load_prompts


def test_builtin_prompt_set_has_four_categories():
    prompts = builtin_prompts()
    assert set(CATEGORIES) == {"advice", "writing", "math", "red-teaming"}
    assert {p["category"] for p in prompts} == set(CATEGORIES)
    assert len({p["query"] for p in prompts}) == len(prompts)
    assert [p["category"] for p in builtin_prompts(per_category=1)] == list(CATEGORIES)
    with pytest.raises(ValueError, match="unknown categories"):
        builtin_prompts(["poetry"])


def test_load_prompts_jsonl_and_text(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"query": "Hi ✓", "category": "advice"}\n\n{"query": "Sum?"}\n', encoding="utf-8")
    assert load_prompts(f) == [{"query": "Hi ✓", "category": "advice"}, {"query": "Sum?", "category": "uncategorised"}]
    t = tmp_path / "p.txt"
    t.write_text("one\ntwo\n")
    assert [p["query"] for p in load_prompts(t)] == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "ok"}\n{"query": 3}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2"):
        load_prompts(bad)
    with pytest.raises(PromptFileError, match="no prompts file"):
        load_prompts(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- benchmark pools

from alignez_tl import prompts as prompts_module  # noqa: E402
from alignez_tl.prompts import (  # noqa: E402
    CALIBRATION_KINDS,
    EVAL_CATEGORIES,
    JUDGE_CALIBRATION,
    NEUTRAL_TEXTS,
    NEUTRAL_TEXTS_EXTENDED,
    eval_prompts,
    fit_prompts,
)


def test_builtin_prompts_keep_their_defaults():
    prompts = builtin_prompts()
    assert len(prompts) == 24
    assert all(sum(p["category"] == c for p in prompts) == 6 for c in CATEGORIES)
    assert prompts[0] == {
        "query": "I keep putting off my tax paperwork. How can I finally get it done this week?",
        "category": "advice",
    }
    assert len(NEUTRAL_TEXTS) == 4


def test_eval_and_fit_pools_counts_and_order():
    assert EVAL_CATEGORIES == ("advice", "writing", "explain", "howto", "opinion", "red-teaming")
    ev, fit = eval_prompts(), fit_prompts()
    assert len(ev) >= 120 and len(fit) >= 48
    for c in EVAL_CATEGORIES:
        assert sum(p["category"] == c for p in ev) >= 20
        assert sum(p["category"] == c for p in fit) >= 8
    for pool in (ev, fit):
        assert all(set(p) == {"query", "category"} for p in pool)
        assert [p["category"] for p in pool] == sorted((p["category"] for p in pool), key=EVAL_CATEGORIES.index)
        assert all(isinstance(p["query"], str) and p["query"] == p["query"].strip() for p in pool)
        assert all(10 <= len(p["query"]) <= 120 for p in pool)  # short, one or two sentences
        assert all(p["query"][-1] in ".?" for p in pool)
    assert eval_prompts() == ev  # a fixed order, a fresh list each time
    ev.append({"query": "x", "category": "advice"})
    assert len(eval_prompts()) == len(ev) - 1


def test_eval_and_fit_pools_are_disjoint_without_duplicates():
    ev = [p["query"] for p in eval_prompts()]
    fit = [p["query"] for p in fit_prompts()]
    assert len(set(ev)) == len(ev)
    assert len(set(fit)) == len(fit)
    assert not set(ev) & set(fit)
    normalise = lambda q: " ".join(q.lower().split()).rstrip(".?")  # noqa: E731
    assert not {normalise(q) for q in ev} & {normalise(q) for q in fit}
    # the small built-in set's advice, writing and red-teaming prompts are in the eval pool
    builtin = {p["query"] for p in builtin_prompts(["advice", "writing", "red-teaming"])}
    assert builtin <= set(ev)


def test_pool_selection_and_errors():
    two = eval_prompts(["howto", "explain"], per_category=3)
    assert [p["category"] for p in two] == ["howto"] * 3 + ["explain"] * 3
    assert two[:3] == eval_prompts(["howto"])[:3]
    assert [p["category"] for p in fit_prompts(per_category=1)] == list(EVAL_CATEGORIES)
    with pytest.raises(ValueError, match="unknown categories"):
        eval_prompts(["math"])
    with pytest.raises(ValueError, match="unknown categories"):
        fit_prompts(["poetry"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="per_category"):
            eval_prompts(per_category=bad)
    with pytest.raises(ValueError, match="list of names"):
        fit_prompts("advice")  # type: ignore[arg-type]


def test_neutral_texts_extended():
    assert len(NEUTRAL_TEXTS_EXTENDED) >= 12
    assert NEUTRAL_TEXTS_EXTENDED[:4] == NEUTRAL_TEXTS
    assert len(set(NEUTRAL_TEXTS_EXTENDED)) == len(NEUTRAL_TEXTS_EXTENDED)
    for text in NEUTRAL_TEXTS_EXTENDED[4:]:
        assert 35 <= len(text.split()) <= 50, text
        assert text.count(". ") == 1 and text.endswith("."), text  # two sentences
        assert "?" not in text and "!" not in text


def test_judge_calibration_schema_and_balance():
    assert CALIBRATION_KINDS == ("degenerate", "refusal", "off-topic", "wrong")
    assert len(JUDGE_CALIBRATION) >= 30
    counts = {k: sum(c["kind"] == k for c in JUDGE_CALIBRATION) for k in CALIBRATION_KINDS}
    assert sum(counts.values()) == len(JUDGE_CALIBRATION)
    assert min(counts.values()) >= 7 and max(counts.values()) - min(counts.values()) <= 2
    queries = [c["query"] for c in JUDGE_CALIBRATION]
    assert len(set(queries)) == len(queries)
    for c in JUDGE_CALIBRATION:
        assert set(c) == {"query", "good", "bad", "kind"}
        assert all(isinstance(c[k], str) and c[k].strip() == c[k] and c[k] for k in c)
        assert c["good"] != c["bad"]
        assert 15 <= len(c["good"].split()) <= 80
        assert 2 <= len(re.findall(r"[.!?](?=\s|\"|$)", c["good"])) <= 4, c["good"]


def _longest_repeat(text: str) -> int:
    """How many times the most frequent word trigram occurs."""
    words = re.findall(r"[a-z']+", text.lower())
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return max((grams.count(g) for g in grams), default=0)


def test_judge_calibration_bad_answers_fail_as_labelled():
    for c in JUDGE_CALIBRATION:
        good, bad = c["good"], c["bad"]
        assert _longest_repeat(good) <= 2, good
        if c["kind"] == "degenerate":
            assert _longest_repeat(bad) >= 5, bad
        elif c["kind"] == "refusal":
            assert re.search(r"\b(sorry|can't|cannot|unable|not able|refuse|afraid)\b", bad, re.I), bad
            opening = " ".join(good.split()[:8])  # the good answer gets straight to it
            assert not re.search(r"\b(sorry|can't|cannot|unable|refuse|afraid)\b", opening, re.I), good
        elif c["kind"] == "off-topic":
            # no content word of the query (4+ letters) appears in the off-topic answer
            content = {w for w in re.findall(r"[a-z]{4,}", c["query"].lower())} - {
                "what",
                "should",
                "with",
                "does",
                "make",
                "more",
                "good",
                "before",
            }
            assert not content & set(re.findall(r"[a-z]+", bad.lower())), (c["query"], bad)
        else:
            assert _longest_repeat(bad) <= 2 and len(bad.split()) >= 10, bad


def test_new_names_are_exported():
    for name in (
        "EVAL_CATEGORIES",
        "CALIBRATION_KINDS",
        "JUDGE_CALIBRATION",
        "NEUTRAL_TEXTS_EXTENDED",
        "eval_prompts",
        "fit_prompts",
    ):
        assert name in prompts_module.__all__
    assert set(prompts_module.__all__) <= set(dir(prompts_module))
