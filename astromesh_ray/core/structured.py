"""Structured output: the final answer as a validated object (``spec.output_schema``).

The pattern's final model call is already decoded under the schema where the
provider can (``ModelStep(output_schema=...)``: OpenAI ``response_format``, Ollama
``format``, the llama.cpp grammar, vLLM guided JSON, the TGI grammar).  This step,
run once the pattern answered, parses and validates the answer; when it does not
match (a provider without constrained decoding, or a model that answered after
tool calls), the model is asked once more, with the validation error, under the
schema and without tools (that call is not streamed: a streaming client reads the
valid answer and ``data`` in ``run_finished``).  A second miss fails the run
(``invalid_output``).  The parsed object is the result's ``data``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.messages import Message
from astromesh_ray.core.steps import ModelStep, record_answer
from astromesh_ray.errors import RunError

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_structured(text: str, validator: Draft202012Validator) -> tuple[Any, str | None]:
    """The object ``text`` holds, and ``None``; or ``None`` and what is wrong with it."""
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"the answer is not JSON ({exc.msg} at character {exc.pos})"
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(the answer)"
        return None, f"{where}: {first.message}"
    return data, None


class StructuredAnswer:
    """Validate (and once re-ask) the final answer against the output schema."""

    name = "output_schema"

    def __init__(self, schema: Mapping[str, Any], role: str) -> None:
        self.schema = dict(schema)
        self.role = role
        self.validator = Draft202012Validator(self.schema)

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        data, problem = parse_structured(state.answer or "", self.validator)
        if problem is None:
            state.data = data
            return
        if ctx.iterations_left(state) <= 0:
            raise self._invalid(ctx, problem, asked_again=False)
        # The correction is for this call only, and not streamed: the transcript (what
        # memory saves) ends with the valid answer in place of the invalid one.
        messages = [
            *state.messages,
            Message(
                role="user",
                content=f"Your answer does not match the required JSON Schema: {problem}. "
                "Answer again with only a JSON value matching this schema:\n"
                + json.dumps(self.schema),
            ),
        ]
        step = ModelStep(
            ctx,
            state,
            role=self.role,
            messages=messages,
            tools=False,
            output_schema=self.schema,
            stream=False,
        )
        async for event in step:
            yield event
        if state.messages and state.messages[-1].role == "assistant":
            state.messages.pop()  # the invalid answer, replaced
        yield record_answer(state, step)
        data, problem = parse_structured(state.answer or "", self.validator)
        if problem is not None:
            raise self._invalid(ctx, problem, asked_again=True)
        state.data = data

    def _invalid(self, ctx: RunContext, problem: str, *, asked_again: bool) -> RunError:
        return RunError(
            f"agent {ctx.agent!r} answered outside spec.output_schema: {problem}"
            + (" (after being asked again with the error)" if asked_again else ""),
            hint="use a model that follows JSON Schemas (or one whose provider decodes "
            "under them), or loosen spec.output_schema",
            run_id=ctx.run_id,
            reason="invalid_output",
        )
