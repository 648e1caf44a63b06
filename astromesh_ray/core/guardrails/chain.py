"""``GuardChain``: one direction's guardrails, in the order the YAML lists them, and
the record every action leaves.

``apply`` runs each guardrail on what the previous one left (a redaction feeds the
next check) and stops at a ``block``: an input with a refusal (a topic filter)
answers with it, anything else raises ``GuardrailViolation``.  ``findings`` runs
them all on the same raw text, without changing it: the streaming look-ahead uses
it to decide where text may be cut (``stream.py``).

Every action is recorded three ways: a ``guardrail`` event, a ``guardrail`` span
(its attributes: ``guardrail``, ``direction``, ``action``, ``detail``), and through
that span the episodic log when memory is on.  ``detail`` names kinds and counts,
never the text found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from astromesh_ray.core.events import GuardrailEvent
from astromesh_ray.core.guardrails.base import Direction, Finding, Guardrail, Verdict
from astromesh_ray.errors import GuardrailViolation

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState


@dataclass(slots=True)
class Applied:
    """What a chain made of a text: the text to pass on, the refusal to answer with
    instead (a blocked input), and the events of the actions taken."""

    text: str
    refusal: str | None = None
    events: list[GuardrailEvent] = field(default_factory=list)


def note(
    ctx: RunContext,
    state: TurnState,
    guardrail: str,
    direction: Direction,
    action: str,
    detail: str,
) -> GuardrailEvent:
    """Record one guardrail action as a span, and return its event."""
    span = state.trace.start(
        "guardrail",
        ctx.trace.span_id,
        guardrail=guardrail,
        direction=direction,
        action=action,
        detail=detail,
    )
    span.end()
    return GuardrailEvent(
        guardrail=guardrail,
        stage=direction,
        action=action,  # type: ignore[arg-type]  # checked by the guardrails' own types
        detail=detail,
    )


def violation(guardrail: str, direction: Direction, detail: str) -> GuardrailViolation:
    """The error of a ``block``: names the guardrail and what it found, not the text."""
    what = "the input" if direction == "input" else "the answer"
    return GuardrailViolation(
        f"{what} was blocked by guardrail {guardrail!r}" + (f": {detail}" if detail else ""),
        hint="rephrase the request"
        if direction == "input"
        else "the agent's answer broke its output guardrails; ask differently",
        guardrail=guardrail,
        direction=direction,
        detail=detail,
    )


class GuardChain:
    """The guardrails of one direction, in order."""

    def __init__(self, guardrails: Sequence[Guardrail], direction: Direction) -> None:
        self.guardrails = tuple(guardrails)
        self.direction: Direction = direction
        # The look-ahead streamed text needs: the longest any guardrail needs, or
        # None (hold the whole text) when one judges whole texts only.
        needs = [g.lookahead for g in self.guardrails]
        self.lookahead: int | None = None if None in needs else max(needs, default=0)  # type: ignore[type-var]

    def __bool__(self) -> bool:
        return bool(self.guardrails)

    async def apply(
        self, text: str, ctx: RunContext, state: TurnState, *, record: bool = True
    ) -> Applied:
        """``text`` through every guardrail in turn (``record``: note the actions)."""
        applied = Applied(text)
        for guardrail in self.guardrails:
            verdict = await guardrail.check(applied.text, ctx, state, self.direction)
            if verdict.action is None:
                continue
            if record:
                applied.events.append(
                    note(ctx, state, guardrail.name, self.direction, verdict.action, verdict.detail)
                )
            if verdict.action == "block":
                if verdict.refusal is not None and self.direction == "input":
                    applied.refusal = verdict.refusal
                    return applied
                raise violation(guardrail.name, self.direction, verdict.detail)
            applied.text = verdict.text
        return applied

    async def findings(self, text: str, ctx: RunContext, state: TurnState) -> list[Finding]:
        """What every guardrail finds in ``text`` as it is (nothing changed, nothing
        recorded); a ``block`` raises at once (recorded as a span: the stream ends
        with the error, which is its event)."""
        found: list[Finding] = []
        for guardrail in self.guardrails:
            verdict: Verdict = await guardrail.check(text, ctx, state, self.direction)
            if verdict.action == "block":
                note(ctx, state, guardrail.name, self.direction, "block", verdict.detail)
                raise violation(guardrail.name, self.direction, verdict.detail)
            if verdict.action is not None:
                found.extend(f for f in verdict.findings if not f.whole)
        return sorted(found, key=lambda f: (f.start, f.end))
