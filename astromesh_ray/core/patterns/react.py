"""ReAct: the model reasons, calls tools natively, reads their results, and repeats
until it answers without a tool call or ``max_iterations`` model calls are spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    Event,
    Message,
    ToolCall,
    Usage,
)
from astromesh_ray.core.patterns.base import Turn
from astromesh_ray.core.tools.base import ToolResult
from astromesh_ray.errors import RunError


class ReActPattern:
    """Thought → tool calls → observations, one model call per iteration."""

    name = "react"
    roles: tuple[str, ...] = ("reasoner",)  # the model roles it asks for (spec.model.roles)

    async def run(self, turn: Turn) -> AsyncIterator[Event]:
        for iteration in range(1, turn.max_iterations + 1):
            completion: Completion | None = None
            with turn.trace.span("model_call", iteration=iteration) as span:
                if turn.stream_tokens:
                    parts: list[CompletionChunk] = []
                    async for chunk in turn.provider.stream(turn.request()):
                        parts.append(chunk)
                        if chunk.text:
                            yield Event("token", {"text": chunk.text, "iteration": iteration})
                    completion = _assemble(parts, turn.provider.name)
                else:
                    completion = await turn.provider.complete(turn.request())
                turn.record_completion(completion, span)
            yield Event("model_call", {"iteration": iteration, **_summary(span)})

            message = completion.message
            if not message.tool_calls:
                turn.answer = message.content or ""
                turn.steps.append(
                    {"type": "answer", "iteration": iteration, "content": turn.answer}
                )
                yield Event("answer", {"text": turn.answer})
                return

            if iteration == turn.max_iterations:
                break  # no model call is left to read the results: don't run the tools
            turn.messages.append(message)
            if message.content:
                turn.steps.append(
                    {"type": "thought", "iteration": iteration, "content": message.content}
                )
            for call in message.tool_calls:
                yield Event("tool_call", {"iteration": iteration, **asdict(call)})
            # Tool calls of one message are independent: run them concurrently, and
            # report them in call order whatever order they finish in.
            results = await asyncio.gather(
                *(self._call(turn, call, iteration) for call in message.tool_calls)
            )
            for call, result in zip(message.tool_calls, results, strict=True):
                turn.steps.append(
                    {
                        "type": "tool_call",
                        "iteration": iteration,
                        "id": call.id,
                        "tool": call.name,
                        "arguments": call.arguments,
                        "result": result.content,
                        "is_error": result.is_error,
                    }
                )
                turn.messages.append(
                    Message(
                        role="tool", content=result.content, tool_call_id=call.id, name=call.name
                    )
                )
                yield Event(
                    "tool_result",
                    {
                        "iteration": iteration,
                        "id": call.id,
                        "name": call.name,
                        "content": result.content,
                        "is_error": result.is_error,
                    },
                )
        raise RunError(
            f"no final answer after max_iterations={turn.max_iterations} model calls",
            hint="raise spec.orchestration.max_iterations, or make the tools answer "
            "what the model needs",
            run_id=turn.run_id,
            step=len(turn.steps),
            reason="max_iterations",
        )

    async def _call(self, turn: Turn, call: ToolCall, iteration: int) -> ToolResult:
        with turn.trace.span("tool_call", tool=call.name, iteration=iteration) as span:
            result, _ = await turn.tools.call(call)
            span["is_error"] = result.is_error
            if result.is_error:
                span["status"] = "error"
        return result


def _assemble(chunks: list[CompletionChunk], provider: str) -> Completion:
    """One ``Completion`` from a stream: text concatenated, tool calls and usage from the chunks."""
    text = "".join(c.text for c in chunks)
    calls = [call for c in chunks for call in c.tool_calls]
    usage = next((c.usage for c in reversed(chunks) if c.usage), None) or Usage(calls=1)
    finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "stop")
    model = next((c.model for c in chunks if c.model), "")
    route = [step for c in chunks for step in c.route]
    location = next((c.location for c in reversed(chunks) if c.location), {})
    return Completion(
        route=route,
        location=dict(location),
        message=Message(role="assistant", content=text or None, tool_calls=calls),
        usage=usage,
        model=model,
        provider=provider,
        finish_reason=finish,
    )


def _summary(span: dict[str, object]) -> dict[str, object]:
    keys = ("provider", "model", "usage", "duration_ms", "where")
    return {k: span[k] for k in keys if k in span}
