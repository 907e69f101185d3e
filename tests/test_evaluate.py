"""Evaluation: net-win statistics, bootstrap, A/B order, judges (logprob, HTTP, scorers),
degenerate answers and side effects on neutral text."""

import contextlib
import json
import logging
import math
import pickle
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch
from test_steering import PAIRS as STEERING_PAIRS

from alignez_tl.eval import (
    ASPECTS,
    Comparison,
    HTTPJudge,
    JudgeError,
    LogprobJudge,
    ScorerJudge,
    balanced_order,
    generation_stats,
    is_degenerate,
    judge_pair,
    judge_prompt,
    load_comparisons,
    pairwise_compare,
    parse_verdict,
    per_prompt,
    profanity_scorer,
    save_comparisons,
    sentiment_scorer,
    side_effects,
    summarize,
)
from alignez_tl.models import encode, render
from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace


def comps(outcomes, *, prefix="q", objective=None):
    """Comparisons with the given outcomes, one prompt each."""
    return [
        Comparison(f"{prefix}{i}", "base", "steered", o, True, None, True, "test", objective)
        for i, o in enumerate(outcomes)
    ]


# =========================================================================== statistics


def test_net_win_arithmetic():
    s = summarize(comps(["win"] * 6 + ["lose"] * 2 + ["tie"] * 2), n_boot=500)["overall"]
    assert (s["win"], s["lose"], s["tie"], s["net_win"]) == pytest.approx((60, 20, 20, 40))
    assert s["n"] == s["n_prompts"] == 10 and s["n_errors"] == 0
    assert s["wrong_way"] == pytest.approx(20)


def test_bootstrap_contains_point_is_seeded_and_narrows():
    small = comps(["win"] * 6 + ["lose"] * 2 + ["tie"] * 2)
    big = comps(["win"] * 60 + ["lose"] * 20 + ["tie"] * 20)
    a = summarize(small, n_boot=1000, seed=3)["overall"]
    b = summarize(small, n_boot=1000, seed=3)["overall"]
    assert a["ci"] == b["ci"]
    for k in ("win", "lose", "tie", "net_win"):
        lo, hi = a["ci"][k]
        assert lo <= a[k] <= hi
    width_small = a["ci"]["net_win"][1] - a["ci"]["net_win"][0]
    c = summarize(big, n_boot=1000, seed=3)["overall"]
    width_big = c["ci"]["net_win"][1] - c["ci"]["net_win"][0]
    assert width_big < 0.5 * width_small


def test_bootstrap_matches_the_normal_approximation():
    # n = 100 with p_win = .6, p_lose = .2: sd(W - L) = sqrt(.8 - .4²)/sqrt(100) = 8 pp,
    # so the 95% interval is about 40 ± 15.7.
    s = summarize(comps(["win"] * 60 + ["lose"] * 20 + ["tie"] * 20), n_boot=4000, seed=0)["overall"]
    lo, hi = s["ci"]["net_win"]
    assert lo == pytest.approx(40 - 15.7, abs=2.5)
    assert hi == pytest.approx(40 + 15.7, abs=2.5)


def test_all_wins_interval_is_degenerate():
    s = summarize(comps(["win"] * 7), n_boot=300)["overall"]
    assert s["ci"]["win"] == [100.0, 100.0] and s["ci"]["net_win"] == [100.0, 100.0]
    assert s["ci"]["lose"] == [0.0, 0.0] and s["wrong_way"] == 0.0


def test_groups_objectives_errors_and_prompt_clusters():
    cs = comps(["win", "win", "lose", "tie"], objective="helpful") + comps(
        ["lose", "lose", "win", "error"], prefix="h", objective="harmless"
    )
    s = summarize(cs, n_boot=200, by=["math"] * 4 + ["code"] * 4)
    assert s["overall"]["n"] == 7 and s["overall"]["n_errors"] == 1
    assert s["by_group"]["math"]["net_win"] == pytest.approx(25)
    assert s["by_group"]["code"]["win"] == pytest.approx(100 / 3)
    assert s["by_objective"]["helpful"]["net_win"] == pytest.approx(25)
    assert s["by_objective"]["harmless"]["net_win"] == pytest.approx(-100 / 3)
    with pytest.raises(ValueError, match="labels"):
        summarize(cs, by=["x"])
    # Two comparisons of the same prompt are one resampling unit.
    same = [Comparison("q", "b", "s", o, True, None, True, "t") for o in ("win", "lose")]
    t = summarize(same + comps(["win"]), n_boot=200)["overall"]
    assert t["n"] == 3 and t["n_prompts"] == 2 and t["wrong_way"] == 0.0
    rows = per_prompt(same + comps(["lose"]))
    assert [(r["query"], r["net"], r["wrong_way"]) for r in rows] == [("q", 0, False), ("q0", -1, True)]


def test_empty_and_no_bootstrap():
    s = summarize([], n_boot=100)["overall"]
    assert s["n"] == 0 and s["win"] is None and s["ci"]["net_win"] is None
    t = summarize(comps(["win", "lose"]), n_boot=0)["overall"]
    assert t["net_win"] == 0 and t["ci"]["net_win"] is None


def test_comparisons_round_trip(tmp_path):
    cs = comps(["win", "tie"], objective="helpful")
    save_comparisons(tmp_path / "c.jsonl", cs)
    back = load_comparisons(tmp_path / "c.jsonl")
    assert back == cs
    assert summarize(back, n_boot=10) == summarize([c.to_dict() for c in cs], n_boot=10)


# =========================================================================== A/B order


def test_order_is_balanced_and_seeded():
    flags = balanced_order(1000, seed=0)
    assert 0.45 <= sum(flags) / 1000 <= 0.55
    assert flags == balanced_order(1000, seed=0) and flags != balanced_order(1000, seed=1)
    assert flags != sorted(flags)  # shuffled, not blocks
    assert sum(balanced_order(7, seed=5)) in (3, 4)


def test_verdicts_map_back_to_base_and_steered():
    n = 1000
    queries = [f"q{i}" for i in range(n)]
    base = [f"base {i}" for i in range(n)]
    steered = [f"steered {i}" for i in range(n)]
    out = pairwise_compare(lambda q, a, b: "A", queries, base, steered, seed=0)
    assert 0.45 <= sum(c.base_first for c in out) / n <= 0.55
    assert all((c.outcome == "win") == (not c.base_first) for c in out)
    assert all(c.verdict == "A" and c.judged for c in out)
    assert summarize(out, n_boot=0)["overall"]["net_win"] == pytest.approx(0)

    # A judge that knows which text is steered: every prompt is a win, whatever the order.
    def prefers_steered(q, a, b):
        return "A" if a.startswith("steered") else "B"

    out = pairwise_compare(prefers_steered, queries[:50], base[:50], steered[:50], seed=1)
    assert {c.outcome for c in out} == {"win"}
    assert 0 < sum(c.base_first for c in out) < 50


def test_identical_outputs_are_ties_without_a_judge_call():
    def judge(q, a, b):
        raise AssertionError("the judge must not be called")

    out = pairwise_compare(judge, ["q1", "q2"], ["same answer", "x"], [" same answer\n", "x"])
    assert [(c.outcome, c.judged, c.verdict) for c in out] == [("tie", False, "tie")] * 2
    assert judge_pair(judge, "q", "a", " a ").verdict == "tie"


def test_bad_judges_and_inputs():
    with pytest.raises(JudgeError, match="returned"):
        pairwise_compare(lambda q, a, b: "maybe", ["q"], ["a"], ["b"])
    with pytest.raises(ValueError, match="queries"):
        pairwise_compare(lambda q, a, b: "A", ["q"], ["a", "b"], ["b"])
    with pytest.raises(TypeError, match="not a judge"):
        pairwise_compare(object(), ["q"], ["a"], ["b"])


# =========================================================================== verdict parsing


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A", "A"),
        ("B", "B"),
        (" B\n", "B"),
        ("tie", "tie"),
        ("Tie.", "tie"),
        ("TIE", "tie"),
        ("**A**", "A"),
        ('"B"', "B"),
        ("A is better.", "A"),
        ("B: clearer", "B"),
        ("(A)", "A"),
        ("Answer A", None),
        ("a", None),
        ("A/B", None),
        ("AB", None),
        ("Better answer: A", None),
        ("", None),
        ("Both are good", None),
        (None, None),
        ("tied", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_judge_prompt_names_every_aspect_and_both_answers():
    p = judge_prompt("Why?", "first", "second")
    assert all(a in p for a in ASPECTS)
    assert p.index("Answer A:\nfirst") < p.index("Answer B:\nsecond")
    assert "A or B only" in judge_prompt("q", "a", "b", tie=False)
    assert judge_prompt("q", "a", "b", reply="word").endswith("Reply with one word only: A, B or tie.")


# =========================================================================== logprob judge


def _planted_tokenizer(single_letter_tokens: bool, chat: bool):
    """The tiny test BPE; with `single_letter_tokens`, trained so that " A" is one token."""
    from tiny import CHATML, CORPUS
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = list(CORPUS)
    if single_letter_tokens:
        corpus += ["Better answer: A", "Better answer: B", "Answer A", "Answer B"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=450, min_frequency=1, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>" if chat else "<|endoftext|>",
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        tok.chat_template = CHATML
    return tok


class PlantedModel:
    """A stand-in for a TransformerLens model whose logits are set by hand.

    It decodes each (left-padded) row, finds which of the two labelled answer sections
    contains the word "correct", and at the LAST position favours the verdict token of
    that section, but only when the row ends with the token the verdict should follow
    (`expect_last`). Decoys make every plumbing mistake visible: every other position
    favours the wrong letter, the other spelling of the letters ("A" vs " A") is set to
    the wrong answer, and a row ending in anything but `expect_last` favours the wrong
    letter.
    """

    def __init__(self, tokenizer, good, other, expect_last, tie_id=None):
        self.tokenizer = tokenizer
        self.cfg = SimpleNamespace(
            n_ctx=4096, default_prepend_bos=True, device=torch.device("cpu"), model_name="planted"
        )
        self.good, self.other, self.expect_last, self.tie_id = good, other, expect_last, tie_id
        self.batches = []

    def hooks(self, *args, **kwargs):
        return contextlib.nullcontext()

    def __call__(self, ids, attention_mask=None, **kwargs):
        self.batches.append(tuple(ids.shape))
        rows, seq = ids.shape
        logits = torch.zeros(rows, seq, len(self.tokenizer))
        for r in range(rows):
            real = ids[r] if attention_mask is None else ids[r][attention_mask[r].bool()]
            text = self.tokenizer.decode(real.tolist())
            sec_a = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
            sec_b = text.split("\n\nAnswer B:\n", 1)[1].split("\n\nWhich answer", 1)[0]
            if "correct" in sec_a and "correct" in sec_b and self.tie_id is not None:
                logits[r, -1, self.tie_id] = 9.0
                continue
            better = "A" if "correct" in sec_a else "B"
            worse = "B" if better == "A" else "A"
            logits[r, :-1, self.good[worse]] = 20.0
            if int(real[-1]) != self.expect_last:
                logits[r, -1, self.good[worse]] = 8.0
                continue
            logits[r, -1, self.good[better]] = 8.0
            if self.other:
                logits[r, -1, self.other[worse]] = 12.0
        return logits


@pytest.mark.parametrize("single", [False, True], ids=["space-then-letter", "space-letter-token"])
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_logprob_judge_prefers_the_planted_better_answer(single, chat):
    tok = _planted_tokenizer(single, chat)

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    if single:
        assert len(ids(" A")) == 1 and len(ids(" B")) == 1  # the tokenizer merged " A"
        good = {"A": ids(" A")[0], "B": ids(" B")[0]}
        other = {"A": ids("A")[0], "B": ids("B")[0]}
        expect_last = ids("Better answer:")[-1]
    else:
        assert ids(" A") == ids(" ")[:1] + ids("A")  # a space token, then the letter
        good = {"A": ids("A")[0], "B": ids("B")[0]}
        other = None
        expect_last = ids(" ")[0]
    model = PlantedModel(tok, good, other, expect_last)
    judge = LogprobJudge(model, batch_size=4)
    assert judge.chat is chat and judge.verdict_tokens == good
    assert judge.shared_prefix == ([] if single else [expect_last])

    queries = [f"Question number {i}?" + " Please explain." * (i % 3) for i in range(8)]
    good_answer = lambda i: f"The correct answer is {i}." + " Indeed." * i  # noqa: E731
    bad_answer = lambda i: f"Wrong: {i + 1}"  # noqa: E731
    steered_better = [i % 3 != 0 for i in range(8)]
    base = [bad_answer(i) if s else good_answer(i) for i, s in enumerate(steered_better)]
    steered = [good_answer(i) if s else bad_answer(i) for i, s in enumerate(steered_better)]
    out = pairwise_compare(judge, queries, base, steered, seed=0)
    assert [c.outcome for c in out] == ["win" if s else "lose" for s in steered_better]
    assert {c.base_first for c in out} == {True, False}  # both orders were shown
    assert all(c.detail["logprobs"]["A"] != c.detail["logprobs"]["B"] for c in out)
    assert [shape[0] for shape in model.batches] == [4, 4]  # one forward pass per batch
    assert len({shape[1] for shape in model.batches}) >= 1


def test_logprob_judge_tie_options():
    tok = _planted_tokenizer(True, True)

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    good = {"A": ids(" A")[0], "B": ids(" B")[0]}
    tie_first = ids(" tie")[0]
    model = PlantedModel(tok, good, None, ids("Better answer:")[-1], tie_id=tie_first)
    judge = LogprobJudge(model, tie=True)
    assert judge.verdict_tokens["tie"] == tie_first
    assert "A, B or tie" in judge.prompt("q", "a", "b")
    assert judge.judge("q", "correct one", "correct two").verdict == "tie"
    assert judge.judge("q", "correct one", "nope").verdict == "A"
    # Without a tie token, equal log-probs are a tie only within tie_margin.
    wide = LogprobJudge(model, tie_margin=100.0)
    assert wide.judge("q", "nope", "correct").verdict == "tie"


def test_logprob_judge_refuses_ambiguous_tie_tokens(llama):
    # Tiny BPE: " A" = [space, A] and " tie" = [" t", i, e]: the letters share their first
    # token, which "tie" does not, so one forward pass cannot score all three.
    with pytest.raises(ValueError, match="tie=False"):
        LogprobJudge(llama, tie=True)


def test_logprob_judge_on_a_real_bridge(llama):
    judge = LogprobJudge(llama, batch_size=3)
    tok = llama.tokenizer
    assert judge.chat and judge.verdict_tokens == {
        "A": tok.convert_tokens_to_ids("A"),
        "B": tok.convert_tokens_to_ids("B"),
    }
    qs = ["What is two plus two?", "How do I bake bread?", "Hi", "Write a poem"]
    a = ["Two plus two is four.", "Mix flour, water, salt and yeast, then knead.", "Hello!", "The sea."]
    b = ["Five.", "No.", "Be kind.", "A poem about the wind and the stars at night, step by step."]
    batch = judge.judge_batch(qs, a, b)
    again = [judge.judge(q, x, y) for q, x, y in zip(qs, a, b)]
    for v, w in zip(batch, again):
        assert v.logprobs["A"] == pytest.approx(w.logprobs["A"], abs=1e-4)
        assert v.logprobs["B"] == pytest.approx(w.logprobs["B"], abs=1e-4)
        assert v.verdict == max(("A", "B"), key=v.logprobs.get)
    # By hand: the rendered prompt, then the shared space token, one forward pass.
    text = render(llama, judge_prompt(qs[0], a[0], b[0], tie=False), "Better answer:")
    ids = encode(llama, [text]).input_ids
    ids = torch.cat([ids, torch.tensor([judge.shared_prefix])], dim=1)
    with torch.inference_mode():
        lp = llama(ids)[0, -1].double().log_softmax(-1)
    assert batch[0].logprobs["A"] == pytest.approx(float(lp[judge.verdict_tokens["A"]]), abs=1e-4)


def test_logprob_judge_on_a_hugging_face_model_matches_the_bridge(gpt2):
    from tiny import make_hf_model

    hf, tok = make_hf_model("gpt2", dtype=torch.float64)  # same seed: the bridge's weights
    assert not LogprobJudge(hf, tokenizer=tok).model.cfg.default_prepend_bos  # as the tokenizer does
    on_hf = LogprobJudge(hf, tokenizer=tok, batch_size=2, prepend_bos=True)  # as TransformerLens does
    on_tl = LogprobJudge(gpt2, batch_size=2)
    assert not on_hf.chat and on_hf.verdict_tokens == on_tl.verdict_tokens
    qs, a, b = ["Why?", "What is two plus two?"], ["Because.", "Four, step by step."], ["No", "Five"]
    for x, y in zip(on_hf.judge_batch(qs, a, b), on_tl.judge_batch(qs, a, b)):
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-8)
    with pytest.raises(ValueError, match="tokenizer"):
        LogprobJudge(hf)


# =========================================================================== HTTP judge

KEY = "sk-test-SECRET-7f3a9c21e5"


def completion(text):
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out: fine
        pass


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, payload, headers, delay = srv.replies[min(len(srv.requests), len(srv.replies)) - 1]
        if delay:
            time.sleep(delay)
        if callable(payload):
            payload = payload(self)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(monkeypatch):
    """Start a scripted HTTP server on 127.0.0.1 (random free port); returns (url, server).

    `replies`: a list of (status, payload, headers, delay); the last one repeats.
    """
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("ALIGNEZ_JUDGE_BASE_URL", "ALIGNEZ_JUDGE_MODEL", "ALIGNEZ_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(replies):
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.replies = [(s, p, h or {}, d) for s, p, h, d in replies]
        srv.requests = []
        srv.lock = threading.Lock()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def ok(text):
    return (200, completion(text), None, 0)


def test_http_request_is_exactly_an_openai_chat_completion(serve):
    url, srv = serve([ok("B")])
    judge = HTTPJudge(url + "/v1/", "judge-model", KEY, timeout=5, retries=0)
    v = judge.judge("Why is the sky blue?", "Rayleigh scattering.", "Because.")
    assert v.verdict == "B" and v.attempts == 1 and v.raw == "B"
    [req] = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Content-Type"] == "application/json"
    body = json.loads(req["body"])
    assert body == {
        "model": "judge-model",
        "messages": [
            {"role": "system", "content": body["messages"][0]["content"]},
            {
                "role": "user",
                "content": judge_prompt("Why is the sky blue?", "Rayleigh scattering.", "Because.", reply="word"),
            },
        ],
        "temperature": 0.0,
        "max_tokens": 8,
    }
    assert "judge" in body["messages"][0]["content"]


def test_http_config_from_environment_and_no_key(serve, monkeypatch):
    url, srv = serve([ok("tie")])
    monkeypatch.setenv("ALIGNEZ_JUDGE_BASE_URL", url + "/v1")
    monkeypatch.setenv("ALIGNEZ_JUDGE_MODEL", "env-model")
    judge = HTTPJudge(retries=0)
    assert judge.model == "env-model" and "api_key=<none>" in repr(judge)
    assert judge.judge("q", "a", "b").verdict == "tie"
    assert "Authorization" not in srv.requests[0]["headers"]
    monkeypatch.setenv("ALIGNEZ_JUDGE_API_KEY", KEY)
    HTTPJudge(retries=0).judge("q", "a", "b")
    assert srv.requests[1]["headers"]["Authorization"] == f"Bearer {KEY}"
    monkeypatch.delenv("ALIGNEZ_JUDGE_MODEL")
    with pytest.raises(ValueError, match="ALIGNEZ_JUDGE_MODEL"):
        HTTPJudge()
    monkeypatch.delenv("ALIGNEZ_JUDGE_BASE_URL")
    with pytest.raises(ValueError, match="ALIGNEZ_JUDGE_BASE_URL"):
        HTTPJudge(model="m")


@pytest.mark.parametrize("status, headers", [(500, None), (503, None), (429, {"Retry-After": "0"})])
def test_http_retries_then_succeeds(serve, caplog, status, headers):
    url, srv = serve([(status, "overloaded", headers, 0), ok("A")])
    judge = HTTPJudge(url, "m", KEY, retries=2, backoff=0.01, timeout=5)
    with caplog.at_level(logging.WARNING, logger="alignez_tl"):
        v = judge.judge("q", "a", "b")
    assert v.verdict == "A" and v.attempts == 2 and len(srv.requests) == 2
    assert f"HTTP {status}" in caplog.text


def test_http_garbage_is_retried_then_fails_clearly(serve):
    url, srv = serve([ok("I think answer A is better"), (200, "<html>oops</html>", None, 0), ok("Answer: B")])
    judge = HTTPJudge(url, "m", retries=2, backoff=0.01)
    with pytest.raises(JudgeError, match="after 3 attempt.*unparseable verdict 'Answer: B'"):
        judge.judge("q", "a", "b")
    assert len(srv.requests) == 3
    # Recorded instead of raised: the prompt becomes an error the statistics skip.
    url2, _ = serve([ok("hmm")])
    judge = HTTPJudge(url2, "m", retries=0)
    out = pairwise_compare(judge, ["q1", "q2"], ["a", "same"], ["b", "same"], on_error="record")
    assert [c.outcome for c in out] == ["error", "tie"]
    assert "unparseable" in out[0].error
    s = summarize(out, n_boot=10)["overall"]
    assert s["n_errors"] == 1 and s["n"] == 1 and s["tie"] == 100


def test_http_client_errors_fail_at_once(serve):
    url, srv = serve([(401, {"error": "bad key"}, None, 0)])
    with pytest.raises(JudgeError, match="HTTP 401"):
        HTTPJudge(url, "m", KEY, retries=3, backoff=0.01).judge("q", "a", "b")
    assert len(srv.requests) == 1


def test_http_unreachable_port_fails_fast(serve):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = HTTPJudge(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01, timeout=2)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="after 3 attempt.*connection refused"):
        judge.judge("q", "a", "b")
    assert time.monotonic() - start < 2.0


def test_http_slow_server_times_out(serve):
    url, srv = serve([(200, completion("A"), None, 1.5)])
    judge = HTTPJudge(url, "m", timeout=0.2, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="after 2 attempt.*timed out after 0.2s"):
        judge.judge("q", "a", "b")
    assert time.monotonic() - start < 1.4
    assert len(srv.requests) == 2


def test_http_key_never_leaks(serve, caplog, monkeypatch):
    def echo(handler):  # a server that echoes the credentials it received
        return f"bad request, you sent {handler.headers['Authorization']}"

    def echo_reply(handler):
        return completion(f"A (auth was {handler.headers['Authorization']})")

    url, srv = serve([(500, echo, None, 0), (200, completion(echo), None, 0), (500, echo, None, 0)])
    judge = HTTPJudge(url, "m", KEY, retries=2, backoff=0.01)
    texts = [repr(judge), str(judge), json.dumps(judge.config()), str(vars(judge))]
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as err:
            judge.judge("q", "a", "b")
        url2, _ = serve([(200, echo_reply, None, 0)])
        judge2 = HTTPJudge(url2, "m", KEY, retries=0)
        out = pairwise_compare(judge2, ["q"], ["a"], ["b"])
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # it was sent
    assert "bad request, you sent Bearer ***" in str(err.value)
    texts += [
        str(err.value),
        "".join(traceback.format_exception(err.value)),
        caplog.text,
        json.dumps(out[0].to_dict()),
        out[0].detail["raw"],
    ]
    assert caplog.records  # the retries were logged
    for text in texts:
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(judge)
    monkeypatch.setenv("ALIGNEZ_JUDGE_API_KEY", "sk-other")
    assert pickle.loads(pickle.dumps(judge))._api_key.reveal() == "sk-other"


# =========================================================================== scorer judges


def test_scorer_judge_tolerance_direction_and_identical():
    calls = []

    def length(t):
        calls.append(t)
        return float(len(t))

    j = ScorerJudge(length, "verbose", tolerance=1.0)
    out = pairwise_compare(j, ["q"] * 4, ["abc", "abc", "abcdef", "same"], ["abcde", "abcd", "a", "same"])
    assert [c.outcome for c in out] == ["win", "tie", "lose", "tie"]
    assert out[0].detail == {"base_score": 3.0, "steered_score": 5.0} and out[0].objective == "verbose"
    assert "same" not in calls and out[3].judged is False and out[0].base_first is None
    short = ScorerJudge(length, "short", higher_is_better=False)
    assert [c.outcome for c in pairwise_compare(short, ["q"], ["abc"], ["ab"])] == ["win"]
    with pytest.raises(JudgeError, match="returned nan"):
        pairwise_compare(ScorerJudge(lambda t: math.nan, "bad"), ["q"], ["a"], ["b"])


def test_profanity_scorer():
    j = profanity_scorer()
    clean, rude = j.score(["Have a nice day, my friend.", "You are a fucking idiot, shut the hell up."])
    assert 0 <= rude < clean <= 1
    [c] = pairwise_compare(j, ["q"], ["You stupid shit, fuck off."], ["I would be glad to help."])
    assert c.outcome == "win" and c.objective == "harmless"


def test_sentiment_scorer():
    j = sentiment_scorer()
    love, hate = j.score(["I love this, wonderful!", "I hate this, awful."])
    assert love > 0.5 and hate < -0.5
    [c] = pairwise_compare(j, ["q"], ["I love this, wonderful!"], ["I hate this, awful."])
    assert c.outcome == "lose"


def test_scorer_factories_name_the_missing_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "profanity_check", None)
    with pytest.raises(ImportError, match="pip install alt-profanity-check"):
        profanity_scorer()
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(ImportError, match="pip install vaderSentiment"):
        sentiment_scorer()


# =========================================================================== degenerate answers


NORMAL = (
    "To bake bread, mix flour, water, salt and yeast. Knead the dough for ten minutes, "
    "let it rise for an hour, shape it, let it rise again, and bake it at 230 degrees "
    "for about thirty minutes until the crust is brown and the loaf sounds hollow."
)


@pytest.mark.parametrize(
    "text, degenerate",
    [
        (NORMAL, False),
        ("", False),
        ("I am a bot. " * 5, True),
        ("no " * 7, True),
        ("ha ha ha", False),  # shorter than one 4-gram
        (NORMAL + " and so on and so on and so on and so on", False),  # loop < 50% of words
        ("Sure. " + "the cat sat on the mat " * 6, True),  # loop > 50% of words
        ("First point here.\nThe answer is yes.\nThe answer is yes.\nThe answer is yes.", True),
        ("The answer is yes.\nSomething else entirely.\nThe answer is yes.", False),  # only twice
        ("def f():\n    }\n    }\n    }\n    return 1", False),  # short lines do not count
    ],
)
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate


def test_generation_stats():
    g = generation_stats(["one two", "three four five six", NORMAL], ["one two three", "", "no " * 8])
    assert g["length_unit"] == "words" and g["n"] == 3
    assert g["length_change"] == pytest.approx(g["length_steered"] - g["length_base"])
    assert g["became_degenerate"] == pytest.approx(100 / 3) and g["degenerate_base"] == 0
    assert g["empty_steered"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        generation_stats(["a"], [])


# =========================================================================== side effects

PAIRS = STEERING_PAIRS[:5]
NEUTRAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Plants turn light, water and carbon dioxide into sugar.",
    "Write a poem about the sea.",
]


@pytest.fixture(scope="module")
def gpt2_sub(gpt2):
    return fit_subspace(gpt2, PAIRS, tau=1.0, verbose=False, objective="helpful")


def test_side_effects_zero_for_a_null_edit_and_perplexity_by_hand(gpt2, gpt2_sub):
    null = side_effects(gpt2, Steerer(gpt2_sub, alpha=0.0, top_n=2), NEUTRAL, batch_size=3)
    # (abs 1e-6, not 0: the edit hook rounds a float64 activation through float32.)
    assert null["kl"] == pytest.approx(0, abs=1e-6) and null["ppl_change"] == pytest.approx(0, abs=1e-4)
    assert null["n_texts"] == 3 and null["positions"] == "all"
    assert null["n_tokens"] == sum(encode(gpt2, [t]).input_ids.shape[1] for t in NEUTRAL)
    # Perplexity = exp(mean token loss), pooled over texts: check against the model's own loss.
    nll, n = 0.0, 0
    for t in NEUTRAL:
        ids = encode(gpt2, [t]).input_ids
        with torch.inference_mode():
            nll += float(gpt2(ids, return_type="loss")) * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert null["ppl_base"] == pytest.approx(math.exp(nll / n), rel=1e-9)


def test_side_effects_of_real_steering(gpt2, gpt2_sub):
    generated = Steerer(gpt2_sub, alpha=4.0, top_n=2)  # the default positions="generated"
    one = side_effects(gpt2, generated, NEUTRAL, batch_size=1)
    batched = side_effects(
        gpt2, generated, NEUTRAL, batch_size=3, base_answers=["a b c", "d e"], steered_answers=["a b", "no " * 9]
    )
    assert generated.positions == "generated"  # the caller's steerer is not changed
    assert one["kl"] > 1e-4 and one["kl_max"] >= max(one["kl_per_text"])
    assert batched["kl"] == pytest.approx(one["kl"], rel=1e-6)  # padding does not matter
    assert batched["ppl_steered"] == pytest.approx(one["ppl_steered"], rel=1e-6)
    assert batched["kl_per_text"] == pytest.approx(one["kl_per_text"], rel=1e-6)
    everywhere = side_effects(gpt2, Steerer(gpt2_sub, alpha=4.0, top_n=2, positions="all"), NEUTRAL, batch_size=1)
    assert everywhere["kl"] == pytest.approx(one["kl"], rel=1e-12)  # "generated" runs as "all"
    gen = batched["generation"]
    assert gen["length_unit"] == "tokens" and gen["became_degenerate"] == 50.0
    fixed = side_effects(gpt2, Steerer(gpt2_sub, alpha=4.0, layers=[1]), NEUTRAL[:1])
    assert fixed["kl"] > 0
    with pytest.raises(ValueError, match="both"):
        side_effects(gpt2, generated, NEUTRAL, base_answers=["a"])
