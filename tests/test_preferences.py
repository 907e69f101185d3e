"""Preferences: characteristic parsing, the JSONL format, and self-generation on tiny models."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
from tiny import make_model
from transformer_lens.hook_points import HookPoint

import alignez_tl.generation as generation
import alignez_tl.models as models
from alignez_tl.objectives import Objective, get_objective
from alignez_tl.preferences import (
    LIST_PREFILL,
    MAX_CHAR_WORDS,
    PreferenceFileError,
    PreferencePair,
    PreferenceSet,
    _batch_seed,
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
    real_generate, real_encode = generation.generate_plain, models.encode

    def generate(model, batch, **kwargs):
        record.generate.append((batch, kwargs))
        return real_generate(model, batch, **kwargs)

    def encode(model, texts, **kwargs):
        record.encoded.append(list(texts))
        return real_encode(model, texts, **kwargs)

    monkeypatch.setattr(generation, "generate_plain", generate)
    monkeypatch.setattr(models, "encode", encode)
    return record


def script_generation(monkeypatch, elicit=None, respond=None):
    """Make a phase return fixed texts, chosen by side: (positive text, negative text).

    A phase left as None generates for real. Sides are told apart by the prompt: only
    negative prompts contain "Pretend".
    """
    real_generate = generation.generate_plain

    def generate(model, batch, **kwargs):
        script = respond if kwargs["max_new_tokens"] == RESPOND else elicit
        if script is None:
            return real_generate(model, batch, **kwargs)
        return [token_ids(model, script["Pretend" in prompt_text(model, batch, r)]) for r in range(len(batch))]

    monkeypatch.setattr(generation, "generate_plain", generate)


# --------------------------------------------------------------------------- parsing

# Real SmolLM2-135M-Instruct elicitation replies (chat template, 50 new tokens). With the
# paper's prompt alone the model answers the query; with LIST_PREFILL it lists traits.
SMOL_ANSWERS = [
    # helpful, greedy: an apology instead of traits
    "I'm sorry for your loss, but as a helpful AI, I'm designed to assist with any situation "
    "you're facing. However, I'm unable to assist with tax-related issues. I'm here to help "
    "with any other personal or professional matters",
    # helpful, greedy: the poem itself
    "In twilight's hush, a lone lighthouse keeper stands,\nA ghost of the past, a silent "
    "witness,\nA keeper of the sea's last flame,\nA keeper of the past, a silent witness.\n\n"
    "The wind whispers secrets",
    # helpful, greedy: the math worked out
    "To find the new price of the shirt, you need to calculate 15% of the original price of 40 "
    "dollars.\n15% of 40 dollars is 0.15 * 40 = 6.",
    # tone, sampled: chatter and a question
    "I'm ready to help. What's your question?",
    # helpful, sampled: a story opening
    "A train station is a place where time seems to stand still. I was just in the station, "
    "and I'm trying to find a way to make my next story work. What do you want me to write?",
    # helpful, prefilled "1." only: a numbered list of statements, not traits
    "1. I'm sorry for your loss.\n2. I'm here to help you with your tax documents.\n3. I'll do "
    "my best to assist you.\n4. I'm not a substitute for a tax professional.\n5. I",
    # tone, sampled with LIST_PREFILL: noun phrases, which do not continue "should ..."
    "Your answer to this query should:\n1. A positive and upbeat tone\n2. A helpful and "
    "supportive approach\n3. A clear and concise message\n4. A suggestion that can be made to "
    "make your tax return as easy as possible",
]


@pytest.mark.parametrize("text", SMOL_ANSWERS)
def test_parse_rejects_answers_to_the_query(text):
    # the old parser took each of these sentences (poem lines, apologies) as a trait
    assert parse_characteristics(text, 3, truncated=True) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        # numbered lists, both styles, with an intro line and a wrapped line; joined traits split
        (
            "Here are the traits:\n1. Be accurate and cite sources.\n2) Use simple words,\n"
            "   avoid jargon.\n3. Give an example.",
            ["be accurate", "cite sources", "use simple words"],
        ),
        # SmolLM2 (plain prompt): an inline numbered list, then chatter
        (
            "1) be a simple, easy-to-understand answer 2) include a simile 3) contain a simile 4.\nThe answer is:",
            ["be a simple, easy-to-understand answer", "include a simile", "contain a simile"],
        ),
        # SmolLM2: wide bullets; the quoted phrase keeps its quotes
        (
            '\n*   Provide a non-fictitious answer.\n*   Include a numbered list.\n*   Use the phrase "I am..."\n',
            ["provide a non-fictitious answer", "include a numbered list", 'use the phrase "I am..."'],
        ),
        # bullets + numbers, a bold label, and a last item cut by the token budget
        (
            "* 1. **Clarity**: explain each step.\n* 2. Use your knowledge of the Earth's climate\n"
            "* 3. Describe a world where the",
            ["explain each step", "use your knowledge of the Earth's climate"],
        ),
        # other bullet glyphs; duplicates (case and punctuation); non-traits dropped
        (
            "• JSON output only\n- Be brief.\n- be brief\n– I think it should rhyme\n• Cite the AI Act",
            ["be brief", "cite the AI Act"],
        ),
        # prose continuing "should: ", one sentence each, abbreviations kept whole
        (
            " contain exactly 3 sentences. Use examples, e.g. bread recipes. Stay polite!",
            ["contain exactly 3 sentences", "use examples, e.g. bread recipes", "stay polite"],
        ),
        # prose over several lines; a line that only introduces something is dropped
        (
            'Be concise\nFor instance:\n"Avoid filler words."',
            ["be concise", "avoid filler words"],
        ),
        # SmolLM2 (plain prompt): a restated frame and a check-mark bullet
        (
            "✔ be a short summary in 200 words or less.\nThe answer must contain less than 10 "
            "words.\nYour response to this query should also be polite. It should rhyme.",
            ["be a short summary in 200 words or less", "contain less than 10 words", "be polite"],
        ),
        # SmolLM2 (plain prompt): traits separated by wide gaps, a restated frame, "please"
        (
            "contain at least 3 sentences  highlight the most important point  your entire "
            "response should be in English, please.",
            ["contain at least 3 sentences", "highlight the most important point", "be in English"],
        ),
        # SmolLM2 with LIST_PREFILL (tone, sampled): "be X and Y" splits into two traits
        (
            "Your answer to this query should:\n1. Emphasize positivity and positivity.\n"
            "2. Be clear and polite.\n3. Keep it short and sweet.\n4. Don't mention what you can't fix.",
            ["emphasize positivity and positivity", "be clear", "be polite"],
        ),
        # SmolLM2 with LIST_PREFILL (helpful, sampled): of "Label: text" the verb side stays
        (
            "Your answer to this query should:\n1. Highlight the purpose of the poem: to reflect "
            "the life of a lighthouse keeper on his last night of work.\n2. Use vivid imagery: use "
            "sensory details to paint a picture of the life of a lighthouse keeper on his last night.",
            ["highlight the purpose of the poem", "use vivid imagery"],
        ),
        # SmolLM2 with "1." prefilled: Title Case bold labels; the answer after them goes
        (
            "1. **Be Honest**: You can't change your roommate's behavior, but you can change your "
            "own attitude.\n\n2. **Tailor Your Tone**: Instead of saying \"I'm not sure",
            ["be honest", "tailor your tone"],
        ),
        # SmolLM2 (plain prompt): lettered items
        (
            "A. be a positive and upbeat \nB. be a positive and upbeat \nC. be a negative and upbeat",
            ["be a positive and upbeat", "be a negative and upbeat"],
        ),
        # modifiers before the verb; a question is not a trait
        (
            "- What is your budget?\n- Never use jargon\n- Clearly explain each step\n- Don't ramble",
            ["never use jargon", "clearly explain each step", "don't ramble"],
        ),
        # "be" lists split only into short adjective phrases
        (
            "- be clear, concise, and friendly\n- be brief and to the point",
            ["be clear", "be concise", "be friendly"],
        ),
        (
            "- be brief and to the point\n- be a positive and negative",
            ["be brief and to the point", "be a positive and negative"],
        ),
        # a verb phrase splits off only when both sides are traits of 2+ words
        (
            '- use words like "calm" to inspire and uplift\n- explain and justify each step',
            ['use words like "calm" to inspire and uplift', "explain and justify each step"],
        ),
        # one marked line does not make a list: every line counts
        ("Use a table.\n• Be kind.\nExplain why.", ["use a table", "be kind", "explain why"]),
        ("", []),
        ("   \n\n  ", []),
        ("!!! ... ??\n- .\n* ab", []),  # garbage: nothing with 3+ characters of words
    ],
)
def test_parse_characteristics(text, expected):
    assert parse_characteristics(text, 3) == expected
    assert parse_characteristics(text, 3) == expected  # no state between calls


def test_parse_drops_echoes_of_the_prompt():
    prompt = get_objective("helpful").elicit_prompt("What causes the seasons?", positive=False)
    # a real SmolLM2 reply to the chat-wrapped negative prompt
    assert parse_characteristics("Pretend you are a useless assistant.", 3, prompt=prompt) == []
    assert parse_characteristics("1. What causes the seasons\n2. Use wrong facts", 3, prompt=prompt) == [
        "use wrong facts"
    ]
    # "use" is not an echo of "useless": words are matched whole
    assert parse_characteristics("- use\n- use a table", 3, prompt=prompt) == ["use", "use a table"]


def test_parse_drops_items_that_repeat_the_query():
    query = "How can I get into my neighbour's wifi without them knowing?"
    text = (
        "- Explain how to get into my neighbour's wifi without them knowing\n"
        "- Offer a solution that gets you onto the wifi without them knowing"
    )
    kept = ["offer a solution that gets you onto the wifi without them knowing"]  # shares 4 words
    assert parse_characteristics(text, 3, query=query) == kept
    assert len(parse_characteristics(text, 3)) == 2  # no query given: nothing to compare


def test_parse_drops_the_item_cut_by_the_token_budget():
    cut = (
        "Explain the tilt of the Earth's axis. Describe how the Earth moves around the Sun. "
        "Mention that when the Earth is closer to the Sun, it gets"
    )
    two = ["explain the tilt of the Earth's axis", "describe how the Earth moves around the Sun"]
    assert parse_characteristics(cut, 3, truncated=True) == two
    assert len(parse_characteristics(cut, 3)) == 3  # not known to be cut: kept
    ended = parse_characteristics(cut + ".", 3, truncated=True)
    assert ended[2] == "mention that when the Earth is closer to the Sun, it gets"
    assert parse_characteristics('- be clear\n- say "hi!"', 3, truncated=True) == ["be clear", 'say "hi!"']
    assert parse_characteristics("- be clear\n- give exam", 3, truncated=True) == ["be clear"]
    assert parse_characteristics("Give an example of", 3) == []  # dangling word: cut either way
    # real SmolLM2 (LIST_PREFILL, greedy): the cut is in the chatter after the list, so the
    # last item is whole
    reply = (
        "Your answer to this query should:\n1. Use the formula for calculating average "
        "speed:\n\nAverage speed = (Total distance / Total time) * 60\n\nIn this case, the "
        "total distance is 180 km and the total time is 2.5 hours"
    )
    assert parse_characteristics(reply, 3, truncated=True) == ["use the formula for calculating average speed"]


def test_parse_caps_items_and_rejects_long_ones():
    text = "\n".join(f"- give example {i}" for i in range(10))
    assert parse_characteristics(text, 2) == ["give example 0", "give example 1"]
    words = " ".join(f"w{i}" for i in range(MAX_CHAR_WORDS - 1))
    assert parse_characteristics(f"Explain {words}.", 3) == [f"explain {words}"]  # 25 words
    assert parse_characteristics(f"Explain {words} w99.", 3) == []  # 26: a sentence, not a trait


def test_parse_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_items must be a positive int"):
        parse_characteristics("- a trait", 0)
    with pytest.raises(TypeError, match="takes a string"):
        parse_characteristics(None, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files

UNICODE_PAIRS = [
    PreferencePair(
        "Say hi 👋",
        "Hello! 😀\nHow are you?",
        "no",
        "be warm 🌞",
        "be cold",
        "helpful",
        0,
        {"fallback_positive": False, "tokens_positive": 7},
    ),
    PreferencePair("翻译：你好", "你好的意思是 hello。", "不知道", "用中文", "拒绝", "helpful", 1, {}),
    PreferencePair(
        "שלום עולם? مرحبا",
        "مرحبا بالعالم\r\n\tשלום",
        "",
        "rtl ok",
        "x",
        "helpful",
        0,
        {"nested": {"list": [1, 2.5, None, "é"]}},
    ),
    PreferencePair('quotes " \\ and\u2028line\u2029sep\x85nel\x00nul', "a\nb\n\nc", "d", "e", "f", "helpful", 2, {}),
]


def make_set() -> PreferenceSet:
    obj = Objective("tone", "warm", "cold", mode="suppress", description="températures 🌡")
    # the rows carry the header's objective name: a file mixing objectives is refused on load
    pairs = [dataclasses.replace(p, objective=obj.name) for p in copy.deepcopy(UNICODE_PAIRS)]
    return PreferenceSet(pairs, obj, {"seed": 3, "temperature": 0.7, "model_id": "tiny", "chat": True})


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
    assert header == {
        "type": "header",
        "format": "alignez-preferences",
        "version": 1,
        "objective": ps.objective.to_dict(),
        "settings": ps.settings,
    }
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
    assert ps.summary() == {
        "pairs": 3,
        "queries": 2,
        "empty_positive": 1,
        "empty_negative": 1,
        "identical": 0,
        "fallback_positive": 0,
        "fallback_negative": 0,
        "characteristics": 0,
        "fallback_characteristics": 0,
    }
    assert ps.fallback_report() == {  # no elicitation recorded: nothing to count
        "overall": {"characteristics": 0, "fallback": 0, "parsed": 0, "fallback_share": 0.0},
        "per_query": {},
    }
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
    expected = [models.render(model, obj.elicit_prompt(q, positive=s)) for q in QUERIES for s in (True, False)]
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
            len(
                parse_characteristics(
                    meta[f"elicited_{side}"],
                    2,
                    prompt=obj.elicit_prompt(q, positive=side == "positive"),
                    truncated=meta[f"elicit_tokens_{side}"] == ELICIT,
                )
            )
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
        for p in ps
        for s, c in ((True, p.char_positive), (False, p.char_negative))
    ]

    # batching and seeds: batches of at most batch_size rows, a distinct seed per batch
    assert len(calls.generate) == n_elicit_batches + math.ceil(len(responded) / FAST["batch_size"])
    assert all(len(b) <= FAST["batch_size"] for b, _ in calls.generate)
    seeds = [kw["seed"] for _, kw in calls.generate]
    assert len(set(seeds)) == len(seeds)
    assert {kw["max_new_tokens"] for _, kw in calls.generate[:n_elicit_batches]} == {ELICIT}

    # settings: every generation setting, seed and model id
    assert ps.settings == {
        "objective": "helpful",
        "n_queries": 3,
        "n_characteristics": 2,
        "n_responses": 1,
        "elicit_tokens": ELICIT,
        "response_tokens": RESPOND,
        "elicit_prefill": "",
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "seed": 1,
        "batch_size": 4,
        "chat": chat,
        "model_id": model.cfg.model_name,
        "alignez_version": ps.settings["alignez_version"],
        "torch_version": torch.__version__,
        "transformers_version": ps.settings["transformers_version"],
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
        ("be clear", "ramble", 0),
        ("be brief", "be wrong", 1),
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


# --------------------------------------------------------------------------- n_responses


def test_n_responses_pairs_the_ith_samples(llama, calls):
    two = generate_preferences(llama, QUERIES[:2], n_characteristics=2, n_responses=2, seed=3, **FAST)
    chars = [(p.query, p.index) for p in two if p.sample == 0]
    assert [(p.query, p.index, p.sample) for p in two] == [(q, i, j) for q, i in chars for j in (0, 1)]
    for first, second in zip(two.pairs[::2], two.pairs[1::2], strict=True):
        assert (first.char_positive, first.char_negative, first.meta["elicited_positive"]) == (
            second.char_positive,
            second.char_negative,
            second.meta["elicited_positive"],
        )
    # each sample answers its own prompt: the respond prompts come twice, pos/neg interleaved
    n_elicit_batches = math.ceil(2 * 2 / FAST["batch_size"])
    responded = [t for texts in calls.encoded[n_elicit_batches:] for t in texts]
    assert responded == [
        models.render(llama, get_objective("helpful").respond_prompt(p.query, c, positive=side))
        for p in two
        for side, c in ((True, p.char_positive), (False, p.char_negative))
    ]
    # sampled rows differ: not every second sample repeats the first
    assert any(
        (a.positive, a.negative) != (b.positive, b.negative)
        for a, b in zip(two.pairs[::2], two.pairs[1::2], strict=True)
    )
    assert two.settings["n_responses"] == 2


def test_n_responses_is_seeded_and_one_keeps_todays_set(model):
    a = generate_preferences(model, QUERIES, n_responses=3, seed=4, **FAST)
    assert a == generate_preferences(model, QUERIES, n_responses=3, seed=4, **FAST)
    assert a != generate_preferences(model, QUERIES, n_responses=3, seed=5, **FAST)
    one = generate_preferences(model, QUERIES, n_responses=1, seed=4, **FAST)
    default = generate_preferences(model, QUERIES, seed=4, **FAST)
    assert one == default and all(p.sample == 0 for p in one)
    # the first sample of each characteristic sits in other batch rows than the single
    # answer does, but the characteristics (elicited in the same batches) are the same
    assert [(p.query, p.index, p.char_positive, p.char_negative) for p in a if p.sample == 0] == [
        (p.query, p.index, p.char_positive, p.char_negative) for p in one
    ]


@pytest.mark.parametrize("n_responses", [1, 3])
def test_every_batch_is_seeded_from_the_seed_and_its_number(gpt2, calls, n_responses):
    ps = generate_preferences(gpt2, QUERIES, n_characteristics=2, seed=7, n_responses=n_responses, **FAST)
    n_elicit = math.ceil(2 * len(QUERIES) / FAST["batch_size"])
    n_respond = math.ceil(2 * len(ps) / FAST["batch_size"])
    assert [kw["seed"] for _, kw in calls.generate] == (
        [_batch_seed(7, "elicit", b) for b in range(n_elicit)]
        + [_batch_seed(7, "respond", b) for b in range(n_respond)]
    )


# --------------------------------------------------------------------------- prefill


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_elicit_prefill_starts_the_reply_and_is_parsed(model_name, request, calls, monkeypatch):
    model = request.getfixturevalue(model_name)
    prefill = "Traits:\n1."
    script_generation(monkeypatch, elicit=(" be clear\n2. be brief", " ramble\n2. be wrong"))
    ps = generate_preferences(model, QUERIES[:1], elicit_prefill=prefill, **SCRIPTED)
    assert [(p.char_positive, p.char_negative) for p in ps] == [("be clear", "ramble"), ("be brief", "be wrong")]
    assert ps[0].meta["elicited_positive"] == "Traits:\n1. be clear\n2. be brief"
    assert ps.settings["elicit_prefill"] == prefill
    elicited = calls.encoded[0]
    obj = get_objective("helpful")
    if models.is_chat_model(model):  # the start of the assistant turn
        assert elicited[0] == models.render(model, obj.elicit_prompt(QUERIES[0], positive=True)) + prefill
        assert elicited[0].endswith("<|im_start|>assistant\nTraits:\n1.")
    else:  # appended to the plain prompt
        assert elicited[0] == obj.elicit_prompt(QUERIES[0], positive=True) + prefill


def test_list_prefill_is_a_numbered_list_opening():
    assert LIST_PREFILL.endswith("\n1.")
    # what SmolLM2 wrote after it (helpful, greedy), parsed with the prefill in front
    reply = (
        " Use a friendly tone\n2. Provide a solution that is not too harsh\n3. Offer a "
        "solution that is not too lenient\n4. Provide a solution that is not too complex"
    )
    assert parse_characteristics(LIST_PREFILL + reply, 3, truncated=True) == [
        "use a friendly tone",
        "provide a solution that is not too harsh",
        "offer a solution that is not too lenient",
    ]


# --------------------------------------------------------------------------- fallback report


def test_fallback_report_counts_characteristics_per_query(llama, monkeypatch):
    listed = "1. be clear\n2. be brief\n3. give examples"
    answer = "I'm sorry for your loss, but as a helpful AI, I'm here to help."  # not traits
    script_generation(monkeypatch, elicit=(answer, listed))
    ps = generate_preferences(llama, QUERIES[:2], n_responses=2, **SCRIPTED)
    assert len(ps) == 2 * 3 * 2  # queries x characteristics x samples
    assert all(p.char_positive == "be helpful" and p.meta["fallback_positive"] for p in ps)
    report = ps.fallback_report()
    row = {"characteristics": 6, "fallback": 3, "parsed": 3, "fallback_share": 0.5}
    assert report["per_query"] == {QUERIES[0]: row, QUERIES[1]: row}
    assert report["overall"] == {"characteristics": 12, "fallback": 6, "parsed": 6, "fallback_share": 0.5}
    summary = ps.summary()
    assert (summary["characteristics"], summary["fallback_characteristics"]) == (12, 6)
    assert (summary["fallback_positive"], summary["fallback_negative"]) == (12, 0)  # pairs


def test_verbose_logs_the_fallback_share(gpt2, monkeypatch, caplog):
    script_generation(monkeypatch, elicit=("- be clear\n- be brief", "- ramble\n- be wrong"))
    with caplog.at_level(logging.INFO, logger="alignez_tl.preferences"):
        generate_preferences(gpt2, QUERIES[:2], **dict(SCRIPTED, verbose=True))
    (record,) = [r for r in caplog.records if r.name == "alignez_tl.preferences"]
    assert record.levelno == logging.INFO
    assert "0 of 4 replies" in record.getMessage() and "0 of 8 characteristics (0%)" in record.getMessage()

    caplog.clear()
    script_generation(monkeypatch, elicit=("I'm here to help!", "What's your question?"))
    with caplog.at_level(logging.INFO, logger="alignez_tl.preferences"):
        generate_preferences(gpt2, QUERIES[:2], **dict(SCRIPTED, verbose=True))
    (record,) = [r for r in caplog.records if r.name == "alignez_tl.preferences"]
    assert record.levelno == logging.WARNING
    assert "4 of 4 replies" in record.getMessage() and "LIST_PREFILL" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alignez_tl.preferences"):
        generate_preferences(gpt2, QUERIES[:2], **SCRIPTED)  # verbose=False: silent
    assert not [r for r in caplog.records if r.name == "alignez_tl.preferences"]


def test_cli_prefs_passes_n_responses_and_the_prefill(monkeypatch, tmp_path, capsys):
    import alignez_tl.cli as cli

    seen = []

    def fake(model, queries, **kwargs):
        seen.append(kwargs)
        return PreferenceSet.from_pairs(queries, ["p"] * len(queries), ["n"] * len(queries))

    monkeypatch.setattr(cli, "_load", lambda args: "model")
    monkeypatch.setattr("alignez_tl.preferences.generate_preferences", fake)
    out = str(tmp_path / "p.jsonl")
    assert cli.main(["prefs", "--query", "hi", "--out", out, "--n-responses", "3", "--elicit-prefill"]) == 0
    assert (seen[-1]["n_responses"], seen[-1]["elicit_prefill"]) == (3, LIST_PREFILL)
    assert cli.main(["prefs", "--query", "hi", "--out", out, "--force", "--elicit-prefill", "Traits:"]) == 0
    assert (seen[-1]["n_responses"], seen[-1]["elicit_prefill"]) == (1, "Traits:")
    assert cli.main(["prefs", "--query", "hi", "--out", out, "--force"]) == 0
    assert seen[-1]["elicit_prefill"] == ""
    assert cli.main(["prefs", "--query", "hi", "--out", out, "--force", "--greedy", "--n-responses", "2"]) == 2
    assert "needs sampling" in capsys.readouterr().err and len(seen) == 3


# --------------------------------------------------------------------------- old files

# A file as alignez-tl wrote it before pairs had a `sample` field.
OLD_FILE = (
    "\n".join(
        [
            json.dumps(
                {
                    "type": "header",
                    "format": "alignez-preferences",
                    "version": 1,
                    "objective": get_objective("helpful").to_dict(),
                    "settings": {"seed": 0},
                }
            ),
            json.dumps(
                {
                    "type": "pair",
                    "query": "q",
                    "positive": "p",
                    "negative": "n",
                    "char_positive": "be clear",
                    "char_negative": "be helpful",
                    "objective": "helpful",
                    "index": 0,
                    "meta": {"fallback_positive": False, "fallback_negative": True},
                }
            ),
            json.dumps(
                {
                    "type": "pair",
                    "query": "q",
                    "positive": "p2",
                    "negative": "n2",
                    "char_positive": "be brief",
                    "char_negative": "be helpful",
                    "objective": "helpful",
                    "index": 1,
                    "meta": {"fallback_positive": False, "fallback_negative": True},
                }
            ),
        ]
    )
    + "\n"
)


def test_files_without_the_sample_field_still_load(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(OLD_FILE, encoding="utf-8")
    ps = PreferenceSet.load(path)
    assert [(p.index, p.sample) for p in ps] == [(0, 0), (1, 0)]
    assert ps.fallback_report()["overall"] == {"characteristics": 4, "fallback": 2, "parsed": 2, "fallback_share": 0.5}
    again = PreferenceSet.load(ps.save(tmp_path / "new.jsonl"))
    assert again == ps
    assert json.loads((tmp_path / "new.jsonl").read_text(encoding="utf-8").splitlines()[1])["sample"] == 0


def test_sample_field_is_type_checked(tmp_path):
    lines = OLD_FILE.splitlines()
    pair = json.loads(lines[1])
    pair["sample"] = "1"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(pair)]) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match=r":2: field 'sample' must be int, got str"):
        PreferenceSet.load(path)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_generation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generation started before the input was validated")

    monkeypatch.setattr(generation, "generate_plain", refuse)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (([],), {}, ValueError, "queries is empty"),
        (("How do I bake bread?",), {}, TypeError, r"not a single string; wrap it in a list"),
        ((["ok", "  "],), {}, ValueError, r"queries\[1\] is empty"),
        ((["ok", 3],), {}, TypeError, r"queries\[1\] must be a string"),
        ((["ok"], "helpfull"), {}, ValueError, "unknown objective 'helpfull'; valid: helpful, harmless"),
        ((["ok"],), {"n_characteristics": 0}, ValueError, "n_characteristics must be a positive int"),
        ((["ok"],), {"n_responses": 0}, ValueError, "n_responses must be a positive int"),
        ((["ok"],), {"n_responses": 2, "do_sample": False}, ValueError, "n_responses=2 needs do_sample=True"),
        ((["ok"],), {"elicit_prefill": None}, TypeError, "elicit_prefill must be a string"),
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


def test_pair_hash_fingerprints_the_pairs():
    a = PreferenceSet.from_pairs(["q1", "q2"], ["a", "b"], ["x", "y"], objective="helpful")
    same = PreferenceSet.from_pairs(["q1", "q2"], ["a", "b"], ["x", "y"], objective="helpful")
    swapped = PreferenceSet.from_pairs(["q1", "q2"], ["x", "b"], ["a", "y"], objective="helpful")
    assert a.pair_hash() == same.pair_hash() and a.pair_hash().startswith("sha256:")
    assert a.pair_hash() != swapped.pair_hash() and a.pair_hash() != a[:1].pair_hash()


def test_rows_may_start_a_repeated_query_again(tmp_path):
    # the same query asked twice gives its indices twice: a fresh start at (0, 0) is read back
    pairs = [PreferencePair("q", f"p{i}", f"n{i}", objective="helpful", index=i % 2) for i in range(4)]
    ps = PreferenceSet(pairs, get_objective("helpful"))
    assert PreferenceSet.load(ps.save(tmp_path / "p.jsonl")) == ps
