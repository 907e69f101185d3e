"""Evaluation: pairwise judges, scorer judges, net-win statistics and side effects.

The paper's protocol (docs/evaluation.md, "The protocol"): every steered answer is
compared with the unsteered base model's answer to the same prompt by a pairwise judge
over five aspects (helpfulness, factuality, clarity, depth, engagement), the A/B order
is randomised, identical outputs are ties, and the report gives Win %, Lose % and
**net win = W − L**.

This package holds:

* judges: `LogprobJudge` (any TransformerLens or Hugging Face model, verdict read from
  the log-probabilities of the verdict tokens after one forward pass), `HTTPJudge` (any
  OpenAI-compatible chat endpoint, standard library only, the API key never leaves the
  request header) and `ScorerJudge` (a single-objective `str -> float` scorer, e.g.
  `profanity_scorer()` or `sentiment_scorer()`);
* `judge_pair` / `judge_pairs` (one judge call per pair, identical answers are ties
  without a call) and `pairwise_compare` (seeded, exactly balanced A/B order, verdicts
  mapped back to base / steered);
* `summarize` (Win / Lose / Tie %, net win, percentile bootstrap intervals over prompts,
  per group and per objective, and the share of prompts steering made worse);
* `side_effects` (KL(base ‖ steered) and perplexity on neutral text, teacher-forced)
  and `generation_stats` / `is_degenerate` (length change, degenerate answers).

Every share in the returned dictionaries is a percentage (0-100); net win is in
percentage points.

Modules: `records` (`PairVerdict`, `Comparison`, their JSONL file), `judges` (the
judging prompt, the verdict parser, the judge API), `logprob_judge`, `http_judge`,
`scorers`, `stats` (`summarize`, `per_prompt`) and `effects` (side effects). The
exceptions are in `alignez_tl.errors`. Every public name is re-exported here.
"""

from __future__ import annotations

from ..errors import JudgeError
from .effects import NeutralBase, generation_stats, is_degenerate, neutral_base, side_effects
from .http_judge import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, HTTPJudge
from .judges import (
    ASPECTS,
    VERDICTS,
    balanced_order,
    judge_pair,
    judge_pairs,
    judge_prompt,
    pairwise_compare,
    parse_verdict,
)
from .logprob_judge import LogprobJudge
from .records import OUTCOMES, Comparison, PairVerdict, load_comparisons, save_comparisons
from .scorers import ScorerJudge, profanity_scorer, sentiment_scorer
from .stats import per_prompt, summarize

__all__ = [
    "ASPECTS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "OUTCOMES",
    "VERDICTS",
    "Comparison",
    "HTTPJudge",
    "JudgeError",
    "LogprobJudge",
    "NeutralBase",
    "PairVerdict",
    "ScorerJudge",
    "balanced_order",
    "generation_stats",
    "is_degenerate",
    "judge_pair",
    "judge_pairs",
    "judge_prompt",
    "neutral_base",
    "load_comparisons",
    "pairwise_compare",
    "parse_verdict",
    "per_prompt",
    "profanity_scorer",
    "save_comparisons",
    "sentiment_scorer",
    "side_effects",
    "summarize",
]
