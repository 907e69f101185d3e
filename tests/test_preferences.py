"""Preferences: characteristic parsing, the JSONL format, and self-generation on tiny models."""

from __future__ import annotations

import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from tiny import make_model
from transformer_lens.hook_points import HookPoint

import alignez_tl.models as models
from alignez_tl.objectives import Objective, get_objective
from alignez_tl.preferences import (
    PreferenceFileError,
    PreferencePair,
    PreferenceSet,
    generate_preferences,
    parse_characteristics,
)

QUERIES = ["How do I bake bread?", "Write a poem about the sea.", "What is two plus two?"]
ELICIT, RESPOND = 6, 4  # distinct token budgets tell the two phases apart in fakes
FAST = dict(elicit_tokens=ELICIT, response_tokens=RESPOND, batch_size=4, verbose=False)
SCRIPTED = dict(FAST, elicit_tokens=64)  # scripted replies fit: not cut by the budget


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2():
    return make_model("gpt2", dtype=torch.float32)


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    return request.getfixturevalue(request.param)


def prompt_text(model, batch, row):
    """The decoded prompt of one row of an encoded batch (padding removed)."""
    ids = batch.input_ids[row][batch.attention_mask[row].bool()]
    return model.tokenizer.decode(ids, skip_special_tokens=True)


def token_ids(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def calls(monkeypatch):
    """Record every generate_plain call (its kwargs and batch) and every encoded text."""
    record = SimpleNamespace(generate=[], encoded=[])
    real_generate, real_encode = models.generate_plain, models.encode

    def generate(model, batch, **kwargs):
        record.generate.append((batch, kwargs))
        return real_generate(model, batch, **kwargs)

    def encode(model, texts, **kwargs):
        record.encoded.append(list(texts))
        return real_encode(model, texts, **kwargs)

    monkeypatch.setattr(models, "generate_plain", generate)
    monkeypatch.setattr(models, "encode", encode)
    return record


def script_generation(monkeypatch, elicit=None, respond=None):
    """Make a phase return fixed texts, chosen by side: (positive text, negative text).

    A phase left as None generates for real. Sides are told apart by the prompt: only
    negative prompts contain "Pretend".
    """
    real_generate = models.generate_plain

    def generate(model, batch, **kwargs):
        script = respond if kwargs["max_new_tokens"] == RESPOND else elicit
        if script is None:
            return real_generate(model, batch, **kwargs)
        return [
            token_ids(model, script["Pretend" in prompt_text(model, batch, r)])
            for r in range(len(batch))
        ]

    monkeypatch.setattr(models, "generate_plain", generate)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        # numbered lists, both styles, with an intro line and a wrapped line
        (
            "Here are the traits:\n1. Be accurate and cite sources.\n2) Use simple words,\n"
            "   avoid jargon.\n3. Give an example.",
            ["be accurate and cite sources", "use simple words, avoid jargon", "give an example"],
        ),
        # SmolLM2 (plain prompt): an inline numbered list, then chatter
        (
            "1) be a simple, easy-to-understand answer 2) include a simile 3) contain a simile 4.\n"
            "The answer is:",
            ["be a simple, easy-to-understand answer", "include a simile", "contain a simile"],
        ),
        # SmolLM2: wide bullets; the quoted phrase keeps its quotes
        (
            '\n*   Provide a non-fictitious answer.\n*   Include a numbered list.\n'
            '*   Use the phrase "I am..."\n',
            ["provide a non-fictitious answer", "include a numbered list", 'use the phrase "I am..."'],
        ),
        # bullets + numbers, markdown bold, and a last item cut by the token budget
        (
            "* 1. **Clarity**: explain each step.\n* 2. Use your knowledge of the Earth's climate\n"
            "* 3. Describe a world where the",
            ["clarity: explain each step", "use your knowledge of the Earth's climate"],
        ),
        # other bullet glyphs, duplicates (case and punctuation), acronyms and "I"
        (
            "• JSON output only\n- Be brief.\n- be brief\n– I think it should rhyme\n• AI-free tone",
            ["JSON output only", "be brief", "I think it should rhyme"],
        ),
        # prose continuing "should: ", one sentence each, abbreviations kept whole
        (
            " contain exactly 3 sentences. Use examples, e.g. bread recipes. Stay polite!",
            ["contain exactly 3 sentences", "use examples, e.g. bread recipes", "stay polite"],
        ),
        # prose over several lines; a line that only introduces something is dropped
        (
            "Be concise\nFor instance:\n\"Avoid filler words.\"",
            ["be concise", "avoid filler words"],
        ),
        # SmolLM2 (plain prompt): a restated frame and a check-mark bullet
        (
            "✔ be a short summary in 200 words or less.\nThe answer must contain less than 10 "
            "words.\nYour response to this query should also be polite. It should rhyme.",
            ["be a short summary in 200 words or less", "contain less than 10 words", "be polite"],
        ),
        # one leading bullet does not make a list: the unmarked lines still count
        ("• Be kind. Stay calm.\nThen answer", ["be kind", "stay calm", "then answer"]),
        ("", []),
        ("   \n\n  ", []),
        ("!!! ... ??\n- .\n* ab", []),  # garbage: nothing with 3+ characters of words
    ],
)
def test_parse_characteristics(text, expected):
    assert parse_characteristics(text, 3) == expected


def test_parse_drops_echoes_of_the_prompt():
    prompt = get_objective("helpful").elicit_prompt("What causes the seasons?", positive=False)
    # a real SmolLM2 reply to the chat-wrapped negative prompt
    assert parse_characteristics("Pretend you are a useless assistant.", 3, prompt=prompt) == []
    assert parse_characteristics(
        "1. What causes the seasons\n2. Use wrong facts", 3, prompt=prompt
    ) == ["use wrong facts"]
    # "use" is not an echo of "useless": words are matched whole
    assert parse_characteristics("- use\n- use a table", 3, prompt=prompt) == ["use", "use a table"]


def test_parse_drops_the_item_cut_by_the_token_budget():
    # real SmolLM2 replies that used all 40 tokens
    cut = ("The seasons on Earth are caused by the tilt of the Earth's axis. The Earth's axis is a "
           "spinning wheel that moves around the Sun. When the Earth is closer to the Sun, it gets")
    two = ["the seasons on Earth are caused by the tilt of the Earth's axis",
           "the Earth's axis is a spinning wheel that moves around the Sun"]
    assert parse_characteristics(cut, 3, truncated=True) == two
    assert len(parse_characteristics(cut, 3)) == 3  # not known to be cut: kept
    ended = parse_characteristics(cut + ".", 3, truncated=True)
    assert ended[2] == "when the Earth is closer to the Sun, it gets"
    assert parse_characteristics('- be clear\n- say "hi!"', 3, truncated=True) == ["be clear", 'say "hi!"']
    assert parse_characteristics("- be clear\n- give exam", 3, truncated=True) == ["be clear"]
    assert parse_characteristics("Give an example of", 3) == []  # dangling word: cut either way


def test_parse_caps_items_and_words():
    text = "\n".join(f"- trait number {i}" for i in range(10))
    assert parse_characteristics(text, 2) == ["trait number 0", "trait number 1"]
    long = "Explain " + " ".join(f"w{i}" for i in range(50)) + "."
    (item,) = parse_characteristics(long, 3)
    assert item.split() == ["explain"] + [f"w{i}" for i in range(29)]


def test_parse_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_items must be a positive int"):
        parse_characteristics("- a trait", 0)
    with pytest.raises(TypeError, match="takes a string"):
        parse_characteristics(None, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files

UNICODE_PAIRS = [
    PreferencePair("Say hi 👋", "Hello! 😀\nHow are you?", "no", "be warm 🌞", "be cold", "helpful", 0,
                   {"fallback_positive": False, "tokens_positive": 7}),
    PreferencePair("翻译：你好", "你好的意思是 hello。", "不知道", "用中文", "拒绝", "helpful", 1, {}),
    PreferencePair("שלום עולם? مرحبا", "مرحبا بالعالم\r\n\tשלום", "", "rtl ok", "x", "helpful", 0,
                   {"nested": {"list": [1, 2.5, None, "é"]}}),
    PreferencePair('quotes " \\ and\u2028line\u2029sep\x85nel\x00nul', "a\nb\n\nc", "d", "e", "f",
                   "helpful", 2, {}),
]


def make_set() -> PreferenceSet:
    obj = Objective("tone", "warm", "cold", mode="suppress", description="températures 🌡")
    return PreferenceSet(copy.deepcopy(UNICODE_PAIRS), obj,
                         {"seed": 3, "temperature": 0.7, "model_id": "tiny", "chat": True})


def test_save_load_round_trip_unicode(tmp_path):
    ps = make_set()
    path = ps.save(tmp_path / "prefs.jsonl")
    loaded = PreferenceSet.load(path)
    assert loaded == ps
    raw = path.read_bytes().decode("utf-8")
    assert "😀" in raw and "你好" in raw and "مرحبا" in raw  # ensure_ascii=False
    assert "\u2028" not in raw and "\\u2028" in raw  # escaped: splitlines() keeps records whole
    lines = raw.splitlines()
    assert len(lines) == len(ps) + 1 and raw.endswith("\n")  # header + pairs, final newline
    header = json.loads(lines[0])
    assert header == {"type": "header", "format": "alignez-preferences", "version": 1,
                      "objective": ps.objective.to_dict(), "settings": ps.settings}
    assert json.loads(lines[1])["type"] == "pair"


def test_save_is_atomic(tmp_path, monkeypatch):
    ps = make_set()
    target = tmp_path / "prefs.jsonl"
    ps.save(target)
    ps.save(target)  # overwriting works
    assert sorted(os.listdir(tmp_path)) == ["prefs.jsonl"]  # no temp files left

    def fail(src, dst):
        raise OSError("disk full")

    before = target.read_bytes()
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        ps[:1].save(target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["prefs.jsonl"]


def test_save_refuses_non_json_values(tmp_path):
    ps = make_set()
    ps.pairs[0].meta["tensor"] = torch.zeros(2)
    with pytest.raises(TypeError, match="must hold only JSON values"):
        ps.save(tmp_path / "p.jsonl")
    assert os.listdir(tmp_path) == []


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_reports_malformed_line(tmp_path):
    path = make_set().save(tmp_path / "p.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:-5]  # cut a pair record short
    _write_lines(path, lines)
    with pytest.raises(PreferenceFileError, match=r"p\.jsonl:3: malformed JSON"):
        PreferenceSet.load(path)


def test_load_reports_missing_and_unknown_fields(tmp_path):
    path = make_set().save(tmp_path / "p.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    pair = json.loads(lines[3])
    del pair["negative"]
    lines[3] = json.dumps(pair)
    _write_lines(path, lines)
    missing = r"p\.jsonl:4: pair record misses field\(s\) \['negative'\]"
    with pytest.raises(PreferenceFileError, match=missing):
        PreferenceSet.load(path)
    pair["negative"], pair["score"] = "n", 1
    lines[3] = json.dumps(pair)
    _write_lines(path, lines)
    with pytest.raises(PreferenceFileError, match=r":4: pair record has unknown field\(s\) \['score'\]"):
        PreferenceSet.load(path)
    del pair["score"]
    pair["index"] = "0"
    lines[3] = json.dumps(pair)
    _write_lines(path, lines)
    with pytest.raises(PreferenceFileError, match=r":4: field 'index' must be int, got str"):
        PreferenceSet.load(path)


def test_load_refuses_other_versions_and_files(tmp_path):
    path = make_set().save(tmp_path / "p.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["version"] = 2
    _write_lines(path, [json.dumps(header)] + lines[1:])
    with pytest.raises(PreferenceFileError, match=r"p\.jsonl:1: format version 2 is not supported"):
        PreferenceSet.load(path)
    _write_lines(path, lines[1:])  # no header
    with pytest.raises(PreferenceFileError, match=r":1: not an alignez preference file"):
        PreferenceSet.load(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match="empty file"):
        PreferenceSet.load(path)
    header["version"] = 1
    header["objective"]["mode"] = "sideways"
    _write_lines(path, [json.dumps(header)] + lines[1:])
    with pytest.raises(PreferenceFileError, match="invalid objective in the header"):
        PreferenceSet.load(path)


# --------------------------------------------------------------------------- set helpers


def test_from_pairs_and_helpers(llama, gpt2):
    ps = PreferenceSet.from_pairs(["q1", "q2", "q1"], ["good", " ", "fine"], ["bad", "worse", ""])
    assert len(ps) == 3 and ps.queries == ["q1", "q2"]
    assert [p.index for p in ps] == [0, 0, 1]
    assert ps.objective.name == "custom" and ps[0].objective == "custom"
    assert ps.summary() == {"pairs": 3, "queries": 2, "empty_positive": 1, "empty_negative": 1,
                            "identical": 0, "fallback_positive": 0, "fallback_negative": 0}
    kept = ps.filter_empty()
    assert [p.positive for p in kept] == ["good"] and len(ps) == 3  # a new set
    assert isinstance(ps[1:], PreferenceSet) and len(ps[1:]) == 2
    humor = PreferenceSet.from_pairs(["q"], ["a"], ["b"], objective="Humor")
    assert humor.objective is get_objective("humor")

    pos, neg = kept.texts(gpt2)
    assert (pos, neg) == (["q1 good"], ["q1 bad"])
    pos, neg = kept.texts(llama)
    prefix = "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n"
    assert (pos, neg) == ([prefix + "good"], [prefix + "bad"])
    assert kept.texts(llama, chat=False) == (["q1 good"], ["q1 bad"])

    with pytest.raises(ValueError, match="same length; got 2, 1 and 1"):
        PreferenceSet.from_pairs(["a", "b"], ["x"], ["y"])
    with pytest.raises(TypeError, match="not a single string"):
        PreferenceSet.from_pairs("ab", "x", "y")


# --------------------------------------------------------------------------- generation


def test_generate_structure_and_prompts(model, calls):
    obj = get_objective("helpful")
    chat = models.is_chat_model(model)
    ps = generate_preferences(model, QUERIES, "helpful", n_characteristics=2, seed=1, **FAST)

    # elicitation: both prompts of every query, rendered as the model sees them
    expected = [
        models.render(model, obj.elicit_prompt(q, positive=s)) for q in QUERIES for s in (True, False)
    ]
    n_elicit_batches = math.ceil(len(expected) / FAST["batch_size"])
    elicited = [t for texts in calls.encoded[:n_elicit_batches] for t in texts]
    assert elicited == expected
    assert all(("<|im_start|>user\n" in t) == chat for t in elicited)
    assert sum("You are a helpful assistant" in t for t in elicited) == len(QUERIES)
    assert sum("Pretend you are a useless assistant" in t for t in elicited) == len(QUERIES)

    # pairs: per query, as many as the recorded replies allow, capped at n_characteristics
    assert ps.queries == QUERIES
    for q in QUERIES:
        mine = [p for p in ps if p.query == q]
        meta = mine[0].meta
        n_pos, n_neg = (
            len(parse_characteristics(
                meta[f"elicited_{side}"], 2, prompt=obj.elicit_prompt(q, positive=side == "positive"),
                truncated=meta[f"elicit_tokens_{side}"] == ELICIT,
            ))
            for side in ("positive", "negative")
        )
        expected_n = max(n_pos, n_neg, 1) if 0 in (n_pos, n_neg) else min(n_pos, n_neg)
        assert len(mine) == expected_n
        assert [p.index for p in mine] == list(range(expected_n))
    for p in ps:
        assert p.objective == "helpful" and p.char_positive and p.char_negative
        assert isinstance(p.positive, str) and isinstance(p.negative, str)
        assert p.positive == p.positive.strip()
        assert 0 <= p.meta["tokens_positive"] <= RESPOND and 0 <= p.meta["tokens_negative"] <= RESPOND

    # responses: one positive and one negative prompt per pair, with the pair's characteristics
    responded = [t for texts in calls.encoded[n_elicit_batches:] for t in texts]
    assert responded == [
        models.render(model, obj.respond_prompt(p.query, c, positive=s))
        for p in ps for s, c in ((True, p.char_positive), (False, p.char_negative))
    ]

    # batching and seeds: batches of at most batch_size rows, a distinct seed per batch
    assert len(calls.generate) == n_elicit_batches + math.ceil(len(responded) / FAST["batch_size"])
    assert all(len(b) <= FAST["batch_size"] for b, _ in calls.generate)
    seeds = [kw["seed"] for _, kw in calls.generate]
    assert len(set(seeds)) == len(seeds)
    assert {kw["max_new_tokens"] for _, kw in calls.generate[:n_elicit_batches]} == {ELICIT}

    # settings: every generation setting, seed and model id
    assert ps.settings == {
        "objective": "helpful", "n_queries": 3, "n_characteristics": 2,
        "elicit_tokens": ELICIT, "response_tokens": RESPOND, "do_sample": True,
        "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 1, "batch_size": 4, "chat": chat,
        "model_id": model.cfg.model_name, "alignez_version": ps.settings["alignez_version"],
        "torch_version": torch.__version__, "transformers_version": ps.settings["transformers_version"],
    }


def test_same_seed_same_set_different_seed_differs(model, tmp_path):
    a = generate_preferences(model, QUERIES, seed=5, **FAST)
    b = generate_preferences(model, QUERIES, seed=5, **FAST)
    c = generate_preferences(model, QUERIES, seed=6, **FAST)
    assert a == b
    assert [(p.positive, p.negative, p.char_positive) for p in a] != [
        (p.positive, p.negative, p.char_positive) for p in c
    ]
    assert PreferenceSet.load(a.save(tmp_path / "a.jsonl")) == a


def test_greedy_is_reproducible_and_ignores_the_seed(model):
    a = generate_preferences(model, QUERIES[:2], do_sample=False, temperature=0, seed=1, **FAST)
    b = generate_preferences(model, QUERIES[:2], do_sample=False, seed=2, **FAST)
    assert a.pairs == b.pairs
    assert a.settings["do_sample"] is False


def test_objective_keywords_reach_the_prompts(gpt2, calls):
    obj = Objective("poetic", "lyrical", "prosaic")
    generate_preferences(gpt2, ["Describe rain."], obj, n_characteristics=1, **FAST)
    texts = [t for batch in calls.encoded for t in batch]
    assert texts[:2] == [
        "Describe rain.\nYou are a lyrical assistant. Your answer to this query should: ",
        "Describe rain.\nPretend you are a prosaic assistant. Your response to this query should: ",
    ]
    assert texts[2].startswith("You are a lyrical assistant. Your answer should ")
    assert texts[3].startswith("Pretend you are a prosaic assistant. Your answer should ")


def test_fallback_when_elicitation_is_empty(model, monkeypatch):
    script_generation(monkeypatch, elicit=("", ""))
    ps = generate_preferences(model, QUERIES[:2], "math", **SCRIPTED)
    assert len(ps) == 2  # one pair per query
    for p in ps:
        assert (p.char_positive, p.char_negative) == ("be careful step-by-step", "be careless")
        assert p.meta["fallback_positive"] is True and p.meta["fallback_negative"] is True
    assert ps.summary()["fallback_positive"] == 2


@pytest.mark.parametrize("empty_side", ["positive", "negative"])
def test_one_sided_fallback_reuses_it_for_every_characteristic(llama, monkeypatch, empty_side):
    listed = "1. be clear\n2. be brief\n3. give examples"
    script_generation(monkeypatch, elicit=("", listed) if empty_side == "positive" else (listed, ""))
    ps = generate_preferences(llama, QUERIES[:1], **SCRIPTED)
    chars = [(p.char_positive, p.char_negative) for p in ps]
    flags = [(p.meta["fallback_positive"], p.meta["fallback_negative"]) for p in ps]
    items = ["be clear", "be brief", "give examples"]
    if empty_side == "positive":
        assert chars == [("be helpful", c) for c in items] and flags == [(True, False)] * 3
    else:
        assert chars == [(c, "be useless") for c in items] and flags == [(False, True)] * 3


def test_responses_are_decoded_without_special_tokens_and_stripped(llama, monkeypatch):
    script_generation(
        monkeypatch,
        elicit=("- be clear", "- be vague"),
        respond=("  Knead the dough.\n\n", "<|im_start|> dunno <|endoftext|>\n"),
    )
    (pair,) = generate_preferences(llama, QUERIES[:1], **SCRIPTED)
    assert (pair.positive, pair.negative) == ("Knead the dough.", "dunno")
    assert pair.meta["tokens_negative"] == len(token_ids(llama, "<|im_start|> dunno <|endoftext|>\n"))


def test_unequal_lists_pair_up_to_the_shorter(gpt2, monkeypatch):
    listed = ("- be clear\n- be brief\n- give examples", "1) ramble 2) be wrong")
    script_generation(monkeypatch, elicit=listed)
    ps = generate_preferences(gpt2, QUERIES[:1], **SCRIPTED)
    assert [(p.char_positive, p.char_negative, p.index) for p in ps] == [
        ("be clear", "ramble", 0), ("be brief", "be wrong", 1)
    ]
    ps = generate_preferences(gpt2, QUERIES[:1], n_characteristics=1, **SCRIPTED)
    assert [(p.char_positive, p.char_negative) for p in ps] == [("be clear", "ramble")]


def test_a_reply_that_used_all_its_tokens_loses_its_cut_last_item(gpt2, monkeypatch):
    reply = "- be clear\n- be brief\n- give exam"
    script_generation(monkeypatch, elicit=(reply, reply))
    budget = len(token_ids(gpt2, reply))
    ps = generate_preferences(gpt2, QUERIES[:1], **dict(SCRIPTED, elicit_tokens=budget))
    assert [p.char_positive for p in ps] == ["be clear", "be brief"]
    assert ps[0].meta["elicit_tokens_positive"] == budget
    ps = generate_preferences(gpt2, QUERIES[:1], **dict(SCRIPTED, elicit_tokens=budget + 1))
    assert [p.char_positive for p in ps] == ["be clear", "be brief", "give exam"]


def test_no_hooks_are_registered(llama, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generate_preferences registered a hook")

    monkeypatch.setattr(HookPoint, "add_hook", refuse)
    assert len(generate_preferences(llama, QUERIES[:1], **FAST)) >= 1


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_generation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generation started before the input was validated")

    monkeypatch.setattr(models, "generate_plain", refuse)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (([],), {}, ValueError, "queries is empty"),
        (("How do I bake bread?",), {}, TypeError, r"not a single string; wrap it in a list"),
        ((["ok", "  "],), {}, ValueError, r"queries\[1\] is empty"),
        ((["ok", 3],), {}, TypeError, r"queries\[1\] must be a string"),
        ((["ok"], "helpfull"), {}, ValueError, "unknown objective 'helpfull'; valid: helpful, harmless"),
        ((["ok"],), {"n_characteristics": 0}, ValueError, "n_characteristics must be a positive int"),
        ((["ok"],), {"batch_size": 2.5}, ValueError, "batch_size must be a positive int"),
        ((["ok"],), {"elicit_tokens": True}, ValueError, "elicit_tokens must be a positive int"),
        ((["ok"],), {"temperature": 0.0}, ValueError, "temperature must be > 0 when sampling"),
        ((["ok"],), {"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\]"),
        ((["ok"],), {"top_k": -1}, ValueError, "top_k must be an int >= 0"),
        ((["ok"],), {"seed": "1"}, TypeError, "seed must be an int"),
    ],
)
def test_bad_input_fails_before_generation(gpt2, no_generation, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        generate_preferences(gpt2, *args, verbose=False, **kwargs)


def test_model_without_tokenizer_fails_before_generation(no_generation):
    fake = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, d_model=8, model_name="fake"), tokenizer=None)
    with pytest.raises(ValueError, match="no tokenizer"):
        generate_preferences(fake, ["ok"], verbose=False)


def test_chat_true_without_template_fails_before_generation(gpt2, no_generation):
    with pytest.raises(ValueError, match="no chat template"):
        generate_preferences(gpt2, ["ok"], chat=True, verbose=False)
