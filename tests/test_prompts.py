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
    assert load_prompts(f) == [{"query": "Hi ✓", "category": "advice"},
                               {"query": "Sum?", "category": "uncategorised"}]
    t = tmp_path / "p.txt"
    t.write_text("one\ntwo\n")
    assert [p["query"] for p in load_prompts(t)] == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "ok"}\n{"query": 3}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2"):
        load_prompts(bad)
    with pytest.raises(PromptFileError, match="no prompts file"):
        load_prompts(tmp_path / "missing.jsonl")
