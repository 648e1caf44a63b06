"""The original Astromesh examples that use ``plan_and_execute`` run end to end:
role-router-demo (a model per role) and support-agent, each loaded by the real
loader with only what astromesh-ray refuses replaced, against scripted models."""

from __future__ import annotations

import json
from pathlib import Path

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import (
    ModelCall,
    PlannedTask,
    PlanStep,
    RunFinished,
    RunResult,
    TaskStep,
)
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.spec import AgentSpec, ModelEndpoint, load_agent
from astromesh_ray.testing import ScriptedProvider

ORIGINAL = Path(__file__).parents[1] / "spec" / "data" / "original"

PLAN = {
    "steps": [
        {"id": "facts", "task": "Find what the customer's plan includes"},
        {"id": "reply", "task": "Draft the reply", "depends_on": ["facts"]},
    ]
}
FACTS = "The Pro plan includes priority support and 50 GB."
DRAFT = "Draft: your Pro plan has priority support and 50 GB."
ANSWER = "Your Pro plan includes priority support and 50 GB of storage."
QUERY = "What does my Pro plan include?"


def copy_original(tmp_path: Path, name: str, edits: list[tuple[str, str]]) -> AgentSpec:
    """``name`` from the originals with each ``(old, new)`` edit (each must match
    once), written to ``tmp_path`` and loaded by the real loader."""
    text = (ORIGINAL / name).read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} must occur once in {name}"
        text = text.replace(old, new)
    (tmp_path / name).write_text(text, encoding="utf-8")
    return load_agent(tmp_path / name)


def role_router_demo(tmp_path: Path) -> AgentSpec:
    # The planner's candidate has `source: litellm`, refused as a foreign provider
    # (test_spec_originals.py pins that refusal).  A LiteLLM proxy speaks the OpenAI
    # API, so the same candidate is written as openai_compat against such a proxy;
    # its model and api_key_env stay.  Everything else, roles.worker included (the
    # executor runs on it: `prepared` in core/build.py), is as the original ships it.
    return copy_original(
        tmp_path,
        "role-router-demo.agent.yaml",
        [
            (
                '{source: litellm, model: "anthropic/claude-opus-4-8", '
                "api_key_env: ANTHROPIC_API_KEY}",
                '{source: openai_compat, model: "anthropic/claude-opus-4-8", '
                'endpoint: "http://localhost:4000/v1", api_key_env: ANTHROPIC_API_KEY}',
            )
        ],
    )


def support_agent(tmp_path: Path) -> AgentSpec:
    # As the original ships it: its guardrails (pii_detection on input and output,
    # cost_limit) run; its sqlite memory with the summary strategy lives in the tmp
    # data directory.
    return copy_original(tmp_path, "support-agent.agent.yaml", [])


def _kind(request: CompletionRequest) -> str:
    """Which pattern role a request is for, from the prompt the pattern wrote."""
    last = request.messages[-1].content or ""
    if last.startswith("Write a plan"):
        return "planner"
    if last.startswith("Answer the user's message above from the results"):
        return "synthesizer"
    assert last.startswith("You carry out one step of a plan"), last
    return "executor"


def planner(request: CompletionRequest) -> str:
    assert _kind(request) == "planner"
    assert request.tools == [] and request.response_schema is not None
    assert any(m.content == QUERY for m in request.messages)
    return json.dumps(PLAN)


def executor(request: CompletionRequest) -> str:
    assert _kind(request) == "executor"
    step = request.messages[-1].content or ""
    if step.endswith("Your step: Find what the customer's plan includes"):
        return FACTS
    # The dependent step reads the result of the one it depends on.
    assert step.endswith("Your step: Draft the reply") and FACTS in step, step
    return DRAFT


def synthesizer(request: CompletionRequest) -> str:
    assert _kind(request) == "synthesizer"
    results = request.messages[-1].content or ""
    assert FACTS in results and DRAFT in results
    return ANSWER


async def run_streamed(local: LocalAgents, name: str) -> tuple[RunResult, list[ModelCall]]:
    calls: list[ModelCall] = []
    result: RunResult | None = None
    try:
        runtime = await local.runtime(name)
        async for event in runtime.stream(RunRequest(query=QUERY, session_id="s1")):
            if isinstance(event, ModelCall):
                calls.append(event)
            elif isinstance(event, RunFinished):
                result = event.result
    finally:
        await local.aclose()
    assert result is not None
    return result, calls


def assert_plan_and_tasks(result: RunResult) -> None:
    assert result.answer == ANSWER
    plans = [s for s in result.steps if isinstance(s, PlanStep)]
    assert len(plans) == 1 and plans[0].attempt == 1
    assert plans[0].steps == [
        PlannedTask(id="facts", task="Find what the customer's plan includes"),
        PlannedTask(id="reply", task="Draft the reply", depends_on=["facts"]),
    ]
    tasks = [s for s in result.steps if isinstance(s, TaskStep)]
    assert [(t.name, t.kind, t.output, t.is_error) for t in tasks] == [
        ("facts", "plan_step", FACTS, False),
        ("reply", "plan_step", DRAFT, False),
    ]
    assert result.steps[0].type == "plan" and result.steps[-1].type == "answer"
    assert result.usage.calls == 4


async def test_role_router_demo_runs_each_role_on_its_model(tmp_path: Path) -> None:
    agent = role_router_demo(tmp_path)
    # roles.worker is used (as the executor): the role check accepts it.
    check_buildable([agent])
    # One scripted client per endpoint, as the YAML routes them: the planner's
    # candidate, the worker role's (no endpoint) and the default one.
    models = {
        "planner": ScriptedProvider([planner], name="planner-model"),
        "worker": ScriptedProvider([executor, executor], name="worker-model"),
        "default": ScriptedProvider([synthesizer], name="default-model"),
    }

    def make_provider(endpoint: ModelEndpoint) -> Provider:
        if endpoint.model == "anthropic/claude-opus-4-8":
            assert endpoint.provider == "openai"  # openai_compat is its alias
            return models["planner"]
        assert (endpoint.provider, endpoint.model) == ("ollama", "llama3.1:8b")
        return models["default" if endpoint.endpoint else "worker"]

    local = LocalAgents(
        {agent.name: agent},
        make_provider=make_provider,
        memory=default_memory_factory(tmp_path / "data"),
    )
    result, calls = await run_streamed(local, "role-router-demo")
    assert_plan_and_tasks(result)
    assert [(c.role, c.provider) for c in calls] == [
        ("planner", "planner-model"),
        ("executor", "worker-model"),
        ("executor", "worker-model"),
        ("synthesizer", "default-model"),
    ]
    assert [c.task for c in calls] == [None, "facts", "reply", None]


async def test_support_agent_plans_executes_and_answers(tmp_path: Path) -> None:
    agent = support_agent(tmp_path)
    assert agent.spec.guardrails is not None
    memory = agent.spec.memory
    assert memory is not None and memory.conversational is not None
    assert (memory.conversational.backend, memory.conversational.strategy) == ("sqlite", "summary")
    check_buildable([agent])
    model = ScriptedProvider([planner, executor, executor, synthesizer], name="ollama")
    local = LocalAgents(
        {agent.name: agent},
        scripted={agent.name: model},
        memory=default_memory_factory(tmp_path / "data"),
    )
    result, calls = await run_streamed(local, "support-agent")
    assert_plan_and_tasks(result)
    assert [c.role for c in calls] == ["planner", "executor", "executor", "synthesizer"]
    # Every task of the plan saw the support agent's own system prompt.
    system = (agent.spec.prompts.system or "").strip()
    executor_requests = [r for r in model.requests if _kind(r) == "executor"]
    assert len(executor_requests) == 2
    assert all((r.messages[0].content or "").strip() == system for r in executor_requests)
    # The turn's transcript (what sqlite memory saved) ends with the answer.
    assert result.messages[-1].role == "assistant" and result.messages[-1].content == ANSWER
