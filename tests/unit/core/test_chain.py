"""``spec.chain``: agents run after the turn answered, on its output (original
Astromesh), each a ``chain`` step: run or skipped by ``when``, retried, bounded by
its own timeout, and failing the turn only with ``on_error: fail``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.chain import ChainSteps
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ChainStepRecord, RunResult
from astromesh_ray.core.memory.factory import MemoryDefaults
from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.errors import ConfigError, ProviderError, RunError
from astromesh_ray.spec import AgentSpec, load_agent
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.memory.memory_helpers import WordsFactory

from .engine_helpers import agent_yaml, load_agents, local_agents
from .pattern_helpers import SlowProvider, stream

ORIGINAL = Path(__file__).parents[1] / "spec" / "data" / "original"
HOT = {"score": 9, "urgent": True, "next_action": "call"}
LEAD = "Lead: ACME Corp, budget approved, the CTO asks, needs it this quarter."
EMAIL = "Hola, ¿cuándo podemos hablar?"


def down(message: str = "composer model down") -> ProviderError:
    # A fresh error per scripted step: a failed run attaches its trace to the error
    # it raises, so one instance raised twice would carry the first run's spans.
    return ProviderError(message, provider="x", status=503)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the original"
    return text.replace(old, new)


def sales_agents(tmp_path: Path) -> dict[str, AgentSpec]:
    """sales-qualifier and email-composer as the original ships them, loaded by the
    real loader, with only what cannot run here replaced (in a tmp copy):

    - its guardrails (pii_detection, max_length, cost_limit) stay and run;
    - ``memory.conversational.backend: redis`` becomes ``sqlite`` (same strategy,
      max_turns and ttl): unit tests reach no Redis server, and sqlite lives in the
      tmp data directory;
    - ``memory.semantic.backend: chromadb`` becomes ``faiss`` (same threshold and
      max_results): chromadb is an optional extra that is not installed; the embedder
      is the deterministic one of the memory tests (``WordsFactory``), as the local
      MiniLM model is not what this test is about.

    The client tool ``lookup_company`` stays: the scripted model never calls it, and
    the runs it could pause are kept in the tmp data directory's SQLite file.
    """
    without = (ORIGINAL / "sales-qualifier.agent.yaml").read_text(encoding="utf-8")
    without = _replace_once(without, "backend: redis", "backend: sqlite")
    without = _replace_once(without, "backend: chromadb", "backend: faiss")
    (tmp_path / "sales-qualifier.agent.yaml").write_text(without, encoding="utf-8")
    return {
        "sales-qualifier": load_agent(tmp_path / "sales-qualifier.agent.yaml"),
        "email-composer": load_agent(ORIGINAL / "email-composer.agent.yaml"),  # unchanged
    }


def memory_of(tmp_path: Path) -> WordsFactory:
    return WordsFactory(MemoryDefaults(data_dir=str(tmp_path / "data")))


async def run_sales(
    tmp_path: Path, answer: dict[str, Any], composer: ScriptedProvider
) -> tuple[RunResult, ScriptedProvider]:
    agents = sales_agents(tmp_path)
    check_buildable(agents.values())
    qualifier = ScriptedProvider([json.dumps(answer)], name="qualifier-model")
    local = LocalAgents(
        agents,
        scripted={"sales-qualifier": qualifier, "email-composer": composer},
        memory=memory_of(tmp_path),
    )
    try:
        runtime = await local.runtime("sales-qualifier")
        result = await runtime.run(RunRequest(query=LEAD, session_id="lead-1"))
    finally:
        await local.aclose()
    return result, qualifier


def chain_steps(result: RunResult) -> list[ChainStepRecord]:
    return [s for s in result.steps if isinstance(s, ChainStepRecord)]


async def test_a_hot_lead_runs_email_composer_on_the_answer(tmp_path: Path) -> None:
    def composes(request: CompletionRequest) -> str:
        # email-composer is asked the qualifier's answer (input: {{ output.answer }}).
        assert request.messages[-1].role == "user"
        assert json.loads(request.messages[-1].content or "") == HOT
        assert (request.messages[0].content or "").startswith("Redactás el primer email")
        return EMAIL

    composer = ScriptedProvider([composes], name="composer-model")
    result, qualifier = await run_sales(tmp_path, HOT, composer)
    # The qualifier has a (client) tool: its call was not constrained; the answer
    # was validated after, and is the data the chain's `when` reads.
    assert qualifier.requests[0].response_schema is None
    assert result.data == HOT
    assert result.answer == json.dumps(HOT)  # the turn keeps its own answer
    (step,) = chain_steps(result)
    assert step.agent == "email-composer" and step.ran and step.error is None
    assert step.answer == EMAIL and step.attempts == 1
    assert step.input == json.dumps(HOT)
    assert [s.type for s in result.steps] == ["answer", "chain"]
    # The sub-run is in this run's trace and usage.
    composer_run = next(
        s for s in result.trace if s.name == "run" and s.attributes["agent"] == "email-composer"
    )
    assert composer_run.attributes["run_id"] == step.sub_run_id
    assert composer_run.trace_id == result.trace_id
    chain_span = next(s for s in result.trace if s.name == "chain")
    assert composer_run.parent_id == chain_span.span_id
    assert chain_span.attributes["sub_run_id"] == step.sub_run_id
    assert chain_span.parent_id == result.trace[0].span_id
    assert any(
        s.name == "model_call" and s.attributes.get("provider") == "composer-model"
        for s in result.trace
    )
    assert result.usage.calls == 2


async def test_a_cold_lead_records_a_step_that_did_not_run(tmp_path: Path) -> None:
    composer = ScriptedProvider([], name="composer-model")  # any call fails the test
    cold = {"score": 3, "urgent": False, "next_action": "nurture"}
    result, _ = await run_sales(tmp_path, cold, composer)
    assert result.data == cold
    (step,) = chain_steps(result)
    assert (step.agent, step.ran, step.attempts, step.error, step.answer) == (
        "email-composer",
        False,
        0,
        None,
        None,
    )
    assert composer.requests == []
    assert not any(s.name == "chain" for s in result.trace)
    assert result.usage.calls == 1


async def test_the_chain_streams_a_delegate_event_and_its_step(tmp_path: Path) -> None:
    agents = sales_agents(tmp_path)
    local_memory = memory_of(tmp_path)
    local = LocalAgents(
        agents,
        scripted={
            "sales-qualifier": ScriptedProvider([json.dumps(HOT)]),
            "email-composer": ScriptedProvider([EMAIL]),
        },
        memory=local_memory,
    )
    events: list[dict[str, Any]] = []
    from astromesh_ray.core.events import event_to_dict

    try:
        runtime = await local.runtime("sales-qualifier")
        async for event in runtime.stream(RunRequest(query=LEAD)):
            data = event_to_dict(event)
            if data["type"] != "token":
                events.append(data)
    finally:
        await local.aclose()
    delegate = next(e for e in events if e["type"] == "delegate")
    assert delegate["peer"] == "email-composer" and delegate["query"] == json.dumps(HOT)
    chain = [e for e in events if e["type"] == "step" and e["step"]["type"] == "chain"]
    assert len(chain) == 1 and chain[0]["step"]["answer"] == EMAIL
    types = [e["type"] for e in events]
    assert types.index("delegate") < types.index("run_finished")


def lead_and_composer(
    tmp_path: Path, step: dict[str, Any], *, output_schema: bool = False, **composer: Any
) -> dict[str, AgentSpec]:
    lead_spec: dict[str, Any] = {"chain": {"on_complete": [{"agent": "composer", **step}]}}
    if output_schema:
        lead_spec["output_schema"] = {"score": {"type": "integer"}}
    return load_agents(
        tmp_path, agent_yaml("lead", **lead_spec), agent_yaml("composer", **composer)
    )


async def run_lead(
    agents: dict[str, AgentSpec],
    lead: Provider,
    composer: Provider,
    *,
    sleep: Any = None,
) -> RunResult:
    local = local_agents(agents, {"lead": lead, "composer": composer})
    try:
        runtime = await local.runtime("lead")
        if sleep is not None:
            # The backoff waits of the one chain step are recorded, not waited out.
            chain = agents["lead"].spec.chain
            assert chain is not None
            runtime.after = [
                a if not isinstance(a, ChainSteps) else ChainSteps(chain.on_complete, sleep=sleep)
                for a in runtime.after
            ]
        return await runtime.run(RunRequest(query="q"))
    finally:
        await local.aclose()


async def test_when_over_data_without_output_schema_is_a_recorded_error(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {"when": "{{ output.data.score > 7 }}"})
    composer = ScriptedProvider([])
    result = await run_lead(agents, ScriptedProvider(['{"score": 9}']), composer)
    assert result.data is None  # no output_schema: the answer is not parsed
    (step,) = chain_steps(result)
    assert not step.ran and step.attempts == 0
    assert step.error is not None
    assert "spec.chain.on_complete[0]: cannot render" in step.error
    assert "score" in step.error
    assert composer.requests == []


async def test_when_over_data_with_output_schema_runs(tmp_path: Path) -> None:
    agents = lead_and_composer(
        tmp_path, {"when": "{{ output.data.score > 7 }}"}, output_schema=True
    )
    result = await run_lead(agents, ScriptedProvider(['{"score": 9}']), ScriptedProvider(["ok"]))
    (step,) = chain_steps(result)
    assert step.ran and step.answer == "ok" and step.error is None


@pytest.mark.parametrize(("score", "ran"), [(9, True), (3, False)])
async def test_a_bare_expression_when_is_evaluated(tmp_path: Path, score: int, ran: bool) -> None:
    # `output.data.score > 7` without braces is an expression, not text that is
    # always truthy.
    agents = lead_and_composer(tmp_path, {"when": "output.data.score > 7"}, output_schema=True)
    composer = ScriptedProvider(["ok"] if ran else [])
    result = await run_lead(agents, ScriptedProvider([f'{{"score": {score}}}']), composer)
    (step,) = chain_steps(result)
    assert step.ran is ran and step.error is None
    assert len(composer.requests) == (1 if ran else 0)


async def test_a_render_error_with_on_error_fail_fails_the_turn(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {"input": "{{ output.data.missing }}", "on_error": "fail"})
    with pytest.raises(RunError) as info:
        await run_lead(agents, ScriptedProvider(["done"]), ScriptedProvider([]))
    assert info.value.details["reason"] == "chain_failed"
    assert "cannot render" in info.value.message


async def test_a_failing_peer_is_retried_until_it_answers(tmp_path: Path) -> None:
    agents = lead_and_composer(
        tmp_path,
        {"retry": {"max_attempts": 3, "backoff": "exponential", "initial_delay_s": 0.5}},
    )
    composer = ScriptedProvider([down(), down(), "third time lucky"])
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    result = await run_lead(agents, ScriptedProvider(["done"]), composer, sleep=sleep)
    (step,) = chain_steps(result)
    assert step.ran and step.attempts == 3
    assert step.answer == "third time lucky" and step.error is None
    assert waits == [0.5, 1.0]  # exponential: initial, then twice that
    chain_spans = [s for s in result.trace if s.name == "chain"]
    assert [s.attributes["attempt"] for s in chain_spans] == [1, 2, 3]
    assert [s.status for s in chain_spans] == ["error", "error", "ok"]
    assert result.answer == "done"


async def test_retries_with_no_delay_need_no_sleep(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {"retry": {"max_attempts": 2, "initial_delay_s": 0}})
    result = await run_lead(
        agents, ScriptedProvider(["done"]), ScriptedProvider([down(), "second"])
    )
    (step,) = chain_steps(result)
    assert (step.attempts, step.answer) == (2, "second")


async def test_every_attempt_failing_is_recorded_and_the_turn_keeps_its_answer(
    tmp_path: Path,
) -> None:
    agents = lead_and_composer(tmp_path, {"retry": {"max_attempts": 2, "initial_delay_s": 0}})
    result = await run_lead(agents, ScriptedProvider(["done"]), ScriptedProvider([down(), down()]))
    assert result.answer == "done"
    (step,) = chain_steps(result)
    assert step.ran and step.attempts == 2 and step.answer is None
    assert step.error is not None and "composer model down" in step.error
    # The failed sub-runs' partial traces joined this run's.
    composer_runs = [
        s for s in result.trace if s.name == "run" and s.attributes["agent"] == "composer"
    ]
    assert len(composer_runs) == 2


async def test_on_error_fail_fails_the_turn_with_chain_failed(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {"on_error": "fail"})
    with pytest.raises(RunError) as info:
        await run_lead(agents, ScriptedProvider(["done"]), ScriptedProvider([down()]))
    error = info.value
    assert error.details["reason"] == "chain_failed"
    assert "'composer'" in error.message and "composer model down" in error.message
    # The failed run's partial trace holds the chain step's span.
    assert any(s["name"] == "chain" for s in error.details["trace"])


async def test_a_slow_peer_past_the_step_timeout_is_a_recorded_error(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {"timeout_seconds": 0.05})
    slow = SlowProvider(delay_s=30)
    result = await run_lead(agents, ScriptedProvider(["done"]), slow)
    assert result.answer == "done"
    (step,) = chain_steps(result)
    assert step.ran and step.attempts == 1 and step.answer is None
    assert step.error is not None and "did not answer within" in step.error
    assert slow.calls == 1


async def test_a_peer_timing_out_on_its_own_timeout_is_that_steps_error(tmp_path: Path) -> None:
    # The composer's own timeout_seconds passes long before the lead's: its RunTimeout
    # is the chain step's failure, not the lead's turn timing out.
    agents = lead_and_composer(
        tmp_path, {}, orchestration={"pattern": "react", "timeout_seconds": 0.05}
    )
    result = await run_lead(agents, ScriptedProvider(["done"]), SlowProvider(delay_s=30))
    assert result.answer == "done"
    (step,) = chain_steps(result)
    assert step.error is not None and "did not answer within" in step.error


async def test_a_backoff_longer_than_the_time_left_stops_retrying(tmp_path: Path) -> None:
    # initial_delay_s 60 cannot be waited within the lead's 10 s: one attempt, and
    # the record says one.
    lead = agent_yaml(
        "lead",
        orchestration={"pattern": "react", "timeout_seconds": 10},
        chain={
            "on_complete": [
                {"agent": "composer", "retry": {"max_attempts": 3, "initial_delay_s": 60}}
            ]
        },
    )
    agents = load_agents(tmp_path, lead, agent_yaml("composer"))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    result = await run_lead(
        agents, ScriptedProvider(["done"]), ScriptedProvider([down("down")]), sleep=sleep
    )
    (step,) = chain_steps(result)
    assert step.attempts == 1 and waits == []
    assert step.error is not None and "failed: down" in step.error
    assert "no time left to wait 60 s" in step.error


async def test_steps_run_in_order_each_on_the_turns_output(tmp_path: Path) -> None:
    lead = agent_yaml(
        "lead",
        output_schema={"score": {"type": "integer"}},
        chain={
            "on_complete": [
                {"agent": "composer", "input": "score={{ output.data.score }} q={{ query }}"},
                {"agent": "archiver", "when": "{{ output.data.score < 5 }}"},
                {"agent": "archiver", "when": "{{ output.data.score >= 5 }}"},
            ]
        },
    )
    agents = load_agents(tmp_path, lead, agent_yaml("composer"), agent_yaml("archiver"))

    def composes(request: CompletionRequest) -> str:
        assert request.messages[-1].content == "score=6 q=the lead"
        return "mail"

    local = local_agents(
        agents,
        {
            "lead": ScriptedProvider(['{"score": 6}']),
            "composer": ScriptedProvider([composes]),
            "archiver": ScriptedProvider(["archived"]),
        },
    )
    try:
        result = await (await local.runtime("lead")).run(RunRequest(query="the lead"))
    finally:
        await local.aclose()
    steps = chain_steps(result)
    assert [(s.agent, s.ran, s.answer) for s in steps] == [
        ("composer", True, "mail"),
        ("archiver", False, None),
        ("archiver", True, "archived"),
    ]
    assert result.usage.calls == 3


async def test_a_streamed_chain_step_is_in_the_stream_helper(tmp_path: Path) -> None:
    agents = lead_and_composer(tmp_path, {})
    out = await stream(
        agents,
        {"lead": ScriptedProvider(["done"]), "composer": ScriptedProvider(["ok"])},
        "lead",
        "q",
    )
    # The chain runs after the answer, as the turn's last steps.
    assert out.types[-3:] == ["step:answer", "delegate", "step:chain"]
    assert out.result is not None and chain_steps(out.result)[0].answer == "ok"


def test_a_chain_agent_that_is_not_loaded_is_refused(tmp_path: Path) -> None:
    agents = sales_agents(tmp_path)
    with pytest.raises(ConfigError) as info:
        check_buildable([agents["sales-qualifier"]])
    assert "agent 'sales-qualifier' calls agent 'email-composer', which is not loaded" in str(
        info.value
    )
    check_buildable(agents.values())  # with email-composer loaded, it builds
