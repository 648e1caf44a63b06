"""``RedisConversationStore``: session histories in Redis (``redis.asyncio``).

Keys of one session, under ``<prefix>:conv:{<namespace>:<agent>}:`` (names
percent-encoded, so no two sessions share a key; the braces are a cluster hash tag
that keeps an agent's keys in one slot):

- ``sessions``: a sorted set of the agent's session names, scored by last update;
- ``s:<session>:turns``: a list of the turns' JSON texts, turn ``seq`` at index
  ``seq - 1`` (appends only push, so a turn's index never changes);
- ``s:<session>:runs``: a hash from run id to seq (the dedup of retried appends);
- ``s:<session>:meta``: a hash of ``created_at``, ``updated_at`` and the summary.

Every write is one Lua script, which Redis runs atomically: an append checks the run
id, pushes the turn (its index is its seq), records the run id, updates the meta and
the sorted set and renews the TTLs, or does none of it.  Times are the Redis
server's clock (``TIME``), the one clock every replica shares.  After a server
restart the client reconnects: a command that failed on a broken connection is
retried a few times with a short backoff, which is safe because a re-run append
finds its run id and stores nothing; when the retries run out the call raises
``MemoryUnavailable``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from astromesh_ray.core.memory.base import (
    History,
    NewTurn,
    SessionInfo,
    SessionKey,
    StoredTurn,
    Summary,
)
from astromesh_ray.core.memory.conversational import _records
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable

RETRIES = 3
"""How many times a command that lost its connection is retried (backoff 0.05 s,
0.1 s, 0.2 s: a restart of a local server is over by then, a real outage is not)."""

_APPEND = """
-- KEYS: sessions, meta, turns, runs.  ARGV: run_id, body, ttl_ms (0: none), member.
local seen = redis.call('HGET', KEYS[4], ARGV[1])
if seen then
  return {0, tonumber(seen), redis.call('LINDEX', KEYS[3], tonumber(seen) - 1)}
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local seq = redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], seq)
redis.call('HSETNX', KEYS[2], 'created_at', now)
redis.call('HSET', KEYS[2], 'updated_at', now)
local before = redis.call('PTTL', KEYS[1])
redis.call('ZADD', KEYS[1], now, ARGV[4])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
  -- The set outlives its sessions: extend it, unless a store without TTL made it
  -- permanent (-1).
  if before == -2 or (before >= 0 and before < ttl) then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
else
  for i = 1, 4 do redis.call('PERSIST', KEYS[i]) end
end
return {1, seq, ARGV[2]}
"""

_SET_SUMMARY = """
-- KEYS: meta, turns.  ARGV: upto_seq, text, updated_at.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
-- Never past the last turn (turn seq n is index n - 1, so the length is the last
-- seq): a summary of a deleted session's turns must not land on a new one.
local highest = redis.call('LLEN', KEYS[2])
if highest == 0 or tonumber(ARGV[1]) > highest then return 0 end
local upto = redis.call('HGET', KEYS[1], 'summary_upto')
if upto and tonumber(upto) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'summary_upto', ARGV[1], 'summary_text', ARGV[2],
           'summary_at', ARGV[3])
return 1
"""

# Walks the set newest first, skipping members that do not start with the prefix
# (a plain string compare: the member is the percent-encoded session id, and the
# encoding of a prefix is a prefix of the encoding exactly when the prefix is one of
# the id); a matching member whose meta has expired is a dead session: it is removed
# and not counted, so offset and limit count live matching sessions only.
_SESSIONS = """
-- KEYS: sessions.  ARGV: session key base, offset, limit, member prefix ('': all).
local base, offset, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix = ARGV[4]
local out, dead, live, pos = {}, {}, 0, 0
while #out < 4 * limit do
  local page = redis.call('ZREVRANGE', KEYS[1], pos, pos + 99)
  if #page == 0 then break end
  pos = pos + #page
  for _, member in ipairs(page) do
    if string.sub(member, 1, #prefix) == prefix then
      local meta = redis.call('HMGET', base .. member .. ':meta', 'created_at', 'updated_at')
      if not meta[1] then
        dead[#dead + 1] = member
      else
        live = live + 1
        if live > offset and #out < 4 * limit then
          out[#out + 1] = member
          out[#out + 1] = meta[1]
          out[#out + 1] = meta[2]
          out[#out + 1] = redis.call('LLEN', base .. member .. ':turns')
        end
      end
    end
  end
end
for _, member in ipairs(dead) do redis.call('ZREM', KEYS[1], member) end
return out
"""


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class RedisConversationStore:
    """A ``ConversationStore`` on the Redis server at ``url``.

    ``ttl_s``: a session's keys expire that long after its last append (None:
    never); ``prefix`` starts every key; ``max_connections`` caps the pool, and a
    call waits for a free connection rather than failing.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int | None = None,
        prefix: str = "astromesh",
        max_connections: int = 20,
    ) -> None:
        _records.check_ttl(ttl_s)
        if not prefix or "{" in prefix or "}" in prefix:
            raise InvalidRequest(f"prefix must be non-empty and without braces, got {prefix!r}")
        if max_connections < 1:
            raise InvalidRequest(f"max_connections must be at least 1, got {max_connections!r}")
        self._ttl_ms = 0 if ttl_s is None else ttl_s * 1000
        self._prefix = prefix
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=10,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.025), RETRIES),
            )
        except ValueError as exc:
            raise InvalidRequest(f"not a Redis URL: {url!r} ({exc})") from exc
        where = pool.connection_kwargs
        # For messages: where the server is, without the URL's password.
        self._where = (
            str(where["path"])
            if "path" in where
            else f"{where.get('host', 'localhost')}:{where.get('port', 6379)}"
        )
        self._client: Redis = Redis.from_pool(pool)
        self._append = self._client.register_script(_APPEND)
        self._set_summary = self._client.register_script(_SET_SUMMARY)
        self._sessions = self._client.register_script(_SESSIONS)

    # ------------------------------------------------------------------ keys

    def _agent_base(self, namespace: str, agent: str) -> str:
        return f"{self._prefix}:conv:{{{_quote(namespace)}:{_quote(agent)}}}:"

    def _keys(self, key: SessionKey) -> tuple[str, str, str, str, str]:
        """The session's keys: sessions set, meta, turns, runs, and its member name."""
        base = self._agent_base(key.namespace, key.agent)
        member = _quote(key.session)
        session = f"{base}s:{member}:"
        return base + "sessions", session + "meta", session + "turns", session + "runs", member

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the server's failures into ``MemoryUnavailable``.  Nothing was half
        stored: every write is one script, which ran whole or not at all (and if only
        its reply was lost, the caller's retry of an append finds its run id)."""
        try:
            yield
        except (
            redis_errors.AuthenticationError,
            redis_errors.AuthorizationError,
            redis_errors.NoPermissionError,
        ) as exc:
            raise MemoryUnavailable(
                f"Redis at {self._where} refused our credentials: {exc}",
                hint="check the user and password in the Redis URL",
                backend=self.name,
                retryable=False,
            ) from exc
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.ReadOnlyError,
            redis_errors.OutOfMemoryError,
        ) as exc:
            raise MemoryUnavailable(
                f"Redis at {self._where} is unavailable: {exc}",
                hint="check that the Redis server is running and reachable",
                backend=self.name,
                retryable=True,
            ) from exc

    # ------------------------------------------------------------------ the protocol

    async def append(self, key: SessionKey, turn: NewTurn) -> StoredTurn:
        """Store ``turn`` as the next turn of the session (see ``ConversationStore``)."""
        _records.check_key(key)
        body = _records.encode_turn(turn)
        sessions, meta, turns, runs, member = self._keys(key)
        with self._errors():
            reply = await self._append(
                keys=[sessions, meta, turns, runs], args=[turn.run_id, body, self._ttl_ms, member]
            )
        _, seq, stored = reply
        return _records.decode_turn(int(seq), str(stored))

    async def history(self, key: SessionKey, *, last: int | None = None, after: int = 0) -> History:
        """The session's turns after ``after`` (the ``last`` of them) and its summary."""
        _records.check_key(key)
        _records.check_window(last, after)
        _, meta, turns, _, _ = self._keys(key)
        with self._errors():
            # MULTI/EXEC: the summary, the count and the turns from one moment.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(meta, ["summary_text", "summary_upto", "summary_at"])
                pipe.llen(turns)
                if last != 0:
                    # Turns always end at the last seq: fetch the tail, trim below.
                    pipe.lrange(turns, after if last is None else -last, -1)
                replies: list[Any] = await pipe.execute()
        summary_fields, highest = replies[0], int(replies[1])
        if highest == 0:
            return History(turns=[])
        bodies: list[str] = replies[2] if last != 0 else []
        first = highest - len(bodies) + 1
        wanted = _records.window(highest, last=last, after=after)
        stored = [
            _records.decode_turn(seq, body)
            for seq, body in enumerate(bodies, start=first)
            if seq in wanted
        ]
        text, upto, at = summary_fields
        summary = None if text is None else Summary(text, int(upto), float(at))
        return History(stored, summary)

    async def set_summary(self, key: SessionKey, summary: Summary) -> bool:
        """Store ``summary`` if it folds more turns than the stored one and no more
        than the session holds (``upto_seq`` at most its highest seq: a summary of a
        deleted session's turns cannot land on a new one under the same id); an
        unknown, expired or empty session stores nothing."""
        _records.check_key(key)
        _records.check_summary(summary)
        _, meta, turns, _, _ = self._keys(key)
        with self._errors():
            stored = await self._set_summary(
                keys=[meta, turns],
                args=[summary.upto_seq, summary.text, repr(float(summary.updated_at))],
            )
        return bool(stored)

    async def sessions(
        self,
        namespace: str,
        agent: str,
        *,
        limit: int = 100,
        offset: int = 0,
        prefix: str | None = None,
    ) -> list[SessionInfo]:
        """The agent's live sessions (only those whose id starts with ``prefix`` when
        given), most recently updated first.  With a prefix, the script reads every
        member of the agent's set newer than the page's last match (all of them when
        fewer match than the page asks for)."""
        _records.check_key(SessionKey(namespace, agent, "-"))
        _records.check_page(limit, offset)
        _records.check_prefix(prefix)
        base = self._agent_base(namespace, agent)
        member_prefix = "" if prefix is None else _quote(prefix)
        with self._errors():
            flat: list[Any] = await self._sessions(
                keys=[base + "sessions"], args=[base + "s:", offset, limit, member_prefix]
            )
        return [
            SessionInfo(
                session=urllib.parse.unquote(str(flat[i])),
                turns=int(flat[i + 3]),
                created_at=float(flat[i + 1]),
                updated_at=float(flat[i + 2]),
            )
            for i in range(0, len(flat), 4)
        ]

    async def delete(self, key: SessionKey) -> bool:
        """Remove the session; returns whether a live one existed."""
        _records.check_key(key)
        sessions, meta, turns, runs, member = self._keys(key)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(meta, turns, runs)
                pipe.zrem(sessions, member)
                removed, _ = await pipe.execute()
        return int(removed) > 0

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._client.aclose()
