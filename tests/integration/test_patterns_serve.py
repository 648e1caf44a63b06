"""The orchestration patterns as task graphs on real Serve, over HTTP: fan-out
branches and independent plan steps run at once on the agent's replicas
(``ServeTaskRunner``), a supervisor's workers and a swarm's members are their own
agent applications, and the run's limits hold across those hops.

One configuration is deployed for the module; models are scripted OpenAI servers on
loopback.  Steps that concurrent calls consume get identical answers (they are taken
in arrival order).  No timing thresholds: only the order and overlap of what the
trace records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed

DELAY_S = 0.3
FAN_TIMEOUT_S = 4


def _agent(name: str, endpoint: str, body: str, model: str = "m") -> str:
    return (
        "apiVersion: astromesh/v1\nkind: Agent\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model:\n"
        f'    primary: {{provider: openai_compat, model: {model}, endpoint: "{endpoint}"}}\n' + body
    )


# Two replicas taking 3 requests each (the run holds one of its replica's): 4
# concurrent branches cannot all fit on one replica, so they spread whatever Serve's
# router guesses from its cached queue lengths (left to it, a burst often lands on
# one replica: the pow-2 router prefers the replica with a fresher cache entry).
FAN = f"""\
  orchestration:
    pattern: parallel_fan_out
    max_iterations: 8
    timeout_seconds: {FAN_TIMEOUT_S}
    branches:
      - {{name: north, task: "the north part of {{{{ query }}}}"}}
      - {{name: south, task: "the south part of {{{{ query }}}}"}}
      - {{name: east, task: "the east part of {{{{ query }}}}"}}
      - {{name: west, task: "the west part of {{{{ query }}}}"}}
  deployment: {{num_replicas: 2, max_ongoing_requests: 3}}
"""
PLANNER = """\
  orchestration: {pattern: plan_and_execute, max_iterations: 6, timeout_seconds: 30}
"""
CHIEF = """\
  orchestration:
    {pattern: supervisor, workers: [w-one, w-two], max_iterations: 8, timeout_seconds: 30}
"""
WORKER = """\
  orchestration: {max_iterations: 4, timeout_seconds: 30}
  tools:
    - {name: calculator, type: builtin}
"""
CREW = """\
  orchestration:
    {pattern: swarm, members: [m-first, m-second], max_iterations: 6, timeout_seconds: 30}
"""
MEMBER = """\
  prompts: {system: "You are MEMBER."}
  orchestration: {max_iterations: 4, timeout_seconds: 30}
"""


@dataclass
class Models:
    """The scripted model servers: ``main`` for the agents running patterns, ``left``
    for w-one and m-first, ``right`` for w-two and m-second (each worker and each
    member has a server of its own; the supervisor and swarm tests never overlap)."""

    main: ScriptedOpenAIServer
    left: ScriptedOpenAIServer
    right: ScriptedOpenAIServer

    def all(self) -> tuple[ScriptedOpenAIServer, ...]:
        return (self.main, self.left, self.right)


@pytest.fixture(scope="module")
def models() -> Iterator[Models]:
    with (
        ScriptedOpenAIServer() as main,
        ScriptedOpenAIServer() as left,
        ScriptedOpenAIServer() as right,
    ):
        yield Models(main, left, right)


@pytest.fixture(scope="module")
def api(serve_url: str, models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("patterns")
    agents = root / "agents"
    agents.mkdir()
    files = {
        "fan": _agent("fan", models.main.url, FAN),
        "planner": _agent("planner", models.main.url, PLANNER),
        "chief": _agent("chief", models.main.url, CHIEF),
        "w-one": _agent("w-one", models.left.url, WORKER, model="left"),
        "w-two": _agent("w-two", models.right.url, WORKER, model="right"),
        "crew": _agent("crew", models.main.url, CREW),
        "m-first": _agent("m-first", models.left.url, MEMBER.replace("MEMBER", "first"), "left"),
        "m-second": _agent(
            "m-second", models.right.url, MEMBER.replace("MEMBER", "second"), "right"
        ),
    }
    for name, text in files.items():
        (agents / f"{name}.agent.yaml").write_text(text)
    with deployed(root) as apps:
        yield serve_url
        # All at once: one by one, each delete waits for its replicas' graceful
        # shutdown (~3 s an application); deployed() then waits for them to be gone.
        for name in apps:
            serve.delete(name, _blocking=False)


@pytest.fixture
def llms(models: Models) -> Iterator[Models]:
    """The servers, checked to have consumed every step the test gave them."""
    yield models
    for server in models.all():
        server.assert_consumed()


def _run(api: str, agent: str, query: str) -> httpx.Response:
    return httpx.post(f"{api}/v1/agents/{agent}/run", json={"query": query}, timeout=90)


def _interval(step: dict[str, Any]) -> tuple[float, float]:
    start = float(step["start_time"])
    return start, start + float(step["duration_ms"]) / 1000


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _tasks(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in body["steps"] if s["type"] == "task"}


def _sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        data = [line[len("data: ") :] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("".join(data)))
    return events


def test_fan_out_branches_run_at_once_on_more_than_one_replica(api: str, llms: Models) -> None:
    llms.main.add_steps(
        *[{"content": "a part, done", "delay_s": DELAY_S} for _ in range(4)],
        {"content": "All four parts, merged.", "delay_s": DELAY_S},
    )
    reply = _run(api, "fan", "map the city")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "All four parts, merged."

    tasks = _tasks(body)
    assert sorted(tasks) == ["east", "north", "south", "west"]
    assert all(t["kind"] == "branch" and not t["is_error"] for t in tasks.values())
    assert all(t["output"] == "a part, done" for t in tasks.values())
    # The remote `task` spans: each branch ran on a replica of the agent's own app,
    # under the caller's `task_call` span.
    spans = {s["span_id"]: s for s in body["trace"]}
    remote = {s["attributes"]["task"]: s for s in body["trace"] if s["name"] == "task"}
    assert sorted(remote) == sorted(tasks)
    for name, span in remote.items():
        assert span["attributes"]["kind"] == "branch"
        assert span["where"]["app"] == "agent-fan"
        caller = spans[span["parent_id"]]
        assert caller["name"] == "task_call" and caller["attributes"]["task"] == name
        assert tasks[name]["where"]["replica"] == span["where"]["replica"]
    # Concurrent: at least two branches' [start, end] intervals overlap ...
    intervals = {name: _interval(step) for name, step in tasks.items()}
    names = sorted(intervals)
    overlapping = [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if _overlap(intervals[a], intervals[b])
    ]
    assert overlapping, intervals
    # ... and spread over the replicas by Serve's router.
    assert len({t["where"]["replica"] for t in tasks.values()}) > 1, [
        t["where"] for t in tasks.values()
    ]
    # Each branch read its own part; the synthesizer read every result.
    sent = llms.main.requests[-5:]
    parts = sorted(r["messages"][-1]["content"].rsplit("Your part: ", 1)[-1] for r in sent[:4])
    assert parts == [f"the {d} part of map the city" for d in ("east", "north", "south", "west")]
    assert all(f"## {n}" in sent[4]["messages"][-1]["content"] for n in names)


def test_plan_steps_without_dependencies_overlap_and_a_dependent_step_waits(
    api: str, llms: Models
) -> None:
    plan = {
        "steps": [
            {"id": "a", "task": "count the apples"},
            {"id": "b", "task": "count the bananas"},
            {"id": "c", "task": "add the counts", "depends_on": ["a", "b"]},
        ]
    }
    llms.main.add_steps(
        json.dumps(plan),
        {"content": "counted", "delay_s": DELAY_S},  # a and b, in either order
        {"content": "counted", "delay_s": DELAY_S},
        {"content": "the sum", "delay_s": DELAY_S},
        "There are 12 fruits.",
    )
    reply = _run(api, "planner", "how many fruits?")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "There are 12 fruits."
    [plan_step] = [s for s in body["steps"] if s["type"] == "plan"]
    assert [p["id"] for p in plan_step["steps"]] == ["a", "b", "c"]
    tasks = _tasks(body)
    assert sorted(tasks) == ["a", "b", "c"]
    assert [tasks[k]["output"] for k in "abc"] == ["counted", "counted", "the sum"]
    a, b, c = (_interval(tasks[k]) for k in "abc")
    assert _overlap(a, b), (a, b)
    assert c[0] >= a[1] and c[0] >= b[1], (a, b, c)
    # Step c read what a and b found.
    c_prompt = llms.main.requests[-2]["messages"][-1]["content"]
    assert "Result of step a (count the apples):\ncounted" in c_prompt
    assert "Result of step b (count the bananas):\ncounted" in c_prompt
    assert c_prompt.endswith("Your step: add the counts")


def test_a_supervisor_delegates_to_two_worker_apps_at_once(api: str, llms: Models) -> None:
    llms.main.add_steps(
        {
            "tool_calls": [
                {"name": "w-one", "arguments": {"query": "what is 2+3?"}},
                {"name": "w-two", "arguments": {"query": "what is 6*7?"}},
            ]
        },
        "2+3 is 5 and 6*7 is 42.",
    )
    for server, expression, answer in ((llms.left, "2+3", "5"), (llms.right, "6*7", "42")):
        server.add_steps(
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": expression}}]},
            f"It is {answer}.",
        )
    reply = _run(api, "chief", "compute both")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "2+3 is 5 and 6*7 is 42."

    # Each worker's model read its calculator's result: the tool really ran there.
    for server, result in ((llms.left, "5"), (llms.right, "42")):
        last = server.requests[-1]["messages"][-1]
        assert last["role"] == "tool" and last["content"] == result
    # The supervisor read both workers' answers.
    results = {m["content"] for m in llms.main.requests[-1]["messages"] if m["role"] == "tool"}
    assert results == {"It is 5.", "It is 42."}

    steps = {s["tool"]: s for s in body["steps"] if s["type"] == "tool_call" and s["task"] is None}
    assert sorted(steps) == ["w-one", "w-two"]
    runs = {s["attributes"]["agent"]: s for s in body["trace"] if s["name"] == "run"}
    chief_app = runs["chief"]["where"]["app"]
    assert chief_app == "agent-chief"
    spans = {s["span_id"]: s for s in body["trace"]}
    for worker in ("w-one", "w-two"):
        step = steps[worker]
        assert step["sub_run_id"] and step["sub_run_id"] == runs[worker]["attributes"]["run_id"]
        assert step["result"] in ("It is 5.", "It is 42.")
        # The worker's run and its calculator call are in the one trace, in its app.
        assert runs[worker]["where"]["app"] == f"agent-{worker}" != chief_app
        [calc] = [
            s
            for s in body["trace"]
            if s["name"] == "tool_call"
            and s["attributes"].get("tool") == "calculator"
            and s["parent_id"] is not None
            and _under(spans, s, runs[worker]["span_id"])
        ]
        assert calc["where"]["app"] == f"agent-{worker}"
        assert calc["status"] == "ok"
    assert {s["trace_id"] for s in body["trace"]} == {body["trace_id"]}


def _under(spans: dict[str, dict[str, Any]], span: dict[str, Any], ancestor: str) -> bool:
    parent = span["parent_id"]
    while parent is not None and parent in spans:
        if parent == ancestor:
            return True
        parent = spans[parent]["parent_id"]
    return False


def test_a_swarm_member_hands_off_and_the_next_reads_the_conversation(
    api: str, llms: Models
) -> None:
    llms.left.add_steps(
        {"tool_calls": [{"name": "transfer_to_m_second", "arguments": {"reason": "billing"}}]}
    )
    llms.right.add_steps("Second here: your bill is paid.")
    reply = _run(api, "crew", "is my bill paid?")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "Second here: your bill is paid."

    [handoff] = [s for s in body["steps"] if s["type"] == "handoff"]
    assert handoff["to_agent"] == "m-second" and handoff["reason"] == "billing"
    runs = {s["attributes"]["agent"]: s for s in body["trace"] if s["name"] == "run"}
    assert handoff["sub_run_id"] == runs["m-first"]["attributes"]["run_id"]
    assert runs["m-first"]["where"]["app"] == "agent-m-first"
    assert runs["m-second"]["where"]["app"] == "agent-m-second"

    first = llms.left.requests[-1]
    assert "transfer_to_m_second" in {t["function"]["name"] for t in first["tools"]}
    # The second member got the conversation: the user's message, the first
    # member's handoff call, then that call's result; and its own system prompt.
    sent = llms.right.requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are second."}
    roles = [m["role"] for m in sent]
    call_at = next(
        i
        for i, m in enumerate(sent)
        if m["role"] == "assistant"
        and any(c["function"]["name"] == "transfer_to_m_second" for c in m.get("tool_calls") or [])
    )
    call = sent[call_at]["tool_calls"][0]
    assert sent[call_at + 1]["role"] == "tool"
    assert sent[call_at + 1]["tool_call_id"] == call["id"]
    assert {"role": "user", "content": "is my bill paid?"} in sent[:call_at]
    assert roles[-1] == "tool", roles


def test_fan_out_past_its_timeout_is_504_with_the_partial_trace(api: str, llms: Models) -> None:
    slow = {"content": "too late", "delay_s": FAN_TIMEOUT_S + 1.5}
    llms.main.add_steps(*[slow] * 4)
    reply = _run(api, "fan", "map the city")
    assert reply.status_code == 504, reply.text
    error = reply.json()["error"]
    assert error["code"] == "run_timeout"
    names = [s["name"] for s in error["trace"]]
    assert names[:2] == ["gateway", "run"]
    calls = [s for s in error["trace"] if s["name"] == "task_call"]
    assert sorted(s["attributes"]["task"] for s in calls) == ["east", "north", "south", "west"]
    assert all(s["status"] == "error" for s in calls)

    llms.main.add_steps(*[slow] * 4)
    with httpx.stream(
        "POST", f"{api}/v1/agents/fan/stream", json={"query": "map the city"}, timeout=90
    ) as streamed:
        assert streamed.status_code == 200
        events = _sse(streamed.read().decode())
    types = [e["type"] for e in events]
    assert types[0] == "run_started"
    assert types.count("task_started") == 4
    assert types[-1] == "error" and "run_finished" not in types
    assert events[-1]["error"]["code"] == "run_timeout"
    assert any(s["name"] == "task_call" for s in events[-1]["error"]["trace"])


def test_plan_steps_out_of_model_calls_end_in_run_limit_exceeded(api: str, llms: Models) -> None:
    # max_iterations 6: the planner's call leaves 5; 4 steps get 1 call each (one kept
    # for the synthesizer).  Each step's one call asks for a tool, so no step answers;
    # with 1 call left the plan cannot be made again: 504, with the partial trace.
    plan = {"steps": [{"id": f"s{i}", "task": f"part {i}"} for i in range(4)]}
    llms.main.add_steps(json.dumps(plan))
    for _ in range(4):
        llms.main.add_steps({"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}]})
    reply = _run(api, "planner", "do four things")
    assert reply.status_code == 504, reply.text
    error = reply.json()["error"]
    assert error["code"] == "run_limit_exceeded"
    assert "no model calls are left to plan again" in error["message"]
    assert error["iterations"] == 5
    names = [s["name"] for s in error["trace"]]
    assert names[:2] == ["gateway", "run"] and names.count("task_call") == 4
