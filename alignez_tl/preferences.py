"""Self-generated preference pairs (ALIGNEZ.md §1) and their JSONL file format.

`generate_preferences` runs the two phases of AlignEZ's data step with plain, hook-free
generation:

1. **Elicit.** For each query the model describes what a positive (e.g. helpful) and a
   negative (e.g. useless) answer would do; `parse_characteristics` splits each reply
   into short characteristics such as ``"give step-by-step reasoning"``.
2. **Respond.** For each characteristic the model answers the query in that style; the
   i-th positive answer is paired with the i-th negative one.

The result is a `PreferenceSet`, saved as JSONL: one header line (format, version,
objective, every generation setting) then one line per `PreferencePair`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union, overload

from tqdm.auto import tqdm

from . import models
from ._checks import encode_for_generation, prompt_budget, require_model
from ._io import atomic_write_text
from .objectives import Objective, get_objective

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PreferenceFileError",
    "PreferencePair",
    "PreferenceSet",
    "generate_preferences",
    "parse_characteristics",
]

FORMAT = "alignez-preferences"
FORMAT_VERSION = 1
MAX_CHAR_WORDS = 30  # a characteristic longer than this is cut to its first 30 words
MIN_CHAR_LEN = 3  # characteristics shorter than this (in characters) are dropped

PathLike = Union[str, "os.PathLike[str]"]
# Characters that str.splitlines() (and some JSONL readers) treat as line breaks but
# json.dumps(ensure_ascii=False) leaves raw: escaped so every record stays on one line.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class PreferenceFileError(ValueError):
    """A preference file is malformed: the message names the file and the 1-based line."""


# --------------------------------------------------------------------------- data


@dataclass
class PreferencePair:
    """One preference pair: two answers to the same query, one preferred.

    Attributes:
        query: the user query both answers respond to.
        positive: the preferred answer (generated with `char_positive`).
        negative: the dispreferred answer (generated with `char_negative`).
        char_positive: the characteristic the positive answer was asked to show.
        char_negative: the characteristic the negative answer was asked to show.
        objective: name of the objective the pair was generated for.
        index: which characteristic of this query the pair uses (0-based).
        meta: free JSON-ready details, e.g. whether the fallback characteristic was used
            and how many tokens each answer took.
    """

    query: str
    positive: str
    negative: str
    char_positive: str = ""
    char_negative: str = ""
    objective: str = "custom"
    index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


_PAIR_TYPES: dict[str, type] = {
    "query": str,
    "positive": str,
    "negative": str,
    "char_positive": str,
    "char_negative": str,
    "objective": str,
    "index": int,
    "meta": dict,
}


@dataclass
class PreferenceSet:
    """Preference pairs for one objective, with the settings that produced them.

    Attributes:
        pairs: the pairs, grouped by query in query order.
        objective: the objective the pairs express.
        settings: every generation setting, the seed, the model id and package versions
            (JSON-ready), so a set can be reproduced or audited.
    """

    pairs: list[PreferencePair]
    objective: Objective
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...

    @overload
    def __getitem__(self, index: slice) -> "PreferenceSet": ...

    def __getitem__(self, index: Union[int, slice]) -> Union[PreferencePair, "PreferenceSet"]:
        """A pair by position, or a new set holding a slice of the pairs."""
        if isinstance(index, slice):
            return PreferenceSet(self.pairs[index], self.objective, dict(self.settings))
        return self.pairs[index]

    @property
    def queries(self) -> list[str]:
        """The distinct queries, in first-seen order."""
        return list(dict.fromkeys(p.query for p in self.pairs))

    # ---------------------------------------------------------------- conveniences

    @classmethod
    def from_pairs(
        cls,
        queries: Sequence[str],
        positives: Sequence[str],
        negatives: Sequence[str],
        objective: Union[str, Objective] = "custom",
    ) -> "PreferenceSet":
        """Wrap your own (query, preferred, dispreferred) triples as a set.

        `objective` is a registered name, an `Objective`, or any other name, which then
        only labels the data (its keywords read ``preferred`` / ``dispreferred``).
        """
        for name, seq in (("queries", queries), ("positives", positives), ("negatives", negatives)):
            if isinstance(seq, str):
                raise TypeError(f"{name} must be a list of strings, not a single string")
        if not len(queries) == len(positives) == len(negatives):
            raise ValueError(
                f"queries, positives and negatives must have the same length; got "
                f"{len(queries)}, {len(positives)} and {len(negatives)}"
            )
        obj = _label_objective(objective)
        seen: dict[str, int] = {}
        pairs = []
        for i, (q, pos, neg) in enumerate(zip(queries, positives, negatives, strict=True)):
            for what, value in (("query", q), ("positive", pos), ("negative", neg)):
                if not isinstance(value, str):
                    raise TypeError(f"{what} #{i} must be a string, got {type(value).__name__}")
            pairs.append(PreferencePair(q, pos, neg, objective=obj.name, index=seen.get(q, 0)))
            seen[q] = seen.get(q, 0) + 1
        return cls(pairs, obj, {"source": "from_pairs"})

    def texts(self, model: Any, *, chat: Optional[bool] = None) -> tuple[list[str], list[str]]:
        """The texts whose activations build the subspace (ALIGNEZ.md §2).

        Each is the query followed by one answer, rendered with `models.render`: with a
        chat template that is the chat prefix of the query plus the answer, otherwise
        ``"{query} {answer}"``. Returns (positive texts, negative texts), pair-aligned.
        """
        pos = [models.render(model, p.query, p.positive, chat=chat) for p in self.pairs]
        neg = [models.render(model, p.query, p.negative, chat=chat) for p in self.pairs]
        return pos, neg

    def filter_empty(self) -> "PreferenceSet":
        """A new set without the pairs where either answer is empty (or only whitespace)."""
        kept = [p for p in self.pairs if p.positive.strip() and p.negative.strip()]
        return PreferenceSet(kept, self.objective, dict(self.settings))

    def summary(self) -> dict[str, int]:
        """Counts: pairs, queries, empty answers, identical answers, fallbacks used."""
        return {
            "pairs": len(self.pairs),
            "queries": len(self.queries),
            "empty_positive": sum(not p.positive.strip() for p in self.pairs),
            "empty_negative": sum(not p.negative.strip() for p in self.pairs),
            "identical": sum(p.positive.strip() == p.negative.strip() for p in self.pairs),
            "fallback_positive": sum(bool(p.meta.get("fallback_positive")) for p in self.pairs),
            "fallback_negative": sum(bool(p.meta.get("fallback_negative")) for p in self.pairs),
        }

    # ---------------------------------------------------------------- files

    def save(self, path: PathLike) -> Path:
        """Write the set as UTF-8 JSONL, atomically; returns the path.

        Line 1 is the header ``{"type": "header", "format": "alignez-preferences",
        "version": 1, "objective": {...}, "settings": {...}}``; each further line is one
        ``{"type": "pair", ...}`` record. Non-ASCII text is written as is, except U+0085,
        U+2028 and U+2029, which are escaped so that no tool splits a record. The file is
        written to a temporary name in the same folder and renamed into place, so readers
        never see a partial file.
        """
        path = Path(path)
        header = {
            "type": "header",
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "objective": self.objective.to_dict(),
            "settings": self.settings,
        }
        records = [header] + [{"type": "pair", **asdict(p)} for p in self.pairs]
        try:
            lines = [_dump_line(r) for r in records]
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"cannot save preferences: settings and pair meta must hold only JSON values "
                f"(str, int, float, bool, None, lists, dicts): {exc}"
            ) from None
        return atomic_write_text(path, "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path: PathLike) -> "PreferenceSet":
        """Read a file written by `save`.

        Raises:
            PreferenceFileError: the file is not an alignez preference file, has a format
                version this package cannot read, or a line is malformed (the message
                gives ``path:line``).
        """
        path = Path(path)
        header: Optional[dict[str, Any]] = None
        pairs: list[PreferencePair] = []
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = data.count(b"\n", 0, exc.start) + 1
            raise PreferenceFileError(
                f"{path}:{bad_line}: not UTF-8 text; a preference file is "
                "JSONL written by PreferenceSet.save (binary files such as pickles are never loaded)"
            ) from None
        # Records end at "\n" only (what `save` writes); U+2028 and the like stay inside them.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            record = _parse_line(path, lineno, line)
            if header is None:
                header = _check_header(path, lineno, record)
            else:
                pairs.append(_pair_from_record(path, lineno, record))
        if header is None:
            raise PreferenceFileError(f"{path}: empty file; expected a header record on line 1")
        try:
            objective = Objective.from_dict(header["objective"])
        except (TypeError, ValueError) as exc:
            raise PreferenceFileError(f"{path}: invalid objective in the header: {exc}") from None
        return cls(pairs, objective, header["settings"])


def _label_objective(objective: Union[str, Objective]) -> Objective:
    """A registered objective, or a label-only one for unregistered names."""
    if isinstance(objective, str):
        try:
            return get_objective(objective)
        except ValueError:
            return Objective(objective, "preferred", "dispreferred", description="user-supplied pairs")
    return get_objective(objective)


def _dump_line(record: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 text kept readable, only line-breaking characters escaped."""
    line = json.dumps(record, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        line = line.replace(char, escaped)
    return line


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PreferenceFileError(
            f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(record, dict):
        raise PreferenceFileError(
            f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
        )
    return record


def _check_header(path: Path, lineno: int, record: dict[str, Any]) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    if record.get("type") != "header" or record.get("format") != FORMAT:
        raise PreferenceFileError(
            f"{where}: not an alignez preference file (the first record must be "
            f'{{"type": "header", "format": "{FORMAT}", ...}})'
        )
    version = record.get("version")
    if version != FORMAT_VERSION:
        raise PreferenceFileError(
            f"{where}: format version {version!r} is not supported (this alignez-tl reads "
            f"version {FORMAT_VERSION}); upgrade alignez-tl or regenerate the file"
        )
    for key, kind in (("objective", dict), ("settings", dict)):
        if not isinstance(record.get(key), kind):
            raise PreferenceFileError(f"{where}: the header needs an object field {key!r}")
    return record


def _pair_from_record(path: Path, lineno: int, record: dict[str, Any]) -> PreferencePair:
    where = f"{path}:{lineno}"
    if record.get("type") != "pair":
        raise PreferenceFileError(f'{where}: expected a record with "type": "pair"')
    body = {k: v for k, v in record.items() if k != "type"}
    missing = [k for k in _PAIR_TYPES if k not in body]
    if missing:
        raise PreferenceFileError(f"{where}: pair record misses field(s) {missing}")
    unknown = sorted(set(body) - set(_PAIR_TYPES))
    if unknown:
        raise PreferenceFileError(f"{where}: pair record has unknown field(s) {unknown}")
    for key, kind in _PAIR_TYPES.items():
        value = body[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PreferenceFileError(
                f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}"
            )
    return PreferencePair(**body)


# --------------------------------------------------------------------------- parsing

_MARK = r"(?:\(?\d{1,2}[.)]|\(?[a-zA-Z]\)|[-*•‣◦·–+✔✓✅▪►➤→◆●■])"
_LINE_MARK = re.compile(rf"^\s*(?:{_MARK}\s+)+")  # "1. ", "* ", "* 1. ", "(a) "
_INLINE_NUM = re.compile(r"(?:(?<=\s)|^)\(?\d{1,2}[.)](?=\s|$)")  # "... 2) ..." mid-line
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "approx.")
# "Your response should contain ..." restates the prompt's frame: keep "contain ...".
_LEAD = re.compile(
    r"^(?:(?:your|the|my|an?) (?:answer|response|reply)(?: to (?:this|the) (?:query|question))?"
    r"|it|you|i) (?:should|must|will|needs? to)(?: also)? ",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’«»`"
_TRAILING = ".,;:!?…" + " \t"
# A reply cut by the token budget ends mid-phrase ("... in a world where the"). Its last
# item is dropped when the reply is known to be cut and does not end like a sentence,
# or, either way, when it ends in one of these words.
_ENDS_COMPLETE = re.compile(r"[.!?…][\"'”’)\]]*$")
_DANGLING = frozenset(
    "a an the and or but as of to in on at by for with from that which who whose where when "
    "than then if is are be your their its this these such".split()
)


def _normalise(text: str) -> str:
    """Lower-case words only, single-spaced: the key for duplicate and echo checks."""
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def _sentences(text: str) -> list[str]:
    """Split prose at sentence ends, not after common abbreviations."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(text.strip()):
        if out and out[-1].lower().endswith(_ABBREVIATIONS):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out


def _list_items(lines: list[str]) -> list[str]:
    """Items of a bulleted or numbered list, with the text around the list handled.

    Lines before the first marker are kept as items (the model often continues the
    prompt's "should: " inline before starting a list) unless they introduce it (end in
    ':'). After the list starts, unmarked lines that are indented or start in lower case
    continue the current item; other unmarked lines (headings, chatter) are dropped.
    """
    items: list[str] = []
    in_list = False
    for line in lines:
        start = _LINE_MARK.match(line)
        body = line[start.end():] if start else line
        head, *marked = _INLINE_NUM.split(body)
        if start:
            in_list = True
            items.append(head)
        elif not in_list:
            if not head.rstrip().endswith(":"):
                items.extend(_sentences(head))
        elif items and (line[:1].isspace() or line.lstrip()[:1].islower()):
            items[-1] += " " + head.strip()
        if marked:
            in_list = True
            items.extend(marked)
    return items


def _prose_items(lines: list[str]) -> list[str]:
    """Sentences of each line (a stray leading marker removed); lines that only introduce
    something (end in ':') dropped."""
    bodies = [_LINE_MARK.sub("", line) for line in lines if not line.rstrip().endswith(":")]
    return [s for body in bodies for s in _sentences(body)]


def _is_list(lines: list[str]) -> bool:
    """Two or more lines start with a marker, or one line numbers items inline."""
    marked = sum(bool(_LINE_MARK.match(line)) for line in lines)
    return marked >= 2 or any(len(_INLINE_NUM.findall(line)) >= 2 for line in lines)


def _clean(item: str) -> str:
    """Strip markup, wrapping quotes, trailing punctuation and a restated "Your answer
    should"; cap the length; fix the case."""
    item = " ".join(item.split()[:MAX_CHAR_WORDS])
    item = re.sub(r"\*\*|__|^#+\s*", "", item).strip().rstrip(_TRAILING)
    if len(item) >= 2 and item[0] in _QUOTES and item[-1] in _QUOTES:
        item = item[1:-1].strip().rstrip(_TRAILING)
    return _lower_first(_LEAD.sub("", item))


def _lower_first(item: str) -> str:
    """Lower-case the first letter of a capitalised word ("Give" -> "give").

    Acronyms and words with inner capitals ("AI", "JSON", "McDonald's") and the pronoun
    "I" keep their case.
    """
    first = item.split(" ", 1)[0]
    if not first[:1].isupper() or any(c.isupper() for c in first[1:]):
        return item
    if first == "I" or first.startswith(("I'", "I’")):
        return item
    return item[0].lower() + item[1:]


def _cut_off(last_item: str, text: str, truncated: bool) -> bool:
    """Whether the last item of `text` stops mid-phrase."""
    if truncated and not _ENDS_COMPLETE.search(text.rstrip()):
        return True
    return _normalise(last_item).rsplit(" ", 1)[-1] in _DANGLING


def parse_characteristics(
    text: str, max_items: int = 3, *, prompt: str = "", truncated: bool = False
) -> list[str]:
    """Split a model's elicitation reply into at most `max_items` characteristics.

    Recognises numbered lists (``1.``, ``1)``, ``(1)``, also inline ``1) a 2) b``),
    bullets (``-``, ``*``, ``•``, ``✔`` ...), otherwise one item per sentence of each
    line. Each item loses its marker, markdown bold, wrapping quotes, trailing
    punctuation and a restated frame ("Your response should ...", "It must ..."), is cut
    to 30 words, and starts in lower case (unless it starts with an acronym), so it
    reads well after "Your answer should ...".

    Dropped: items under 3 characters, duplicates (ignoring case and punctuation), items
    that only repeat part of `prompt` (the elicitation prompt the model saw), and a last
    item cut off by the token budget: when `truncated` (the reply used all its tokens)
    and the text does not end with ``.``, ``!`` or ``?``, or whenever the item ends in a
    word like "the", "of", "as". Returns [] when nothing usable is left; callers then
    fall back to ``"be {kw}"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_characteristics takes a string, got {type(text).__name__}")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be a positive int, got {max_items!r}")
    lines = [line for line in text.splitlines() if line.strip()]
    raw = _list_items(lines) if _is_list(lines) else _prose_items(lines)
    if raw and _cut_off(raw[-1], text, truncated):
        raw.pop()
    echo = f" {_normalise(prompt)} "
    seen: set[str] = set()
    out: list[str] = []
    for item in map(_clean, raw):
        key = _normalise(item)
        if len(item) < MIN_CHAR_LEN or not key or key in seen or f" {key} " in echo:
            continue
        seen.add(key)
        out.append(item)
        if len(out) == max_items:
            break
    return out


# --------------------------------------------------------------------------- generation


def _check_queries(queries: Any) -> list[str]:
    if isinstance(queries, str):
        raise TypeError(
            "queries must be a list of strings, not a single string; "
            f"wrap it in a list: [{queries[:40]!r}]"
        )
    if not isinstance(queries, Iterable):
        raise TypeError(f"queries must be a list of strings, got {type(queries).__name__}")
    queries = list(queries)
    if not queries:
        raise ValueError("queries is empty; pass at least one query string")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] must be a string, got {type(q).__name__}")
        if not q.strip():
            raise ValueError(f"queries[{i}] is empty; every query needs some text")
    return queries


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_sampling(do_sample: Any, temperature: Any, top_p: Any, top_k: Any, seed: Any) -> None:
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 turns it off), got {top_k!r}")
    if not do_sample:
        return
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 when sampling, got {temperature!r}; "
            "for deterministic output pass do_sample=False"
        )
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def _batch_seed(seed: int, phase: str, batch: int) -> int:
    """A 63-bit seed for one batch of one phase, derived from the user's `seed`.

    Hashing (rather than ``seed + batch``) keeps the streams of nearby seeds apart.
    """
    digest = hashlib.blake2b(f"{seed}:{phase}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _generate_texts(
    model: Any,
    prompts: list[str],
    *,
    phase: str,
    chat: bool,
    batch_size: int,
    seed: int,
    verbose: bool,
    **gen: Any,
) -> list[tuple[str, int]]:
    """Render, batch and generate; returns (decoded text, number of new tokens) per prompt."""
    tok = model.tokenizer
    rendered = [models.render(model, p, chat=chat) for p in prompts]
    starts = range(0, len(rendered), batch_size)
    out: list[tuple[str, int]] = []
    for b, start in enumerate(tqdm(starts, desc=phase, unit="batch", disable=not verbose)):
        batch = encode_for_generation(model, rendered[start : start + batch_size], chat, gen["max_new_tokens"])
        rows = models.generate_plain(model, batch, seed=_batch_seed(seed, phase, b), **gen)
        out.extend((tok.decode(ids, skip_special_tokens=True).strip(), len(ids)) for ids in rows)
    return out


def _pair_characteristics(
    pos: list[str], neg: list[str], obj: Objective
) -> tuple[list[str], list[str], bool, bool]:
    """Align the two sides' characteristics; an empty side falls back to "be {kw}".

    A side that fell back reuses its fallback for every characteristic of the other
    side; otherwise the shorter side sets the count. Returns the aligned lists and
    whether each side fell back.
    """
    fb_pos, fb_neg = not pos, not neg
    if fb_pos:
        pos = [obj.fallback(True)] * max(1, len(neg))
    if fb_neg:
        neg = [obj.fallback(False)] * max(1, len(pos))
    n = min(len(pos), len(neg))
    return pos[:n], neg[:n], fb_pos, fb_neg


_Plan = tuple[str, int, str, str, dict[str, Any]]  # query, index, char_pos, char_neg, meta


def _plan_pairs(
    queries: list[str],
    prompts: list[str],
    replies: list[tuple[str, int]],
    obj: Objective,
    n_characteristics: int,
    elicit_tokens: int,
) -> list[_Plan]:
    """Parse each query's two elicitation replies and align them into planned pairs.

    `prompts` and `replies` hold, per query, the positive then the negative elicitation.
    A reply that used all `elicit_tokens` tokens was cut, so its last item may be partial.
    """
    plan: list[_Plan] = []
    for qi, query in enumerate(queries):
        chars = [
            parse_characteristics(
                text, n_characteristics, prompt=prompts[2 * qi + side], truncated=n >= elicit_tokens
            )
            for side, (text, n) in enumerate(replies[2 * qi : 2 * qi + 2])
        ]
        pos, neg, fb_pos, fb_neg = _pair_characteristics(chars[0], chars[1], obj)
        (raw_pos, len_pos), (raw_neg, len_neg) = replies[2 * qi : 2 * qi + 2]
        meta = {
            "fallback_positive": fb_pos,
            "fallback_negative": fb_neg,
            "elicited_positive": raw_pos,
            "elicited_negative": raw_neg,
            "elicit_tokens_positive": len_pos,
            "elicit_tokens_negative": len_neg,
        }
        plan.extend((query, i, cp, cn, meta) for i, (cp, cn) in enumerate(zip(pos, neg, strict=True)))
    return plan


def _package_versions() -> dict[str, Optional[str]]:
    import torch
    import transformers

    import alignez_tl

    return {
        "alignez_version": getattr(alignez_tl, "__version__", None),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def generate_preferences(
    model: Any,
    queries: Sequence[str],
    objective: Union[str, Objective, dict[str, Any]] = "helpful",
    *,
    n_characteristics: int = 3,
    elicit_tokens: int = 50,
    response_tokens: int = 200,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    chat: Optional[bool] = None,
    verbose: bool = True,
) -> PreferenceSet:
    """Let the model write its own preference pairs for `queries` (ALIGNEZ.md §1).

    Args:
        model: a TransformerLens model with a tokenizer. No hooks are used or added.
        queries: the queries (a list of non-empty strings).
        objective: a registered objective name (``"helpful"``, ``"harmless"``, ...), an
            `Objective`, or its dict.
        n_characteristics: at most this many characteristics (and so pairs) per query.
        elicit_tokens: new tokens for each elicitation reply (paper: 50).
        response_tokens: new tokens for each answer (paper: 200).
        do_sample: sample (True) or decode greedily (False).
        temperature: softmax temperature when sampling (> 0; ignored when greedy).
        top_p: nucleus-sampling mass in (0, 1] (1 turns it off; ignored when greedy).
        top_k: sample from the k most likely tokens (0 turns it off; ignored when greedy).
        seed: the seed of every batch is derived from it and the batch number, so the
            same seed, settings and model give the same set.
        batch_size: prompts per `generate` call (rows are left-padded; results depend on
            it through padding, so it is recorded).
        chat: wrap prompts in the chat template (None: when the tokenizer has one).
        verbose: show progress bars.

    Returns:
        A `PreferenceSet` with up to ``len(queries) * n_characteristics`` pairs. Each pair's
        `meta` records ``fallback_positive`` / ``fallback_negative`` (the elicitation gave
        nothing usable, ``"be {kw}"`` was used), the raw elicitation replies with their
        token counts (``elicited_*``, ``elicit_tokens_*``) and the token counts of both
        answers (``tokens_positive`` / ``tokens_negative``).
    """
    queries = _check_queries(queries)
    obj = get_objective(objective)
    for name, value in (
        ("n_characteristics", n_characteristics),
        ("elicit_tokens", elicit_tokens),
        ("response_tokens", response_tokens),
        ("batch_size", batch_size),
    ):
        _check_positive_int(name, value)
    _check_sampling(do_sample, temperature, top_p, top_k, seed)
    require_model(model, "generate_preferences")
    models.require_tokenizer(model, "generate_preferences")
    prompt_budget(model, elicit_tokens, "elicit_tokens")
    prompt_budget(model, response_tokens, "response_tokens")
    if chat is None:
        chat = models.is_chat_model(model)
    elif chat and not models.is_chat_model(model):
        raise ValueError(
            "chat=True, but the model's tokenizer has no chat template; pass chat=None "
            "(use the template when there is one) or chat=False"
        )

    sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
    common = dict(chat=chat, batch_size=batch_size, seed=seed, verbose=verbose, **sampling)

    elicit_prompts = [obj.elicit_prompt(q, positive=s) for q in queries for s in (True, False)]
    replies = _generate_texts(
        model, elicit_prompts, phase="elicit", max_new_tokens=elicit_tokens, **common
    )

    plan = _plan_pairs(queries, elicit_prompts, replies, obj, n_characteristics, elicit_tokens)
    respond_prompts = []
    for query, _, char_pos, char_neg, _ in plan:
        respond_prompts.append(obj.respond_prompt(query, char_pos, positive=True))
        respond_prompts.append(obj.respond_prompt(query, char_neg, positive=False))
    answers = _generate_texts(
        model, respond_prompts, phase="respond", max_new_tokens=response_tokens, **common
    )

    pairs = []
    for k, (query, index, cp, cn, meta) in enumerate(plan):
        (pos_text, pos_len), (neg_text, neg_len) = answers[2 * k], answers[2 * k + 1]
        pair_meta = dict(meta, tokens_positive=pos_len, tokens_negative=neg_len)
        pairs.append(PreferencePair(query, pos_text, neg_text, cp, cn, obj.name, index, pair_meta))

    settings = {
        "objective": obj.name,
        "n_queries": len(queries),
        "n_characteristics": n_characteristics,
        "elicit_tokens": elicit_tokens,
        "response_tokens": response_tokens,
        **sampling,
        "seed": seed,
        "batch_size": batch_size,
        "chat": chat,
        "model_id": models.model_signature(model)["model_id"],
        **_package_versions(),
    }
    return PreferenceSet(pairs, obj, settings)
