"""The ``ConversationStore`` contract, run on the local backends (in-memory and
SQLite), plus what only SQLite promises: several processes on one file.

``ConversationStoreContract`` is the contract itself; the server backends run it too
(``tests/integration/memory/test_conversation_servers.py``), each through a
``Backend`` that opens stores on one shared place and moves time forward.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.memory.base import (
    ConversationStore,
    History,
    NewTurn,
    SessionKey,
    Summary,
)
from astromesh_ray.core.memory.conversational.memory import InMemoryConversationStore
from astromesh_ray.core.memory.conversational.sqlite import SqliteConversationStore
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable
from tests.unit.core.memory.conversation_prefix_contract import SessionPrefixContract

KEY = SessionKey("default", "support", "s1")


def messages(run_id: str) -> list[Message]:
    """A plain turn's messages, recognisably its own."""
    return [Message("user", f"question of {run_id}"), Message("assistant", f"answer to {run_id}")]


def new_turn(run_id: str, **meta: Any) -> NewTurn:
    return NewTurn(run_id=run_id, messages=messages(run_id), meta=meta)


def tool_messages() -> list[Message]:
    """A turn with everything a transcript can hold."""
    return [
        Message("user", 'Wetter in Zürich? 🌧 "quoted" \\ back\nslash, NUL:\x00, lone:\ud800'),
        Message(
            "assistant",
            None,
            tool_calls=[
                ToolCall(
                    "call_1",
                    "weather",
                    {"city": "Zürich", "days": [1, 2.5], "opts": {"metric": True, "x": None}},
                ),
                ToolCall("call_2", "broken", {}, invalid_arguments='{"city": '),
            ],
        ),
        Message("tool", '{"temp": 7.5}', tool_call_id="call_1", name="weather"),
        Message("tool", "error: invalid arguments", tool_call_id="call_2", name="broken"),
        Message("assistant", "7.5 °C", name="forecaster"),
    ]


class Backend:
    """Opens stores that share one place (a file, a server, a prefix) and moves time
    forward for them."""

    async def open(self, *, ttl_s: int | None = None) -> ConversationStore:
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class LocalBackend(Backend):
    """In-memory (every ``open`` is the one store: it lives in this process) or SQLite
    (every ``open`` a new store, connection and thread on the same file)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.clock = FakeClock()
        self.stores: list[ConversationStore] = []
        self.memory: dict[int | None, InMemoryConversationStore] = {}

    async def open(self, *, ttl_s: int | None = None) -> ConversationStore:
        store: ConversationStore
        if self.kind == "memory":
            if ttl_s not in self.memory:
                self.memory[ttl_s] = InMemoryConversationStore(ttl_s=ttl_s, clock=self.clock)
            store = self.memory[ttl_s]
        else:
            store = SqliteConversationStore(self.path, ttl_s=ttl_s, clock=self.clock)
        self.stores.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()


def seqs(history: History) -> list[int]:
    return [turn.seq for turn in history.turns]


class ConversationStoreContract(SessionPrefixContract):
    """What every ``ConversationStore`` promises (``base.py``), given a ``backend``
    fixture (listing by session prefix: ``conversation_prefix_contract.py``)."""

    async def test_is_a_conversation_store(self, backend: Backend) -> None:
        store = await backend.open()
        assert isinstance(store, ConversationStore)
        assert isinstance(store.name, str) and store.name

    async def test_appends_get_the_next_seq_and_read_back_whole(self, backend: Backend) -> None:
        store = await backend.open()
        stored = [await store.append(KEY, new_turn(f"r{i}", trace_id=f"t{i}")) for i in range(3)]
        assert [t.seq for t in stored] == [1, 2, 3]
        assert stored[0].run_id == "r0" and stored[0].messages == tuple(messages("r0"))
        assert stored[0].meta == {"trace_id": "t0"}
        history = await store.history(KEY)
        assert history.turns == stored
        assert history.summary is None
        assert history.messages() == [m for i in range(3) for m in messages(f"r{i}")]

    async def test_messages_with_tool_calls_round_trip_exactly(self, backend: Backend) -> None:
        store = await backend.open()
        turn = NewTurn(
            run_id="r1",
            messages=tool_messages(),
            created_at=1_790_000_000.123456,
            meta={"usage": {"input_tokens": 12, "cost_usd": 0.00012}, "trace_id": "abc"},
        )
        stored = await store.append(KEY, turn)
        (read,) = (await store.history(KEY)).turns
        for got in (stored, read):
            assert got.messages == tuple(tool_messages())
            assert got.created_at == 1_790_000_000.123456
            assert got.meta == {
                "usage": {"input_tokens": 12, "cost_usd": 0.00012},
                "trace_id": "abc",
            }
        assert read == stored

    async def test_same_run_id_is_stored_once(self, backend: Backend) -> None:
        store = await backend.open()
        first = await store.append(KEY, new_turn("r1"))
        await store.append(KEY, new_turn("r2"))
        retried = NewTurn(run_id="r1", messages=[Message("user", "something else")])
        assert await store.append(KEY, retried) == first
        history = await store.history(KEY)
        assert [t.run_id for t in history.turns] == ["r1", "r2"]
        assert history.turns[0].messages == tuple(messages("r1"))
        # Another session may hold the same run id.
        other = SessionKey(KEY.namespace, KEY.agent, "s2")
        assert (await store.append(other, new_turn("r1"))).seq == 1

    async def test_history_last_and_after(self, backend: Backend) -> None:
        store = await backend.open()
        for i in range(1, 6):
            await store.append(KEY, new_turn(f"r{i}"))
        assert seqs(await store.history(KEY)) == [1, 2, 3, 4, 5]
        assert seqs(await store.history(KEY, last=2)) == [4, 5]
        assert seqs(await store.history(KEY, after=3)) == [4, 5]
        assert seqs(await store.history(KEY, after=1, last=2)) == [4, 5]
        assert seqs(await store.history(KEY, after=4, last=3)) == [5]
        assert seqs(await store.history(KEY, last=10)) == [1, 2, 3, 4, 5]
        assert seqs(await store.history(KEY, last=0)) == []
        assert seqs(await store.history(KEY, after=5)) == []
        assert seqs(await store.history(KEY, after=50)) == []
        window = await store.history(KEY, after=1, last=2)
        assert [t.run_id for t in window.turns] == ["r4", "r5"]
        assert await store.history(SessionKey("default", "support", "nobody")) == History([])

    async def test_summary_only_advances(self, backend: Backend) -> None:
        store = await backend.open()
        assert not await store.set_summary(KEY, Summary("nothing yet", 1, 10.0))
        for i in range(3):
            await store.append(KEY, new_turn(f"r{i}"))
        assert await store.set_summary(KEY, Summary("first two", 2, 100.5))
        assert not await store.set_summary(KEY, Summary("an older one", 1, 101.0))
        assert not await store.set_summary(KEY, Summary("as many again", 2, 102.0))
        history = await store.history(KEY, last=1)
        assert history.summary == Summary("first two", 2, 100.5)
        assert seqs(history) == [3]
        assert await store.set_summary(KEY, Summary("all three", 3, 103.25))
        assert (await store.history(KEY)).summary == Summary("all three", 3, 103.25)

    async def test_summary_of_a_deleted_session_cannot_land_on_its_successor(
        self, backend: Backend
    ) -> None:
        store = await backend.open()
        for i in range(3):
            await store.append(KEY, new_turn(f"r{i}"))
        assert await store.set_summary(KEY, Summary("the old three", 3, 10.0))
        assert await store.delete(KEY)
        await store.append(KEY, new_turn("new1"))
        # A summariser that read the erased session must not bring its text back.
        assert not await store.set_summary(KEY, Summary("the old three", 3, 11.0))
        history = await store.history(KEY)
        assert history.summary is None
        assert seqs(history) == [1]
        assert await store.set_summary(KEY, Summary("the new one", 1, 12.0))
        assert (await store.history(KEY)).summary == Summary("the new one", 1, 12.0)

    async def test_summary_cannot_fold_more_turns_than_stored(self, backend: Backend) -> None:
        store = await backend.open()
        for i in range(2):
            await store.append(KEY, new_turn(f"r{i}"))
        assert not await store.set_summary(KEY, Summary("from the future", 5, 10.0))
        assert not await store.set_summary(KEY, Summary("one too many", 3, 10.5))
        assert (await store.history(KEY)).summary is None
        assert await store.set_summary(KEY, Summary("both", 2, 11.0))
        assert (await store.history(KEY)).summary == Summary("both", 2, 11.0)

    async def test_sessions_most_recently_updated_first(self, backend: Backend) -> None:
        store = await backend.open()
        for name in ("a", "b", "c"):
            await store.append(SessionKey("default", "support", name), new_turn(f"{name}1"))
            await backend.advance(0.01)
        await store.append(SessionKey("default", "support", "a"), new_turn("a2"))
        listed = await store.sessions("default", "support")
        assert [s.session for s in listed] == ["a", "c", "b"]
        assert [s.turns for s in listed] == [2, 1, 1]
        a = listed[0]
        assert a.created_at < a.updated_at
        assert listed[1].updated_at > listed[2].updated_at > a.created_at
        page = await store.sessions("default", "support", limit=2)
        assert [s.session for s in page] == ["a", "c"]
        page = await store.sessions("default", "support", limit=1, offset=1)
        assert [s.session for s in page] == ["c"]
        assert await store.sessions("default", "support", offset=3) == []
        assert await store.sessions("default", "support", limit=0) == []
        assert await store.sessions("default", "nobody") == []

    async def test_sessions_are_scoped_by_namespace_agent_and_id(self, backend: Backend) -> None:
        store = await backend.open()
        # Separator-like characters must not make two keys collide.
        keys = [
            SessionKey("a:b", "c", "s"),
            SessionKey("a", "b:c", "s"),
            SessionKey("a", "b", "c:s"),
            SessionKey("a", "b:c", "s:"),
            SessionKey("ns{1}", "ag%2F", "s/1 é"),
        ]
        for i, key in enumerate(keys):
            await store.append(key, new_turn(f"r{i}"))
        for i, key in enumerate(keys):
            history = await store.history(key)
            assert [t.run_id for t in history.turns] == [f"r{i}"]
        assert [s.session for s in await store.sessions("a:b", "c")] == ["s"]
        assert sorted(s.session for s in await store.sessions("a", "b:c")) == ["s", "s:"]
        assert [s.session for s in await store.sessions("a", "b")] == ["c:s"]
        assert [s.session for s in await store.sessions("ns{1}", "ag%2F")] == ["s/1 é"]
        assert await store.sessions("a", "c") == []
        assert await store.delete(keys[1])
        assert (await store.history(keys[1])).turns == []
        assert [t.run_id for t in (await store.history(keys[3])).turns] == ["r3"]
        assert [t.run_id for t in (await store.history(keys[0])).turns] == ["r0"]

    async def test_delete(self, backend: Backend) -> None:
        store = await backend.open()
        other = SessionKey(KEY.namespace, KEY.agent, "kept")
        await store.append(KEY, new_turn("r1"))
        await store.append(KEY, new_turn("r2"))
        await store.append(other, new_turn("r1"))
        assert await store.set_summary(KEY, Summary("s", 1, 1.0))
        assert await store.delete(KEY)
        assert await store.history(KEY) == History([])
        assert [s.session for s in await store.sessions(KEY.namespace, KEY.agent)] == ["kept"]
        assert not await store.delete(KEY)
        # A new session under the old name starts over; the old run ids are gone too.
        again = await store.append(KEY, new_turn("r2"))
        assert again.seq == 1
        assert await store.history(KEY) == History([again])
        assert seqs(await store.history(other)) == [1]

    async def test_ttl_renews_on_append_and_expired_sessions_vanish(self, backend: Backend) -> None:
        store = await backend.open(ttl_s=1)
        kept = SessionKey(KEY.namespace, KEY.agent, "kept")
        await store.append(KEY, new_turn("r1"))
        await store.append(kept, new_turn("k1"))
        await backend.advance(0.6)
        await store.append(KEY, new_turn("r2"))  # renews KEY, not `kept`
        await backend.advance(0.6)
        assert seqs(await store.history(KEY)) == [1, 2]
        assert await store.history(kept) == History([])
        assert not await store.set_summary(kept, Summary("too late", 1, 1.0))
        assert [s.session for s in await store.sessions(KEY.namespace, KEY.agent)] == [KEY.session]
        await backend.advance(0.6)
        assert await store.history(KEY) == History([])
        assert await store.sessions(KEY.namespace, KEY.agent) == []
        assert not await store.delete(KEY)
        # An expired session is a new one: seq and run ids start over.
        assert (await store.append(KEY, new_turn("r1"))).seq == 1
        assert seqs(await store.history(KEY)) == [1]

    async def test_concurrent_appends_from_several_stores(self, backend: Backend) -> None:
        stores = [await backend.open() for _ in range(4)]
        run_ids = [f"run-{i:02d}" for i in range(40)]
        stored = await asyncio.gather(
            *(stores[i % 4].append(KEY, new_turn(run_id)) for i, run_id in enumerate(run_ids))
        )
        assert sorted(t.seq for t in stored) == list(range(1, 41))
        history = await stores[0].history(KEY)
        assert seqs(history) == list(range(1, 41))
        assert sorted(t.run_id for t in history.turns) == run_ids
        for turn in history.turns:
            assert turn.messages == tuple(messages(turn.run_id))
        by_run = {t.run_id: t for t in stored}
        assert all(by_run[t.run_id] == t for t in history.turns)
        # Retrying all of them at once stores nothing more.
        again = await asyncio.gather(
            *(stores[(i + 1) % 4].append(KEY, new_turn(r)) for i, r in enumerate(run_ids))
        )
        assert {t.run_id: t.seq for t in again} == {t.run_id: t.seq for t in stored}
        assert len((await stores[1].history(KEY)).turns) == 40

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(
                lambda s: s.append(KEY, NewTurn(run_id="", messages=messages("x"))), id="no-run-id"
            ),
            pytest.param(
                lambda s: s.append(KEY, NewTurn(run_id="r", messages=[])), id="no-messages"
            ),
            pytest.param(
                lambda s: s.append(KEY, NewTurn(run_id="r", messages=["hi"])),  # type: ignore[list-item]
                id="not-a-message",
            ),
            pytest.param(
                lambda s: s.append(KEY, NewTurn("r", messages("r"), meta={"x": {1}})),
                id="meta-not-json",
            ),
            pytest.param(
                lambda s: s.append(SessionKey("", "a", "s"), new_turn("r")), id="empty-namespace"
            ),
            pytest.param(
                lambda s: s.append(SessionKey("n", "a", "s\x00"), new_turn("r")), id="nul-in-key"
            ),
            pytest.param(lambda s: s.history(KEY, last=-1), id="negative-last"),
            pytest.param(lambda s: s.history(KEY, after=-1), id="negative-after"),
            pytest.param(lambda s: s.set_summary(KEY, Summary("x", -1, 1.0)), id="negative-upto"),
            pytest.param(lambda s: s.sessions("default", "support", limit=-1), id="negative-limit"),
            pytest.param(
                lambda s: s.sessions("default", "support", offset=-1), id="negative-offset"
            ),
        ],
    )
    async def test_refuses_bad_arguments(
        self, backend: Backend, call: Callable[[ConversationStore], Any]
    ) -> None:
        store = await backend.open()
        with pytest.raises(InvalidRequest):
            await call(store)
        assert await store.history(KEY) == History([])


# --------------------------------------------------------------------------- local


@pytest.fixture(params=["memory", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    local = LocalBackend(request.param, tmp_path / "data" / "memory.sqlite3")
    yield local
    await local.aclose()


class TestLocalConversationStores(ConversationStoreContract):
    """The contract on ``InMemoryConversationStore`` and ``SqliteConversationStore``."""


async def test_in_memory_store_hands_out_copies() -> None:
    store = InMemoryConversationStore()
    stored = await store.append(KEY, new_turn("r1"))
    stored.messages[0].content = "changed by the caller"
    assert (await store.history(KEY)).turns[0].messages == tuple(messages("r1"))


def test_stores_refuse_a_ttl_that_is_not_positive(tmp_path: Path) -> None:
    for ttl in (0, -5, 1.5):
        with pytest.raises(InvalidRequest):
            InMemoryConversationStore(ttl_s=ttl)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            SqliteConversationStore(tmp_path / "x.sqlite3", ttl_s=ttl)  # type: ignore[arg-type]


async def test_sqlite_creates_its_directory_and_prefixed_tables_beside_others(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "er" / "memory.sqlite3"
    store = SqliteConversationStore(path)
    await store.append(KEY, new_turn("r1"))
    await store.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE episodes (id INTEGER PRIMARY KEY, data TEXT)")
        conn.execute("INSERT INTO episodes (data) VALUES ('kept')")
    store = SqliteConversationStore(path)
    await store.append(KEY, new_turn("r2"))
    assert await store.delete(KEY)
    await store.aclose()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"conversation_sessions", "conversation_turns", "episodes"}
        assert conn.execute("SELECT data FROM episodes").fetchall() == [("kept",)]


async def test_sqlite_file_is_in_wal_mode_and_outlives_the_store(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SqliteConversationStore(path)
    await store.append(KEY, new_turn("r1"))
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reopened = SqliteConversationStore(path)
    assert seqs(await reopened.history(KEY)) == [1]
    assert (await reopened.append(KEY, new_turn("r2"))).seq == 2
    await reopened.aclose()


async def test_sqlite_write_lock_held_too_long_is_memory_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SqliteConversationStore(path, busy_timeout_s=0.05)
    await store.append(KEY, new_turn("r1"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(MemoryUnavailable) as info:
            await store.append(KEY, new_turn("r2"))
        assert info.value.details == {
            "backend": "sqlite",
            "retryable": True,
            "sqlite_error": "SQLITE_BUSY",
        }
        assert seqs(await store.history(KEY)) == [1]  # readers are not blocked (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await store.append(KEY, new_turn("r2"))).seq == 2
    await store.aclose()


async def test_sqlite_directory_that_cannot_be_created_is_memory_unavailable(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = SqliteConversationStore(tmp_path / "a-file" / "memory.sqlite3")
    with pytest.raises(MemoryUnavailable) as info:
        await store.append(KEY, new_turn("r1"))
    assert info.value.details["retryable"] is False
    await store.aclose()


def _append_from_process(path: str, worker: int, count: int, start: Any) -> None:
    """One process's appends (run in a spawned child)."""

    async def main() -> None:
        store = SqliteConversationStore(path)
        await store.history(KEY)  # connected, tables made: now only appends contend
        start.wait()
        for i in range(count):
            await store.append(KEY, new_turn(f"p{worker}-{i}"))
            # Between turns, as a replica would: the other process gets the lock
            # and the two interleave (otherwise the first simply runs ahead).
            await asyncio.sleep(0.002)
        await store.aclose()

    asyncio.run(main())


async def test_sqlite_processes_sharing_a_file_never_lose_or_duplicate_a_turn(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "memory.sqlite3")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)  # both append at once, not one after the other
    workers = [
        context.Process(target=_append_from_process, args=(path, w, 50, start)) for w in (0, 1)
    ]
    for process in workers:
        process.start()
    for process in workers:
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
    store = SqliteConversationStore(path)
    history = await store.history(KEY)
    await store.aclose()
    assert seqs(history) == list(range(1, 101))
    expected = {f"p{w}-{i}" for w in (0, 1) for i in range(50)}
    assert {t.run_id for t in history.turns} == expected
    for turn in history.turns:
        assert turn.messages == tuple(messages(turn.run_id))
    # Each process's own turns are in the order it appended them.
    for w in (0, 1):
        mine = [t.run_id for t in history.turns if t.run_id.startswith(f"p{w}-")]
        assert mine == [f"p{w}-{i}" for i in range(50)]


async def test_sqlite_appends_purge_expired_sessions_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    clock = FakeClock()
    store = SqliteConversationStore(path, ttl_s=1, clock=clock)
    gone = SessionKey(KEY.namespace, KEY.agent, "gone")
    await store.append(gone, new_turn("g1"))
    clock.now += 61  # past the expiry and the purge interval
    await store.append(KEY, new_turn("r1"))
    await store.aclose()
    with sqlite3.connect(path) as conn:
        for table in ("conversation_sessions", "conversation_turns"):
            rows = conn.execute(f"SELECT session FROM {table}").fetchall()
            assert rows == [(KEY.session,)]
