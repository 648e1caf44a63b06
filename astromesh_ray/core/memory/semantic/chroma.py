"""``ChromaVectorStore``: collections in ChromaDB (>= 1.0), a server or on disk.

chromadb is an optional, heavy extra (``pip install 'astromesh-ray[chroma]'``): it is
imported when the store first needs it, so this module imports without it.

``url``: a Chroma server (``http://host:port``); ``path``: a persistent client on
disk (one process at a time: in Ray, one actor owns it); neither: an in-memory
client.  Collections use cosine space (Chroma's distance ``1 - cosine``, reported
here as the similarity) and remember their dimension in the collection's metadata.
We pass the embeddings ourselves, so Chroma's own embedding function is never
used.  The client is synchronous: every call runs on one thread of the store's own.

Collection names follow Chroma's rules on top of the common ones: at least 3
characters, starting and ending with a letter or digit.  The metadata key
``_astromesh`` is reserved (it marks items stored without metadata).
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx

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
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

__all__ = ["ChromaVectorStore"]

_T = TypeVar("_T")
_DIM_KEY = "astromesh_dim"  # collection metadata: the collection's dimension
# Chroma refuses an empty metadata dict: items without metadata carry this marker,
# dropped again on the way out.
_EMPTY_MARKER = "_astromesh"
_BATCH = 500  # items per upsert call (Chroma caps a batch's size)
# Chroma's own rule (3 to 512 characters, a letter or digit at both ends), within
# what ``check_collection`` allows (at most 63 of [A-Za-z0-9_-]).
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*[A-Za-z0-9]$")
_NAME_MIN = 3


def _check_name(collection: str) -> str:
    """``collection`` if Chroma accepts it as a name too, else ``InvalidRequest``."""
    check_collection(collection)
    if len(collection) < _NAME_MIN or not _NAME_PATTERN.match(collection):
        raise InvalidRequest(
            f"invalid Chroma collection name {collection!r}",
            hint="Chroma collection names are at least 3 characters and start and end "
            "with a letter or digit",
        )
    return collection


def _check_keys(meta: Mapping[str, MetaValue] | None, what: str) -> None:
    if meta and _EMPTY_MARKER in meta:
        raise InvalidRequest(
            f"the {what} key {_EMPTY_MARKER!r} is reserved by the Chroma store",
            hint="use another key name",
        )


def _chromadb() -> Any:
    try:
        return importlib.import_module("chromadb")
    except ImportError as exc:
        raise ConfigError(
            f"the chromadb vector store needs the chromadb package ({exc})",
            hint="pip install 'astromesh-ray[chroma]'",
        ) from None


def _term(key: str, value: MetaValue) -> dict[str, Any]:
    if isinstance(value, bool | str) or not float(value).is_integer():
        return {key: {"$eq": value}}
    # Chroma keeps ints and floats apart; ``where`` compares numbers by value.
    return {"$or": [{key: {"$eq": int(value)}}, {key: {"$eq": float(value)}}]}


def _where(where: dict[str, MetaValue] | None) -> dict[str, Any] | None:
    if not where:
        return None
    terms = [_term(key, value) for key, value in where.items()]
    return terms[0] if len(terms) == 1 else {"$and": terms}


def _metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k != _EMPTY_MARKER}


class ChromaVectorStore:
    """Vector collections in ChromaDB; ``url`` and ``path`` are exclusive.

    An upsert is not atomic.  Chroma's own upsert merges the new metadata into the
    old, so this store replaces items by deleting their ids, then adding them, 500
    at a time: a reader in between (another client of a shared server) misses those
    items, and an upsert that fails part-way may have stored its first batches and
    removed the old items of the batch it failed in.  Retrying the upsert puts
    everything in place.
    """

    name = "chromadb"

    def __init__(self, *, path: str | None = None, url: str | None = None) -> None:
        if path is not None and url is not None:
            raise ConfigError("ChromaVectorStore: give path or url, not both")
        self._chromadb = _chromadb()  # fail at construction, not at the first call
        self.path = path
        self.url = url
        self.where = url or path or "memory"
        self._client: Any = None
        self._collections: dict[str, tuple[Any, int]] = {}
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="chroma-store"
        )

    def __repr__(self) -> str:
        return f"ChromaVectorStore({self.where!r})"

    # -- VectorStore protocol ----------------------------------------------------------

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items``, replacing those with the same ids."""
        _check_name(collection)
        checked = check_items(items)
        for it in checked:
            _check_keys(it.metadata, "metadata")
        if checked:
            await self._run(self._upsert, collection, checked)

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float | None = None,
        where: Where | None = None,
    ) -> list[VectorHit]:
        """The ``k`` items most similar to ``vector`` matching ``where``, best first."""
        _check_name(collection)
        check_search(k, threshold)
        query = check_vector(vector)
        checked = check_where(where)
        _check_keys(checked, "where")
        return await self._run(self._search, collection, query, k, threshold, checked)

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the items with these ``ids`` and/or matching ``where`` (both: the ids
        that also match); returns how many were removed."""
        _check_name(collection)
        checked_ids, checked_where = check_delete(ids, where)
        _check_keys(checked_where, "where")
        if checked_ids == []:
            return 0
        return await self._run(self._delete, collection, checked_ids, checked_where)

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many items of ``collection`` match ``where``."""
        _check_name(collection)
        checked = check_where(where)
        _check_keys(checked, "where")
        return await self._run(self._count, collection, checked)

    async def aclose(self) -> None:
        """Stop the store's thread (a persistent client has written everything)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    # -- the store's thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise MemoryUnavailable("the Chroma store is closed", backend=self.name)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except httpx.TransportError as exc:
            raise MemoryUnavailable(
                f"Chroma at {self.where} cannot be reached: {exc}",
                hint=f"start the Chroma server at {self.where}",
                backend=self.name,
                retryable=True,
            ) from exc

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        chromadb = self._chromadb
        if self.url is not None:
            parsed = urlparse(self.url)
            ssl = parsed.scheme == "https"
            try:
                self._client = chromadb.HttpClient(
                    host=parsed.hostname or "localhost",
                    port=parsed.port or (443 if ssl else 8000),
                    ssl=ssl,
                )
            except ValueError as exc:  # its connection check failed ("Could not connect")
                raise MemoryUnavailable(
                    f"Chroma at {self.url} cannot be reached: {exc}",
                    hint=f"start the Chroma server at {self.url}",
                    backend=self.name,
                    retryable=True,
                ) from exc
        elif self.path is not None:
            self._client = chromadb.PersistentClient(path=self.path)
        else:
            self._client = chromadb.EphemeralClient()
        return self._client

    def _collection(self, collection: str, create: int | None = None) -> tuple[Any, int] | None:
        """The collection and its dimension; None when it does not exist, unless
        ``create`` gives the dimension to create it with."""
        if collection in self._collections:
            return self._collections[collection]
        client = self._connect()
        not_found = self._chromadb.errors.NotFoundError
        try:
            found = client.get_collection(collection, embedding_function=None)
        except not_found:
            if create is None:
                return None
            found = client.get_or_create_collection(
                collection,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={_DIM_KEY: create},
            )
        dim = int((found.metadata or {}).get(_DIM_KEY) or create or 0)
        if not dim:
            raise MemoryUnavailable(
                f"Chroma collection {collection!r} at {self.where} was not created by "
                "astromesh (no dimension recorded)",
                backend=self.name,
                retryable=False,
            )
        self._collections[collection] = (found, dim)
        return found, dim

    def _upsert(self, collection: str, items: list[VectorItem]) -> None:
        found = self._collection(collection, create=len(items[0].vector))
        assert found is not None
        handle, dim = found
        check_vector(items[0].vector, dim)
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            # Chroma's upsert merges the new metadata into the old; ours replaces
            # the item: drop the old ones first.
            handle.delete(ids=[i.id for i in batch])
            handle.add(
                ids=[i.id for i in batch],
                embeddings=[list(i.vector) for i in batch],
                documents=[i.text for i in batch],
                metadatas=[dict(i.metadata) or {_EMPTY_MARKER: True} for i in batch],
            )

    def _search(
        self,
        collection: str,
        query: list[float],
        k: int,
        threshold: float | None,
        where: dict[str, MetaValue] | None,
    ) -> list[VectorHit]:
        found = self._collection(collection)
        if found is None:
            return []
        handle, dim = found
        check_vector(query, dim)
        result = handle.query(
            query_embeddings=[query],
            n_results=k,
            where=_where(where),
            include=["documents", "metadatas", "distances"],
        )
        hits: list[VectorHit] = []
        for id_, text, meta, distance in zip(
            result["ids"][0],
            result["documents"][0],
            result["metadatas"][0],
            result["distances"][0],
            strict=True,
        ):
            score = min(1.0, 1.0 - float(distance))
            if threshold is not None and score < threshold:
                break  # best first
            hits.append(VectorHit(str(id_), str(text or ""), score, _metadata(meta)))
        return hits

    def _matching_ids(
        self, handle: Any, ids: list[str] | None, where: dict[str, MetaValue] | None
    ) -> list[str]:
        got = handle.get(ids=ids, where=_where(where), include=[])
        return list(got["ids"])

    def _delete(
        self, collection: str, ids: list[str] | None, where: dict[str, MetaValue] | None
    ) -> int:
        found = self._collection(collection)
        if found is None:
            return 0
        targets = self._matching_ids(found[0], ids, where)
        if targets:
            found[0].delete(ids=targets)
        return len(targets)

    def _count(self, collection: str, where: dict[str, MetaValue] | None) -> int:
        found = self._collection(collection)
        if found is None:
            return 0
        if not where:
            return int(found[0].count())
        return len(self._matching_ids(found[0], None, where))
