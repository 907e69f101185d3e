"""`HTTPJudge`: a pairwise judge behind any OpenAI-compatible chat endpoint (standard
library only), with retries, and an API key that never leaves the request header.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence

from ..errors import ArgumentTypeError, InvalidArgumentError, JudgeError
from .judges import ASPECTS, judge_prompt, parse_verdict
from .records import PairVerdict

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "HTTPJudge"]

logger = logging.getLogger(__name__)

ENV_BASE_URL = "ALIGNEZ_JUDGE_BASE_URL"
ENV_MODEL = "ALIGNEZ_JUDGE_MODEL"
ENV_API_KEY = "ALIGNEZ_JUDGE_API_KEY"


class _Secret:
    """Holds an API key; its repr/str never show it, and it refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<none>"

    __str__ = __repr__

    def __reduce__(self):  # pragma: no cover - HTTPJudge drops it before pickling
        raise ArgumentTypeError("an API key is not picklable")


_SYSTEM = "You are an impartial judge of answers written by AI assistants. Follow the reply format exactly."


class HTTPJudge:
    """A pairwise judge behind any OpenAI-compatible chat endpoint.

    Sends `POST {base_url}/chat/completions` with the judging prompt (`judge_prompt`,
    asking for one word: `A`, `B` or `tie`), `temperature` 0 and a small `max_tokens`,
    using only the standard library (`urllib.request`). `base_url` is the API root that
    `/chat/completions` hangs off (`https://api.openai.com/v1`,
    `http://127.0.0.1:8000/v1` for vLLM, `http://127.0.0.1:11434/v1` for Ollama).

    Configuration comes from the arguments, else from the environment:
    `ALIGNEZ_JUDGE_BASE_URL`, `ALIGNEZ_JUDGE_MODEL`, `ALIGNEZ_JUDGE_API_KEY` (the key
    is optional: local servers need none; without one no Authorization header is sent).

    Failures: connection errors, timeouts, HTTP 5xx and 429 are retried (`retries`
    more attempts, waiting `backoff · 2^k` seconds, or the server's `Retry-After` when
    larger, at most 60 s). A reply whose first word is not a verdict (`parse_verdict`)
    or that is not a chat completion is "garbage" and is retried the same way. Other
    HTTP errors (400, 401, 404, ...) fail at once. When the attempts run out, `judge`
    raises `JudgeError`; `pairwise_compare(..., on_error="record")` records such a
    prompt as `outcome="error"` instead, and `summarize` leaves it out of the rates.

    The API key only ever goes into the request's `Authorization` header. It is not in
    `repr`/`str`, log records or exception messages (server replies quoted in errors are
    scrubbed of it), and pickling the judge drops it (an unpickled judge reads
    `ALIGNEZ_JUDGE_API_KEY` again).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        tie: bool = True,
        max_tokens: int = 8,
        temperature: float = 0.0,
        extra_body: Optional[dict[str, Any]] = None,
        name: Optional[str] = None,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise InvalidArgumentError(f"HTTPJudge needs a base URL: pass base_url=... or set {ENV_BASE_URL}")
        if not model:
            raise InvalidArgumentError(f"HTTPJudge needs a model name: pass model=... or set {ENV_MODEL}")
        base_url = base_url.rstrip("/")
        if base_url.endswith("/chat/completions"):
            base_url = base_url[: -len("/chat/completions")]
        if not re.match(r"^https?://[^/\s]+", base_url):
            raise InvalidArgumentError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise InvalidArgumentError("timeout must be > 0, retries >= 0 and backoff >= 0")
        self.base_url = base_url
        self.model = model
        self._api_key = _Secret(api_key if api_key is not None else os.environ.get(ENV_API_KEY, ""))
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.tie = bool(tie)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self.name = name or f"http:{model}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return (
            f"HTTPJudge(base_url={self.base_url!r}, model={self.model!r}, api_key=<{key}>, "
            f"timeout={self.timeout}, retries={self.retries})"
        )

    __str__ = __repr__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_api_key", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._api_key = _Secret(os.environ.get(ENV_API_KEY, ""))

    def config(self) -> dict[str, Any]:
        """What a report may record about this judge (never the key)."""
        return {
            "kind": "http",
            "base_url": self._scrub(self.base_url),
            "model": self.model,
            "timeout": self.timeout,
            "retries": self.retries,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "tie": self.tie,
        }

    # ---------------------------------------------------------------- request

    def request_body(
        self, query: str, answer_a: str, answer_b: str, *, aspects: Sequence[str] = ASPECTS
    ) -> dict[str, Any]:
        """The JSON body sent for one pair."""
        user = judge_prompt(query, answer_a, answer_b, aspects=aspects, tie=self.tie, reply="word")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        body.update(self.extra_body)
        return body

    def _scrub(self, text: Any) -> str:
        text = str(text)
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text

    def judge(self, query: str, answer_a: str, answer_b: str, *, aspects: Sequence[str] = ASPECTS) -> PairVerdict:
        """The verdict on one pair; raises `JudgeError` when the attempts run out."""
        body = json.dumps(self.request_body(query, answer_a, answer_b, aspects=aspects)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        attempts = self.retries + 1
        problem = "no attempt made"
        for attempt in range(attempts):
            retry_after = 0.0
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                text = _reply_text(raw)
                if text is None:
                    problem = f"the reply is not a chat completion: {self._scrub(_snippet(raw))!r}"
                else:
                    verdict = parse_verdict(text)
                    if verdict is not None:
                        if verdict == "tie" and not self.tie:
                            problem = f"the judge said tie but ties are off: {self._scrub(_snippet(text))!r}"
                        else:
                            return PairVerdict(verdict, raw=self._scrub(text), attempts=attempt + 1)
                    else:
                        problem = f"unparseable verdict {self._scrub(_snippet(text))!r}"
            except urllib.error.HTTPError as exc:
                status = exc.code
                try:
                    detail = exc.read()
                except Exception:  # noqa: BLE001 - the body is only for the message
                    detail = b""
                finally:
                    exc.close()
                problem = f"HTTP {status}: {self._scrub(_snippet(detail))!r}"
                if status != 429 and status < 500:
                    raise JudgeError(f"judge request to {self._scrub(self.url)} failed: {problem}") from None
                retry_after = _retry_after(exc.headers)
            except (
                urllib.error.URLError,
                TimeoutError,
                socket.timeout,
                ConnectionError,
                http.client.HTTPException,
                OSError,
            ) as exc:
                problem = self._scrub(_describe_network_error(exc, self.timeout))
            if attempt + 1 < attempts:
                delay = min(60.0, max(self.backoff * (2**attempt), retry_after))
                logger.warning(
                    "judge request to %s failed (%s); retry %d of %d in %.2fs",
                    self._scrub(self.url),
                    problem,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
        raise JudgeError(f"judge request to {self._scrub(self.url)} failed after {attempts} attempt(s): {problem}")

    def judge_batch(
        self,
        queries: Sequence[str],
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        *,
        aspects: Sequence[str] = ASPECTS,
    ) -> list[PairVerdict]:
        """One request per pair, in order."""
        return [self.judge(q, a, b, aspects=aspects) for q, a, b in zip(queries, answers_a, answers_b)]


def _snippet(data: Any, limit: int = 200) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    data = str(data)
    return data if len(data) <= limit else data[:limit] + "..."


def _reply_text(raw: bytes) -> Optional[str]:
    try:
        data = json.loads(raw)
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _retry_after(headers: Any) -> float:
    try:
        value = float(headers.get("Retry-After", 0) or 0)
    except (TypeError, ValueError, AttributeError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _describe_network_error(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (TimeoutError, socket.timeout)) or isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    return f"{type(reason).__name__}: {reason}"
