"""The memory API operations (sessions, history, fork, erase) and session ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.api import memory_op
from astromesh_ray.errors import (
    InvalidRequest,
    MemoryConflict,
    MemoryNotFound,
)
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.memory.memory_helpers import (
    agent_with,
    factory,
    turn,
)


async def test_memory_api_sessions_fork_and_erase(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "sqlite"}, "episodic": {"backend": "sqlite"}},
    )
    model = ScriptedProvider(["a1", "a2", "b1", "forked"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "q1", session="alpha")
        await turn(agents, "q2", session="alpha")
        await turn(agents, "other", session="beta")
        runtime = await agents.runtime("mem")
        memory = runtime.memory
        listed = await memory_op(memory, "mem", "sessions", {})
        assert [s["session_id"] for s in listed["sessions"]] == ["beta", "alpha"]
        assert [s["turns"] for s in listed["sessions"]] == [1, 2]
        forked = await memory_op(
            memory, "mem", "fork", {"session_id": "alpha", "new_session_id": "alpha2"}
        )
        assert forked["turns"] == 2
        await turn(agents, "q3", session="alpha2")
        assert [m.content for m in model.requests[3].messages] == ["q1", "a1", "q2", "a2", "q3"]
        with pytest.raises(MemoryConflict, match="already exists"):
            await memory_op(
                memory, "mem", "fork", {"session_id": "beta", "new_session_id": "alpha"}
            )
        erased = await memory_op(memory, "mem", "erase", {"session_id": "alpha"})
        assert erased["removed"]["conversation"] == 1
        assert erased["removed"]["episodic"] == 2 * 3  # request, model_call, answer per turn
        with pytest.raises(MemoryNotFound):
            await memory_op(memory, "mem", "history", {"session_id": "alpha"})
        left = await memory_op(memory, "mem", "episodes", {"session_id": "alpha"})
        assert left["episodes"] == []
        assert (await memory_op(memory, "mem", "history", {"session_id": "alpha2"}))["turns"]
    finally:
        await agents.aclose()


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a b", "x" * 162, "-lead", "é", "abc\n"])
async def test_session_ids_are_validated(tmp_path: Path, bad: str) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "in_memory"}})
    agents = LocalAgents(
        {"mem": agent}, scripted={"mem": ScriptedProvider([])}, memory=factory(tmp_path)
    )
    try:
        runtime = await agents.runtime("mem")
        with pytest.raises(InvalidRequest) as info:
            await runtime.run(RunRequest(query="hi", session_id=bad))
        assert info.value.details["field"] == "session_id"
        with pytest.raises(InvalidRequest):
            await memory_op(runtime.memory, "mem", "history", {"session_id": bad})
    finally:
        await agents.aclose()


async def test_memory_api_session_prefix_lists_sessions_and_episodes(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "sqlite"}, "episodic": {"backend": "sqlite"}},
    )
    sessions = ["k1@a", "k1@b", "k10@a", "plain", "k1@c"]
    model = ScriptedProvider([f"answer {s}" for s in sessions])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for session in sessions:
            await turn(agents, f"q {session}", session=session)
        memory = (await agents.runtime("mem")).memory

        async def listed(args: dict[str, object]) -> list[str]:
            found = await memory_op(memory, "mem", "sessions", args)
            return [s["session_id"] for s in found["sessions"]]

        assert await listed({"session_prefix": "k1@"}) == ["k1@c", "k1@b", "k1@a"]
        assert await listed({"session_prefix": "k1@", "limit": 1, "offset": 1}) == ["k1@b"]
        assert await listed({"session_prefix": "k1"}) == ["k1@c", "k10@a", "k1@b", "k1@a"]
        assert await listed({"session_prefix": "k2@"}) == []
        assert await listed({"session_prefix": None}) == list(reversed(sessions))
        assert await listed({}) == list(reversed(sessions))

        async def episodes(args: dict[str, object]) -> list[tuple[str, str]]:
            found = await memory_op(memory, "mem", "episodes", args)
            return [(e["session_id"], e["type"]) for e in found["episodes"]]

        answers = await episodes({"session_prefix": "k1@", "types": ["answer"]})
        assert answers == [("k1@a", "answer"), ("k1@b", "answer"), ("k1@c", "answer")]
        every = await episodes({"session_prefix": "k1@"})
        assert len(every) == 3 * 3  # request, model_call, answer per turn
        assert {s for s, _ in every} == {"k1@a", "k1@b", "k1@c"}
        assert await episodes({"session_prefix": "k1@", "session_id": "k10@a"}) == []
        page = await episodes({"session_prefix": "k1@", "limit": 2, "offset": 3})
        assert page == every[3:5]
        assert await episodes({"session_prefix": "nobody@"}) == []
    finally:
        await agents.aclose()


@pytest.mark.parametrize(
    "bad", ["", "x" * 65, "@k1", "-k", "a b", "a%", "a\\", "é", "k1@\n", 7, ["k1@"]]
)
@pytest.mark.parametrize("op", ["sessions", "episodes"])
async def test_memory_api_refuses_a_bad_session_prefix(
    tmp_path: Path, op: str, bad: object
) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory"}, "episodic": {"backend": "sqlite"}},
    )
    agents = LocalAgents(
        {"mem": agent}, scripted={"mem": ScriptedProvider([])}, memory=factory(tmp_path)
    )
    try:
        memory = (await agents.runtime("mem")).memory
        with pytest.raises(InvalidRequest) as info:
            await memory_op(memory, "mem", op, {"session_prefix": bad})
        assert info.value.details["field"] == "session_prefix"
        # The longest prefix, ending with @, is fine.
        good = "k" * 63 + "@"
        assert await memory_op(memory, "mem", op, {"session_prefix": good}) == {
            "agent": "mem",
            op: [],
        }
    finally:
        await agents.aclose()
