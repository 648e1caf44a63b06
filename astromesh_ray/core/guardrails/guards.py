"""The guardrails that need no outside service: PII (over ``pii.PiiDetector`` and a
``PlaceholderVault``) and ``max_length``; and ``restore``, which puts a caller's
own originals back into the answer it gets.

Placeholders are scoped by agent and session (a run without a session is its own
scope): ``[EMAIL_1]`` is the same address in every turn of the session, whichever
replica runs it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from astromesh_ray.core.guardrails.base import Action, Direction, Finding, Verdict
from astromesh_ray.core.guardrails.vault import PlaceholderVault
from astromesh_ray.spec.guardrails import MaxLengthSpec, PiiDetectionSpec

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState
    from astromesh_ray.core.guardrails.pii import PiiDetector

# Texts longer than this are analysed in a worker thread, off the event loop.
_THREAD_CHARS = 4096


def action_of(configured: str) -> Action:
    """The action a YAML ``action`` takes (``log`` is the original's ``warn``)."""
    return "warn" if configured == "log" else configured  # type: ignore[return-value]


def placeholder_scope(ctx: RunContext) -> str:
    """Where a run's placeholders live: its agent's session, else the run itself."""
    if ctx.session_id is not None:
        return f"{ctx.agent}:session:{ctx.session_id}"
    return f"{ctx.agent}:run:{ctx.request.parent_run_id or ctx.run_id}"


class PiiGuardrail:
    """``pii_detection``: finds personal data and secrets; redacts them to typed
    placeholders consistent within a session, blocks, or only records."""

    name = "pii_detection"

    def __init__(
        self, spec: PiiDetectionSpec, detector: PiiDetector, vault: PlaceholderVault
    ) -> None:
        self.spec = spec
        self.action = action_of(spec.action)
        self.detector = detector
        self.vault = vault
        self.lookahead: int | None = detector.lookahead
        self.restore = spec.restore

    async def check(
        self, text: str, ctx: RunContext, state: TurnState, direction: Direction
    ) -> Verdict:
        if len(text) > _THREAD_CHARS:
            findings = await asyncio.to_thread(self.detector.find, text)
        else:
            findings = self.detector.find(text)
        if not findings:
            return Verdict(text)
        if self.action != "redact":
            return Verdict(text, findings, self.action)
        items = [(f.kind, text[f.start : f.end]) for f in findings]
        placeholders = await self.vault.assign(placeholder_scope(ctx), items)
        return Verdict(self.detector.redact(text, findings, placeholders), findings, "redact")


class MaxLengthGuardrail:
    """``max_length``: text longer than ``max_chars`` is refused, or cut."""

    name = "max_length"

    def __init__(self, spec: MaxLengthSpec) -> None:
        self.max_chars = spec.max_chars
        self.action = action_of(spec.action)
        # The whole text's length decides: streamed output is held until complete.
        self.lookahead: int | None = None

    async def check(
        self, text: str, ctx: RunContext, state: TurnState, direction: Direction
    ) -> Verdict:
        if len(text) <= self.max_chars:
            return Verdict(text)
        found = [Finding(kind=f"over_{self.max_chars}_chars")]
        if self.action == "truncate":
            return Verdict(text[: self.max_chars], found, "truncate")
        return Verdict(text, found, self.action)


_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")


def caller_placeholders(texts: Iterable[str]) -> set[str]:
    """The placeholders that appear in ``texts`` (the caller's own messages)."""
    return {m.group(0) for text in texts for m in _PLACEHOLDER.finditer(text)}


def restore(text: str, originals: Mapping[str, str], allowed: set[str]) -> str:
    """``text`` with each placeholder in ``allowed`` replaced by its original: only
    those that came from the caller's own input go back, never what output
    redaction hid (which the caller never gave)."""

    def back(match: re.Match[str]) -> str:
        placeholder = match.group(0)
        if placeholder in allowed and placeholder in originals:
            return originals[placeholder]
        return placeholder

    return _PLACEHOLDER.sub(back, text)
