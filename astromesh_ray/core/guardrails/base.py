"""What every guardrail shares: ``Guardrail`` (one check on one text), ``Finding``
(what it found, and where) and ``Verdict`` (what it did about it).

A guardrail never sees where the text goes: the input stage (``stages.py``) runs
the input list on the user's message before any model call, the output transformer
runs the output list on the answer and on streamed tokens (``stream.py``).  A
``block`` raises ``GuardrailViolation`` there (a topic filter answers with its
refusal instead); ``redact`` changes the text; ``warn`` only records.

Details never hold the text a guardrail found: ``detail`` says what kinds were
found and how many (``2 EMAIL_ADDRESS``), so events, spans and the episodic log
can carry it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState

Direction = Literal["input", "output"]
Action = Literal["redact", "block", "warn", "truncate"]

WHOLE_TEXT: None = None
"""A guardrail's ``lookahead`` when it can only judge a whole text (a moderation
call, a topic): streamed output is then held until the answer is complete."""


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a guardrail found: its ``kind`` (an entity type such as
    ``EMAIL_ADDRESS``, a pattern, a topic or a category) and its span in the text
    (``start == end == 0`` for a finding about the whole text)."""

    kind: str
    start: int = 0
    end: int = 0
    score: float = 1.0

    @property
    def whole(self) -> bool:
        return self.start == self.end == 0


@dataclass(slots=True)
class Verdict:
    """The outcome of one guardrail on one text: ``text`` as it leaves the guardrail
    (redacted or truncated, else unchanged), what it found, and the action taken
    (``None``: nothing found).  ``refusal``: the answer a blocked input gets instead
    of an error (topic filters)."""

    text: str
    findings: list[Finding] = field(default_factory=list)
    action: Action | None = None
    refusal: str | None = None

    @property
    def detail(self) -> str:
        """What was found, by kind and count: never the text itself."""
        return summarize(self.findings)


def summarize(findings: Sequence[Finding]) -> str:
    """``"2 EMAIL_ADDRESS, 1 PHONE_NUMBER"``: kinds and counts, in order of first sight."""
    counts = Counter(f.kind for f in findings)
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


@runtime_checkable
class Guardrail(Protocol):
    """One configured check.

    ``name`` is its type (``pii_detection``, ...); ``action`` what it does on a
    finding; ``lookahead`` how many characters past a position it must see before
    that position can be streamed (``WHOLE_TEXT``: it needs the whole text).

    ``check`` may call out (an embedder, a moderation endpoint, the judge model
    through ``ctx``); ``scope`` keys what lasts across texts (a session's
    placeholders).  A guardrail that cannot check (its endpoint is down) raises:
    text is never let through unchecked.
    """

    name: str
    action: Action
    lookahead: int | None

    async def check(
        self, text: str, ctx: RunContext, state: TurnState, direction: Direction
    ) -> Verdict: ...


def apply_spans(text: str, replacements: Sequence[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, replacement)`` applied (non-overlapping,
    any order)."""
    out: list[str] = []
    at = 0
    for start, end, new in sorted(replacements):
        if start < at:  # overlapping: the earlier one wins
            continue
        out.append(text[at:start])
        out.append(new)
        at = end
    out.append(text[at:])
    return "".join(out)
