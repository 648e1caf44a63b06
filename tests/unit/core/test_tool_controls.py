"""The controls every tool type shares: grants, rate limits, dry runs, argument
validation, timeouts and the result size cap, each refused by the runtime and told
to the model, which can correct itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.tools.base import ToolContext
from astromesh_ray.core.tools.services import MemoryToolCache, SlidingWindowLimiter
from astromesh_ray.errors import ConfigError
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents

WRITES: list[str] = []


def save_note(text: str) -> str:
    """Save a note.

    Args:
        text: The note.
    """
    WRITES.append(text)
    return "saved"


SAVE = {"name": "save_note", "function": "tests.unit.core.test_tool_controls:save_note"}


@pytest.fixture(autouse=True)
def _clean() -> None:
    WRITES.clear()


async def _run(tmp_path: Path, steps: list[Any], **spec: Any) -> Any:
    agents = load_agents(tmp_path, agent_yaml("notes", **spec))
    local = LocalAgents(
        agents,
        scripted={"notes": ScriptedProvider(steps)},
        memory=default_memory_factory(tmp_path / "data"),
    )
    try:
        runtime = await local.runtime("notes")
        return await runtime.run(RunRequest(query="go"))
    finally:
        await local.aclose()


def _results(result: Any) -> list[tuple[str, str, bool]]:
    return [(s.tool, s.result, s.is_error) for s in result.steps if isinstance(s, ToolStep)]


async def test_a_rate_limited_call_is_a_tool_error_naming_the_limit(tmp_path: Path) -> None:
    calls = [ToolCall(f"c{i}", "save_note", {"text": str(i)}) for i in range(3)]
    result = await _run(
        tmp_path,
        [calls[0], calls[1], calls[2], "done"],
        tools=[{**SAVE, "rate_limit": {"max_calls": 2, "window_seconds": 60}}],
        orchestration={"max_iterations": 5},
    )
    results = _results(result)
    assert [r[2] for r in results] == [False, False, True]
    assert "rate limited: at most 2 call(s) per 60 s for agent 'notes'" in results[2][1]
    assert WRITES == ["0", "1"]


async def test_dry_run_describes_calls_with_side_effects(tmp_path: Path) -> None:
    def reads(req: CompletionRequest) -> str:
        content = req.messages[-1].content or ""
        assert content.startswith("dry run: tool 'save_note' was not called")
        assert '{"text": "hello"}' in content
        return "ok"

    result = await _run(
        tmp_path,
        [ToolCall("c1", "save_note", {"text": "hello"}), reads],
        tools=[{**SAVE, "side_effects": True}, {"name": "calculator"}],
        permissions={"execution": {"dry_run": True}},
    )
    assert result.answer == "ok"
    assert WRITES == []


async def test_dry_run_still_runs_tools_without_side_effects(tmp_path: Path) -> None:
    result = await _run(
        tmp_path,
        [ToolCall("c1", "save_note", {"text": "x"}), "ok"],
        tools=[SAVE],
        permissions={"execution": {"dry_run": True}},
    )
    assert _results(result) == [("save_note", "saved", False)]
    assert WRITES == ["x"]


async def test_refused_calls_are_reported_and_the_model_corrects_itself(tmp_path: Path) -> None:
    """A tool not granted, bad arguments, then a good call: each refusal reaches the
    model as a tool result within max_iterations."""
    result = await _run(
        tmp_path,
        [
            ToolCall("c1", "calculator", {"expression": "1+1"}),
            ToolCall("c2", "save_note", {"text": 5}),
            ToolCall("c3", "save_note", {"text": "five"}),
            "done",
        ],
        tools=[SAVE, {"name": "calculator"}],
        permissions={"allowed_actions": ["save_note"]},
    )
    results = _results(result)
    assert results[0] == (
        "calculator",
        "error: tool 'calculator' is not permitted for this agent "
        "(spec.permissions.allowed_actions)",
        True,
    )
    assert results[1][2] and "invalid arguments for tool 'save_note'" in results[1][1]
    assert results[2] == ("save_note", "saved", False)
    assert WRITES == ["five"]
    assert result.answer == "done"


def test_the_sliding_window_frees_a_slot_when_the_oldest_call_leaves_it() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(clock=lambda: now[0])
    assert limiter.acquire_now("k", 2, 10) is None
    now[0] = 104.0
    assert limiter.acquire_now("k", 2, 10) is None
    wait = limiter.acquire_now("k", 2, 10)
    assert wait == pytest.approx(6.0)
    assert limiter.acquire_now("other", 2, 10) is None  # keys are independent
    now[0] = 110.0  # the first call left the window
    assert limiter.acquire_now("k", 2, 10) is None
    assert limiter.acquire_now("k", 2, 10) is not None


def test_the_tool_cache_expires_and_evicts() -> None:
    now = [0.0]
    cache = MemoryToolCache(max_entries=2, clock=lambda: now[0])
    cache.set_now("a", 1, ttl_s=5)
    cache.set_now("b", 2, ttl_s=None)
    assert cache.get_now("a") == 1
    now[0] = 5.0
    assert cache.get_now("a") is None  # expired
    cache.set_now("c", 3, None)
    cache.set_now("d", 4, None)  # evicts the oldest written ("b")
    assert (cache.get_now("b"), cache.get_now("c"), cache.get_now("d")) == (None, 3, 4)
    assert cache.delete_now("c") and not cache.delete_now("c")


def where_am_i() -> str:
    """The process id this call ran in."""
    import os

    return str(os.getpid())


def needs_context(ctx: ToolContext) -> str:
    """Uses the call's context."""
    return ctx.run_id


async def test_tools_with_resources_run_here_in_one_process(tmp_path: Path) -> None:
    import os

    result = await _run(
        tmp_path,
        [ToolCall("c1", "where", {}), "ok"],
        tools=[
            {
                "name": "where",
                "function": "tests.unit.core.test_tool_controls:where_am_i",
                "resources": {"num_cpus": 1, "num_gpus": 0.5},
            }
        ],
    )
    assert _results(result) == [("where", str(os.getpid()), False)]


def test_a_tool_with_resources_cannot_take_a_context(tmp_path: Path) -> None:
    agents = load_agents(
        tmp_path,
        agent_yaml(
            "notes",
            tools=[
                {
                    "name": "ctx",
                    "function": "tests.unit.core.test_tool_controls:needs_context",
                    "resources": {"num_cpus": 1},
                }
            ],
        ),
    )
    with pytest.raises(ConfigError, match="takes a ToolContext, which cannot travel"):
        check_buildable(agents.values())
