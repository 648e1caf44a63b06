"""Turns of a session while its Redis or PostgreSQL server restarts (servers of the
test's own, never the shared ones): a turn that hits the outage fails clearly with
``memory_unavailable`` (loading: before any model call; saving: with nothing stored),
the store reconnects once the server is back, and the history holds no partial or
duplicated turn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.api import memory_op
from astromesh_ray.core.memory.factory import MemoryDefaults, MemoryFactory
from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.errors import MemoryUnavailable
from astromesh_ray.spec import AgentSpec
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.engine_helpers import agent_yaml, load_agents


class Server:
    """Stop and start one of the test's servers."""

    def __init__(self, url: str, stop: Callable[[], None], start: Callable[[], None]) -> None:
        self.url, self.stop, self.start = url, stop, start


@pytest.fixture(params=["redis", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Server]]:
    if request.param == "redis":
        redis = request.getfixturevalue("own_redis")
        yield "redis", Server(redis.url, redis.kill, redis.start)
    else:
        pg = request.getfixturevalue("own_postgres")
        yield "postgres", Server(pg.url, lambda: pg.stop("immediate"), pg.start)


def agent(tmp_path: Path, backend: str, url: str) -> AgentSpec:
    memory = {"conversational": {"backend": backend, "connection": {"url": url}}}
    return load_agents(tmp_path, agent_yaml("outage", memory=memory))["outage"]


def contents(request: CompletionRequest) -> list[str | None]:
    return [m.content for m in request.messages]


async def test_turns_across_a_server_restart(tmp_path: Path, server: tuple[str, Server]) -> None:
    backend, srv = server

    def dies_while_answering(request: CompletionRequest) -> str:
        srv.stop()  # the server goes away after the model was called
        return "lost answer"

    model = ScriptedProvider(["first answer", dies_while_answering, "third answer"])
    factory = MemoryFactory(MemoryDefaults(data_dir=str(tmp_path / "data")))
    agents = LocalAgents(
        {"outage": agent(tmp_path, backend, srv.url)}, scripted={"outage": model}, memory=factory
    )
    try:
        runtime = await agents.runtime("outage")

        async def turn(query: str) -> Any:
            return await runtime.run(RunRequest(query=query, session_id="s1"))

        await turn("one")
        # Saving fails: the turn reports it, and nothing of it is stored.
        with pytest.raises(MemoryUnavailable) as saving:
            await turn("two")
        assert saving.value.http_status == 503
        assert saving.value.details["stage"] == "memory"
        # While the server is down, loading fails before any model call (the script
        # has no step for one: a call would fail the test).
        with pytest.raises(MemoryUnavailable):
            await turn("two again")
        srv.start()
        await turn("three")
        history = await memory_op(runtime.memory, "outage", "history", {"session_id": "s1"})
    finally:
        await agents.aclose()
    assert contents(model.requests[2]) == ["one", "first answer", "three"]
    assert [[m["content"] for m in t["messages"]] for t in history["turns"]] == [
        ["one", "first answer"],
        ["three", "third answer"],
    ]
    assert [t["seq"] for t in history["turns"]] == [1, 2]
