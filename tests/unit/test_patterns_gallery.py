"""The gallery in ``patterns/``: every example loads with the real loader, and each
top-level pattern agent (``patterns/<pattern>.agent.yaml``) runs a turn end to end
in this process, its workers and members included, against scripted models.

Where tasks or sub-runs run at the same time (plan steps, fan-out branches, a
supervisor's two workers), the order of the model calls is not fixed: those agents'
scripts repeat one callable that answers by looking at the request, so the number of
calls is still pinned but not their order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunResult, TaskStep, ToolStep
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.patterns import PATTERNS
from astromesh_ray.spec import AgentSpec, load_config
from astromesh_ray.testing import ScriptedProvider
from astromesh_ray.testing.scripted import Answer

GALLERY = Path(__file__).resolve().parents[2] / "patterns"


@pytest.fixture(scope="module")
def agents() -> dict[str, AgentSpec]:
    return load_config(agents_dir=GALLERY).agents


def top_level(agents: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
    """The pattern agents: ``patterns/<pattern>.agent.yaml``, by pattern."""
    found = {}
    for agent in agents.values():
        assert agent.source is not None
        name = Path(agent.source).name.removesuffix(".agent.yaml")
        if name in PATTERNS:
            found[name] = agent
    return found


def test_every_pattern_has_one_gallery_agent(agents: dict[str, AgentSpec]) -> None:
    pattern_agents = top_level(agents)
    assert set(pattern_agents) == set(PATTERNS)
    for pattern, agent in pattern_agents.items():
        assert agent.spec.orchestration.pattern == pattern
    # Every file is one agent, and its workers, members and agent stages are there too.
    assert len(agents) == len(list(GALLERY.glob("*.agent.yaml")))
    check_buildable(agents.values())


def dispatch(route: Callable[[CompletionRequest], Answer], calls: int) -> ScriptedProvider:
    """``calls`` steps, each answered by ``route`` (for concurrent callers)."""
    return ScriptedProvider([route] * calls)


def last_text(request: CompletionRequest) -> str:
    return request.messages[-1].content or ""


@pytest.fixture
async def gallery(agents: dict[str, AgentSpec]) -> AsyncIterator[Callable[..., LocalAgents]]:
    built: list[LocalAgents] = []

    def make(**scripted: ScriptedProvider) -> LocalAgents:
        la = LocalAgents(agents, scripted=scripted)
        built.append(la)
        return la

    yield make
    for la in built:
        await la.aclose()


async def run(la: LocalAgents, name: str, query: str) -> RunResult:
    return await (await la.runtime(name)).run(RunRequest(query=query))


def step_types(result: RunResult) -> list[str]:
    return [step.type for step in result.steps]


def tasks(result: RunResult) -> dict[str, TaskStep]:
    return {s.name: s for s in result.steps if isinstance(s, TaskStep)}


# -- react ---------------------------------------------------------------------------------


async def test_react_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    model = ScriptedProvider(
        [ToolCall("c1", "calculator", {"expression": "2**16 - 1"}), "2**16 - 1 is 65535."]
    )
    result = await run(gallery(**{"react-demo": model}), "react-demo", "What is 2**16 - 1?")
    assert result.answer == "2**16 - 1 is 65535."
    assert step_types(result) == ["tool_call", "answer"]
    assert isinstance(result.steps[0], ToolStep) and result.steps[0].result == "65535"


# -- plan_and_execute ----------------------------------------------------------------------

PLAN = (
    '{"steps": ['
    '{"id": "rate", "task": "The error rate in percent: 3600 / 1200000 * 100", '
    '"tool": "calculator", "depends_on": []}, '
    '{"id": "budget", "task": "The error budget of a 99.9% SLO in percent: 100 - 99.9", '
    '"tool": "calculator", "depends_on": []}, '
    '{"id": "check", "task": "Check that the error rate is within the error budget", '
    '"worker": "fact-checker", "depends_on": ["rate", "budget"]}]}'
)
PLANNER_ANSWER = "No: 0.3% of requests failed, three times the 0.1% a 99.9% SLO allows."


async def test_plan_and_execute_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    def planner(request: CompletionRequest) -> Answer:
        text = last_text(request)
        if text.startswith("Write a plan"):
            assert "- calculator:" in text and "- fact-checker" in text
            return PLAN
        if text.startswith("Answer the user's message above from the results"):
            assert "## rate\nThe error rate is 0.3%." in text
            assert "## budget\nThe error budget is 0.1%." in text
            assert "## check\nNot confirmed" in text
            return PLANNER_ANSWER
        # The two calculator steps, at the same time: each its own small loop.
        step = request.messages[1].content or ""
        assert request.messages[0].role == "system" and [t.name for t in request.tools] == [
            "calculator"
        ]
        if "Your step: The error rate" in step:
            if request.messages[-1].role == "tool":
                assert request.messages[-1].content == "0.3"
                return "The error rate is 0.3%."
            return ToolCall("r1", "calculator", {"expression": "3600 / 1200000 * 100"})
        assert "Your step: The error budget" in step
        if request.messages[-1].role == "tool":
            return "The error budget is 0.1%."
        return ToolCall("b1", "calculator", {"expression": "100 - 99.9"})

    def checker(request: CompletionRequest) -> Answer:
        if request.messages[-1].role == "tool":
            return "Not confirmed: 0.3% is above the 0.1% budget."
        # The worker step reads the results of the steps it depends on.
        text = last_text(request)
        assert "Result of step rate" in text and "The error rate is 0.3%." in text
        assert "Result of step budget" in text
        return ToolCall("k1", "calculator", {"expression": "0.3 / 0.1"})

    planner_model = dispatch(planner, 6)  # plan, 2 x 2 step calls, synthesis
    checker_model = dispatch(checker, 2)
    la = gallery(**{"research-planner": planner_model, "fact-checker": checker_model})
    result = await run(
        la,
        "research-planner",
        "Our API served 1,200,000 requests last week with 3,600 errors: is that within "
        "a 99.9% SLO?",
    )
    assert result.answer == PLANNER_ANSWER
    # The plan, the two calculator steps (each a tool call, then the task), the
    # worker's step, the answer; the two concurrent steps end in either order.
    assert step_types(result) == [
        "plan",
        "tool_call",
        "task",
        "tool_call",
        "task",
        "task",
        "answer",
    ]
    done = tasks(result)
    assert set(done) == {"rate", "budget", "check"}
    assert {s.kind for s in done.values()} == {"plan_step"}
    assert done["check"].sub_run_id is not None and done["check"].iterations == 2
    assert result.iterations == 8 and result.usage.calls == 8


# -- parallel_fan_out ----------------------------------------------------------------------

REVIEW_ANSWER = "Adopt it for staging first: strong tooling, some lock-in, about $6,480 a year."


async def test_parallel_fan_out_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    def route(request: CompletionRequest) -> Answer:
        text = last_text(request)
        if text.startswith("Answer the user's message above by merging"):
            assert "## strengths: " in text and "Managed backups and PITR." in text
            assert "## risks: " in text and "Proprietary extensions lock you in." in text
            assert "## costs: " in text and "About $6,480 a year." in text
            return REVIEW_ANSWER
        part = request.messages[1].content or ""
        assert "Acme Cloud's managed Postgres" in part
        if "Your part: The main strengths" in part:
            return "Managed backups and PITR."
        if "Your part: The main risks" in part:
            return "Proprietary extensions lock you in."
        assert "Your part: The yearly cost" in part
        if request.messages[-1].role == "tool":
            assert request.messages[-1].content == "6480"
            return "About $6,480 a year."
        return ToolCall("c1", "calculator", {"expression": "3 * 12 * 180"})

    model = dispatch(route, 5)  # three branches (one with a tool call), the synthesis
    la = gallery(**{"vendor-review": model})
    result = await run(la, "vendor-review", "Acme Cloud's managed Postgres")
    assert result.answer == REVIEW_ANSWER
    assert sorted(step_types(result)) == sorted(["tool_call", "task", "task", "task", "answer"])
    assert step_types(result)[-1] == "answer"
    branches = tasks(result)
    assert set(branches) == {"strengths", "risks", "costs"}
    assert {s.kind for s in branches.values()} == {"branch"}
    assert branches["costs"].iterations == 2 and branches["costs"].output == "About $6,480 a year."
    assert all("pid" in s.where for s in branches.values())


# -- pipeline ------------------------------------------------------------------------------

INCIDENT = "checkout-api: 1,250 of 25,000 requests failed between 09:00 and 09:15 UTC"
UPDATE = "checkout-api is failing 5% of requests since 09:00 UTC (SEV1); we are on it."


async def test_pipeline_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    def extract(request: CompletionRequest) -> Answer:
        assert INCIDENT in last_text(request) and "error rate in percent" in last_text(request)
        return "1250 / 25000 * 100\n"  # the tool stage's arguments trim it

    def update(request: CompletionRequest) -> Answer:
        text = last_text(request)
        assert INCIDENT in text and "Severity assessment: SEV1: 5.0% is at the threshold." in text
        return UPDATE

    def classify(request: CompletionRequest) -> Answer:
        assert last_text(request) == "5.0"  # the calculator stage's output
        return "SEV1: 5.0% is at the threshold."

    la = gallery(
        **{
            "incident-pipeline": ScriptedProvider([extract, update]),
            "severity-classifier": ScriptedProvider([classify]),
        }
    )
    result = await run(la, "incident-pipeline", INCIDENT)
    assert result.answer == UPDATE
    # One task step per stage; the tool stage's call is recorded as a tool_call step.
    assert step_types(result) == ["task", "tool_call", "task", "task", "task", "answer"]
    stages = tasks(result)
    assert list(stages) == ["extract", "error_rate", "severity", "update"]
    assert [s.output for s in stages.values()] == [
        "1250 / 25000 * 100\n",
        "5.0",
        "SEV1: 5.0% is at the threshold.",
        UPDATE,
    ]
    assert {s.kind for s in stages.values()} == {"stage"}
    assert stages["severity"].sub_run_id is not None
    spans = {s.span_id: s for s in result.trace}
    (tool,) = [s for s in result.trace if s.name == "tool_call"]
    assert spans[tool.parent_id or ""].attributes["stage"] == "error_rate"


# -- supervisor ----------------------------------------------------------------------------

TRIAGE_ANSWER = "The 09:00 deploy made p99 latency 8x slower: roll it back now, then investigate."


async def test_supervisor_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    delegate = [
        ToolCall("w1", "log-analyst", {"query": "How much did p99 grow: 300 ms to 2400 ms?"}),
        ToolCall("w2", "runbook-advisor", {"query": "Latency regression right after a deploy"}),
    ]

    def first(request: CompletionRequest) -> Answer:
        assert {t.name for t in request.tools} == {"log-analyst", "runbook-advisor"}
        return delegate

    def decide(request: CompletionRequest) -> Answer:
        results = {m.tool_call_id: m.content for m in request.messages if m.role == "tool"}
        assert results == {
            "w1": "p99 latency grew 8x at 09:05.",
            "w2": "Roll the deploy back, then investigate.",
        }
        return TRIAGE_ANSWER

    def analyst(request: CompletionRequest) -> Answer:
        if request.messages[-1].role == "tool":
            assert request.messages[-1].content == "8.0"
            return "p99 latency grew 8x at 09:05."
        assert last_text(request) == "How much did p99 grow: 300 ms to 2400 ms?"
        return ToolCall("a1", "calculator", {"expression": "2400 / 300"})

    la = gallery(
        **{
            "triage-supervisor": ScriptedProvider([first, decide]),
            "log-analyst": ScriptedProvider([analyst, analyst]),
            "runbook-advisor": ScriptedProvider(["Roll the deploy back, then investigate."]),
        }
    )
    result = await run(
        la,
        "triage-supervisor",
        "Checkout p99 latency went from 300 ms to 2.4 s at 09:05, right after the 09:00 "
        "deploy. What happened and what do we do?",
    )
    assert result.answer == TRIAGE_ANSWER
    assert step_types(result) == ["tool_call", "tool_call", "answer"]
    calls = [s for s in result.steps if isinstance(s, ToolStep)]
    assert [c.tool for c in calls] == ["log-analyst", "runbook-advisor"]
    assert all(c.sub_run_id is not None and not c.is_error for c in calls)
    assert result.iterations == 5  # 2 of the supervisor, 2 + 1 of its workers


# -- swarm ---------------------------------------------------------------------------------

REFUND = "You will be refunded the duplicate $49 March charge within 5 business days."


async def test_swarm_gallery_agent(gallery: Callable[..., LocalAgents]) -> None:
    def front(request: CompletionRequest) -> Answer:
        assert "transfer_to_billing_desk" in {t.name for t in request.tools}
        return ToolCall("h1", "transfer_to_billing_desk", {"reason": "a double charge"})

    def billing(request: CompletionRequest) -> Answer:
        if request.messages[-1].tool_call_id == "b1":
            assert request.messages[-1].content == "49"
            return REFUND
        # The conversation so far came along: the user's message, the handoff.
        assert any("charged twice" in (m.content or "") for m in request.messages)
        assert "transfer_to_front_desk" in {t.name for t in request.tools}
        return ToolCall("b1", "calculator", {"expression": "2 * 49 - 49"})

    la = gallery(
        **{
            "support-swarm": ScriptedProvider([]),  # members answer with their own models
            "front-desk": ScriptedProvider([front]),
            "billing-desk": ScriptedProvider([billing, billing]),
        }
    )
    result = await run(la, "support-swarm", "I was charged twice for my March invoice of $49.")
    assert result.answer == REFUND
    assert step_types(result) == ["tool_call", "handoff", "tool_call", "answer"]
    handoff, refund = result.steps[1], result.steps[2]
    assert handoff.type == "handoff" and handoff.to_agent == "billing-desk"
    assert isinstance(refund, ToolStep) and refund.task == "billing-desk"
    assert result.iterations == 3
