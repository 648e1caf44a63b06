"""The original Astromesh's example agents with client tools (autolink-parts,
sales-qualifier, verbatim upstream files): their tool and permission blocks load
without a refusal, and a turn that calls a client tool pauses for the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from astromesh_ray.core.build import build_runtime, check_buildable
from astromesh_ray.core.context import Caller, RunRequest
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.runs import ToolDecision
from astromesh_ray.spec import AgentSpec
from astromesh_ray.spec.support import check_support
from astromesh_ray.testing import ScriptedProvider

ORIGINAL = Path(__file__).parents[1] / "spec" / "data" / "original"

# Blocks other tests cover (guardrails, structured output, chains); memory backends
# that need servers are left out of unit tests.
ELSEWHERE = ("guardrails", "output_schema", "chain", "memory")


def _load(name: str) -> tuple[AgentSpec, list[Any]]:
    data = yaml.safe_load((ORIGINAL / name).read_text(encoding="utf-8"))
    issues = check_support(AgentSpec.model_validate(data))
    for key in ELSEWHERE:
        data["spec"].pop(key, None)
    return AgentSpec.model_validate(data), issues


@pytest.mark.parametrize(
    ("name", "tool", "arguments"),
    [
        (
            "autolink-parts.agent.yaml",
            "search_parts",
            {"vehicle_make": "Fiat", "vehicle_year": 2015, "part_type": "brake pads"},
        ),
        ("sales-qualifier.agent.yaml", "lookup_company", {"company_name": "Acme"}),
    ],
)
async def test_upstream_client_tools_pause_for_the_caller(
    name: str, tool: str, arguments: dict[str, Any], tmp_path: Path
) -> None:
    agent, issues = _load(name)
    assert not [i for i in issues if i.path[:2] in (("spec", "tools"), ("spec", "permissions"))]
    check_buildable([agent])
    declared = next(t for t in agent.spec.tools if t.name == tool)

    def offered(req: CompletionRequest) -> ToolCall:
        schema = next(t for t in req.tools if t.name == tool)
        assert schema.description == declared.description
        assert schema.parameters == declared.json_schema()
        return ToolCall("c1", tool, arguments)

    model = ScriptedProvider([offered, "Thanks, here is what I found."])
    memory = default_memory_factory(tmp_path)
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        paused = await runtime.run(RunRequest(query="hello"))
        assert paused.status == "requires_action"
        assert [(p.name, p.arguments, p.kind) for p in paused.pending] == [
            (tool, arguments, "client")
        ]
        done = await runtime.resume(
            paused.run_id, [ToolDecision("c1", "result", '{"found": true}')], Caller()
        )
        assert done.answer == "Thanks, here is what I found."
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_client_tool_arguments_are_validated_before_pausing(tmp_path: Path) -> None:
    agent, _ = _load("autolink-parts.agent.yaml")

    def corrected(req: CompletionRequest) -> ToolCall:
        content = req.messages[-1].content or ""
        assert "invalid arguments for tool 'search_parts'" in content
        assert "vehicle_year" in content
        return ToolCall("c2", "search_parts", {"vehicle_year": 2015})

    model = ScriptedProvider([ToolCall("c1", "search_parts", {"vehicle_year": "old"}), corrected])
    memory = default_memory_factory(tmp_path)
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        paused = await runtime.run(RunRequest(query="parts"))
        assert [p.id for p in paused.pending] == ["c2"]  # the bad call never paused
    finally:
        await runtime.aclose()
        await memory.aclose()
