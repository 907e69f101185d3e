"""Self-generated preference pairs and their JSONL file format.

(docs/method.md, "1. The model writes its own preferences")

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
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union, overload

from tqdm.auto import tqdm

from . import generation, models
from ._checks import require_model
from ._io import atomic_write_text
from .errors import ArgumentTypeError, InvalidArgumentError, PreferenceFileError, ResumeError
from .objectives import Objective, get_objective
from .settings import PreferenceSettings

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LABELLED_PAIRS_PATH",
    "LIST_PREFILL",
    "prefill_text",
    "PreferenceFileError",
    "PreferencePair",
    "PreferenceSet",
    "generate_preferences",
    "labelled_pairs",
    "parse_characteristics",
    "read_pairs",
]

FORMAT = "alignez-preferences"
FORMAT_VERSION = 1
MAX_CHAR_WORDS = 25  # a longer item reads as a sentence of an answer, not a trait: rejected
MIN_CHAR_LEN = 3  # characteristics shorter than this (in characters) are dropped

LIST_PREFILL = "Your answer to this query should:\n1."
"""An `elicit_prefill` that starts the model's reply as a numbered list of traits.

Chat models such as SmolLM2-135M-Instruct tend to answer the query itself when the
elicitation prompt is a user turn; starting their reply with this text makes them list
characteristics instead (measured in docs/preferences.md)."""


def prefill_text(value: Optional[str]) -> str:
    """The `elicit_prefill` a command-line value names: "list" is `LIST_PREFILL`, None is ""."""
    if value is None:
        return ""
    return LIST_PREFILL if value == "list" else value


logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# Characters that str.splitlines() (and some JSONL readers) treat as line breaks but
# json.dumps(ensure_ascii=False) leaves raw: escaped so every record stays on one line.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


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
        meta: free JSON-ready details: ``fallback_positive`` / ``fallback_negative`` (the
            characteristic is the fallback ``"be {kw}"``, not a parsed one), the raw
            elicitation replies, and how many tokens each answer took.
        sample: which sampled answer to this characteristic the pair holds (0-based; see
            ``n_responses`` of `generate_preferences`). Optional in files: records
            written before it existed load with 0.
    """

    query: str
    positive: str
    negative: str
    char_positive: str = ""
    char_negative: str = ""
    objective: str = "custom"
    index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    sample: int = 0


# Fields every pair record holds, and (below) fields added later: optional, with defaults.
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
_OPTIONAL_PAIR_TYPES: dict[str, tuple[type, Any]] = {"sample": (int, 0)}


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
                raise ArgumentTypeError(f"{name} must be a list of strings, not a single string")
        if not len(queries) == len(positives) == len(negatives):
            raise InvalidArgumentError(
                f"queries, positives and negatives must have the same length; got "
                f"{len(queries)}, {len(positives)} and {len(negatives)}"
            )
        obj = _label_objective(objective)
        seen: dict[str, int] = {}
        pairs = []
        for i, (q, pos, neg) in enumerate(zip(queries, positives, negatives, strict=True)):
            for what, value in (("query", q), ("positive", pos), ("negative", neg)):
                if not isinstance(value, str):
                    raise ArgumentTypeError(f"{what} #{i} must be a string, got {type(value).__name__}")
            pairs.append(PreferencePair(q, pos, neg, objective=obj.name, index=seen.get(q, 0)))
            seen[q] = seen.get(q, 0) + 1
        return cls(pairs, obj, {"source": "from_pairs"})

    def texts(self, model: Any, *, chat: Optional[bool] = None) -> tuple[list[str], list[str]]:
        """The texts whose activations build the subspace (docs/method.md, "2. The alignment subspace").

        Each is the query followed by one answer, rendered with `models.render`: with a
        chat template that is the chat prefix of the query plus the answer, otherwise
        ``"{query} {answer}"``. Returns (positive texts, negative texts), pair-aligned.
        """
        pos = [models.render(model, p.query, p.positive, chat=chat) for p in self.pairs]
        neg = [models.render(model, p.query, p.negative, chat=chat) for p in self.pairs]
        return pos, neg

    def pair_hash(self) -> str:
        """A fingerprint of the pairs: ``"sha256:<hex>"`` of their (query, positive,
        negative) texts in order. A subspace fitted on this set records it (in
        `settings["pairs_hash"]`), so `alignez analyze` can tell the set it was fitted on
        from another."""
        digest = hashlib.sha256()
        for p in self.pairs:
            digest.update(json.dumps([p.query, p.positive, p.negative], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return f"sha256:{digest.hexdigest()}"

    def filter_empty(self) -> "PreferenceSet":
        """A new set without the pairs where either answer is empty (or only whitespace)."""
        kept = [p for p in self.pairs if p.positive.strip() and p.negative.strip()]
        return PreferenceSet(kept, self.objective, dict(self.settings))

    def summary(self) -> dict[str, int]:
        """Counts: pairs, queries, empty answers, identical answers, fallbacks used.

        ``fallback_positive`` / ``fallback_negative`` count pairs; ``characteristics`` and
        ``fallback_characteristics`` count distinct characteristics (both sides, once per
        query and index however many answers were sampled), as in `fallback_report`.
        """
        overall = self.fallback_report()["overall"]
        return {
            "pairs": len(self.pairs),
            "queries": len(self.queries),
            "empty_positive": sum(not p.positive.strip() for p in self.pairs),
            "empty_negative": sum(not p.negative.strip() for p in self.pairs),
            "identical": sum(p.positive.strip() == p.negative.strip() for p in self.pairs),
            "fallback_positive": sum(bool(p.meta.get("fallback_positive")) for p in self.pairs),
            "fallback_negative": sum(bool(p.meta.get("fallback_negative")) for p in self.pairs),
            "characteristics": overall["characteristics"],
            "fallback_characteristics": overall["fallback"],
        }

    def fallback_report(self) -> dict[str, Any]:
        """How many characteristics were parsed from the model's replies and how many are
        the fallback ``"be {kw}"``, per query and overall.

        A characteristic is one side (positive or negative) of one pair with ``sample ==
        0``: the further samples of a characteristic share it. Pairs whose `meta` does not
        record ``fallback_positive`` / ``fallback_negative`` (e.g. from `from_pairs`) are
        not counted. Returns ``{"overall": {...}, "per_query": {query: {...}}}``, each
        with ``characteristics``, ``parsed``, ``fallback`` and ``fallback_share`` (a
        fraction; 0.0 when nothing is counted).
        """
        per_query: dict[str, dict[str, Any]] = {}
        for p in self.pairs:
            flags: list[Any] = [p.meta.get(f"fallback_{side}") for side in ("positive", "negative")]
            if p.sample != 0 or not all(isinstance(f, bool) for f in flags):
                continue
            row = per_query.setdefault(p.query, {"characteristics": 0, "fallback": 0})
            row["characteristics"] += 2
            row["fallback"] += sum(flags)
        rows = list(per_query.values())
        overall = {
            "characteristics": sum(r["characteristics"] for r in rows),
            "fallback": sum(r["fallback"] for r in rows),
        }
        for row in rows + [overall]:
            row["parsed"] = row["characteristics"] - row["fallback"]
            total = row["characteristics"]
            row["fallback_share"] = row["fallback"] / total if total else 0.0
        return {"overall": overall, "per_query": per_query}

    # ---------------------------------------------------------------- files

    def save(self, path: PathLike) -> Path:
        """Write the set as UTF-8 JSONL, atomically; returns the path.

        Line 1 is the header ``{"type": "header", "format": "alignez-preferences",
        "version": 1, "objective": {...}, "settings": {...}}``; each further line is one
        ``{"type": "pair", ...}`` record. Non-ASCII text is written as is, except U+0085,
        U+2028 and U+2029, which are escaped so that no tool splits a record. The file is
        written to a temporary name in the same folder and renamed into place, so readers
        never see a partial file. A set whose pairs `load` would refuse (another objective
        than the set's, indices out of order: see `load`) raises `PreferenceFileError`
        and writes nothing.
        """
        path = Path(path)
        # refuse to write what `load` would refuse to read (the line numbers are the file's)
        _check_rows_agree(path, self.objective, self.pairs, list(range(2, len(self.pairs) + 2)))
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
            raise ArgumentTypeError(
                f"cannot save preferences: settings and pair meta must hold only JSON values "
                f"(str, int, float, bool, None, lists, dicts): {exc}"
            ) from None
        return atomic_write_text(path, "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path: PathLike) -> "PreferenceSet":
        """Read a file written by `save`.

        Raises:
            PreferenceFileError: the file is not an alignez preference file, has a format
                version this package cannot read, a line is malformed, or a pair record
                contradicts the header or the order `save` writes (another objective than
                the header's; an index repeated or going back within its query; a sample
                out of order). The message gives ``path:line``.
        """
        path = Path(path)
        header: Optional[dict[str, Any]] = None
        pairs: list[PreferencePair] = []
        linenos: list[int] = []
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
                linenos.append(lineno)
        if header is None:
            raise PreferenceFileError(f"{path}: empty file; expected a header record on line 1")
        try:
            objective = Objective.from_dict(header["objective"])
        except (TypeError, ValueError) as exc:
            raise PreferenceFileError(f"{path}: invalid objective in the header: {exc}") from None
        _check_rows_agree(path, objective, pairs, linenos)
        return cls(pairs, objective, header["settings"])

    @classmethod
    def from_labelled(cls, path: PathLike, *, objective: Union[str, Objective] = "custom") -> "PreferenceSet":
        """Ground-truth pairs from a labelled JSONL file (HH-RLHF / UltraFeedback style).

        Each non-empty line is one JSON object with a prompt, a chosen and a rejected
        answer. Accepted field names (exactly one of each group):

        * prompt: `prompt`, `question`, `query` or `instruction`;
        * chosen: `chosen`, `preferred` or `positive`;
        * rejected: `rejected`, `dispreferred` or `negative`.

        The prompt is a string (or a list of chat messages: the last `user` content).
        An answer is a string, or a list of chat messages `{"role", "content"}` (binarized
        UltraFeedback): the content of the last `assistant` message. Without a prompt
        field, the prompt is taken from the answers: the last `user` message before the
        last `assistant` one (message lists, which must agree), or, for HH-RLHF
        transcripts (`"\n\nHuman: ... \n\nAssistant: ..."`), the shared text before
        the last `"\n\nAssistant:"` (a single `Human:` turn is unwrapped to its text).
        Other fields are ignored, except a string `category`, kept in the pair's `meta`
        with the line number.

        `objective` names what the labels express (a registered objective such as
        `"helpful"`, or any label). Raises `PreferenceFileError` naming the file and the
        line for: bytes that are not UTF-8, broken JSON, a line that is not an object,
        a missing or ambiguous field, an empty text, identical chosen and rejected
        answers, a duplicate pair, a saved PreferenceSet (load that with `load`) and a
        file with no pairs. Blank lines are skipped.
        """
        path = Path(path)
        obj = _label_objective(objective)
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = data.count(b"\n", 0, exc.start) + 1
            raise PreferenceFileError(f"{path}:{bad_line}: not UTF-8 text; a labelled pair file is JSONL") from None
        text = text.removeprefix("\ufeff")
        pairs: list[PreferencePair] = []
        seen: dict[tuple[str, str, str], int] = {}
        per_query: dict[str, int] = {}
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            record = _parse_line(path, lineno, line)
            if record.get("type") == "header" and record.get("format") == FORMAT:
                raise PreferenceFileError(
                    f"{path}:{lineno}: this is a saved PreferenceSet, not a labelled pair file; "
                    "read it with PreferenceSet.load"
                )
            query, chosen, rejected = _labelled_triple(f"{path}:{lineno}", record)
            key = (query, chosen, rejected)
            if key in seen:
                raise PreferenceFileError(f"{path}:{lineno}: duplicate of the pair on line {seen[key]}")
            seen[key] = lineno
            meta: dict[str, Any] = {"line": lineno}
            if isinstance(record.get("category"), str):
                meta["category"] = record["category"]
            pairs.append(
                PreferencePair(query, chosen, rejected, objective=obj.name, index=per_query.get(query, 0), meta=meta)
            )
            per_query[query] = per_query.get(query, 0) + 1
        if not pairs:
            raise PreferenceFileError(
                f"{path}: no pairs; expected one JSON object per line with prompt, chosen, rejected"
            )
        return cls(pairs, obj, {"source": "labelled", "file": path.name})


LABELLED_PAIRS_PATH = Path(__file__).parent / "data" / "labelled_pairs.jsonl"
"""The labelled pair file shipped with the package (`labelled_pairs()`)."""

_PROMPT_FIELDS = ("prompt", "question", "query", "instruction")
_CHOSEN_FIELDS = ("chosen", "preferred", "positive")
_REJECTED_FIELDS = ("rejected", "dispreferred", "negative")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_HUMAN = "Human:"


def labelled_pairs(objective: Union[str, Objective] = "helpful") -> "PreferenceSet":
    """The 60 labelled pairs shipped with the package (10 per built-in category).

    Written for this project: for each query a helpful, harmless answer (chosen) and an
    unhelpful, dismissive or careless one (rejected). For tests, docs, and fitting any
    method on ground-truth labels (`PreferenceSet.from_labelled(LABELLED_PAIRS_PATH)`).
    """
    return PreferenceSet.from_labelled(LABELLED_PAIRS_PATH, objective=objective)


def read_pairs(path: PathLike, *, objective: Union[str, Objective] = "custom") -> "PreferenceSet":
    """A pair file of either kind: a saved `PreferenceSet` (its header says so) or a labelled file.

    `objective` applies to a labelled file only (a saved set names its own).
    """
    path = Path(path)
    with open(path, "rb") as f:
        first = b""
        for raw in f:
            if raw.strip():
                first = raw
                break
    try:
        head = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        head = None
    if isinstance(head, dict) and head.get("type") == "header":
        return PreferenceSet.load(path)
    return PreferenceSet.from_labelled(path, objective=objective)


def _one_field(where: str, record: dict[str, Any], names: tuple[str, ...], what: str) -> tuple[Optional[str], Any]:
    given = [n for n in names if n in record]
    if len(given) > 1:
        raise PreferenceFileError(f"{where}: {what} given twice, as {' and '.join(repr(n) for n in given)}")
    return (given[0], record[given[0]]) if given else (None, None)


def _last_message(where: str, field_name: str, messages: list, role: str) -> str:
    for m in reversed(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PreferenceFileError(
                f"{where}: field {field_name!r}: a chat message must be an object with string 'role' and 'content'"
            )
    for m in reversed(messages):
        if m["role"] == role:
            return m["content"]
    raise PreferenceFileError(f"{where}: field {field_name!r} holds no {role!r} message")


def _answer(where: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _last_message(where, name, value, "assistant")
    raise PreferenceFileError(
        f"{where}: field {name!r} must be a string or a list of chat messages, got {type(value).__name__}"
    )


def _prompt_from_answers(where: str, chosen: Any, rejected: Any, names: tuple[str, str]) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) when the record has no prompt field."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompts = []
        for name, msgs in zip(names, (chosen, rejected)):
            _last_message(where, name, msgs, "assistant")  # checks the messages
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            prompts.append(_last_message(where, name, msgs[:last], "user"))
        if prompts[0] != prompts[1]:
            raise PreferenceFileError(f"{where}: the chosen and rejected conversations ask different questions")
        return prompts[0], _answer(where, names[0], chosen), _answer(where, names[1], rejected)
    if isinstance(chosen, str) and isinstance(rejected, str) and _HH_ASSISTANT in chosen and _HH_ASSISTANT in rejected:
        heads, tails = [], []
        for t in (chosen, rejected):
            head, _, tail = t.rpartition(_HH_ASSISTANT)
            heads.append(head.strip())
            tails.append(tail)
        if heads[0] != heads[1]:
            raise PreferenceFileError(f"{where}: the chosen and rejected transcripts differ before the last answer")
        prompt = heads[0]
        if prompt.count(_HH_HUMAN) == 1 and prompt.startswith(_HH_HUMAN):
            prompt = prompt[len(_HH_HUMAN) :]
        return prompt, tails[0], tails[1]
    raise PreferenceFileError(
        f"{where}: no prompt field (one of {', '.join(_PROMPT_FIELDS)}), and the answers are neither chat "
        "message lists nor HH-RLHF transcripts to take it from"
    )


def _labelled_triple(where: str, record: dict[str, Any]) -> tuple[str, str, str]:
    p_name, prompt = _one_field(where, record, _PROMPT_FIELDS, "the prompt")
    c_name, chosen = _one_field(where, record, _CHOSEN_FIELDS, "the chosen answer")
    r_name, rejected = _one_field(where, record, _REJECTED_FIELDS, "the rejected answer")
    for name, group in ((c_name, _CHOSEN_FIELDS), (r_name, _REJECTED_FIELDS)):
        if name is None:
            raise PreferenceFileError(f"{where}: missing field: one of {', '.join(repr(n) for n in group)}")
    assert c_name is not None and r_name is not None
    if p_name is None:
        query, pos, neg = _prompt_from_answers(where, chosen, rejected, (c_name, r_name))
        p_name = "prompt"
    else:
        if isinstance(prompt, list):
            query = _last_message(where, p_name, prompt, "user")
        elif isinstance(prompt, str):
            query = prompt
        else:
            raise PreferenceFileError(f"{where}: field {p_name!r} must be a string, got {type(prompt).__name__}")
        pos, neg = _answer(where, c_name, chosen), _answer(where, r_name, rejected)
    query, pos, neg = query.strip(), pos.strip(), neg.strip()
    for name, value in ((p_name, query), (c_name, pos), (r_name, neg)):
        if not value:
            raise PreferenceFileError(f"{where}: field {name!r} is empty")
    if pos == neg:
        raise PreferenceFileError(f"{where}: the chosen and rejected answers are the same text: no preference")
    return query, pos, neg


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
        raise PreferenceFileError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise PreferenceFileError(f"{path}:{lineno}: JSON nested too deeply to read") from None
    if not isinstance(record, dict):
        raise PreferenceFileError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
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


def _check_rows_agree(path: Path, objective: Objective, pairs: list[PreferencePair], linenos: list[int]) -> None:
    """Refuse pair records that contradict the header or the order `save` writes.

    A pair record carries its objective's name (not its mode: that lives in the header's
    objective only), the index of its characteristic within its query, and which sample
    of that characteristic it is. Every writer (`generate_preferences`, `from_pairs`,
    `from_labelled`) gives, per query, `(index, sample)` keys in increasing order, the
    samples of one characteristic on consecutive lines. Refused: a record whose
    objective is not the header's; a key that repeats or goes back within its query
    (except a fresh start at index 0, sample 0: the same query asked again); a sample
    that does not follow the previous sample of its characteristic.
    """
    last: dict[str, tuple[int, int, int]] = {}  # query -> (index, sample, line) of its latest record
    prev: Optional[PreferencePair] = None
    for pair, lineno in zip(pairs, linenos, strict=True):
        where = f"{path}:{lineno}"
        if pair.objective != objective.name:
            raise PreferenceFileError(
                f"{where}: the pair is for objective {pair.objective!r}, but the header's objective is "
                f"{objective.name!r} (mode {objective.mode!r}); a preference file holds one objective: "
                "regenerate it, or split it by objective"
            )
        if pair.index < 0 or pair.sample < 0:
            raise PreferenceFileError(f"{where}: index and sample must be >= 0, got {pair.index} and {pair.sample}")
        key = (pair.index, pair.sample)
        if pair.sample > 0 and not (
            prev is not None and prev.query == pair.query and (prev.index, prev.sample) == (pair.index, pair.sample - 1)
        ):
            raise PreferenceFileError(
                f"{where}: sample {pair.sample} of characteristic {pair.index} does not follow sample "
                f"{pair.sample - 1} of the same query and characteristic on the line before; the rows are "
                "out of order (or a row was lost)"
            )
        seen = last.get(pair.query)
        if seen is not None and key <= seen[:2] and key != (0, 0):
            what = "repeats" if key == seen[:2] else "goes back from"
            raise PreferenceFileError(
                f"{where}: index {pair.index} (sample {pair.sample}) {what} index {seen[0]} (sample {seen[1]}) "
                f"of the same query on line {seen[2]}; within a query the indices increase: the rows are "
                "duplicated or out of order"
            )
        last[pair.query] = (pair.index, pair.sample, lineno)
        prev = pair


def _pair_from_record(path: Path, lineno: int, record: dict[str, Any]) -> PreferencePair:
    where = f"{path}:{lineno}"
    if record.get("type") != "pair":
        raise PreferenceFileError(f'{where}: expected a record with "type": "pair"')
    body = {k: v for k, v in record.items() if k != "type"}
    missing = [k for k in _PAIR_TYPES if k not in body]
    if missing:
        raise PreferenceFileError(f"{where}: pair record misses field(s) {missing}")
    unknown = sorted(set(body) - set(_PAIR_TYPES) - set(_OPTIONAL_PAIR_TYPES))
    if unknown:
        raise PreferenceFileError(f"{where}: pair record has unknown field(s) {unknown}")
    for key, (_, default) in _OPTIONAL_PAIR_TYPES.items():
        body.setdefault(key, default)
    types = {**_PAIR_TYPES, **{k: kind for k, (kind, _) in _OPTIONAL_PAIR_TYPES.items()}}
    for key, kind in types.items():
        value = body[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PreferenceFileError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return PreferencePair(**body)


# --------------------------------------------------------------------------- parsing

_MARK = r"(?:\(?\d{1,2}[.)]|\(?[a-zA-Z]\)|[A-H]\.|[-*•‣◦·–+✔✓✅▪►➤→◆●■])"
_LINE_MARK = re.compile(rf"^\s*(?:{_MARK}\s+)+")  # "1. ", "* ", "* 1. ", "(a) ", "A. "
_INLINE_NUM = re.compile(r"(?:(?<=\s)|^)\(?\d{1,2}[.)](?=\s|$)")  # "... 2) ..." mid-line
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WIDE_GAP = re.compile(r"(?<=\S)\s{2,}(?=\S)")  # "contain 3 sentences  highlight ..."
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "approx.", "p.s.", "no.")
# "Your response should contain ..." restates the prompt's frame: keep "contain ...".
_LEAD = re.compile(
    r"^(?:(?:your|the|my|this|an?)(?: (?:entire|whole|full|final))? (?:answer|response|reply)"
    r"(?: to (?:this|the) (?:query|question))?|it|you|i) (?:should|must|will|needs? to)(?: also)? ",
    re.IGNORECASE,
)
_PLEASE = re.compile(r",?\s+please$", re.IGNORECASE)
_LABEL = re.compile(r"^([^:]{1,60}):\s+(\S.*)$")  # "Clarity: explain each step"
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
# A characteristic continues "Your answer should ...", so it starts with a verb that says
# what an answer does (optionally after "not", "always", an -ly adverb, ...). The list holds
# verbs that describe a text; everyday-advice verbs ("take", "set", "buy") are left out,
# because an answer to an advice query is itself a list of them.
_TRAIT_VERBS = frozenset(
    """
    be use include provide give offer avoid contain explain describe answer address
    acknowledge add adopt adapt adhere admit advise aim align allow apologise apologize
    appeal apply argue ask assume assure attempt begin belittle break calculate capture
    celebrate challenge check cite clarify compare complicate compliment compose conclude
    confuse consider contradict convey correct cover craft create criticise criticize
    define deflect demonstrate deny depict detail dismiss discourage discuss display
    distract do dodge double-check draw dwell echo elaborate emphasise emphasize employ
    empathise empathize encourage end engage enhance ensure evade evoke exaggerate exclude
    express fail feature focus follow format foster frame generate go greet guide have
    help highlight identify ignore illustrate incorporate indicate inform insist inspire
    insult introduce invent involve joke keep lack lead leave limit list maintain make
    mention mimic minimise minimize mislead miss mock motivate note obey offend omit
    organise organize outline overcomplicate overlook overwhelm paint personalise
    personalize point portray praise present prioritise prioritize promote propose
    provoke quote radiate ramble rank reassure recommend refer reference reflect reframe
    refuse reject relate rely remain remind repeat rephrase reply respect respond restate
    reveal rhyme ridicule say share show simplify skip solve sound speak specify spread
    stand start state stay steer stick stress structure suggest summarise summarize
    support sympathise sympathize tailor talk teach tell think touch translate treat try
    uplift undermine validate vary walk warn waste weave write
    """.split()
)
_MODIFIERS = frozenset("not never always also only still even rather instead don't dont won't".split())
# A part of "be X, Y and Z" that starts like this is not an adjective: keep the item whole.
_NOT_ADJECTIVE = frozenset("a an the to in on of with for at by as that which who your my its this".split())
_BE_LIST = re.compile(r"^((?:(?:not|never|always|also) )?be) (.+)$", re.IGNORECASE)
_BE_PARTS = re.compile(r"\s*[,;]\s*(?:and\s+)?|\s+and\s+")
_PHRASE_SEP = re.compile(r"(\s*;\s*|\s*,\s*(?:and\s+)?|\s+and\s+)")
QUERY_RUN = 5  # an item sharing a run of this many words with the query ...
# ... that makes up more than half of the item repeats the query: dropped.


def _normalise(text: str) -> str:
    """Lower-case words only, single-spaced: the key for duplicate and echo checks."""
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def _sentences(text: str) -> list[str]:
    """Split prose at sentence ends (not after common abbreviations) and at wide gaps."""
    out: list[str] = []
    for chunk in _WIDE_GAP.split(text.strip()):
        pieces: list[str] = []
        for piece in _SENTENCE_END.split(chunk):
            if pieces and pieces[-1].lower().endswith(_ABBREVIATIONS):
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        out.extend(pieces)
    return out


def _list_items(lines: list[str]) -> list[str]:
    """Items of a bulleted or numbered list, with the text around the list handled.

    Lines before the first marker are kept as items (the model often continues the
    prompt's "should: " inline before starting a list) unless they introduce it (end in
    ':'). After the list starts, unmarked lines that are indented or start in lower case
    continue the current item; other unmarked lines (headings, chatter) are dropped.
    An entry of several sentences gives one item per sentence.
    """
    items: list[str] = []
    in_list = False
    for line in lines:
        start = _LINE_MARK.match(line)
        body = line[start.end() :] if start else line
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
    return [s for item in items for s in _sentences(item)]


def _prose_items(lines: list[str]) -> list[str]:
    """Sentences of each line (a stray leading marker removed); unmarked lines that only
    introduce something (end in ':') dropped. A marked line ending in ':' ("1. Use the
    formula:" before the formula) is an item."""
    bodies = [_LINE_MARK.sub("", line) for line in lines if _LINE_MARK.match(line) or not line.rstrip().endswith(":")]
    return [s for body in bodies for s in _sentences(body)]


def _is_list(lines: list[str]) -> bool:
    """Two or more lines start with a marker, or one line numbers items inline."""
    marked = sum(bool(_LINE_MARK.match(line)) for line in lines)
    return marked >= 2 or any(len(_INLINE_NUM.findall(line)) >= 2 for line in lines)


def _is_question(item: str) -> bool:
    return item.rstrip().rstrip(_QUOTES + ")]").endswith("?")


def _is_trait(item: str) -> bool:
    """Whether `item` reads as what an answer does: it starts with a trait verb, possibly
    after modifiers ("not", "always", "clearly", ...)."""
    words = item.casefold().replace("’", "'").split()
    i = 0
    while i < len(words) - 1 and (words[i] in _MODIFIERS or (len(words[i]) > 4 and words[i].endswith("ly"))):
        i += 1
    return bool(words) and words[i].strip(_QUOTES + ",;:") in _TRAIT_VERBS


def _clean(item: str) -> str:
    """Strip markup, wrapping quotes, trailing punctuation, a trailing "please" and a
    restated "Your answer should"; pick the trait side of "Label: text"; fix the case."""
    item = " ".join(item.split())
    item = re.sub(r"\*\*|__|^#+\s*", "", item).strip().rstrip(_TRAILING)
    if len(item) >= 2 and item[0] in _QUOTES and item[-1] in _QUOTES:
        item = item[1:-1].strip().rstrip(_TRAILING)
    item = _PLEASE.sub("", _LEAD.sub("", item)).rstrip(_TRAILING)
    label = _LABEL.match(item)
    if label and len(label.group(1).split()) <= 6:
        head, rest = label.group(1).strip(), label.group(2).strip()
        if _is_trait(head):
            item = _untitle(head)
        elif _is_trait(_LEAD.sub("", rest)):
            item = _LEAD.sub("", rest)
    return _lower_first(item)


def _split_item(item: str) -> list[str]:
    """Split joined traits: "use simple words, avoid jargon" into two verb phrases, and
    "be clear, concise and friendly" into "be clear", "be concise", "be friendly".

    A verb phrase splits off only where the next part starts with a trait verb and both
    it and the part before it are traits of two or more words; a "be" list splits only
    when every part is a short (1-3 word) adjective phrase. Anything else stays whole.
    """
    parts = _PHRASE_SEP.split(item)
    phrases = [parts[0]]
    for sep, part in zip(parts[1::2], parts[2::2]):
        long_enough = min(len(part.split()), len(phrases[-1].split())) >= 2
        if long_enough and _is_trait(part) and _is_trait(phrases[-1]):
            phrases.append(part)
        else:
            phrases[-1] += sep + part
    out: list[str] = []
    for phrase in phrases:
        be = _BE_LIST.match(phrase)
        if be is not None:
            verb, adjectives = be.group(1), _BE_PARTS.split(be.group(2))
            if len(adjectives) >= 2 and all(
                0 < len(p.split()) <= 3 and p.split()[0].casefold() not in _NOT_ADJECTIVE for p in adjectives
            ):
                out.extend(f"{verb} {p}" for p in adjectives)
                continue
        out.append(phrase)
    return [_lower_first(p.strip().rstrip(_TRAILING)) for p in out]


def _untitle(label: str) -> str:
    """Lower-case a Title Case heading ("Verify Your Account"); acronyms keep their case."""
    words = label.split()
    if not all(w[:1].isupper() for w in words if w[:1].isalpha()):
        return label
    return " ".join(w if w == "I" or any(c.isupper() for c in w[1:]) else w.lower() for w in words)


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
    """Whether the last item of `text` stops mid-phrase.

    A reply cut by the token budget cuts its last item only when that item is where the
    text ends (not when chatter after the list was cut).
    """
    if truncated and not _ENDS_COMPLETE.search(text.rstrip()) and _normalise(text).endswith(_normalise(last_item)):
        return True
    return _normalise(last_item).rsplit(" ", 1)[-1] in _DANGLING


def _longest_run(a: list[str], b: list[str]) -> int:
    """Length of the longest run of consecutive words that `a` and `b` share."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _repeats_query(key: str, query_words: list[str]) -> bool:
    words = key.split()
    run = _longest_run(words, query_words) if query_words else 0
    return run >= QUERY_RUN and 2 * run > len(words)


def parse_characteristics(
    text: str,
    max_items: int = 3,
    *,
    prompt: str = "",
    truncated: bool = False,
    query: str = "",
) -> list[str]:
    """Split a model's elicitation reply into at most `max_items` characteristics.

    A characteristic is what an answer should do, a phrase that continues "Your answer
    should ...", such as ``"give step-by-step reasoning"`` or ``"be concise"``.

    **Splitting.** Numbered lists (``1.``, ``1)``, ``(1)``, ``A.``, also inline
    ``1) a 2) b``) and bullets (``-``, ``*``, ``•``, ``✔`` ...) give one item per entry;
    otherwise each sentence of each line (or each run separated by two or more spaces) is
    an item. Joined traits are split: ``"use simple words, avoid jargon"`` into two, and
    ``"be clear, concise and friendly"`` into ``"be clear"``, ``"be concise"``,
    ``"be friendly"``.

    **Cleaning.** Each item loses its marker, markdown bold, wrapping quotes, trailing
    punctuation, a trailing "please" and a restated frame ("Your response should ...",
    "It must ..."); of ``"Label: text"`` the side that starts with a verb is kept
    (``"**Clarity**: explain each step"`` gives ``"explain each step"``). The first
    letter is lower-cased unless the item starts with an acronym.

    **Rejected** (an answer to the query rather than a trait): items that do not start
    with a verb describing an answer (``be``, ``use``, ``include``, ``avoid``, ...;
    optionally after ``not``, ``always``, an ``-ly`` adverb), questions, items over 25
    words, and items that mostly repeat `query` (a shared run of 5 or more words that
    is over half of the item). Also dropped: items under 3 characters, duplicates
    (ignoring case and punctuation), items that only repeat part of `prompt` (the
    elicitation prompt the model saw), and a last item cut off by the token budget: when
    `truncated` (the reply used all its tokens) and the text does not end with ``.``,
    ``!`` or ``?``, or whenever the item ends in a word like "the", "of", "as".

    The result depends only on the arguments. Returns [] when nothing usable is left;
    `generate_preferences` then falls back to ``"be {kw}"``.
    """
    if not isinstance(text, str):
        raise ArgumentTypeError(f"parse_characteristics takes a string, got {type(text).__name__}")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise InvalidArgumentError(f"max_items must be a positive int, got {max_items!r}")
    lines = [line for line in text.splitlines() if line.strip()]
    raw = _list_items(lines) if _is_list(lines) else _prose_items(lines)
    if raw and _cut_off(raw[-1], text, truncated):
        raw.pop()
    echo = f" {_normalise(prompt)} "
    query_words = _normalise(query).split()
    seen: set[str] = set()
    out: list[str] = []
    for entry in raw:
        if _is_question(entry):
            continue
        for item in _split_item(_clean(entry)):
            key = _normalise(item)
            if (
                len(item) < MIN_CHAR_LEN
                or not key
                or key in seen
                or f" {key} " in echo
                or len(item.split()) > MAX_CHAR_WORDS
                or not _is_trait(item)
                or _repeats_query(key, query_words)
            ):
                continue
            seen.add(key)
            out.append(item)
            if len(out) == max_items:
                return out
    return out


# --------------------------------------------------------------------------- generation


def _check_queries(queries: Any) -> list[str]:
    if isinstance(queries, str):
        raise ArgumentTypeError(
            f"queries must be a list of strings, not a single string; wrap it in a list: [{queries[:40]!r}]"
        )
    if not isinstance(queries, Iterable):
        raise ArgumentTypeError(f"queries must be a list of strings, got {type(queries).__name__}")
    queries = list(queries)
    if not queries:
        raise InvalidArgumentError("queries is empty; pass at least one query string")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ArgumentTypeError(f"queries[{i}] must be a string, got {type(q).__name__}")
        if not q.strip():
            raise InvalidArgumentError(f"queries[{i}] is empty; every query needs some text")
    return queries


def _batch_seed(seed: int, phase: str, batch: int) -> int:
    """A 63-bit seed for one batch of one phase, derived from the user's `seed`.

    Hashing (rather than ``seed + batch``) keeps the streams of nearby seeds apart.
    """
    digest = hashlib.blake2b(f"{seed}:{phase}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _iter_texts(
    model: Any,
    prompts: list[str],
    *,
    phase: str,
    chat: bool,
    batch_size: int,
    seed: int,
    verbose: bool,
    prefill: str = "",
    first_batch: int = 0,
    **gen: Any,
) -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """Render, batch and generate, one batch at a time from batch `first_batch` on.

    Yields `(index of the batch's first prompt, [(decoded text, new tokens)] per prompt)`.
    Batch `b` always holds prompts `b * batch_size` onwards and is seeded from `b`, so a
    resumed run that starts at a later batch gives the same texts. `prefill` starts every
    reply: the start of the assistant turn with a chat template, appended to the prompt
    without one. The returned text begins with it.
    """
    tok = model.tokenizer
    rendered = _rendered(model, prompts, chat, prefill)
    starts = range(first_batch * batch_size, len(rendered), batch_size)
    for b, start in enumerate(tqdm(starts, desc=phase, unit="batch", disable=not verbose), start=first_batch):
        batch = generation.encode_for_generation(
            model, rendered[start : start + batch_size], chat, gen["max_new_tokens"]
        )
        rows = generation.generate_plain(model, batch, seed=_batch_seed(seed, phase, b), **gen)
        yield start, [((prefill + tok.decode(ids, skip_special_tokens=True)).strip(), len(ids)) for ids in rows]


def _rendered(model: Any, prompts: list[str], chat: bool, prefill: str) -> list[str]:
    if chat:
        return [models.render(model, p, prefill, chat=True) for p in prompts]
    return [p + prefill for p in prompts]


def _generate_texts(model: Any, prompts: list[str], **kwargs: Any) -> list[tuple[str, int]]:
    """`_iter_texts` collected: (decoded text, number of new tokens) per prompt from `first_batch` on."""
    return [row for _, rows in _iter_texts(model, prompts, **kwargs) for row in rows]


def _pair_characteristics(pos: list[str], neg: list[str], obj: Objective) -> tuple[list[str], list[str], bool, bool]:
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
                text,
                n_characteristics,
                prompt=prompts[2 * qi + side],
                truncated=n >= elicit_tokens,
                query=query,
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

    from .versions import package_version

    return {
        "alignez_version": package_version(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def _log_fallbacks(prefs: PreferenceSet) -> None:
    """Log how many elicitation replies and characteristics fell back to "be {kw}"."""
    report = prefs.fallback_report()["overall"]
    firsts = [p for p in prefs.pairs if p.index == 0 and p.sample == 0]  # one per query
    n_replies = 2 * len(firsts)
    empty = sum(bool(p.meta.get("fallback_positive")) + bool(p.meta.get("fallback_negative")) for p in firsts)
    message = (
        f"elicitation: {empty} of {n_replies} replies gave no usable characteristic; "
        f"{report['fallback']} of {report['characteristics']} characteristics "
        f"({report['fallback_share']:.0%}) are the fallback 'be {{kw}}'"
    )
    if report["fallback_share"] > 0.5:
        logger.warning(
            "%s. The model probably answered the queries instead of listing traits: look at "
            "meta['elicited_positive'], or pass elicit_prefill=LIST_PREFILL",
            message,
        )
    else:
        logger.info("%s", message)


def generate_preferences(
    model: Any,
    queries: Sequence[str],
    objective: Union[str, Objective, dict[str, Any]] = PreferenceSettings.objective,
    *,
    n_characteristics: int = PreferenceSettings.n_characteristics,
    n_responses: int = PreferenceSettings.n_responses,
    elicit_tokens: int = PreferenceSettings.elicit_tokens,
    response_tokens: int = PreferenceSettings.response_tokens,
    elicit_prefill: str = PreferenceSettings.elicit_prefill,
    do_sample: bool = PreferenceSettings.do_sample,
    temperature: float = PreferenceSettings.temperature,
    top_p: float = PreferenceSettings.top_p,
    top_k: int = PreferenceSettings.top_k,
    seed: int = PreferenceSettings.seed,
    batch_size: int = PreferenceSettings.batch_size,
    max_prompt_tokens: int = PreferenceSettings.max_prompt_tokens,
    chat: Optional[bool] = None,
    verbose: bool = True,
    out: Optional[PathLike] = None,
    resume: bool = False,
) -> PreferenceSet:
    """Let the model write its own preference pairs for `queries` (docs/method.md, "1.").

    The keyword arguments are the fields of `PreferenceSettings`, so a settings object
    passes as ``generate_preferences(model, queries, **settings.to_dict())``.

    Args:
        model: a TransformerLens model with a tokenizer. No hooks are used or added.
        queries: the queries (a list of non-empty strings).
        objective: a registered objective name (``"helpful"``, ``"harmless"``, ...), an
            `Objective`, or its dict.
        n_characteristics: at most this many characteristics per query.
        n_responses: sampled answers per characteristic and side; the i-th positive
            answer is paired with the i-th negative one, so each characteristic gives
            `n_responses` pairs (their `sample` field is 0, 1, ...). Needs
            ``do_sample=True`` when above 1 (greedy answers would all be the same).
        elicit_tokens: new tokens for each elicitation reply (paper: 50).
        response_tokens: new tokens for each answer (paper: 200).
        elicit_prefill: text that starts the model's elicitation reply (the start of the
            assistant turn with a chat template, appended to the prompt without one); it
            is part of the parsed reply. ``""`` (the default) is the paper's prompt alone;
            `LIST_PREFILL` makes chat models list traits instead of answering the query.
        do_sample: sample (True) or decode greedily (False).
        temperature: softmax temperature when sampling (> 0; ignored when greedy).
        top_p: nucleus-sampling mass in (0, 1] (1 turns it off; ignored when greedy).
        top_k: sample from the k most likely tokens (0 turns it off; ignored when greedy).
        seed: the seed of every batch is derived from it and the batch number, so the
            same seed, settings and model give the same set.
        batch_size: prompts per `generate` call (rows are left-padded; results depend on
            it through padding, so it is recorded).
        max_prompt_tokens: an elicitation prompt (the rendered query) of more tokens is
            refused with `PromptTooLongError` before any generation, naming the query.
        chat: wrap prompts in the chat template (None: when the tokenizer has one).
        verbose: show progress bars, and log (``logging``, logger
            ``alignez_tl.preferences``) how many characteristics fell back to
            ``"be {kw}"``: a warning when more than half did, info otherwise.
        out: stream the set to this JSONL file as it is written: the header line first,
            then each query's pairs as soon as its answers are done (one write, flush
            and fsync per batch), so an interrupted run keeps every finished query. The
            finished file is the one `PreferenceSet.save` writes.
        resume: with `out`, continue the file an interrupted run left: its queries that
            are complete are kept, not generated again (a partial last line is dropped),
            and the result is the same file an uninterrupted run writes. A file written
            with another model, objective or settings is refused (`ResumeError`, naming
            the field); a missing file starts fresh.

    Returns:
        A `PreferenceSet` with up to ``len(queries) * n_characteristics * n_responses``
        pairs. Each pair's `meta` records ``fallback_positive`` / ``fallback_negative``
        (the elicitation gave nothing usable, ``"be {kw}"`` was used), the elicitation
        replies (prefill included) with their new-token counts (``elicited_*``,
        ``elicit_tokens_*``) and the token counts of both answers (``tokens_positive`` /
        ``tokens_negative``). `PreferenceSet.fallback_report` sums the fallbacks.
    """
    queries = _check_queries(queries)
    obj = get_objective(objective)
    PreferenceSettings(  # the one place for these checks
        objective=obj.name,
        n_characteristics=n_characteristics,
        n_responses=n_responses,
        elicit_tokens=elicit_tokens,
        response_tokens=response_tokens,
        elicit_prefill=elicit_prefill,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
    )
    if resume and out is None:
        raise InvalidArgumentError("resume=True needs out=<the file to continue>")
    require_model(model, "generate_preferences")
    models.require_tokenizer(model, "generate_preferences")
    generation.prompt_budget(model, elicit_tokens, "elicit_tokens")
    generation.prompt_budget(model, response_tokens, "response_tokens")
    if chat is None:
        chat = models.is_chat_model(model)
    elif chat and not models.is_chat_model(model):
        raise InvalidArgumentError(
            "chat=True, but the model's tokenizer has no chat template; pass chat=None "
            "(use the template when there is one) or chat=False"
        )
    elicit_prompts = [obj.elicit_prompt(q, positive=s) for q in queries for s in (True, False)]
    generation.check_prompt_tokens(
        model, _rendered(model, elicit_prompts, chat, elicit_prefill), max_prompt_tokens, per_query=2
    )

    sampling: dict[str, Any] = dict(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
    settings = {
        "objective": obj.name,
        "n_queries": len(queries),
        "n_characteristics": n_characteristics,
        "n_responses": n_responses,
        "elicit_tokens": elicit_tokens,
        "response_tokens": response_tokens,
        "elicit_prefill": elicit_prefill,
        **sampling,
        "seed": seed,
        "batch_size": batch_size,
        "chat": chat,
        "model_id": models.model_signature(model)["model_id"],
        **_package_versions(),
    }
    header = _header(obj, settings)
    run = _Run(model, queries, obj, elicit_prompts, n_characteristics, n_responses, elicit_tokens, response_tokens)
    done: list[PreferencePair] = []
    writer = None
    if out is not None:
        keep = None
        if resume:
            done, keep = _resumable(Path(out), header, run)
        from ._stream import RowWriter

        writer = RowWriter(out, _dump_line(header), keep)
    pairs = list(done)
    common: dict[str, Any] = dict(chat=chat, batch_size=batch_size, seed=seed, verbose=verbose, **sampling)
    try:
        for group in run.stream(done, elicit_prefill=elicit_prefill, **common):
            if writer is not None:
                writer.write_lines([_dump_line({"type": "pair", **asdict(p)}) for p in group])
            pairs.extend(group)
    finally:
        if writer is not None:
            writer.close()
    prefs = PreferenceSet(pairs, obj, settings)
    if verbose:
        _log_fallbacks(prefs)
    return prefs


def _header(obj: Objective, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "header",
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "objective": obj.to_dict(),
        "settings": settings,
    }


def _groups(pairs: list[PreferencePair]) -> list[list[PreferencePair]]:
    """Pairs split by query: each query's first pair has index 0 and sample 0."""
    groups: list[list[PreferencePair]] = []
    for p in pairs:
        if (p.index == 0 and p.sample == 0) or not groups:
            groups.append([])
        groups[-1].append(p)
    return groups


def _resumable(path: Path, header: dict[str, Any], run: "_Run") -> tuple[list[PreferencePair], Optional[int]]:
    """The complete queries' pairs of an interrupted file, and the bytes to keep (None: start fresh)."""
    from ._stream import compare_headers, read_existing

    existing = read_existing(path)
    if existing is None:
        return [], None
    _check_header(path, 1, existing.header)
    compare_headers(existing.header, header, path)
    pairs = [_pair_from_record(path, lineno, r) for lineno, r in enumerate(existing.rows, start=2)]
    groups = _groups(pairs)
    if len(groups) > len(run.queries):
        raise ResumeError(
            f"cannot resume {path}: it holds pairs of {len(groups)} queries, but {len(run.queries)} are given"
        )
    for qi, group in enumerate(groups):
        if any(p.query != run.queries[qi] for p in group):
            raise ResumeError(
                f"cannot resume {path}: it holds pairs for {group[0].query!r} as query {qi}, but query {qi} is "
                f"now {run.queries[qi]!r}: pass the same queries, or start over (--force instead of --resume)"
            )
    if groups and len(groups[-1]) != run.expected_pairs(len(groups) - 1, groups[-1][0].meta):
        groups.pop()  # the last query was cut off between two of its lines: generate it again
    kept = [p for g in groups for p in g]
    return kept, existing.end_of(len(kept))


class _Run:
    """The two phases of one `generate_preferences` call, streamed query by query."""

    def __init__(
        self,
        model: Any,
        queries: list[str],
        obj: Objective,
        elicit_prompts: list[str],
        n_characteristics: int,
        n_responses: int,
        elicit_tokens: int,
        response_tokens: int,
    ) -> None:
        self.model, self.queries, self.obj, self.elicit_prompts = model, queries, obj, elicit_prompts
        self.n_characteristics, self.n_responses = n_characteristics, n_responses
        self.elicit_tokens, self.response_tokens = elicit_tokens, response_tokens

    def plan(self, first: int, replies: list[tuple[str, int]]) -> list[_Plan]:
        """The planned pairs of queries `first`, `first + 1`, ... from their elicitation replies."""
        n = len(replies) // 2
        return _plan_pairs(
            self.queries[first : first + n],
            self.elicit_prompts[2 * first : 2 * (first + n)],
            replies,
            self.obj,
            self.n_characteristics,
            self.elicit_tokens,
        )

    def expected_pairs(self, qi: int, meta: dict[str, Any]) -> int:
        """How many pairs query `qi` has, from the elicitation replies its pairs record."""
        try:
            replies = [
                (meta["elicited_positive"], meta["elicit_tokens_positive"]),
                (meta["elicited_negative"], meta["elicit_tokens_negative"]),
            ]
        except KeyError:
            return -1
        return len(self.plan(qi, replies)) * self.n_responses

    def respond_prompts(self, plan: Iterable[tuple[str, str, str]]) -> list[str]:
        """Pair k's j-th sample answers prompts 2 * (k * n_responses + j) (positive) and the
        one after it (negative): with n_responses=1 the prompts, batches and seeds are those
        of a single answer per characteristic."""
        out = []
        for query, char_pos, char_neg in plan:
            for _ in range(self.n_responses):
                out.append(self.obj.respond_prompt(query, char_pos, positive=True))
                out.append(self.obj.respond_prompt(query, char_neg, positive=False))
        return out

    def stream(
        self, done: list[PreferencePair], *, elicit_prefill: str, batch_size: int, verbose: bool, **common: Any
    ) -> Iterator[list[PreferencePair]]:
        """Each remaining query's pairs, in query order, as soon as its answers are done.

        `done` holds the pairs of the first queries (a resumed file). Both phases start
        at the batch that holds the first remaining prompt, so every batch holds the same
        prompts, with the same seed, as in an uninterrupted run.
        """
        first = len(_groups(done)) if done else 0
        n = len(self.queries)
        if first == n:
            return
        e_batch = 2 * first // batch_size
        replies = _generate_texts(
            self.model,
            self.elicit_prompts,
            phase="elicit",
            max_new_tokens=self.elicit_tokens,
            prefill=elicit_prefill,
            first_batch=e_batch,
            batch_size=batch_size,
            verbose=verbose,
            **common,
        )[2 * first - e_batch * batch_size :]
        plan = self.plan(first, replies)
        prompts = self.respond_prompts((p.query, p.char_positive, p.char_negative) for p in done if p.sample == 0)
        r0 = len(prompts)  # == 2 * len(done)
        prompts += self.respond_prompts((q, cp, cn) for q, _, cp, cn, _ in plan)
        answers: dict[int, tuple[str, int]] = {}
        # the plan entries of each remaining query, in order
        by_query: list[list[int]] = []
        for k, (_, index, *_rest) in enumerate(plan):
            if index == 0:
                by_query.append([])
            by_query[-1].append(k)
        row_of = lambda k, j: r0 + 2 * (k * self.n_responses + j)  # noqa: E731
        next_query = 0
        bar = tqdm(total=n, initial=first, desc="respond", unit="query", disable=not verbose)
        try:
            for start, rows in _iter_texts(
                self.model,
                prompts,
                phase="respond",
                max_new_tokens=self.response_tokens,
                first_batch=r0 // batch_size,
                batch_size=batch_size,
                verbose=False,
                **common,
            ):
                answers.update((start + i, row) for i, row in enumerate(rows) if start + i >= r0)
                while next_query < len(by_query) and row_of(by_query[next_query][-1], self.n_responses) - 1 in answers:
                    group = []
                    for k in by_query[next_query]:
                        query, index, cp, cn, meta = plan[k]
                        for j in range(self.n_responses):
                            (pos_text, pos_len), (neg_text, neg_len) = answers[row_of(k, j)], answers[row_of(k, j) + 1]
                            pair_meta = dict(meta, tokens_positive=pos_len, tokens_negative=neg_len)
                            group.append(
                                PreferencePair(query, pos_text, neg_text, cp, cn, self.obj.name, index, pair_meta, j)
                            )
                    next_query += 1
                    bar.update(1)
                    yield group
        finally:
            bar.close()
