"""What only the code can tell about the pattern blocks (``check_buildable``):
pausing tools outside react and supervisor, undeclared pipeline tools, workers,
members and chain agents that are not loaded or cannot play their part, and
``role_map`` entries that map nothing."""

from __future__ import annotations

import pytest
from spec_helpers import AGENT, WriteYaml

from astromesh_ray.core.build import check_buildable
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec, load_agent


def _load(write: WriteYaml, name: str, extra: str) -> AgentSpec:
    return load_agent(write(f"{name}.agent.yaml", AGENT.format(name=name) + extra))


def _refused(agents: list[AgentSpec], known: list[AgentSpec] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_buildable(agents, known={a.name: a for a in known} if known else None)
    return str(info.value)


def test_a_pausing_tool_outside_react_and_supervisor_is_refused(write: WriteYaml) -> None:
    agent = _load(
        write,
        "fan",
        "  tools:\n    - {name: calculator, type: builtin, requires_approval: true}\n"
        "  orchestration:\n    pattern: parallel_fan_out\n    branches: [x, y]\n",
    )
    message = _refused([agent])
    assert "fan.agent.yaml" in message
    assert "the parallel_fan_out pattern runs tools inside tasks or sub-runs" in message
    assert "need the react or supervisor pattern" in message
    # The same tool on a react agent builds.
    check_buildable(
        [_load(write, "ok", "  tools:\n    - {name: calculator, type: builtin, "
                           "requires_approval: true}\n")]
    )  # fmt: skip


def test_a_pipeline_tool_stage_must_name_a_declared_tool(write: WriteYaml) -> None:
    agent = _load(
        write,
        "pipe",
        "  tools:\n    - {name: calculator, type: builtin}\n"
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - {name: look, tool: web_search}\n",
    )
    message = _refused([agent])
    assert "stage 'look' calls tool 'web_search', which is not a tool of this agent" in message
    assert "tools: calculator" in message


def test_a_supervisor_worker_that_is_not_loaded_is_refused(write: WriteYaml) -> None:
    boss = _load(
        write,
        "boss",
        "  orchestration:\n    pattern: supervisor\n    workers: [researcher, writer]\n",
    )
    researcher = _load(write, "researcher", "")
    message = _refused([boss, researcher])
    assert "agent 'boss' calls agent 'writer', which is not loaded" in message
    assert "'researcher', which is not loaded" not in message


def test_a_swarm_member_that_is_not_loaded_is_refused(write: WriteYaml) -> None:
    triage = _load(
        write, "triage", "  orchestration:\n    pattern: swarm\n    members: [triage, billing]\n"
    )
    message = _refused([triage])
    assert "calls agent 'billing', which is not loaded" in message


def test_a_chain_agent_that_is_not_loaded_is_refused(write: WriteYaml) -> None:
    lead = _load(write, "lead", "  chain:\n    on_complete:\n      - agent: composer\n")
    message = _refused([lead])
    assert "agent 'lead' calls agent 'composer', which is not loaded" in message
    check_buildable([lead, _load(write, "composer", "")])


def test_role_map_entries_must_map_a_pattern_role_to_a_declared_role(write: WriteYaml) -> None:
    roles = (
        "  model:\n    default:\n      candidates: [{provider: ollama, model: m}]\n"
        "    roles:\n      planner:\n        candidates: [{provider: ollama, model: big}]\n"
    )
    body = AGENT.format(name="rm").split("  model:")[0]
    typo_key = write(
        "k.agent.yaml",
        body + roles + "  orchestration:\n    pattern: plan_and_execute\n"
        "    role_map: {plannr: planner}\n",
    )
    with pytest.raises(ConfigError, match="role_map: 'plannr' is not a role of the "
                       "plan_and_execute pattern"):  # fmt: skip
        check_buildable([load_agent(typo_key)])
    typo_value = write(
        "v.agent.yaml",
        body + roles + "  orchestration:\n    pattern: plan_and_execute\n"
        "    role_map: {synthesizer: plannr}\n",
    )
    with pytest.raises(ConfigError, match=r"'synthesizer' maps to 'plannr', which "
                       r"spec\.model\.roles does not declare"):  # fmt: skip
        check_buildable([load_agent(typo_value)])
    good = write(
        "g.agent.yaml",
        body + roles + "  orchestration:\n    pattern: plan_and_execute\n"
        "    role_map: {synthesizer: planner}\n",
    )
    check_buildable([load_agent(good)])


def test_a_worker_named_like_another_tool_is_refused(write: WriteYaml) -> None:
    boss = _load(
        write,
        "boss",
        "  tools:\n    - {name: writer, type: webhook, webhook: {url: 'https://example.com/w'}}\n"
        "  orchestration:\n    pattern: supervisor\n    workers: [writer]\n",
    )
    message = _refused([boss, _load(write, "writer", "")])
    assert "'writer' is also the name of another tool of this agent" in message


def test_swarm_members_run_react_or_supervisor(write: WriteYaml) -> None:
    desk = _load(
        write, "desk", "  orchestration:\n    pattern: swarm\n    members: [triage, planner]\n"
    )
    planner = _load(write, "planner", "  orchestration:\n    pattern: plan_and_execute\n")
    message = _refused([desk, _load(write, "triage", ""), planner])
    assert "swarm member 'planner' runs the plan_and_execute pattern" in message
