"""Output guardrails on streamed tokens: nothing redacted or blocked reaches the
client, with as little held back as that allows.

Tokens are buffered per stream (task, model call, role, channel).  Text leaves a
buffer only once ``lookahead`` characters have arrived after it, that look-ahead
being the longest match any output guardrail can have (``GuardChain.lookahead``;
PII: ``PiiDetector.lookahead``, a content pattern: its regex's longest match), so
no match can start in text already sent and end in text still to come:

    pending = "... call me at +44 20 7946 0958 tomorrow and"
              |------- may leave -------|---- look-ahead ----|

The cut is at the last whitespace before the look-ahead (words are never split),
moved back before any finding it would cut through; with no whitespace for
``4 × lookahead`` characters it is made at the look-ahead's edge instead.  What
leaves goes through the whole chain (redacted, recorded); a ``block`` anywhere in
the buffer ends the stream at once with the guardrail's error, so the tokens sent
before it held nothing blocked.  A buffer is flushed whole when its model call
ends.  When a guardrail judges whole texts only (a moderation call, a topic,
``max_length``), the look-ahead is unbounded: the answer is sent when complete.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from astromesh_ray.core.events import Event, Token
from astromesh_ray.core.guardrails.chain import GuardChain

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState

# Text is analysed again only once this much more has arrived past the look-ahead:
# each analysis costs a pass of every guardrail over the buffer.
MIN_EMIT_CHARS = 24
# With no whitespace in this many look-aheads, cut anyway (at the look-ahead's edge).
NO_SPACE_FACTOR = 4

_SPACE = re.compile(r"\s")

BufferKey = tuple[str | None, int, str, str, int | None]


def buffer_key(token: Token) -> BufferKey:
    return (token.task, token.iteration, token.role, token.channel, token.tool_index)


class TokenBuffers:
    """The held-back text of every open token stream of one run."""

    def __init__(
        self,
        chain: GuardChain,
        ctx: RunContext,
        state: TurnState,
        deliver: Callable[[str], str],
    ) -> None:
        self.chain = chain
        self.ctx = ctx
        self.state = state
        self.deliver = deliver  # clean text -> what the caller gets (restore)
        self._pending: dict[BufferKey, tuple[Token, str]] = {}
        self.streamed_answer = False  # some answer text went through here

    async def push(self, token: Token) -> list[Event]:
        """Take ``token``; return what may be sent now."""
        key = buffer_key(token)
        first, text = self._pending.get(key, (token, ""))
        text += token.text
        if token.channel == "answer":
            self.streamed_answer = True
        lookahead = self.chain.lookahead
        if lookahead is None or len(text) < lookahead + MIN_EMIT_CHARS:
            self._pending[key] = (first, text)
            return []
        cut = await self._cut(text, lookahead)
        self._pending[key] = (first, text[cut:])
        if cut == 0:
            return []
        return await self._emit(first, text[:cut])

    async def end_call(self, task: str | None, iteration: int) -> list[Event]:
        """A model call ended: flush its streams whole."""
        out: list[Event] = []
        for key in [k for k in self._pending if k[0] == task and k[1] == iteration]:
            first, text = self._pending.pop(key)
            out += await self._emit(first, text)
        return out

    async def end(self) -> list[Event]:
        """The run's stream ended: flush everything."""
        out: list[Event] = []
        for key in list(self._pending):
            first, text = self._pending.pop(key)
            out += await self._emit(first, text)
        return out

    async def _cut(self, text: str, lookahead: int) -> int:
        """Where ``text`` may be cut: what comes before may be sent."""
        findings = await self.chain.findings(text, self.ctx, self.state)
        safe = len(text) - lookahead
        cut = 0
        for match in _SPACE.finditer(text, 0, safe):
            cut = match.end()
        if cut == 0 and safe >= NO_SPACE_FACTOR * max(lookahead, 1):
            cut = safe
        moved = True
        while moved:  # never through a finding
            moved = False
            for f in findings:
                if f.start < cut < f.end:
                    cut, moved = f.start, True
        return cut

    async def _emit(self, first: Token, text: str) -> list[Event]:
        if not text:
            return []
        applied = await self.chain.apply(text, self.ctx, self.state)
        out: list[Event] = list(applied.events)
        clean = self.deliver(applied.text)
        if clean:
            out.append(dataclasses.replace(first, text=clean))
        return out
