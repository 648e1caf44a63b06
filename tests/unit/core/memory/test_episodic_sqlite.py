"""The ``EpisodicLog`` contract, run on ``SqliteEpisodicLog``, plus what only SQLite
promises: several processes appending to one file, shared with the conversation
store.

``EpisodicLogContract`` is the contract itself; PostgreSQL runs it too
(``tests/integration/memory/test_episodic_postgres.py``) through its own
``EpisodicBackend``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.memory.base import (
    Episode,
    EpisodeQuery,
    EpisodicLog,
    NewTurn,
    SessionKey,
)
from astromesh_ray.core.memory.conversational.sqlite import SqliteConversationStore
from astromesh_ray.core.memory.episodic.sqlite import SqliteEpisodicLog
from astromesh_ray.core.messages import Message
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable

NS, AGENT = "default", "support"


def ep(
    type: str = "request",
    *,
    ts: float,
    n: Any = None,
    data: dict[str, Any] | None = None,
    session: str | None = "s1",
    run_id: str = "r1",
    agent: str = AGENT,
    namespace: str = NS,
) -> Episode:
    """An episode whose data names it (``n``), so results can be compared by it."""
    return Episode(
        namespace=namespace,
        agent=agent,
        session=session,
        run_id=run_id,
        trace_id=f"trace-{run_id}",
        type=type,
        data={"n": n, **(data or {})},
        ts=ts,
    )


def q(**kwargs: Any) -> EpisodeQuery:
    return EpisodeQuery(
        namespace=kwargs.pop("namespace", NS), agent=kwargs.pop("agent", AGENT), **kwargs
    )


def names(episodes: list[Episode]) -> list[Any]:
    return [e.data.get("n") for e in episodes]


class EpisodicBackend:
    """One shared place episodic logs are opened on (a file, a table)."""

    # What an insert refused by the database itself raises (after ``poison``).
    refused: type[BaseException] = Exception

    def open(self) -> EpisodicLog:
        """A new log object on the shared place."""
        raise NotImplementedError

    async def poison(self, log: EpisodicLog) -> None:
        """Make the database refuse any inserted episode whose data contains
        "poison" (a trigger), so a batch fails halfway through."""
        raise NotImplementedError


class EpisodicLogContract:
    """The ``EpisodicLog`` contract; a subclass provides the ``backend`` fixture."""

    @pytest.fixture
    async def log(self, backend: EpisodicBackend) -> AsyncIterator[EpisodicLog]:
        log = backend.open()
        try:
            yield log
        finally:
            await log.aclose()

    async def test_is_an_episodic_log(self, log: EpisodicLog) -> None:
        assert isinstance(log, EpisodicLog)
        assert log.name

    async def test_episodes_come_back_whole_oldest_first_with_ids(self, log: EpisodicLog) -> None:
        data = {
            "n": "b",
            "text": 'Zürich 🌧 "quoted" \\ back\nslash',
            "nested": {"list": [1, 2.5, True, None], "empty": {}},
        }
        await log.append([ep("model_call", ts=200.25, data=data), ep(ts=100.5, n="a")])
        await log.append([ep("answer", ts=300.0, n="c")])
        found = await log.query(q())
        assert names(found) == ["a", "b", "c"]
        first, second, third = found
        assert second.data == data
        assert (second.type, second.ts, second.session) == ("model_call", 200.25, "s1")
        assert (second.namespace, second.agent) == (NS, AGENT)
        assert (second.run_id, second.trace_id) == ("r1", "trace-r1")
        # Ids are the log's: positive, in the order episodes were appended.
        assert 0 < second.id < first.id < third.id

    async def test_equal_timestamps_keep_append_order(self, log: EpisodicLog) -> None:
        await log.append([ep(ts=5.0, n=i) for i in range(5)])
        await log.append([ep(ts=5.0, n=5)])
        assert names(await log.query(q())) == [0, 1, 2, 3, 4, 5]

    async def test_filters(self, log: EpisodicLog) -> None:
        await log.append(
            [
                ep("request", ts=1.0, n="req-s1", session="s1", run_id="r1"),
                ep("tool_call", ts=2.0, n="tool-s1", session="s1", run_id="r1"),
                ep("answer", ts=3.0, n="answer-s1", session="s1", run_id="r1"),
                ep("request", ts=4.0, n="req-s2", session="s2", run_id="r2"),
                ep("error", ts=5.0, n="error-nosession", session=None, run_id="r3"),
                ep("request", ts=2.5, n="other-agent", agent="billing"),
                ep("request", ts=2.5, n="other-ns", namespace="prod"),
            ]
        )
        every = ["req-s1", "tool-s1", "answer-s1", "req-s2", "error-nosession"]
        assert names(await log.query(q())) == every
        assert names(await log.query(q(session="s1"))) == ["req-s1", "tool-s1", "answer-s1"]
        assert names(await log.query(q(run_id="r2"))) == ["req-s2"]
        assert names(await log.query(q(types=("request",)))) == ["req-s1", "req-s2"]
        by_types = await log.query(q(types=("error", "answer", "error")))
        assert names(by_types) == ["answer-s1", "error-nosession"]
        # since <= ts < until
        assert names(await log.query(q(since=2.0, until=4.0))) == ["tool-s1", "answer-s1"]
        assert names(await log.query(q(since=4.0))) == ["req-s2", "error-nosession"]
        assert names(await log.query(q(until=2.0))) == ["req-s1"]
        combined = q(session="s1", types=("request", "answer"), since=1.5)
        assert names(await log.query(combined)) == ["answer-s1"]
        assert names(await log.query(q(agent="billing"))) == ["other-agent"]
        assert names(await log.query(q(namespace="prod"))) == ["other-ns"]
        assert await log.query(q(session="nobody")) == []
        assert await log.query(q(since=4.0, until=4.0)) == []

    async def test_session_prefix_is_literal_and_combines_with_the_other_filters(
        self, log: EpisodicLog
    ) -> None:
        sessions = ["k1@a", "k1@b", "k10@a", "K1@a", "k1", None, "a%b", "axb", "a_b", "a\\b"]
        await log.append([ep(ts=float(i), n=s, session=s) for i, s in enumerate(sessions)])
        await log.append([ep("answer", ts=20.0, n="k1@a-answer", session="k1@a")])
        await log.append([ep(ts=21.0, n="billing", session="k1@a", agent="billing")])
        assert names(await log.query(q(session_prefix="k1@"))) == ["k1@a", "k1@b", "k1@a-answer"]
        assert names(await log.query(q(session_prefix="k1"))) == [
            "k1@a",
            "k1@b",
            "k10@a",
            "k1",
            "k1@a-answer",
        ]
        assert names(await log.query(q(session_prefix="K1"))) == ["K1@a"]
        assert names(await log.query(q(session_prefix="a%"))) == ["a%b"]
        assert names(await log.query(q(session_prefix="a_"))) == ["a_b"]
        assert names(await log.query(q(session_prefix="a\\"))) == ["a\\b"]
        assert names(await log.query(q(session_prefix="a"))) == ["a%b", "axb", "a_b", "a\\b"]
        assert await log.query(q(session_prefix="%")) == []
        assert await log.query(q(session_prefix="k3@")) == []
        # With the other filters: every one applies.
        assert names(await log.query(q(session_prefix="k1@", types=("answer",)))) == ["k1@a-answer"]
        assert names(await log.query(q(session_prefix="k1@", session="k1@b"))) == ["k1@b"]
        assert await log.query(q(session_prefix="k1@", session="k10@a")) == []
        assert names(await log.query(q(session_prefix="k1@", since=1.0, until=20.0))) == ["k1@b"]
        assert names(await log.query(q(session_prefix="k1@", agent="billing"))) == ["billing"]
        # Paging counts the matches only.
        assert names(await log.query(q(session_prefix="k1", limit=2, offset=1))) == [
            "k1@b",
            "k10@a",
        ]
        assert names(await log.query(q(session_prefix="k1", offset=4))) == ["k1@a-answer"]
        assert await log.query(q(session_prefix="k1", offset=5)) == []

    async def test_limit_and_offset_page_through_in_order(self, log: EpisodicLog) -> None:
        await log.append([ep(ts=float(i), n=i) for i in reversed(range(10))])
        assert names(await log.query(q(limit=3))) == [0, 1, 2]
        assert names(await log.query(q(limit=3, offset=3))) == [3, 4, 5]
        assert names(await log.query(q(limit=3, offset=9))) == [9]
        assert names(await log.query(q(offset=10))) == []
        pages = [names(await log.query(q(limit=4, offset=o))) for o in (0, 4, 8)]
        assert [n for page in pages for n in page] == list(range(10))

    async def test_a_batch_with_a_bad_episode_stores_nothing(self, log: EpisodicLog) -> None:
        good = ep(ts=1.0, n="good")
        with pytest.raises(InvalidRequest, match="unknown episode type 'thought'"):
            await log.append([good, ep("thought", ts=2.0)])
        with pytest.raises(InvalidRequest, match="not JSON"):
            await log.append([good, ep(ts=2.0, n={1, 2})])
        with pytest.raises(InvalidRequest, match="not JSON"):
            await log.append([good, ep(ts=2.0, n=float("nan"))])
        with pytest.raises(InvalidRequest, match="ts"):
            await log.append([good, ep(ts=float("inf"))])
        with pytest.raises(InvalidRequest, match="namespace"):
            await log.append([good, ep(ts=2.0, namespace="")])
        with pytest.raises(InvalidRequest, match="NUL"):
            await log.append([good, ep(ts=2.0, session="s\x00")])
        assert await log.query(q()) == []
        await log.append([])  # nothing to store is not an error
        assert await log.query(q()) == []

    async def test_a_batch_the_database_refuses_halfway_stores_nothing(
        self, log: EpisodicLog, backend: EpisodicBackend
    ) -> None:
        await log.append([ep(ts=1.0, n="before")])
        await backend.poison(log)
        batch = [ep(ts=2.0, n="first"), ep(ts=3.0, n="second"), ep(ts=4.0, n="poison")]
        with pytest.raises(backend.refused):
            await log.append(batch)
        assert names(await log.query(q())) == ["before"]
        await log.append(batch[:2])  # the log still works
        assert names(await log.query(q())) == ["before", "first", "second"]

    async def test_unstorable_characters_become_replacement_characters(
        self, log: EpisodicLog
    ) -> None:
        await log.append([ep(ts=1.0, n="x", data={"text": "NUL:\x00 lone:\ud800", "k\x00": 1})])
        (found,) = await log.query(q())
        assert found.data == {"n": "x", "text": "NUL:\ufffd lone:\ufffd", "k\ufffd": 1}

    async def test_delete_session_erases_only_that_session(self, log: EpisodicLog) -> None:
        await log.append(
            [
                ep(ts=1.0, n="s1-a", session="s1"),
                ep(ts=2.0, n="s1-b", session="s1"),
                ep(ts=3.0, n="s2", session="s2"),
                ep(ts=4.0, n="none", session=None),
                ep(ts=5.0, n="billing-s1", session="s1", agent="billing"),
            ]
        )
        assert await log.delete_session(NS, AGENT, "s1") == 2
        assert names(await log.query(q())) == ["s2", "none"]
        assert names(await log.query(q(agent="billing"))) == ["billing-s1"]
        assert await log.delete_session(NS, AGENT, "s1") == 0
        with pytest.raises(InvalidRequest, match="session"):
            await log.delete_session(NS, AGENT, "")

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            (q(limit=0), "limit"),
            (q(limit=10_001), "limit"),
            (q(offset=-1), "offset"),
            (q(types=("thought",)), "unknown episode types"),
            (q(types="request"), "types"),
            (q(since=float("nan")), "since"),
            (q(agent=""), "agent"),
            (q(session=""), "session"),
            (q(session_prefix=""), "session_prefix"),
            (q(session_prefix="a\x00"), "session_prefix"),
        ],
    )
    async def test_bad_queries_are_refused(
        self, log: EpisodicLog, query: EpisodeQuery, message: str
    ) -> None:
        with pytest.raises(InvalidRequest, match=message):
            await log.query(query)

    async def test_logs_on_one_place_see_each_others_episodes(
        self, log: EpisodicLog, backend: EpisodicBackend
    ) -> None:
        other = backend.open()
        try:
            await log.append([ep(ts=1.0, n="mine")])
            await other.append([ep(ts=2.0, n="theirs")])
            assert names(await other.query(q())) == ["mine", "theirs"]
            assert names(await log.query(q())) == ["mine", "theirs"]
        finally:
            await other.aclose()

    async def test_concurrent_appends_all_land_in_batch_order(
        self, log: EpisodicLog, backend: EpisodicBackend
    ) -> None:
        other = backend.open()
        try:
            await asyncio.gather(
                *(
                    target.append([ep(ts=float(b), n=f"{b}-{i}", run_id=f"r{b}") for i in range(3)])
                    for b, target in enumerate([log, other] * 10)
                )
            )
        finally:
            await other.aclose()
        found = await log.query(q())
        assert len(found) == 60
        for b in range(20):
            batch = [e for e in found if e.run_id == f"r{b}"]
            assert names(batch) == [f"{b}-{i}" for i in range(3)]
            assert [e.id for e in batch] == sorted(e.id for e in batch)

    async def test_closed_log_opens_again(self, log: EpisodicLog) -> None:
        await log.append([ep(ts=1.0, n="a")])
        await log.aclose()
        await log.append([ep(ts=2.0, n="b")])
        assert names(await log.query(q())) == ["a", "b"]

    async def test_a_pickled_log_works_on_the_same_place(self, log: EpisodicLog) -> None:
        await log.append([ep(ts=1.0, n="a")])  # holds a live connection / pool now
        copy: EpisodicLog = pickle.loads(pickle.dumps(log))
        try:
            await copy.append([ep(ts=2.0, n="b")])
            assert names(await copy.query(q())) == ["a", "b"]
        finally:
            await copy.aclose()


# --------------------------------------------------------------------------- SQLite


class SqliteBackend(EpisodicBackend):
    refused = sqlite3.IntegrityError  # RAISE(ABORT) in a trigger is a constraint failure

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> SqliteEpisodicLog:
        return SqliteEpisodicLog(self.path)

    async def poison(self, log: EpisodicLog) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                "CREATE TRIGGER episode_poison BEFORE INSERT ON episode_log "
                "WHEN NEW.data LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        conn.close()


class TestSqliteEpisodicLog(EpisodicLogContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> SqliteBackend:
        return SqliteBackend(tmp_path / "data" / "memory.db")  # the folder is created


def _append_batches(path: str, writer: int, batches: int) -> None:
    """A child process: append ``batches`` batches of 3 episodes."""

    async def run() -> None:
        log = SqliteEpisodicLog(path)
        for b in range(batches):
            run_id = f"w{writer}-b{b}"
            await log.append([ep(ts=float(b), n=i, run_id=run_id) for i in range(3)])
        await log.aclose()

    asyncio.run(run())


async def test_processes_appending_to_one_file_keep_every_batch_whole(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_batches, args=(str(path), w, 15)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    log = SqliteEpisodicLog(path)
    try:
        found = await log.query(q(limit=1000))
    finally:
        await log.aclose()
    assert len(found) == 3 * 15 * 3
    for w in range(3):
        for b in range(15):
            batch = [e for e in found if e.run_id == f"w{w}-b{b}"]
            assert names(batch) == [0, 1, 2]
            # One transaction per batch: its ids are consecutive, never interleaved.
            first = batch[0].id
            assert [e.id for e in batch] == [first, first + 1, first + 2]
    assert len({e.id for e in found}) == len(found)


async def test_the_file_is_shared_with_the_conversation_store(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    log = SqliteEpisodicLog(path)
    store = SqliteConversationStore(path)
    key = SessionKey(NS, AGENT, "s1")
    try:
        await log.append([ep(ts=1.0, n="a")])
        await store.append(key, NewTurn("r1", [Message("user", "hi"), Message("assistant", "yo")]))
        await log.append([ep(ts=2.0, n="b")])
        assert names(await log.query(q())) == ["a", "b"]
        assert len((await store.history(key)).turns) == 1
        assert await log.delete_session(NS, AGENT, "s1") == 2
        assert len((await store.history(key)).turns) == 1  # each deletes only its own
    finally:
        await log.aclose()
        await store.aclose()
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert "episode_log" in tables
    assert mode == "wal"


async def test_a_file_locked_past_the_busy_timeout_is_unavailable_and_retryable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "memory.db"
    log = SqliteEpisodicLog(path, busy_timeout_s=0.2)
    await log.append([ep(ts=1.0, n="a")])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(MemoryUnavailable) as caught:
            await log.append([ep(ts=2.0, n="b")])
        assert caught.value.details["retryable"] is True
        assert caught.value.details["backend"] == "sqlite"
        # Readers do not wait for a writer (WAL).
        assert names(await log.query(q())) == ["a"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await log.append([ep(ts=2.0, n="b")])
    assert names(await log.query(q())) == ["a", "b"]
    await log.aclose()


async def test_a_path_that_cannot_be_a_database_is_unavailable(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are not the tables you are looking for\n" * 100)
    for path in (tmp_path, not_a_db):  # a folder; a file that is not SQLite
        log = SqliteEpisodicLog(path)
        with pytest.raises(MemoryUnavailable) as caught:
            await log.append([ep(ts=1.0)])
        assert caught.value.details["retryable"] is False
        assert str(path) in caught.value.message
        await log.aclose()


def test_busy_timeout_must_be_positive(tmp_path: Path) -> None:
    from astromesh_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="busy_timeout_s"):
        SqliteEpisodicLog(tmp_path / "x.db", busy_timeout_s=0)
