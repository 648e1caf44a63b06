"""``ScriptedProvider``: an in-process ``Provider`` that answers from a script.

Each ``complete`` / ``stream`` call consumes exactly one step, in order.  A call
with no step left fails the test, and ``assert_consumed`` fails on steps nobody
asked for, so a test pins down precisely how many model calls the engine makes
(the openai-agents idea, DESIGN.md §6-7).

``track_scripted`` records every ``ScriptedProvider`` created while it is active, so
that leftover steps are caught even where a test forgets ``assert_consumed``: the
pytest plugin ``astromesh_ray.testing.pytest_plugin`` does that around each test.

Token usage is counted in whitespace-separated words, the same rule the loopback
``ScriptedOpenAIServer`` uses, so usage assertions hold for both fakes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    Usage,
)

# What a step (or a callable step) answers with.
Answer = str | ToolCall | list[ToolCall] | BaseException
Step = Answer | Callable[[CompletionRequest], Answer]

__all__ = [
    "Answer",
    "ScriptedProvider",
    "ScriptedTracker",
    "Step",
    "count_words",
    "split_words",
    "track_scripted",
]


def count_words(text: str | None) -> int:
    """Deterministic stand-in for a token count: whitespace-separated words."""
    return len(text.split()) if text else 0


def split_words(text: str) -> list[str]:
    """Split ``text`` into word-sized stream deltas whose concatenation is ``text``."""
    # Cut just before every word that follows whitespace, so no character is lost.
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


def tool_call_words(call: ToolCall) -> int:
    """Words a tool call "costs": its name plus its JSON-encoded arguments."""
    return count_words(f"{call.name} {json.dumps(call.arguments)}")


def prompt_words(request: CompletionRequest) -> int:
    """Words of every message's text content (the prompt side of ``Usage``)."""
    return sum(count_words(m.content) for m in request.messages)


class ScriptedProvider:
    """A ``Provider`` whose answers are a fixed list of steps.

    A step is one of:

    - ``str``: a text answer;
    - ``ToolCall`` or ``list[ToolCall]``: native tool calls;
    - an exception instance: raised by that call (e.g. a ``ProviderError``);
    - a callable ``(CompletionRequest) -> any of the above``: lets the test assert
      on what the engine sent before answering.

    ``requests`` records a snapshot of every request received, including unexpected ones:
    its own lists of messages and tools and its own parameters dict, so an engine that
    keeps appending to its message list does not change what was recorded.  The
    messages themselves are shared: the engine treats them as values.

    A test that leaves steps on purpose says so with ``discard_remaining``.
    """

    def __init__(
        self, steps: Iterable[Step] = (), *, name: str = "scripted", model: str = "scripted"
    ) -> None:
        self.name = name
        self.model = model
        self.requests: list[CompletionRequest] = []
        self._steps: list[Step] = list(steps)
        self._total = len(self._steps)
        self._calls = 0
        self.closed = False
        for tracker in _trackers:
            tracker.providers.append(self)

    @property
    def remaining(self) -> int:
        """How many steps have not been consumed yet."""
        return len(self._steps)

    def add_steps(self, *steps: Step) -> None:
        """Append more steps to the script."""
        self._steps.extend(steps)
        self._total += len(steps)

    def assert_consumed(self) -> None:
        """Fail if some scripted steps were never asked for."""
        if self._steps:
            raise AssertionError(self.leftover_report())

    def leftover_report(self) -> str:
        """Which steps were never asked for (empty when all were)."""
        if not self._steps:
            return ""
        listed = "\n".join(f"  - {_describe(s)}" for s in self._steps)
        return (
            f"ScriptedProvider {self.name!r}: {len(self._steps)} of {self._total} steps "
            f"not consumed after {self._calls} call(s):\n{listed}"
        )

    def discard_remaining(self) -> list[Step]:
        """Drop the steps not asked for and return them: the test leaves them on
        purpose (and may assert on what they were).  A later call fails as unexpected."""
        left, self._steps = self._steps, []
        return left

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer with the next step as one whole ``Completion``."""
        answer = self._resolve(self._take(request), request)
        if isinstance(answer, BaseException):
            raise answer
        text, calls = _split_answer(answer)
        return Completion(
            message=Message(role="assistant", content=text, tool_calls=calls),
            usage=self._usage(request, text, calls),
            model=self.model,
            provider=self.name,
            finish_reason="tool_calls" if calls else "stop",
        )

    def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Answer with the next step as word-sized text deltas, then a final chunk.

        The step is consumed when ``stream`` is called; an exception step is raised
        while iterating, where a real provider's network error would surface.
        """
        answer = self._resolve(self._take(request), request)
        return self._chunks(request, answer)

    async def health(self) -> bool:
        """Always healthy: there is nothing to reach."""
        return True

    async def aclose(self) -> None:
        """Mark the provider closed (tests may assert the engine closes providers)."""
        self.closed = True

    # -- internals ---------------------------------------------------------------------

    def _take(self, request: CompletionRequest) -> Step:
        self._calls += 1
        # Snapshot: engines often keep appending to the same message list after a call.
        # Shallow copies of the containers are enough (messages are values) and cost
        # ~2 µs where a deep copy cost ~50 µs, most of a scripted call.
        self.requests.append(
            dataclasses.replace(
                request,
                messages=list(request.messages),
                tools=list(request.tools),
                parameters=dict(request.parameters),
            )
        )
        if not self._steps:
            last = request.messages[-1] if request.messages else None
            shown = f"{last.role}: {last.content!r}" if last else "(no messages)"
            if last is not None and last.tool_calls:
                shown += f" tool_calls={[c.name for c in last.tool_calls]}"
            raise AssertionError(
                f"ScriptedProvider {self.name!r}: unexpected call #{self._calls} "
                f"(script has {self._total} step(s)); last message: {shown}"
            )
        return self._steps.pop(0)

    @staticmethod
    def _resolve(step: Step, request: CompletionRequest) -> Answer:
        if callable(step) and not isinstance(step, (BaseException, ToolCall)):
            return step(request)
        return step

    def _usage(self, request: CompletionRequest, text: str | None, calls: list[ToolCall]) -> Usage:
        out = count_words(text) + sum(tool_call_words(c) for c in calls)
        return Usage(input_tokens=prompt_words(request), output_tokens=out, calls=1)

    async def _chunks(
        self, request: CompletionRequest, answer: Answer
    ) -> AsyncIterator[CompletionChunk]:
        if isinstance(answer, BaseException):
            raise answer
        text, calls = _split_answer(answer)
        for piece in split_words(text or ""):
            yield CompletionChunk(text=piece)
        yield CompletionChunk(
            tool_calls=calls,
            usage=self._usage(request, text, calls),
            finish_reason="tool_calls" if calls else "stop",
            model=self.model,
        )


class ScriptedTracker:
    """The ``ScriptedProvider``s created while a ``track_scripted`` block was active."""

    def __init__(self) -> None:
        self.providers: list[ScriptedProvider] = []

    def leftovers(self) -> list[ScriptedProvider]:
        """The tracked providers that still have steps nobody asked for."""
        return [p for p in self.providers if p.remaining]

    def leftover_report(self) -> str:
        """Each provider with steps left and those steps (empty when none are)."""
        left = self.leftovers()
        if not left:
            return ""
        return (
            "\n".join(p.leftover_report() for p in left)
            + "\n(consume them, or call discard_remaining() if they are left on purpose)"
        )

    def assert_consumed(self) -> None:
        """Fail, naming each provider and its leftover steps, if any step is left."""
        report = self.leftover_report()
        if report:
            raise AssertionError(report)


# Active trackers, innermost last; a provider registers with each.
_trackers: list[ScriptedTracker] = []


@contextmanager
def track_scripted() -> Iterator[ScriptedTracker]:
    """Record every ``ScriptedProvider`` created inside the block (any thread)."""
    tracker = ScriptedTracker()
    _trackers.append(tracker)
    try:
        yield tracker
    finally:
        _trackers.remove(tracker)


def _split_answer(answer: str | ToolCall | list[ToolCall]) -> tuple[str | None, list[ToolCall]]:
    if isinstance(answer, str):
        return answer, []
    if isinstance(answer, ToolCall):
        return None, [answer]
    if isinstance(answer, list) and all(isinstance(c, ToolCall) for c in answer):
        return None, list(answer)
    raise TypeError(
        "ScriptedProvider step must be str, ToolCall, list[ToolCall], an exception "
        f"or a callable returning one of those; got {answer!r}"
    )


def _describe(step: Step) -> str:
    if isinstance(step, ToolCall):
        return f"ToolCall {step.name}({step.arguments})"
    if isinstance(step, list):
        return "ToolCalls " + ", ".join(f"{c.name}({c.arguments})" for c in step)
    if isinstance(step, BaseException):
        return f"raise {step!r}"
    if callable(step):
        return f"callable {getattr(step, '__name__', repr(step))}"
    return repr(step)
