"""The episodic log of every run, and what memory does when a run or a backend fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.api import memory_op
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.errors import (
    MemoryUnavailable,
    ProviderError,
)
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.engine_helpers import agent_yaml, load_agents
from tests.unit.core.memory.memory_helpers import (
    agent_with,
    factory,
)


async def test_episodic_log_records_every_run_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEM_TEST_KEY", "Zq7plainvalue42xyz")
    doc = agent_yaml(
        "mem",
        model={
            "primary": {
                "provider": "openai",
                "model": "gpt",
                "endpoint": "http://127.0.0.1:9/v1",
                "api_key_env": "MEM_TEST_KEY",
            }
        },
        memory={"episodic": {"backend": "sqlite"}},
        tools=[{"name": "calculator", "type": "builtin"}],
    )
    agent = load_agents(tmp_path, doc)["mem"]
    boom = ProviderError("down", provider="scripted", status=503, retryable=False)
    model = ScriptedProvider(
        [ToolCall(id="c1", name="calculator", arguments={"expression": "1+1"}), "2", boom]
    )
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        runtime = await agents.runtime("mem")
        request = RunRequest(
            query="1+1? my key is Zq7plainvalue42xyz",
            session_id="s1",
            context={"api_key": "hunter2-secret-value"},
        )
        result = await runtime.run(request)
        with pytest.raises(ProviderError):
            await runtime.run(RunRequest(query="again", session_id="s1"))
        found = await memory_op(runtime.memory, "mem", "episodes", {"session_id": "s1"})
        only_tools = await memory_op(
            runtime.memory, "mem", "episodes", {"run_id": result.run_id, "types": ["tool_call"]}
        )
    finally:
        await agents.aclose()
    episodes = found["episodes"]
    first = [e for e in episodes if e["run_id"] == result.run_id]
    assert [e["type"] for e in first] == [
        "request",
        "model_call",
        "tool_call",
        "model_call",
        "answer",
    ]
    assert first[1]["data"]["usage"]["calls"] == 1
    assert first[2]["data"]["tool"] == "calculator" and first[2]["data"]["result"] == "2"
    assert first[-1]["data"]["answer"] == "2"
    assert all(e["trace_id"] == result.trace_id for e in first)
    failed = [e for e in episodes if e["run_id"] != result.run_id]
    assert [e["type"] for e in failed] == ["request", "model_call", "error"]
    assert failed[-1]["data"]["code"] == "provider_error"
    dumped = json.dumps(episodes)
    # A value with no secret shape: only the agent's api_key_env names it as one.
    assert "Zq7plainvalue42xyz" not in dumped
    assert "hunter2-secret-value" not in dumped
    assert [e["type"] for e in only_tools["episodes"]] == ["tool_call"]


class _Down:
    """A conversation store whose server is gone."""

    name = "down"

    async def history(self, *args: Any, **kwargs: Any) -> Any:
        raise MemoryUnavailable("redis is down", backend="redis", retryable=True)

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a turn whose memory failed to load must not be stored")

    async def aclose(self) -> None:
        pass


async def test_a_memory_outage_fails_the_turn_before_any_model_call(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "in_memory"}})
    agents = LocalAgents(
        {"mem": agent}, scripted={"mem": ScriptedProvider([])}, memory=factory(tmp_path)
    )
    try:
        runtime = await agents.runtime("mem")
        assert runtime.memory is not None
        runtime.memory.conversation = _Down()  # type: ignore[assignment]
        with pytest.raises(MemoryUnavailable) as info:
            await runtime.run(RunRequest(query="hi", session_id="s1"))
        assert info.value.details["stage"] == "memory"
        assert info.value.http_status == 503
    finally:
        await agents.aclose()


class SlowProvider:
    """A model that never answers in time."""

    name = "slow"

    async def complete(self, request: Any) -> Any:
        import asyncio

        await asyncio.sleep(30)

    def stream(self, request: Any) -> Any:
        raise NotImplementedError

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


async def test_a_timed_out_turn_stores_nothing_and_is_logged(tmp_path: Path) -> None:
    from astromesh_ray.core.build import build_runtime
    from astromesh_ray.errors import RunTimeout

    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "sqlite"}, "episodic": {"backend": "sqlite"}},
        orchestration={"timeout_seconds": 0.3},
    )
    memory = factory(tmp_path)
    runtime = build_runtime(agent, provider=SlowProvider(), memory=memory)
    try:
        with pytest.raises(RunTimeout):
            await runtime.run(RunRequest(query="hello", session_id="s1"))
        listed = await memory_op(runtime.memory, "mem", "sessions", {})
        logged = await memory_op(runtime.memory, "mem", "episodes", {"session_id": "s1"})
    finally:
        await runtime.aclose()
        await memory.aclose()
    assert listed["sessions"] == []
    assert [e["type"] for e in logged["episodes"]][-1] == "error"
    assert logged["episodes"][-1]["data"]["code"] == "run_timeout"


async def test_the_episodic_log_holds_this_agents_calls_not_its_sub_runs(
    tmp_path: Path,
) -> None:
    docs = [
        agent_yaml(
            "boss",
            memory={"episodic": {"backend": "sqlite"}},
            tools=[{"name": "ask_helper", "type": "agent", "agent": "helper"}],
        ),
        agent_yaml("helper"),
    ]
    agents_specs = load_agents(tmp_path, *docs)
    boss = ScriptedProvider(
        [ToolCall(id="c1", name="ask_helper", arguments={"query": "hi"}), "done"]
    )
    helper = ScriptedProvider(["hello from helper"])
    agents = LocalAgents(
        agents_specs, scripted={"boss": boss, "helper": helper}, memory=factory(tmp_path)
    )
    try:
        runtime = await agents.runtime("boss")
        result = await runtime.run(RunRequest(query="go", session_id="s1"))
        logged = await memory_op(runtime.memory, "boss", "episodes", {"run_id": result.run_id})
    finally:
        await agents.aclose()
    types = [e["type"] for e in logged["episodes"]]
    assert types == ["request", "model_call", "tool_call", "model_call", "answer"]
    assert logged["episodes"][2]["data"]["sub_run_id"]


async def test_a_failed_save_is_still_logged(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory"}, "episodic": {"backend": "sqlite"}},
    )
    agents = LocalAgents(
        {"mem": agent}, scripted={"mem": ScriptedProvider(["lost"])}, memory=factory(tmp_path)
    )

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MemoryUnavailable("store gone", backend="test", retryable=True)

    try:
        runtime = await agents.runtime("mem")
        assert runtime.memory is not None and runtime.memory.conversation is not None
        runtime.memory.conversation.append = refuse  # type: ignore[method-assign]
        with pytest.raises(MemoryUnavailable):
            await runtime.run(RunRequest(query="hi", session_id="s1"))
        logged = await memory_op(runtime.memory, "mem", "episodes", {"session_id": "s1"})
    finally:
        await agents.aclose()
    assert [e["type"] for e in logged["episodes"]] == ["request", "model_call", "error"]
    assert logged["episodes"][-1]["data"]["code"] == "memory_unavailable"


def test_a_backend_whose_package_is_missing_fails_the_build_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from astromesh_ray.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "chromadb" else real(name, *a)
    )
    agent = agent_with(tmp_path, {"semantic": {"backend": "chromadb"}})
    with pytest.raises(ConfigError, match="needs the 'chromadb' package") as info:
        check_buildable([agent])
    assert "astromesh-ray[chroma]" in str(info.value)
