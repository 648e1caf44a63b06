"""The guardrails in a turn: a prepare stage on the input, an event transformer on
the output (``core/stages.py`` places them).

    guardrails_input  (prepare, first)  the user's message (and the earlier messages
                                        a caller sent as history), before memory
                                        recall, prompts or any model call: redacted
                                        in place (what the model sees and memory
                                        stores), or refused
    guardrails_output (transformer)     streamed tokens (``stream.py``), thought
                                        and answer step events, and the answer,
                                        before anything leaves

A blocked input with a refusal (a topic filter) answers with it and the model is
never called; any other block fails the run with ``guardrail_violation``.  On
output, the answer, the turn's assistant messages and its thought and answer
steps are cleaned the same way, so the transcript memory saves and the reply's
``messages`` and ``steps`` hold nothing the answer may not; with ``restore: true``
the answer the caller gets has its own originals back (``TurnState.delivered``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.events import Event, ModelCall, StepEvent, Token
from astromesh_ray.core.guardrails.chain import GuardChain
from astromesh_ray.core.guardrails.guards import caller_placeholders, placeholder_scope, restore
from astromesh_ray.core.guardrails.stream import TokenBuffers
from astromesh_ray.core.records import AnswerStep, ThoughtStep
from astromesh_ray.core.streams import closing_stream

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState
    from astromesh_ray.core.guardrails.build import GuardrailEnv
    from astromesh_ray.core.stages import StageEnv
    from astromesh_ray.spec import AgentSpec


class InputGuardrails:
    """Runs the input guardrails on the user's message."""

    name = "guardrails_input"

    def __init__(self, chain: GuardChain) -> None:
        self.chain = chain

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        if not ctx.request.lineage:
            # Earlier messages the caller sent (the OpenAI-compatible and AG-UI
            # routes pass a client's conversation as history): the caller's words
            # too, checked the same way before the model sees them.  A sub-run's
            # history comes from its caller's run, already checked.
            history = []
            for message in ctx.request.history:
                if message.content:
                    applied = await self.chain.apply(message.content, ctx, state)
                    state.announce.extend(applied.events)
                    if applied.refusal is not None:
                        state.refusal = applied.refusal
                        return
                    message = dataclasses.replace(message, content=applied.text)
                history.append(message)
            ctx.request.history = history
        applied = await self.chain.apply(ctx.request.query, ctx, state)
        state.announce.extend(applied.events)
        ctx.request.query = applied.text
        if applied.refusal is not None:
            state.refusal = applied.refusal


class OutputGuardrails:
    """Runs the output guardrails on everything the model says."""

    name = "guardrails_output"

    def __init__(self, chain: GuardChain, env: GuardrailEnv, restores: bool) -> None:
        self.chain = chain
        self.env = env
        self.restores = restores

    async def transform(
        self, ctx: RunContext, state: TurnState, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]:
        deliver = await self._deliverer(ctx, state)
        buffers = TokenBuffers(self.chain, ctx, state, deliver)
        cleaned: dict[str, str] = {}  # raw text -> clean, for the transcript
        recorded: set[str] = set()  # raw texts whose actions are recorded already
        async with closing_stream(events) as inner:
            async for event in inner:
                if isinstance(event, Token):
                    for out in await buffers.push(event):
                        yield out
                    continue
                if isinstance(event, ModelCall):
                    for out in await buffers.end_call(event.task, event.iteration):
                        yield out
                elif isinstance(event, StepEvent) and isinstance(
                    event.step, ThoughtStep | AnswerStep
                ):
                    # A streamed answer's actions were recorded piece by piece.
                    quiet = isinstance(event.step, AnswerStep) and buffers.streamed_answer
                    applied = await self.chain.apply(
                        event.step.content, ctx, state, record=not quiet
                    )
                    cleaned[event.step.content] = applied.text
                    recorded.add(event.step.content)
                    for out in applied.events:
                        yield out
                    event = StepEvent(
                        step=dataclasses.replace(event.step, content=deliver(applied.text))
                    )
                yield event
        for out in await buffers.end():
            yield out
        if state.answer is not None:
            # Streamed, or seen as an answer step, the answer's actions are
            # recorded already: its whole text is cleaned again quietly.
            quiet = buffers.streamed_answer or state.answer in recorded
            applied = await self.chain.apply(state.answer, ctx, state, record=not quiet)
            for out in applied.events:
                yield out
            cleaned[state.answer] = applied.text
            state.answer = applied.text
            if self.restores:
                state.delivered = deliver(applied.text)
        await self._clean_transcript(ctx, state, cleaned)

    async def _deliverer(self, ctx: RunContext, state: TurnState) -> Any:
        """What turns clean text into the text the caller gets: itself, or (with
        ``restore``) with the caller's own originals back."""
        if not self.restores:
            return lambda text: text
        originals = await self.env.vault.originals(placeholder_scope(ctx))
        # Only what the caller gave: placeholders of its own messages (this turn's
        # and, with memory, the session's history).
        allowed = caller_placeholders(
            m.content for m in state.messages if m.role == "user" and m.content
        )
        allowed |= caller_placeholders([ctx.request.query])
        return lambda text: restore(text, originals, allowed)

    async def _clean_transcript(
        self, ctx: RunContext, state: TurnState, cleaned: dict[str, str]
    ) -> None:
        async def clean(text: str) -> str:
            if text not in cleaned:
                cleaned[text] = (await self.chain.apply(text, ctx, state, record=False)).text
            return cleaned[text]

        for i in range(state.turn_start, len(state.messages)):
            message = state.messages[i]
            if message.role == "assistant" and message.content:
                state.messages[i] = dataclasses.replace(
                    message, content=await clean(message.content)
                )
        for i, step in enumerate(state.steps):
            if isinstance(step, ThoughtStep | AnswerStep) and step.content:
                state.steps[i] = dataclasses.replace(step, content=await clean(step.content))


def _chain(agent: AgentSpec, env: StageEnv, direction: str) -> GuardChain | None:
    from astromesh_ray.core.guardrails.build import build_chain

    guardrails = agent.spec.guardrails
    if guardrails is None or env.guardrails is None:
        return None
    specs: Sequence[Any] = guardrails.input if direction == "input" else guardrails.output
    chain = build_chain(specs, direction, env.guardrails)
    return chain or None


def input_stage(agent: AgentSpec, env: StageEnv) -> InputGuardrails | None:
    """The input guardrails of ``agent`` (None: it has none)."""
    chain = _chain(agent, env, "input")
    return InputGuardrails(chain) if chain is not None else None


def output_stage(agent: AgentSpec, env: StageEnv) -> OutputGuardrails | None:
    """The output guardrails of ``agent`` (None: it has none)."""
    chain = _chain(agent, env, "output")
    if chain is None:
        return None
    assert env.guardrails is not None
    restores = any(getattr(g, "restore", False) for g in chain.guardrails)
    return OutputGuardrails(chain, env.guardrails, restores)
