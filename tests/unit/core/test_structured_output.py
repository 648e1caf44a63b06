"""``spec.output_schema`` in the run path: the final answer decoded under the schema
where the model runs without tools, validated, asked again once with the error, and
returned as ``RunResult.data``; a second miss fails the run (``invalid_output``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunResult
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.errors import RunError
from astromesh_ray.spec import output_json_schema
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents, local_agents
from .pattern_helpers import stream

SHORTHAND: dict[str, Any] = {
    "score": {"type": "integer"},
    "urgent": {"type": "boolean"},
    "next_action": {"type": "string"},
}
FULL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temp_c": {"type": "number", "minimum": -90, "maximum": 60},
    },
    "required": ["city"],
}
SHORTHAND_AS_SCHEMA = {
    "type": "object",
    "properties": SHORTHAND,
    "required": ["score", "urgent", "next_action"],
    "additionalProperties": False,
}
GOOD = {"score": 9, "urgent": True, "next_action": "call"}


def normal(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """``schema`` with ``required`` sorted (the test helper writes YAML keys sorted)."""
    if schema is None or "required" not in schema:
        return schema
    return {**schema, "required": sorted(schema["required"])}


async def run_agent(
    tmp_path: Path, provider: ScriptedProvider, query: str = "qualify ACME", **spec: Any
) -> RunResult:
    agents = load_agents(tmp_path, agent_yaml("structured", **spec))
    local = local_agents(agents, {"structured": provider})
    try:
        return await (await local.runtime("structured")).run(RunRequest(query=query))
    finally:
        await local.aclose()


def test_shorthand_becomes_an_object_schema_with_every_field_required() -> None:
    assert output_json_schema(SHORTHAND) == SHORTHAND_AS_SCHEMA
    assert output_json_schema(FULL) is FULL  # a full schema is used as given


@pytest.mark.parametrize(
    ("schema", "expected", "answer", "data"),
    [
        (SHORTHAND, SHORTHAND_AS_SCHEMA, json.dumps(GOOD), GOOD),
        (FULL, FULL, '{"city": "Lisbon", "temp_c": 21.5}', {"city": "Lisbon", "temp_c": 21.5}),
    ],
    ids=["shorthand", "full"],
)
async def test_a_valid_first_answer_is_the_data_with_one_model_call(
    tmp_path: Path, schema: dict[str, Any], expected: dict[str, Any], answer: str, data: Any
) -> None:
    def answers(request: CompletionRequest) -> str:
        # No tools: the final call is decoded under the schema (constrained decoding).
        assert request.tools == []
        assert normal(request.response_schema) == normal(expected)
        return answer

    provider = ScriptedProvider([answers])
    result = await run_agent(tmp_path, provider, output_schema=schema)
    assert result.data == data
    assert result.answer == answer
    assert len(provider.requests) == 1 and result.usage.calls == 1
    assert [s.type for s in result.steps] == ["answer"]


async def test_a_fenced_json_answer_is_parsed(tmp_path: Path) -> None:
    fenced = "```json\n" + json.dumps(GOOD, indent=2) + "\n```"
    provider = ScriptedProvider([fenced])
    result = await run_agent(tmp_path, provider, output_schema=SHORTHAND)
    assert result.data == GOOD
    assert len(provider.requests) == 1


async def test_an_invalid_answer_is_asked_again_once_with_the_error(tmp_path: Path) -> None:
    def asked_again(request: CompletionRequest) -> str:
        assert normal(request.response_schema) == normal(SHORTHAND_AS_SCHEMA)
        assert request.tools == []
        last = request.messages[-1]
        assert last.role == "user"
        # The validation error names the field and what is wrong with it.
        assert "score" in (last.content or "") and "'high' is not of type 'integer'" in (
            last.content or ""
        )
        # The model sees its own wrong answer just before.
        assert request.messages[-2].role == "assistant"
        assert '"high"' in (request.messages[-2].content or "")
        return json.dumps(GOOD)

    wrong = json.dumps({**GOOD, "score": "high"})
    provider = ScriptedProvider([wrong, asked_again])
    result = await run_agent(
        tmp_path,
        provider,
        output_schema=SHORTHAND,
        tools=[{"name": "calculator", "type": "builtin"}],
    )
    assert result.data == GOOD
    assert result.answer == json.dumps(GOOD)
    assert result.usage.calls == 2
    assert [s.type for s in result.steps] == ["answer", "answer"]
    # The first call had the tools (and so no schema): only the re-ask was constrained.
    assert provider.requests[0].response_schema is None
    assert [t.name for t in provider.requests[0].tools] == ["calculator"]


async def test_an_invalid_answer_twice_fails_with_invalid_output(tmp_path: Path) -> None:
    provider = ScriptedProvider(
        [
            json.dumps({"score": 9, "urgent": True}),
            json.dumps({"score": 9, "urgent": "yes", "next_action": "call"}),
        ]
    )
    with pytest.raises(RunError) as info:
        await run_agent(tmp_path, provider, output_schema=SHORTHAND)
    error = info.value
    assert error.details["reason"] == "invalid_output"
    # The second answer's problem: the field and its wrong value.
    assert "urgent" in error.message and "'yes' is not of type 'boolean'" in error.message
    assert "asked again" in error.message
    assert len(provider.requests) == 2


async def test_not_json_at_all_names_the_parse_error(tmp_path: Path) -> None:
    provider = ScriptedProvider(["Score: nine", "still not json"])
    with pytest.raises(RunError, match="is not JSON") as info:
        await run_agent(tmp_path, provider, output_schema=SHORTHAND)
    assert info.value.details["reason"] == "invalid_output"


async def test_no_model_call_left_for_the_re_ask_fails_at_once(tmp_path: Path) -> None:
    provider = ScriptedProvider([json.dumps({"score": "high", "urgent": True, "next_action": "x"})])
    with pytest.raises(RunError) as info:
        await run_agent(
            tmp_path,
            provider,
            output_schema=SHORTHAND,
            orchestration={"pattern": "react", "max_iterations": 1},
        )
    assert info.value.details["reason"] == "invalid_output"
    assert "score" in info.value.message
    assert "asked again" not in info.value.message
    assert len(provider.requests) == 1


async def test_react_with_tools_does_not_constrain_tool_using_calls(tmp_path: Path) -> None:
    def first(request: CompletionRequest) -> ToolCall:
        assert request.response_schema is None and [t.name for t in request.tools] == ["calculator"]
        return ToolCall("c1", "calculator", {"expression": "4+5"})

    def answers(request: CompletionRequest) -> str:
        assert request.response_schema is None  # tools are still offered
        assert request.messages[-1].role == "tool" and request.messages[-1].content == "9"
        return json.dumps(GOOD)

    provider = ScriptedProvider([first, answers])
    result = await run_agent(
        tmp_path,
        provider,
        output_schema=SHORTHAND,
        tools=[{"name": "calculator", "type": "builtin"}],
    )
    # Validated after the pattern answered: valid, so no re-ask.
    assert result.data == GOOD
    assert [s.type for s in result.steps] == ["tool_call", "answer"]
    assert len(provider.requests) == 2


def _role_of(request: CompletionRequest) -> str:
    text = request.messages[-1].content or ""
    if text.startswith("Write a plan"):
        return "planner"
    if text.startswith("Answer the user's message above"):
        return "synthesizer"
    return "executor"


async def test_plan_and_execute_synthesizer_is_decoded_under_the_schema(tmp_path: Path) -> None:
    def planner(request: CompletionRequest) -> str:
        assert _role_of(request) == "planner"
        # The plan has its own schema, not the answer's.
        assert request.response_schema is not None and "steps" in request.response_schema.get(
            "properties", {}
        )
        return json.dumps({"steps": [{"id": "s1", "task": "score the lead"}]})

    def executor(request: CompletionRequest) -> str:
        assert _role_of(request) == "executor"
        assert request.response_schema is None
        return "score 9, urgent, call them"

    def synthesizer(request: CompletionRequest) -> str:
        assert _role_of(request) == "synthesizer"
        assert normal(request.response_schema) == normal(SHORTHAND_AS_SCHEMA)
        assert "score 9, urgent, call them" in (request.messages[-1].content or "")
        return json.dumps(GOOD)

    provider = ScriptedProvider([planner, executor, synthesizer])
    result = await run_agent(
        tmp_path,
        provider,
        output_schema=SHORTHAND,
        orchestration={"pattern": "plan_and_execute", "max_iterations": 5},
    )
    assert result.data == GOOD
    assert result.steps[0].type == "plan" and result.steps[-1].type == "answer"


async def test_parallel_fan_out_synthesizer_is_decoded_under_the_schema(tmp_path: Path) -> None:
    def branch(request: CompletionRequest) -> str:
        assert request.response_schema is None
        return "Lisbon is 21.5 C"

    def synthesizer(request: CompletionRequest) -> str:
        assert request.response_schema == FULL
        return '{"city": "Lisbon", "temp_c": 21.5}'

    provider = ScriptedProvider([branch, synthesizer])
    result = await run_agent(
        tmp_path,
        provider,
        output_schema=FULL,
        orchestration={"pattern": "parallel_fan_out", "branches": ["weather in {{ query }}"]},
        query="Lisbon",
    )
    assert result.data == {"city": "Lisbon", "temp_c": 21.5}
    assert len(provider.requests) == 2


async def test_a_streamed_run_validates_too(tmp_path: Path) -> None:
    agents = load_agents(tmp_path, agent_yaml("structured", output_schema=SHORTHAND))
    out = await stream(
        agents,
        {"structured": ScriptedProvider(["not json", json.dumps(GOOD)])},
        "structured",
        "qualify ACME",
    )
    assert out.result is not None and out.result.data == GOOD
    assert out.types.count("step:answer") == 2
    assert out.types.count("model_call") == 2


async def test_data_is_in_the_result_json(tmp_path: Path) -> None:
    result = await run_agent(
        tmp_path, ScriptedProvider([json.dumps(GOOD)]), output_schema=SHORTHAND
    )
    body = result.to_dict()
    assert body["data"] == GOOD
    assert RunResult.from_dict(json.loads(json.dumps(body))).data == GOOD


async def test_without_output_schema_data_is_none_and_nothing_is_constrained(
    tmp_path: Path,
) -> None:
    provider = ScriptedProvider([json.dumps(GOOD)])
    result = await run_agent(tmp_path, provider)
    assert result.data is None and result.to_dict()["data"] is None
    assert provider.requests[0].response_schema is None


async def test_a_plan_and_execute_re_ask_goes_to_the_synthesizer(tmp_path: Path) -> None:
    def asked_again(request: CompletionRequest) -> str:
        assert normal(request.response_schema) == normal(SHORTHAND_AS_SCHEMA)
        assert request.tools == []
        assert "does not match the required JSON Schema" in (request.messages[-1].content or "")
        return json.dumps(GOOD)

    agents = load_agents(
        tmp_path,
        agent_yaml(
            "structured",
            output_schema=SHORTHAND,
            orchestration={"pattern": "plan_and_execute", "max_iterations": 5},
        ),
    )
    provider = ScriptedProvider(
        [
            json.dumps({"steps": [{"id": "s1", "task": "score the lead"}]}),
            "score 9",
            "The lead scores 9: call them now.",  # not JSON
            asked_again,
        ]
    )
    out = await stream(agents, {"structured": provider}, "structured", "qualify ACME")
    assert out.result is not None and out.result.data == GOOD
    roles = [e["role"] for e in out.events if e["type"] == "model_call"]
    assert roles == ["planner", "executor", "synthesizer", "synthesizer"]
