"""`LogprobJudge`: a pairwise judge that reads its verdict from the next-token
log-probabilities of a local model (TransformerLens or Hugging Face), one forward pass.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import torch

from ..errors import ArgumentTypeError, InvalidArgumentError
from ..models import encode, model_device, pad_id, padding_kwargs, render, require_tokenizer
from .judges import ASPECTS, _check_aspects, judge_prompt
from .records import PairVerdict

__all__ = ["LogprobJudge"]


class _HFAdapter:
    """Gives a Hugging Face causal LM the small surface `render`/`encode` need."""

    def __init__(self, hf_model: Any, tokenizer: Any, prepend_bos: Optional[bool] = None) -> None:
        self.hf = hf_model
        self.tokenizer = tokenizer
        config = getattr(hf_model, "config", None)
        n_ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if prepend_bos is None:  # do what the tokenizer does on its own
            probe = tokenizer("x")["input_ids"]
            prepend_bos = bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id)
        prepends = bool(prepend_bos)
        self.cfg = SimpleNamespace(n_ctx=n_ctx, default_prepend_bos=prepends, device=None)
        try:
            self.cfg.device = next(hf_model.parameters()).device
        except (StopIteration, AttributeError, TypeError):
            self.cfg.device = torch.device("cpu")

    def __call__(self, ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.hf(input_ids=ids, **kwargs).logits


class LogprobJudge:
    """A pairwise judge that reads its verdict from next-token log-probabilities.

    The judging prompt (`judge_prompt`) is rendered with `models.render` (chat template
    when the model has one, else plain text) and ends with the start of the reply the
    prompt asks for, `Better answer:`, so the verdict letter comes next. One forward
    pass gives the log-probabilities at the last position; the verdict is the candidate
    (`A`, `B`, and `tie` when `tie=True`) with the highest log-probability. No text is
    generated or parsed, so the judge is deterministic.

    Verdict tokens: after `Better answer:` the reply continues with `" A"` (space then
    letter). Each candidate continuation is tokenised *after* the prompt (the tokens of
    `prompt + " A"` past the tokens of the prompt), so a tokenizer where `" A"` is one
    token (GPT-2 style `ĠA`, SentencePiece `▁A`) and one where it is a space token then
    `A` are both right. Tokens that every candidate starts with (such a lone space
    token) are appended to the prompt, and the verdict is read at the first token where
    the candidates differ. If two candidates then still start with the same token, one
    forward pass cannot tell them apart and the judge refuses to be built (with the
    tiny test tokenizer `" A"` and `" B"` start with a lone space token and `" tie"`
    with `" t"`, so no token is shared by all three and A/B collide: use `tie=False`).
    `shared_prefix` and `verdict_tokens` record the ids used; `tie` is scored by its
    first token after the shared prefix.

    Args:
        model: a TransformerLens model (bridge or HookedTransformer), or a Hugging Face
            causal LM together with `tokenizer`.
        chat: use the chat template (default: when the tokenizer has one).
        tokenizer: the tokenizer of a Hugging Face model (TransformerLens models carry
            their own).
        prepend_bos: Hugging Face models only, plain (non-chat) prompts: start with BOS
            (default: when the tokenizer adds one itself, as Llama tokenizers do and
            GPT-2 ones do not). TransformerLens models follow `cfg.default_prepend_bos`.
        tie: also score the verdict "tie" (off by default: small models rarely emit it
            as a well-formed token, and a tie is then better expressed by `tie_margin`).
        tie_margin: call it a tie when `|log p(A) − log p(B)| ≤ tie_margin` (default 0:
            only exact equality).
        max_answer_tokens: each answer is cut to its first this many tokens before it
            goes into the prompt, so two long answers cannot push the question out of the
            context (None: no cut).
        batch_size: prompts per forward pass (left-padded). Memory grows with
            `batch_size × prompt length × vocabulary`.
        name: the judge's name in reports.
    """

    def __init__(
        self,
        model: Any,
        *,
        chat: Optional[bool] = None,
        tokenizer: Any = None,
        prepend_bos: Optional[bool] = None,
        tie: bool = False,
        tie_margin: float = 0.0,
        max_answer_tokens: Optional[int] = 384,
        batch_size: int = 4,
        name: Optional[str] = None,
    ) -> None:
        if hasattr(model, "cfg") and hasattr(model, "hooks") and callable(model):
            self.model = model
            self._hf = False
        elif hasattr(model, "config") and callable(model):
            tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
            if tok is None:
                raise InvalidArgumentError(
                    "a Hugging Face model needs its tokenizer: LogprobJudge(model, tokenizer=tok)"
                )
            self.model = _HFAdapter(model, tok, prepend_bos)
            self._hf = True
        else:
            raise ArgumentTypeError(
                f"LogprobJudge needs a TransformerLens model or a Hugging Face causal LM, got {type(model).__name__}"
            )
        self.tokenizer = require_tokenizer(self.model, "the logprob judge")
        if chat is None:
            chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = bool(chat)
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
        if tie_margin < 0 or not math.isfinite(tie_margin):
            raise InvalidArgumentError(f"tie_margin must be a finite number >= 0, got {tie_margin}")
        if max_answer_tokens is not None and max_answer_tokens < 1:
            raise InvalidArgumentError(f"max_answer_tokens must be >= 1 or None, got {max_answer_tokens}")
        self.tie = bool(tie)
        self.tie_margin = float(tie_margin)
        self.max_answer_tokens = max_answer_tokens
        self.batch_size = int(batch_size)
        model_name = getattr(getattr(self.model, "cfg", None), "model_name", None)
        if self._hf:
            config = getattr(model, "config", None)
            model_name = getattr(config, "_name_or_path", None) or type(model).__name__
        self.name = name or f"logprob:{model_name or type(model).__name__}"
        self.shared_prefix, self.verdict_tokens = self._verdict_tokens()

    def __repr__(self) -> str:
        return (
            f"LogprobJudge(name={self.name!r}, chat={self.chat}, tie={self.tie}, verdict_tokens={self.verdict_tokens})"
        )

    # ---------------------------------------------------------------- prompt

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, query: str, answer_a: str, answer_b: str, *, aspects: Sequence[str] = ASPECTS) -> str:
        """The exact text the model reads (ending in `Better answer:`)."""
        user = judge_prompt(query, self._cut(answer_a), self._cut(answer_b), aspects=aspects, tie=self.tie)
        if self.chat:
            return render(self.model, user, "Better answer:", chat=True)
        return render(self.model, user, chat=False) + "\n\nBetter answer:"

    def _cut(self, answer: str) -> str:
        if self.max_answer_tokens is None:
            return answer
        ids = self._ids(answer)
        if len(ids) <= self.max_answer_tokens:
            return answer
        return self.tokenizer.decode(ids[: self.max_answer_tokens]) + " [...]"

    def _verdict_tokens(self) -> tuple[list[int], dict[str, int]]:
        probe = self.prompt("Q", "x", "y")
        base = self._ids(probe)
        conts = {}
        for v in ("A", "B", "tie") if self.tie else ("A", "B"):
            ids = self._ids(probe + " " + v)
            if ids[: len(base)] != base:  # the tokenizer merged across the boundary
                ids = base + self._ids(" " + v)
            conts[v] = ids[len(base) :]
        seqs = list(conts.values())
        shared = []
        for column in zip(*seqs):
            if len(set(column)) != 1:
                break
            shared.append(column[0])
        tokens = {}
        for v, seq in conts.items():
            if len(seq) <= len(shared):
                raise InvalidArgumentError(
                    f"the verdict {v!r} has no token of its own after the shared prefix {shared}"
                )
            tokens[v] = seq[len(shared)]
        if len(set(tokens.values())) != len(tokens):
            raise InvalidArgumentError(
                f"the verdicts share their first distinguishing token under this tokenizer "
                f"({tokens}); build the judge with tie=False"
            )
        return shared, tokens

    # ---------------------------------------------------------------- judging

    def judge(self, query: str, answer_a: str, answer_b: str, *, aspects: Sequence[str] = ASPECTS) -> PairVerdict:
        """The verdict on one pair (one forward pass)."""
        return self.judge_batch([query], [answer_a], [answer_b], aspects=aspects)[0]

    @torch.inference_mode()
    def judge_batch(
        self,
        queries: Sequence[str],
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        *,
        aspects: Sequence[str] = ASPECTS,
    ) -> list[PairVerdict]:
        """Verdicts for many pairs, `batch_size` prompts per forward pass."""
        aspects = _check_aspects(aspects)
        prompts = [self.prompt(q, a, b, aspects=aspects) for q, a, b in zip(queries, answers_a, answers_b)]
        out = []
        for start in range(0, len(prompts), self.batch_size):
            lp = self._last_logprobs(prompts[start : start + self.batch_size])
            for row in lp:
                scores = {v: float(row[t]) for v, t in self.verdict_tokens.items()}
                out.append(PairVerdict(self._decide(scores), logprobs=scores))
        return out

    def _decide(self, scores: dict[str, float]) -> str:
        if self.tie and scores["tie"] > max(scores["A"], scores["B"]):
            return "tie"
        if abs(scores["A"] - scores["B"]) <= self.tie_margin:
            return "tie"
        return "A" if scores["A"] > scores["B"] else "B"

    def _last_logprobs(self, prompts: list[str]) -> torch.Tensor:
        """`[rows, vocab]` log-probabilities of the next token after each prompt."""
        # leave room for the verdict prefix: a prompt longer than the context keeps its end
        n_ctx = int(getattr(self.model.cfg, "n_ctx", 0) or 0)
        max_len = n_ctx - len(self.shared_prefix) if n_ctx > len(self.shared_prefix) else None
        enc = encode(self.model, prompts, chat=self.chat, max_len=max_len)
        rows = []
        for ids, mask in zip(enc.input_ids, enc.attention_mask):
            rows.append(ids[mask.bool()].tolist() + self.shared_prefix)
        width = max(len(r) for r in rows)
        pad = pad_id(self.tokenizer)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        device = model_device(self.model)
        ids, mask = ids.to(device), mask.to(device)
        logits = self.model(ids, **padding_kwargs(self.model, mask))
        return torch.log_softmax(logits[:, -1].to(torch.float64), dim=-1).cpu()
