"""The ``sessions(prefix=...)`` part of the ``ConversationStore`` contract:
``ConversationStoreContract`` (``test_conversation_local.py``) inherits it, so every
backend, local and server, runs it.

A prefix is literal: ``%``, ``_`` and ``\\`` are characters (not SQL wildcards or the
escape), ``%`` is not the start of a percent-encoded name (Redis members are
percent-encoded), and case counts (SQLite's ``LIKE`` would ignore it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from astromesh_ray.core.memory.base import NewTurn, SessionKey
from astromesh_ray.core.messages import Message
from astromesh_ray.errors import InvalidRequest

if TYPE_CHECKING:
    from tests.unit.core.memory.test_conversation_local import Backend

NS, AGENT = "default", "support"


def _turn(run_id: str) -> NewTurn:
    return NewTurn(run_id, [Message("user", f"q {run_id}"), Message("assistant", f"a {run_id}")])


async def _append(store: Any, session: str, run_id: str = "r1", agent: str = AGENT) -> None:
    await store.append(SessionKey(NS, agent, session), _turn(run_id))


class SessionPrefixContract:
    """What ``sessions(..., prefix=)`` promises, given a ``backend`` fixture."""

    async def test_a_prefix_lists_only_the_sessions_starting_with_it(
        self, backend: Backend
    ) -> None:
        store = await backend.open()
        for session in ("k1@a", "k1", "k10@c", "K1@x", "k1@", "k2@a", "k1@b"):
            await _append(store, session)
            await backend.advance(0.01)
        await _append(store, "k1@a", "r2")  # now the most recent
        await _append(store, "k1@z", agent="billing")  # another agent's

        async def listed(prefix: str, **page: int) -> list[str]:
            found = await store.sessions(NS, AGENT, prefix=prefix, **page)
            return [s.session for s in found]

        assert await listed("k1@") == ["k1@a", "k1@b", "k1@"]
        turns = {s.session: s.turns for s in await store.sessions(NS, AGENT, prefix="k1@")}
        assert turns == {"k1@a": 2, "k1@b": 1, "k1@": 1}
        # Case counts; a prefix is not a whole id; the id itself is its own prefix.
        assert await listed("k1") == ["k1@a", "k1@b", "k1@", "k10@c", "k1"]
        assert await listed("K1") == ["K1@x"]
        assert await listed("k1@b") == ["k1@b"]
        assert await listed("k1@bb") == []
        assert await listed("k3@") == []
        assert await listed("z") == []
        assert [s.session for s in await store.sessions(NS, "billing", prefix="k1@")] == ["k1@z"]
        assert await store.sessions(NS, "nobody", prefix="k1@") == []
        # Without a prefix: all of them, as before.
        assert len(await store.sessions(NS, AGENT)) == 7

    async def test_a_prefix_is_literal(self, backend: Backend) -> None:
        store = await backend.open()
        sessions = ["a%b", "axb", "a_b", "ayb", "a\\b", "a\\%c", "%x", "_x", "x", "é1", "%C3%A9x"]
        for i, session in enumerate(sessions):
            await _append(store, session, f"r{i}")

        async def listed(prefix: str) -> list[str]:
            return sorted(s.session for s in await store.sessions(NS, AGENT, prefix=prefix))

        assert await listed("a%") == ["a%b"]
        assert await listed("a_") == ["a_b"]
        assert await listed("a\\") == ["a\\%c", "a\\b"]
        assert await listed("a\\%") == ["a\\%c"]
        assert await listed("%") == ["%C3%A9x", "%x"]
        assert await listed("_") == ["_x"]
        assert await listed("a") == sorted(["a%b", "axb", "a_b", "ayb", "a\\b", "a\\%c"])
        assert await listed("é") == ["é1"]  # percent-encoded as %C3%A9 in Redis
        assert await listed("%C3") == ["%C3%A9x"]
        assert await listed("%%") == []
        assert await listed("__") == []

    async def test_offset_and_limit_page_through_the_matches(self, backend: Backend) -> None:
        store = await backend.open()
        # Oldest first: m0 n0 m1 n1 ... m4 n4, so the newest is n4, then m4.
        for i in range(5):
            await _append(store, f"p@m{i}")
            await backend.advance(0.01)
            await _append(store, f"n{i}")
            await backend.advance(0.01)

        async def page(**kwargs: int) -> list[str]:
            return [s.session for s in await store.sessions(NS, AGENT, prefix="p@", **kwargs)]

        assert await page() == ["p@m4", "p@m3", "p@m2", "p@m1", "p@m0"]
        assert await page(limit=2) == ["p@m4", "p@m3"]
        assert await page(limit=2, offset=2) == ["p@m2", "p@m1"]
        assert await page(limit=2, offset=4) == ["p@m0"]
        assert await page(offset=5) == []
        assert await page(limit=0) == []
        pages = [await page(limit=2, offset=o) for o in (0, 2, 4)]
        assert [s for p in pages for s in p] == await page()

    async def test_expired_sessions_neither_match_nor_count(self, backend: Backend) -> None:
        store = await backend.open(ttl_s=1)
        await _append(store, "p@old")
        await backend.advance(0.6)
        await _append(store, "p@new")
        await _append(store, "q@new")
        await backend.advance(0.6)  # p@old expired
        assert [s.session for s in await store.sessions(NS, AGENT, prefix="p@")] == ["p@new"]
        assert await store.sessions(NS, AGENT, prefix="p@", offset=1) == []
        assert await store.sessions(NS, AGENT, prefix="p@o") == []

    @pytest.mark.parametrize("prefix", ["", "a\x00", "x" * 513, 7, b"a"])
    async def test_refuses_a_bad_prefix(self, backend: Backend, prefix: Any) -> None:
        store = await backend.open()
        await _append(store, "a")
        with pytest.raises(InvalidRequest, match="prefix"):
            await store.sessions(NS, AGENT, prefix=prefix)
