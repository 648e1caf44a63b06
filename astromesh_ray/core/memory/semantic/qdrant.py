"""``QdrantVectorStore``: collections in Qdrant, a server or the client's local mode.

``url``: a Qdrant server (its REST API, through qdrant-client's async client);
``path``: local mode, persisted on disk under that directory (the client holds a
lock on it: one process at a time, so in Ray it lives in one actor,
``serve/vectors.py``); neither: local mode in memory.

Local mode is qdrant-client's own engine in this process: NumPy and SQLite work
that never awaits (its async client would do it all inside the event loop).  So
local mode uses the synchronous ``QdrantClient`` on one thread of the store's own
(as the FAISS and Chroma stores do): off the event loop, one operation at a time.

Qdrant point ids must be UUIDs or integers: a string id is mapped to
``uuid5(ID_NAMESPACE, id)`` (the same id always maps to the same point, so upserts
replace) and kept in the payload, next to the text and the metadata
(``{"id", "text", "metadata": {...}}``).  Collections use cosine distance, whose
score Qdrant reports as the cosine similarity.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from astromesh_ray.core.memory.base import VectorHit, VectorItem, Where
from astromesh_ray.core.memory.semantic.common import (
    MetaValue,
    check_collection,
    check_delete,
    check_items,
    check_search,
    check_vector,
    check_where,
)
from astromesh_ray.core.providers.http import api_key
from astromesh_ray.errors import ConfigError, MemoryUnavailable

__all__ = ["ID_NAMESPACE", "QdrantVectorStore", "point_id"]

ID_NAMESPACE = uuid.UUID("5b0c3f52-8f0e-4a53-9a8e-0d6f3c1e7a21")
"""The uuid5 namespace our string ids are mapped into (fixed: changing it would lose
every stored point's identity)."""

# Points per upsert request to a server (each request is one HTTP body).
_UPSERT_BATCH = 256
# Qdrant answering these is the server being away or overloaded, not our request.
_UNAVAILABLE_STATUS = frozenset({408, 429, 502, 503, 504})


def point_id(id_: str) -> str:
    """The Qdrant point id that stands for our string id ``id_``."""
    return str(uuid.uuid5(ID_NAMESPACE, id_))


def _filter(
    where: dict[str, MetaValue] | None, ids: Sequence[str] | None = None
) -> models.Filter | None:
    must: list[Any] = []
    if ids is not None:
        must.append(models.HasIdCondition(has_id=[point_id(i) for i in ids]))
    for key, value in (where or {}).items():
        field = f"metadata.{key}"
        if isinstance(value, bool | str):
            must.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
        else:
            # Numbers by value (1 == 1.0): a match on an integer would miss a float.
            number = float(value)
            must.append(
                models.FieldCondition(key=field, range=models.Range(gte=number, lte=number))
            )
    return models.Filter(must=must) if must else None


class QdrantVectorStore:
    """Vector collections in Qdrant (cosine distance).

    ``url`` and ``path`` are exclusive; with neither, local mode keeps everything in
    memory.  ``api_key_env`` names the variable holding a server's API key.
    """

    name = "qdrant"

    def __init__(
        self, *, url: str | None = None, path: str | None = None, api_key_env: str | None = None
    ) -> None:
        if url is not None and path is not None:
            raise ConfigError(
                "QdrantVectorStore: give url (a server) or path (local mode), not both"
            )
        if api_key_env is not None and url is None:
            raise ConfigError("QdrantVectorStore: api_key_env applies to a server (url) only")
        self.url = url
        self.path = path
        self.api_key_env = api_key_env
        self.where = url or path or ":memory:"
        # A server: the async client.  Local mode: the sync one, on ``_executor``.
        self._client: AsyncQdrantClient | None = None
        self._local: QdrantClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        try:
            if url is not None:
                # No version probe: it would block here, on a server that may be down.
                self._client = AsyncQdrantClient(
                    url=url, api_key=api_key(api_key_env), check_compatibility=False
                )
            else:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="qdrant-store"
                )
                # Made on the store's thread, which alone uses it (and its SQLite
                # connections, which may be bound to the thread that opened them).
                self._local = self._executor.submit(
                    QdrantClient, location=":memory:" if path is None else None, path=path
                ).result()
        except RuntimeError as exc:  # local mode: another client holds the directory
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            raise ConfigError(
                f"QdrantVectorStore: {exc}",
                hint="local mode has one owner: share one store (on Ray: one actor) per path",
            ) from exc
        self._dims: dict[str, int] = {}  # collections known to exist, and their dimension

    def __repr__(self) -> str:
        return f"QdrantVectorStore({self.where!r})"

    # -- VectorStore protocol ----------------------------------------------------------

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items``, replacing points with the same ids (created on first use)."""
        check_collection(collection)
        checked = check_items(items)
        if not checked:
            return
        dim = len(checked[0].vector)
        have = await self._dimension(collection, create=dim)
        check_vector(checked[0].vector, have)  # InvalidRequest on another dimension
        for start in range(0, len(checked), _UPSERT_BATCH):
            # Built a batch at a time: the event loop runs between batches.
            batch = [
                models.PointStruct(
                    id=point_id(item.id),
                    vector=list(item.vector),
                    payload={"id": item.id, "text": item.text, "metadata": dict(item.metadata)},
                )
                for item in checked[start : start + _UPSERT_BATCH]
            ]
            await self._call("upsert", collection, points=batch, wait=True)

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float | None = None,
        where: Where | None = None,
    ) -> list[VectorHit]:
        """The ``k`` points most similar to ``vector`` matching ``where``, best first."""
        check_collection(collection)
        check_search(k, threshold)
        query = check_vector(vector)
        checked = check_where(where)
        dim = await self._dimension(collection)
        if dim is None:
            return []
        check_vector(query, dim)
        response = await self._call(
            "query_points",
            collection,
            query=query,
            query_filter=_filter(checked),
            limit=k,
            score_threshold=threshold,
            with_payload=True,
        )
        hits = []
        for point in response.points:
            payload = point.payload or {}
            hits.append(
                VectorHit(
                    str(payload["id"]),
                    str(payload.get("text", "")),
                    min(1.0, float(point.score)),  # float error can leave 1.0000001
                    dict(payload.get("metadata") or {}),
                )
            )
        return hits

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the points with these ``ids`` and/or matching ``where`` (both: the ids
        that also match); returns how many were removed."""
        check_collection(collection)
        checked_ids, checked_where = check_delete(ids, where)
        if checked_ids == [] or await self._dimension(collection) is None:
            return 0
        selector = _filter(checked_where, checked_ids)
        assert selector is not None  # check_delete demands ids or a where
        # Counted first: Qdrant's delete does not say how many points it removed.  On a
        # server another writer may change the count in between; the delete is exact.
        found = await self._call("count", collection, count_filter=selector)
        if found.count:
            await self._call(
                "delete",
                collection,
                points_selector=models.FilterSelector(filter=selector),
                wait=True,
            )
        return int(found.count)

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many points of ``collection`` match ``where`` (exact)."""
        check_collection(collection)
        checked = check_where(where)
        if await self._dimension(collection) is None:
            return 0
        result = await self._call("count", collection, count_filter=_filter(checked), exact=True)
        return int(result.count)

    async def aclose(self) -> None:
        """Close the client (local mode: once pending work is done, release the
        directory's lock and stop the store's thread)."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            await self._client.close()
        executor, self._executor = self._executor, None
        if executor is not None and self._local is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._local.close)
            await asyncio.to_thread(executor.shutdown, wait=True)

    # -- internals -----------------------------------------------------------------------

    async def _dimension(self, collection: str, *, create: int | None = None) -> int | None:
        """The collection's dimension; None if it does not exist, unless ``create``
        gives the dimension to create it with."""
        if collection in self._dims:
            return self._dims[collection]
        if not await self._call("collection_exists", collection):
            if create is None:
                return None
            try:
                await self._call(
                    "create_collection",
                    collection,
                    vectors_config=models.VectorParams(
                        size=create, distance=models.Distance.COSINE
                    ),
                )
            except (ValueError, MemoryUnavailable):
                # Created meanwhile by another writer (local mode says ValueError, a
                # server 409): use theirs; anything else fails the lookup below.
                if not await self._call("collection_exists", collection):
                    raise
        info = await self._call("get_collection", collection)
        params = info.config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise MemoryUnavailable(
                f"Qdrant collection {collection!r} at {self.where} has named vectors",
                hint="use a collection created by astromesh (one unnamed vector per point)",
                backend=self.name,
                retryable=False,
            )
        self._dims[collection] = int(params.size)
        return self._dims[collection]

    async def _call(self, method: str, collection: str, /, **kwargs: Any) -> Any:
        """The client's ``method(collection, **kwargs)`` (local mode: on the store's
        thread); a server that cannot be reached or fails becomes
        ``MemoryUnavailable``."""
        if self._closed:
            raise MemoryUnavailable(
                "the Qdrant store is closed", backend=self.name, retryable=False
            )
        try:
            if self._local is not None:
                assert self._executor is not None
                call = functools.partial(getattr(self._local, method), collection, **kwargs)
                return await asyncio.get_running_loop().run_in_executor(self._executor, call)
            assert self._client is not None
            return await getattr(self._client, method)(collection, **kwargs)
        except ResponseHandlingException as exc:  # transport: refused, reset, timed out
            raise MemoryUnavailable(
                f"Qdrant at {self.where} cannot be reached: {exc}",
                hint=f"start Qdrant at {self.where}",
                backend=self.name,
                retryable=True,
            ) from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                # Deleted behind our back: forget what we knew of it.
                self._dims.pop(collection, None)
            if exc.status_code in (401, 403):
                hint = f"check the API key in {self.api_key_env or 'api_key_env'}"
            else:
                hint = None
            status = exc.status_code or 0
            raise MemoryUnavailable(
                f"Qdrant at {self.where}: HTTP {status}: {exc.content[:300]!r}",
                hint=hint,
                backend=self.name,
                status=status,
                retryable=status in _UNAVAILABLE_STATUS or status >= 500,
            ) from exc
