"""The steering interface: `SteeringMethod` (a Protocol) and `HookSteering` (its shared code).

Everything that steers a model (`Steerer`, and the baselines `DiffMeanSteerer`,
`PCASteerer`, `VectorSteerer`, `PromptSteerer`, `NoSteerer`) has the same surface, so an
evaluation, a CLI command or an analysis can take any of them:

* `hooks(model, query=None, *, prompt_len=None, record=None, strict=True, **kwargs)`:
  fresh `(hook_name, fn)` pairs for `model.hooks(fwd_hooks=...)` (empty for the methods
  that edit no activation);
* `apply(model, query=None, **kwargs)`: a context manager that adds those hooks and
  always removes them;
* `generate(model, queries, *, prompts=None, max_new_tokens=64, ..., steer=True,
  return_tokens=False, backend="auto", selections=None)`: batched generation through the
  one shared loop (`generation.generate`); `steer=False` is the unsteered path;
* `describe()`: JSON-ready settings (at least `"method"`), for reports;
* `with_positions(positions)`: a copy that edits `"generated"` (the last prompt token
  and every generated token) or `"all"` positions.

`SteeringMethod` is `runtime_checkable`: `isinstance(x, SteeringMethod)` checks that
the five methods exist. `HookSteering` implements `apply` and `generate` once, on top of
the subclass's `hooks` and `check_model`; `Steerer` and `baselines.Baseline` subclass it.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

from . import generation
from ._checks import _as_queries
from .errors import InvalidArgumentError
from .generation import Prefill
from .models import Encoded, render

__all__ = ["GenerateResult", "HookSteering", "SteeringMethod"]

#: What `generate` returns: the decoded texts, or `(new_token_ids, texts)` with `return_tokens=True`.
GenerateResult = Union[list[str], tuple[list[list[int]], list[str]]]


@runtime_checkable
class SteeringMethod(Protocol):
    """What every steering method offers (see the module docstring)."""

    def hooks(
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Fresh `(hook_name, fn)` pairs (fresh position state) for one generation."""
        ...

    def apply(
        self, model: Any, query: Union[str, Sequence[str], None] = None, **kwargs: Any
    ) -> ContextManager[list[tuple[str, Any]]]:
        """Context manager: the hooks are on inside, removed on exit (even on error)."""
        ...

    def generate(self, model: Any, queries: Sequence[str], **kwargs: Any) -> GenerateResult:
        """Batched (steered) generation; `steer=False` gives the unsteered answers."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, with at least `"method"`."""
        ...

    def with_positions(self, positions: str) -> "SteeringMethod":
        """A copy that edits `positions` (`"generated"` or `"all"`)."""
        ...


class HookSteering:
    """`apply` and `generate` written once, on top of `hooks()` and `check_model()`.

    A subclass defines `hooks`, `check_model`, `describe` and `with_positions`, and
    `prefill` where its hooks depend on the prompt (`Steerer`'s per-query selection). The
    generation loop is `generation.generate` (batching, left padding, seeding, stop
    tokens, the `backend` choice), so two methods differ only in their hooks (or, for
    `PromptSteerer`, which overrides `generate`, in their prompts).
    """

    def check_model(self, model: Any, *, strict: bool = True) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def hooks(
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        *,
        prompt_len: Optional[int] = None,
        record: Optional[list] = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def prefill(self) -> Optional[Prefill]:
        """What `hooks(..., activations=...)` needs from the unedited last prompt token; None: nothing."""
        return None

    def with_positions(self, positions: str) -> "HookSteering":  # pragma: no cover - overridden
        raise NotImplementedError

    @contextlib.contextmanager
    def apply(
        self,
        model: Any,
        query: Union[str, Sequence[str], None] = None,
        **kwargs: Any,
    ) -> Iterator[list[tuple[str, Any]]]:
        """Context manager: the steering hooks are on inside, removed on exit (even on error).

        `kwargs` go to `hooks()`. Yields the `(name, fn)` pairs it added.
        """
        hooks = self.hooks(model, query, **kwargs)
        with model.hooks(fwd_hooks=hooks):
            yield hooks

    generation_desc = "steered generation"  # the progress bar's label of steered generation

    def prompt_text(self, model: Any, query: str, *, chat: Optional[bool] = None, steer: bool = True) -> str:
        """The prompt `generate` feeds the model for `query`: `models.render` (the chat
        template for instruct models). A method that steers through the prompt overrides it."""
        return render(model, query, chat=chat)

    def generate(
        self,
        model: Any,
        queries: Sequence[str],
        *,
        prompts: Optional[Sequence[str]] = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: Optional[float] = None,
        seed: int = 0,
        batch_size: int = 8,
        use_past_kv_cache: bool = True,
        steer: bool = True,
        chat: Optional[bool] = None,
        verbose: bool = False,
        return_tokens: bool = False,
        backend: str = "auto",
        monitor: Optional[dict] = None,
        selections: Optional[list] = None,
        max_prompt_tokens: Optional[int] = None,
    ) -> GenerateResult:
        """Steered generation for many queries, batched, one `generate` call per batch.

        Each query is rendered with `prompt_text` (`models.render`: the chat template for
        instruct models), unless `prompts` gives the exact prompt text per query. Every row of a batch gets
        its own hooks (`hooks(model, queries_of_the_batch, prompt_len=..., chat=...,
        monitor=...)`). Greedy by default. `steer=False` gives the unsteered answers
        through the same code path (the fair baseline).

        `backend` picks the generation engine (see `generation`): by default the fast
        path on a bridge, which gives the same greedy tokens as the TransformerLens hook
        path (`backend="tl"`, the reference).

        Where the hooks depend on the prompt (`prefill()`: `Steerer`'s per-query layer
        selection), the fast path with the KV cache reads it from the prompt's own forward
        pass (`generation.Prefill`); the other paths, and explicit `prompts`, select with a
        pass of their own, as `hooks()` does. `selections` (per objective, one entry per
        query: `Steerer.select`'s output) skips selection altogether. `max_prompt_tokens`
        refuses a prompt longer than that many tokens before any work
        (`generation.check_prompt_tokens`; None: no limit).

        Returns the decoded new text of each query, cut at the first stop token, or
        `(new_token_ids, texts)` with `return_tokens=True`.
        """
        queries = _as_queries(queries)
        if prompts is not None and len(prompts) != len(queries):
            raise InvalidArgumentError(f"{len(prompts)} prompts for {len(queries)} queries")
        self.check_model(model)
        texts = (
            list(prompts)
            if prompts is not None
            else [self.prompt_text(model, q, chat=chat, steer=steer) for q in queries]
        )

        if selections is not None and any(len(s) != len(queries) for s in selections):
            raise InvalidArgumentError(f"selections must hold one entry per query ({len(queries)}) for every objective")
        # the selection from the prefill reads the rendered queries: not for explicit prompts
        prefill = self.prefill() if steer and prompts is None and selections is None else None

        def hooks_for(start: int, stop: int, batch: Encoded, activations: Any = None) -> list:
            if not steer:
                return []
            extra: dict[str, Any] = {}
            if selections is not None:
                extra["selections"] = [s[start:stop] for s in selections]
            if activations is not None:
                # the first call the hooks see is the last prompt token alone (the rest is cached)
                extra["activations"] = activations
            prompt_len = 1 if activations is not None else batch.input_ids.shape[1]
            return self.hooks(model, queries[start:stop], prompt_len=prompt_len, chat=chat, monitor=monitor, **extra)

        all_ids = generation.generate(
            model,
            texts,
            hooks_for,
            chat=chat if prompts is None else False,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            use_past_kv_cache=use_past_kv_cache,
            backend=backend,
            prefill=prefill,
            max_prompt_tokens=max_prompt_tokens,
            verbose=verbose,
            desc=self.generation_desc if steer else "generation",
        )
        decoded = [model.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in all_ids]
        return (all_ids, decoded) if return_tokens else decoded
