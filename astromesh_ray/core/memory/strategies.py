"""What the model sees of a session's history: one small class per strategy.

- ``SlidingWindow``: the last ``max_turns`` turns.
- ``TokenBudget``: the newest whole turns whose tokens fit ``max_tokens``.  Each
  turn's size is counted once, when it is stored (``meta.tokens``), with the model's
  own tokenizer where the provider has one (``core/memory/tokens.py``), else the
  documented estimate.
- ``RunningSummary``: a summary of older turns, plus the turns after it verbatim.
  When more than ``max_turns`` turns are not yet in the summary, the oldest of them
  are folded in (the newest half of ``max_turns`` stays verbatim): the summariser
  model gets the previous summary and only the turns being folded (at most
  ``2 * max_turns`` at a time), never the whole history again, and the store keeps
  the summary only if it folds more turns than the stored one (so concurrent
  replicas never move it back).  One fold per session runs at a time in a process.

Every strategy replays whole turns only (a tool result is never separated from the
call that asked for it), and ``max_messages`` drops the oldest whole turns to fit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from astromesh_ray.core.memory.base import (
    ConversationStore,
    History,
    SessionKey,
    StoredTurn,
    Summary,
)
from astromesh_ray.core.messages import CompletionRequest, Message, Usage

if TYPE_CHECKING:
    from astromesh_ray.core.memory.tokens import TokenCounter
    from astromesh_ray.core.providers.base import Provider
    from astromesh_ray.core.trace import Trace


@dataclass(frozen=True, slots=True)
class Replay:
    """The part of a history a turn is given: ``messages`` (whole turns, oldest
    first) and the running summary of what came before them."""

    messages: list[Message]
    summary: str | None = None
    turns: int = 0


class HistoryStrategy(Protocol):
    """Chooses what of a session's history a turn replays, and keeps what it needs
    up to date after a turn is stored."""

    name: str

    async def load(self, store: ConversationStore, key: SessionKey) -> Replay: ...

    async def turn_meta(self, messages: Sequence[Message]) -> dict[str, int]:
        """What the strategy stores with a new turn (``token_budget``: its size)."""
        ...

    async def after_append(
        self, store: ConversationStore, key: SessionKey, summarizer: Summarizer | None
    ) -> Usage:
        """Work after a turn was stored (the summary fold); returns the model usage."""
        ...


def _cap_messages(turns: Sequence[StoredTurn], max_messages: int | None) -> list[StoredTurn]:
    """The newest whole turns holding at most ``max_messages`` messages."""
    if max_messages is None:
        return list(turns)
    kept: list[StoredTurn] = []
    used = 0
    for turn in reversed(turns):
        if used + len(turn.messages) > max_messages:
            break
        kept.append(turn)
        used += len(turn.messages)
    kept.reverse()
    return kept


def _replay(turns: Sequence[StoredTurn], summary: Summary | None = None) -> Replay:
    return Replay(
        messages=[m for t in turns for m in t.messages],
        summary=summary.text if summary else None,
        turns=len(turns),
    )


class SlidingWindow:
    """The last ``max_turns`` turns."""

    name = "sliding_window"

    def __init__(self, max_turns: int, max_messages: int | None = None) -> None:
        self.max_turns = max_turns
        self.max_messages = max_messages

    async def load(self, store: ConversationStore, key: SessionKey) -> Replay:
        history = await store.history(key, last=self.max_turns)
        return _replay(_cap_messages(history.turns, self.max_messages))

    async def turn_meta(self, messages: Sequence[Message]) -> dict[str, int]:
        return {}

    async def after_append(
        self, store: ConversationStore, key: SessionKey, summarizer: Summarizer | None
    ) -> Usage:
        return Usage()


def message_text(message: Message) -> str:
    """What of a message a tokenizer sees: its content and its tool calls."""
    parts = [message.content or ""]
    parts += [f"{c.name}({json.dumps(c.arguments, sort_keys=True)})" for c in message.tool_calls]
    return "\n".join(p for p in parts if p)


# Tokens a chat template adds around each message (role markers, separators): the
# common ChatML-style overhead, added to what the tokenizer counts of the text.
MESSAGE_OVERHEAD_TOKENS = 4


class TokenBudget:
    """The newest whole turns that fit in ``max_tokens`` (at most ``max_turns``)."""

    name = "token_budget"

    def __init__(
        self,
        max_tokens: int,
        counter: TokenCounter,
        *,
        max_turns: int,
        max_messages: int | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.counter = counter
        self.max_turns = max_turns
        self.max_messages = max_messages

    async def count(self, messages: Sequence[Message]) -> int:
        """Tokens of a turn's messages, chat-template overhead included."""
        counts = await self.counter.count([message_text(m) for m in messages])
        return sum(counts) + MESSAGE_OVERHEAD_TOKENS * len(messages)

    async def load(self, store: ConversationStore, key: SessionKey) -> Replay:
        history = await store.history(key, last=self.max_turns)
        turns = _cap_messages(history.turns, self.max_messages)
        # Turns stored before this strategy was chosen have no count yet.
        unknown = [t for t in turns if not isinstance(t.meta.get("tokens"), int)]
        counted = {t.seq: await self.count(t.messages) for t in unknown}
        kept: list[StoredTurn] = []
        used = 0
        for turn in reversed(turns):
            tokens = counted.get(turn.seq, turn.meta.get("tokens", 0))
            assert isinstance(tokens, int)
            if used + tokens > self.max_tokens:
                break
            kept.append(turn)
            used += tokens
        kept.reverse()
        return _replay(kept)

    async def turn_meta(self, messages: Sequence[Message]) -> dict[str, int]:
        return {"tokens": await self.count(messages)}

    async def after_append(
        self, store: ConversationStore, key: SessionKey, summarizer: Summarizer | None
    ) -> Usage:
        return Usage()


SUMMARY_SYSTEM = (
    "You keep a running summary of a conversation between a user and an assistant. "
    "Given the current summary and the turns that follow it, write the updated "
    "summary: keep every fact, name, number, decision and open question the "
    "assistant may need later; drop pleasantries. Answer with the summary only."
)


@dataclass(frozen=True, slots=True)
class Summarizer:
    """The model that writes summaries (the ``summarizer`` role) and the trace its
    calls are recorded in."""

    model: Provider
    trace: Trace
    parent_span: str | None


def _transcript(turns: Sequence[StoredTurn]) -> str:
    lines = []
    for turn in turns:
        for m in turn.messages:
            text = message_text(m)
            if text:
                who = {"tool": f"Tool {m.name or ''}".strip()}.get(m.role, m.role.capitalize())
                lines.append(f"{who}: {text}")
    return "\n".join(lines)


def _valid(history: History) -> Summary | None:
    """The history's summary, unless it claims turns the session does not have (one
    written for an erased session before its id was used again): never replayed."""
    summary = history.summary
    if summary is None or not history.turns or summary.upto_seq > history.turns[-1].seq:
        return None
    return summary


class RunningSummary:
    """A running summary of older turns plus the newer turns verbatim."""

    name = "summary"

    def __init__(self, max_turns: int, max_messages: int | None = None) -> None:
        self.max_turns = max_turns
        self.keep = max(1, max_turns // 2)
        self.max_messages = max_messages
        self._folding: set[SessionKey] = set()  # sessions being folded in this process

    async def load(self, store: ConversationStore, key: SessionKey) -> Replay:
        # The fold keeps at most max_turns unsummarised turns (a few more while
        # concurrent turns race it): read that window and drop what is summarised.
        history = await store.history(key, last=self.max_turns * 2)
        summary = _valid(history)
        upto = summary.upto_seq if summary else 0
        turns = [t for t in history.turns if t.seq > upto][-self.max_turns :]
        return _replay(_cap_messages(turns, self.max_messages), summary)

    async def turn_meta(self, messages: Sequence[Message]) -> dict[str, int]:
        return {}

    async def after_append(
        self, store: ConversationStore, key: SessionKey, summarizer: Summarizer | None
    ) -> Usage:
        if summarizer is None or key in self._folding:
            # Another turn of this session is folding in this process: it takes these
            # turns too (replicas may still race; the store keeps the furthest fold).
            return Usage()
        self._folding.add(key)
        try:
            return await self._fold(store, key, summarizer)
        finally:
            self._folding.discard(key)

    async def _fold(
        self, store: ConversationStore, key: SessionKey, summarizer: Summarizer
    ) -> Usage:
        first = await store.history(key, last=self.max_turns * 2)
        summary = _valid(first)
        upto = summary.upto_seq if summary else 0
        pending = [t for t in first.turns if t.seq > upto]
        if len(pending) <= self.max_turns:
            return Usage()
        if first.turns[0].seq > upto + 1:
            # The fold fell behind (a summariser failed earlier): older turns wait
            # beyond this window.  Fold from the oldest, at most a window at a time,
            # so one prompt never grows with the backlog; later turns catch up.
            pending = (await store.history(key, after=upto)).turns
        fold = pending[: min(len(pending) - self.keep, self.max_turns * 2)]
        text, usage = await self._summarize(summary, fold, summarizer)
        await store.set_summary(key, Summary(text=text, upto_seq=fold[-1].seq))
        return usage

    async def _summarize(
        self, summary: Summary | None, fold: Sequence[StoredTurn], summarizer: Summarizer
    ) -> tuple[str, Usage]:
        previous = summary.text if summary else "(none yet)"
        prompt = f"Current summary:\n{previous}\n\nTurns to fold in:\n{_transcript(fold)}"
        span = summarizer.trace.start(
            "memory.summarize", summarizer.parent_span, turns=len(fold), upto_seq=fold[-1].seq
        )
        try:
            completion = await summarizer.model.complete(
                CompletionRequest(
                    messages=[
                        Message(role="system", content=SUMMARY_SYSTEM),
                        Message(role="user", content=prompt),
                    ],
                    trace_parent=span.context.traceparent,
                )
            )
        except BaseException as exc:
            span.end(exc)
            raise
        span.set(provider=completion.provider, usage=completion.usage.to_dict())
        span.end()
        return (completion.message.content or previous).strip(), completion.usage
