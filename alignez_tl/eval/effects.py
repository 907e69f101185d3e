"""Side effects: what steering does to text it should leave alone (`side_effects`: KL
and perplexity on neutral text, teacher-forced, with a reusable unsteered pass from
`neutral_base`), and answer length and degeneration (`generation_stats`,
`is_degenerate`).

(The module is not called `side_effects` so that `alignez_tl.eval.side_effects` is
the function, as it was in `alignez_tl.evaluate`, and never a module shadowed by it.)
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import ArgumentTypeError, InvalidArgumentError
from ..models import encode, model_device, padding_kwargs

__all__ = ["NeutralBase", "generation_stats", "is_degenerate", "neutral_base", "side_effects"]

_WORD = re.compile(r"\w+")


def is_degenerate(
    text: str,
    *,
    n: int = 4,
    min_repeats: int = 3,
    coverage: float = 0.5,
    line_repeats: int = 3,
    min_line_words: int = 3,
) -> bool:
    """True when an answer has collapsed into repetition.

    Words are the lower-cased `\\w+` runs of the text (punctuation and spacing are
    ignored). The text is degenerate when either

    * **looping n-grams**: the word positions covered by occurrences of word `n`-grams
      (default 4-grams) that occur at least `min_repeats` times (default 3; overlapping
      occurrences count) are more than `coverage` (default 50%) of all words; or
    * **repeated lines**: one line with at least `min_line_words` words (default 3)
      occurs at least `line_repeats` times (default 3), comparing lines by their words.

    Texts shorter than `n` words are never n-gram-degenerate; an empty text is not
    degenerate (count empty answers separately). Scripts without spaces between words
    (Chinese, Japanese) form few `\\w+` runs, so this test is weak there.
    """
    words = _WORD.findall(text.lower())
    if len(words) >= n:
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        covered = [False] * len(words)
        for i, g in enumerate(grams):
            if counts[g] >= min_repeats:
                covered[i : i + n] = [True] * n
        if sum(covered) > coverage * len(words):
            return True
    lines: Counter[str] = Counter()
    for line in text.splitlines():
        lw = _WORD.findall(line.lower())
        if len(lw) >= min_line_words:
            lines[" ".join(lw)] += 1
    return bool(lines) and max(lines.values()) >= line_repeats


def generation_stats(
    base_answers: Sequence[str], steered_answers: Sequence[str], *, tokenizer: Any = None
) -> dict[str, Any]:
    """Length change and degenerate answers, base vs steered.

    Lengths are in tokens of `tokenizer` when given (else in words). Returns
    `length_base`, `length_steered` (means), `length_change` (steered − base),
    `length_ratio` (steered / base), `length_unit`, and the percentages
    `degenerate_base`, `degenerate_steered`, `became_degenerate` (base not degenerate,
    steered degenerate), `empty_base`, `empty_steered`.
    """
    base, steered = list(base_answers), list(steered_answers)
    if len(base) != len(steered):
        raise InvalidArgumentError(f"{len(base)} base and {len(steered)} steered answers")
    if not base:
        raise InvalidArgumentError("no answers to compare")

    def length(t: str) -> int:
        if tokenizer is not None:
            return len(tokenizer(t, add_special_tokens=False)["input_ids"])
        return len(_WORD.findall(t))

    lb = float(np.mean([length(t) for t in base]))
    ls = float(np.mean([length(t) for t in steered]))
    db = [is_degenerate(t) for t in base]
    ds = [is_degenerate(t) for t in steered]
    n = len(base)
    return {
        "n": n,
        "length_unit": "tokens" if tokenizer is not None else "words",
        "length_base": lb,
        "length_steered": ls,
        "length_change": ls - lb,
        "length_ratio": ls / lb if lb > 0 else None,
        "degenerate_base": 100.0 * sum(db) / n,
        "degenerate_steered": 100.0 * sum(ds) / n,
        "became_degenerate": 100.0 * sum(1 for b, s in zip(db, ds) if s and not b) / n,
        "empty_base": 100.0 * sum(1 for t in base if not t.strip()) / n,
        "empty_steered": 100.0 * sum(1 for t in steered if not t.strip()) / n,
    }


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in at least float32 (float64 logits stay float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


@dataclass
class NeutralBase:
    """The unsteered pass over neutral texts, computed once and reused (`neutral_base`).

    `batches` holds, per batch of texts: the texts, token ids, attention mask (bool) and
    the base model's next-token log-probabilities.
    """

    texts: list[str]
    batches: list[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]]
    max_len: Optional[int] = None


@torch.inference_mode()
def neutral_base(
    model: Any, neutral_texts: Sequence[str], *, batch_size: int = 8, max_len: Optional[int] = None
) -> NeutralBase:
    """Tokenise the neutral texts (plain text, no chat template) and run them once unsteered."""
    if isinstance(neutral_texts, str):
        raise ArgumentTypeError("side_effects takes a list of texts, not a single string")
    texts = list(neutral_texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InvalidArgumentError("side_effects needs a non-empty list of non-empty texts")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = encode(model, chunk, chat=False, max_len=max_len)
        ids = batch.input_ids.to(device)
        mask = batch.attention_mask.to(device)
        base = _log_probs(model(ids, **padding_kwargs(model, mask)))
        batches.append((chunk, ids, mask.bool(), base))
    return NeutralBase(texts, batches, max_len)


@torch.inference_mode()
def side_effects(
    model: Any,
    steerer: Any,
    neutral_texts: Sequence[str],
    *,
    batch_size: int = 8,
    base_answers: Optional[Sequence[str]] = None,
    steered_answers: Optional[Sequence[str]] = None,
    chat: Optional[bool] = None,
    max_len: Optional[int] = None,
    base: Optional[NeutralBase] = None,
) -> dict[str, Any]:
    """What steering does to text it should leave alone.

    Each neutral text is tokenised as plain text (BOS as the model's config says, no
    chat template) and run twice, teacher-forced: once without hooks, once with the
    steering hooks editing **every position** (`positions="all"`, whatever the
    steerer's own setting). That is the edit every token of the text would get if the
    model had generated it under steering (with `positions="generated"` every generated
    token is edited), so the numbers measure how far steering moves the model's
    predictions on ordinary text. A per-query steerer selects its layers and directions
    with each neutral text as its own query (`chat` is passed to that selection, as in
    `Steerer.select`); a steerer with fixed layers edits those. `base` reuses an
    unsteered pass from `neutral_base` over the same texts (strength calibration and
    sweeps measure many steerers on one text set).

    Returns:
        `kl`: mean over all real token positions of KL(p_base ‖ p_steered) of the
        next-token distributions (nats); `kl_per_text`: the same per text; `kl_max`:
        the largest per-position KL; `ppl_base`, `ppl_steered`: exp of the mean
        negative log-likelihood of the text's own next tokens (every position but the
        last predicts its successor), pooled over all texts; `ppl_change` (steered −
        base) and `ppl_ratio`; `n_texts`, `n_tokens`, `positions`. With
        `base_answers` / `steered_answers` (generations for some prompts), also
        `generation`: `generation_stats(...)` in model tokens.
    """
    if (base_answers is None) != (steered_answers is None):
        raise InvalidArgumentError("pass both base_answers and steered_answers, or neither")
    if base is None:
        base = neutral_base(model, neutral_texts, batch_size=batch_size, max_len=max_len)
    elif list(neutral_texts) != base.texts or (max_len is not None and max_len != base.max_len):
        raise InvalidArgumentError("`base` was computed on other neutral texts or with another max_len")
    texts = base.texts
    everywhere = copy.copy(steerer)
    everywhere.positions = "all"
    kl_sum = 0.0
    kl_n = 0
    kl_max = 0.0
    kl_per_text: list[float] = []
    nll = [0.0, 0.0]
    nll_n = 0
    for chunk, ids, mask, base_lp in base.batches:
        hooks = everywhere.hooks(model, chunk, chat=chat)
        with model.hooks(fwd_hooks=hooks):
            steered = _log_probs(model(ids, **padding_kwargs(model, mask.long())))
        kl = (base_lp.exp() * (base_lp - steered)).sum(-1).clamp_min(0.0)  # [rows, pos]
        kl = torch.where(mask, kl, torch.zeros_like(kl))
        kl_sum += float(kl.sum())
        kl_n += int(mask.sum())
        kl_max = max(kl_max, float(kl.max()))
        kl_per_text.extend((kl.sum(1) / mask.sum(1)).tolist())
        target = ids[:, 1:].unsqueeze(-1)
        pair = (mask[:, 1:] & mask[:, :-1]).float()
        for k, lp in enumerate((base_lp, steered)):
            nll[k] += float((-lp[:, :-1].gather(-1, target).squeeze(-1) * pair).sum())
        nll_n += int(pair.sum())
    out: dict[str, Any] = {
        "n_texts": len(texts),
        "n_tokens": kl_n,
        "positions": "all",
        "kl": kl_sum / kl_n,
        "kl_per_text": kl_per_text,
        "kl_max": kl_max,
    }
    if nll_n:
        ppl_b, ppl_s = math.exp(nll[0] / nll_n), math.exp(nll[1] / nll_n)
        out.update(ppl_base=ppl_b, ppl_steered=ppl_s, ppl_change=ppl_s - ppl_b, ppl_ratio=ppl_s / ppl_b)
    else:
        out.update(ppl_base=None, ppl_steered=None, ppl_change=None, ppl_ratio=None)
    if base_answers is not None and steered_answers is not None:  # both or neither (checked above)
        out["generation"] = generation_stats(base_answers, steered_answers, tokenizer=getattr(model, "tokenizer", None))
    return out
