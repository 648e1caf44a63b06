"""Output guardrails on streamed tokens (``core/guardrails/stream.py``): nothing a
guardrail redacts or blocks leaves, however the text is split, and only the
look-ahead is held back.  A regex guardrail stands in for PII here (the Presidio
engine has its own tests): the buffering does not depend on what finds."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest

from astromesh_ray.core.events import (
    Event,
    GuardrailEvent,
    ModelCall,
    RunFinished,
    StepEvent,
    Token,
    event_to_dict,
)
from astromesh_ray.core.guardrails.base import Direction, Finding, Verdict, apply_spans
from astromesh_ray.core.guardrails.chain import GuardChain
from astromesh_ray.core.guardrails.stages import OutputGuardrails
from astromesh_ray.core.guardrails.vault import LocalVault
from astromesh_ray.core.records import AnswerStep
from astromesh_ray.errors import GuardrailViolation
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import runtime

SECRET = re.compile(r"\bSECRET-\d{4}-\d{4}\b")
BAD = re.compile(r"\bforbidden words\b")


class Pattern:
    """Redacts (or blocks) a regex; look-ahead: its longest match."""

    def __init__(self, pattern: re.Pattern[str], action: str, lookahead: int | None) -> None:
        self.name = "pattern"
        self.pattern = pattern
        self.action = action
        self.lookahead = lookahead
        self.checked: list[str] = []

    async def check(self, text: str, ctx: object, state: object, direction: Direction) -> Verdict:
        self.checked.append(text)
        found = [Finding("SECRET", m.start(), m.end()) for m in self.pattern.finditer(text)]
        if not found:
            return Verdict(text)
        if self.action == "block":
            return Verdict(text, found, "block")
        return Verdict(
            apply_spans(text, [(f.start, f.end, "[SECRET_1]") for f in found]), found, "redact"
        )


def guarded(answer: str, guardrail: Pattern) -> object:
    """A runtime whose one model call streams ``answer`` word by word."""
    chain = GuardChain([guardrail], "output")  # type: ignore[list-item]
    env = type("Env", (), {"vault": LocalVault()})()
    output = OutputGuardrails(chain, env, restores=False)  # type: ignore[arg-type]
    return runtime(ScriptedProvider([answer]), transformers=(output,))


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def answer_text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token) and e.channel == "answer")


@pytest.mark.parametrize(
    "answer",
    [
        "Your code is SECRET-1234-5678, keep it safe and tell nobody about it at all, ever.",
        "SECRET-1234-5678 " + "filler words go here " * 10 + "SECRET-9999-0000 end",
    ],
)
async def test_streamed_tokens_never_carry_a_redacted_match(answer: str) -> None:
    from astromesh_ray.core.context import RunRequest

    guardrail = Pattern(SECRET, "redact", lookahead=16)
    rt = guarded(answer, guardrail)
    events = await collect(rt.stream(RunRequest(query="q")))  # type: ignore[attr-defined]
    streamed = answer_text(events)
    assert "SECRET-" not in streamed
    assert streamed == SECRET.sub("[SECRET_1]", answer)
    result = events[-1]
    assert isinstance(result, RunFinished)
    assert result.result.answer == streamed  # the reply and the stream agree
    assert "SECRET-" not in str(result.result.to_dict())  # messages and steps too
    # No event at all carries it (the answer's step event included).
    assert not [e for e in events if "SECRET-" in json.dumps(event_to_dict(e))]
    assert any(isinstance(e, StepEvent) and isinstance(e.step, AnswerStep) for e in events)
    redactions = [e for e in events if isinstance(e, GuardrailEvent)]
    assert redactions and all("SECRET" in e.detail for e in redactions)
    # Tokens left before the stream ended: it was not all held to the end.
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 1


async def test_a_match_split_over_many_chunks_is_caught() -> None:
    """One character per chunk: the match only exists across chunks."""
    from astromesh_ray.core.context import RunRequest
    from astromesh_ray.core.messages import CompletionChunk

    answer = "prefix text that is long enough SECRET-1234-5678 and then more text after it"

    class CharStream(ScriptedProvider):
        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            async for chunk in super().stream(request):
                if chunk.text:
                    for ch in chunk.text:
                        yield CompletionChunk(text=ch)
                else:
                    yield chunk

    guardrail = Pattern(SECRET, "redact", lookahead=16)
    chain = GuardChain([guardrail], "output")  # type: ignore[list-item]
    env = type("Env", (), {"vault": LocalVault()})()
    rt = runtime(CharStream([answer]), transformers=(OutputGuardrails(chain, env, False),))  # type: ignore[arg-type]
    events = await collect(rt.stream(RunRequest(query="q")))
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert all("SECRET-" not in t and "1234" not in t for t in tokens)
    assert len(tokens) > 2  # it still streamed
    assert "".join(tokens) == SECRET.sub("[SECRET_1]", answer)


async def test_a_block_mid_stream_ends_it_with_the_error_and_nothing_blocked_was_sent() -> None:
    from astromesh_ray.core.context import RunRequest

    answer = "Here is a long harmless opening sentence, and then the forbidden words appear late."
    guardrail = Pattern(BAD, "block", lookahead=16)
    rt = guarded(answer, guardrail)
    sent: list[Event] = []
    with pytest.raises(GuardrailViolation) as caught:
        async for event in rt.stream(RunRequest(query="q")):  # type: ignore[attr-defined]
            sent.append(event)
    streamed = answer_text(sent)
    assert "forbidden" not in streamed
    assert streamed and answer.startswith(streamed)  # the harmless part did go out
    assert caught.value.details["guardrail"] == "pattern"
    assert caught.value.details["direction"] == "output"
    assert "forbidden" not in caught.value.message
    # The block is recorded in the run's trace: a guardrail span saying so.
    blocks = [s for s in caught.value.details["trace"] if s["name"] == "guardrail"]
    assert [s["attributes"]["action"] for s in blocks] == ["block"]


async def test_whole_text_guardrails_hold_the_answer_until_it_is_complete() -> None:
    from astromesh_ray.core.context import RunRequest

    answer = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    guardrail = Pattern(SECRET, "redact", lookahead=None)
    rt = guarded(answer, guardrail)
    events = await collect(rt.stream(RunRequest(query="q")))  # type: ignore[attr-defined]
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.text for t in tokens] == [answer]  # one piece, once complete
    model_call = next(i for i, e in enumerate(events) if isinstance(e, ModelCall))
    assert events.index(tokens[0]) < model_call  # flushed before its model call ends
