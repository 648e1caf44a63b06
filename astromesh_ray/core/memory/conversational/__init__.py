"""Conversational stores: session histories behind the ``ConversationStore`` protocol
(``astromesh_ray.core.memory.base``).

- ``memory.InMemoryConversationStore``: one process's dict, lost on restart (tests,
  ``astromesh run``).
- ``sqlite.SqliteConversationStore``: a local SQLite file (stdlib ``sqlite3``), shared
  safely by the processes of one host.
- ``redis.RedisConversationStore``: Redis through ``redis.asyncio``, one Lua script
  per write.
- ``postgres.PostgresConversationStore``: PostgreSQL through an ``asyncpg`` pool.

Import the backend's module itself: this package imports none of them, so choosing
SQLite never imports a Redis or PostgreSQL driver.
"""
