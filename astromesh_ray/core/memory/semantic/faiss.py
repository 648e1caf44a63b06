"""``FaissVectorStore``: an HNSW index per collection in this process, snapshot to disk.

Vectors are L2-normalised on the way in, so the index's inner product is their
cosine similarity.  HNSW cannot remove vectors: an upsert replacing an id leaves a
tombstone, which searches skip, and when tombstones pass ``compact_fraction`` of a
collection's index it is rebuilt from the live vectors.  A delete always rebuilds
the collection (before its snapshot is written), so a deleted item's embedding
leaves memory and disk at once (erasure); that costs a rebuild of the index per
delete call, so delete in bulk (by ``where`` or a list of ids) rather than one by one.

Searches are exact over small candidate sets (a selective ``where``, a small
collection: a NumPy dot product over the candidates' stored vectors); otherwise they
go through HNSW, restricted to the live (and matching) items by a FAISS ID selector,
so a filter or many tombstones never leave fewer than ``k`` results when ``k``
items match.

With a ``directory`` every mutation is followed by a snapshot of its collection
(written to a temporary file, fsynced, then renamed over the old one, so a crash
leaves the previous or the new snapshot, never a torn one), and the snapshots are
loaded when the store is constructed.  All work runs on one thread of the store's
own: off the event loop, and one operation at a time (FAISS indexes are not safe
for concurrent writes).  The store has one owner: in Ray it lives in one actor
(``serve/vectors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

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
from astromesh_ray.core.memory.semantic.faiss_collection import (
    SUFFIX,
    Collection,
    normalise,
    read_snapshot,
    write_snapshot,
)
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

__all__ = ["FaissStats", "FaissVectorStore"]

_log = logging.getLogger("astromesh.memory")
_T = TypeVar("_T")

# Below this many candidates a search is an exact dot product: as fast as HNSW there,
# and exact.
EXACT_LIMIT = 2048


@dataclass(frozen=True, slots=True)
class FaissStats:
    """The state of one collection: live items, tombstones and dimension."""

    live: int
    tombstones: int
    dim: int


class FaissVectorStore:
    """Vector collections in FAISS HNSW indexes (inner product on normalised vectors).

    ``directory``: where snapshots live (created if missing; None keeps everything
    in memory only).  ``m``, ``ef_construction`` and ``ef_search`` are the HNSW graph
    degree and build/search beam widths (a search uses at least ``k``).
    ``compact_fraction``: rebuild a collection's index once tombstones exceed this
    share of it.
    """

    name = "faiss"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 200,
        compact_fraction: float = 0.25,
    ) -> None:
        for label, value in (
            ("m", m),
            ("ef_search", ef_search),
            ("ef_construction", ef_construction),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"FaissVectorStore: {label} must be a positive integer")
        if not 0 < compact_fraction < 1:
            raise ConfigError("FaissVectorStore: compact_fraction must be between 0 and 1")
        self.m = m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.compact_fraction = compact_fraction
        self.directory = Path(directory) if directory is not None else None
        self._collections: dict[str, Collection] = {}
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="faiss-store"
        )
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"FaissVectorStore: cannot create the snapshot directory {self.directory}: "
                    f"{exc}"
                ) from exc
            self._load_all(self.directory)

    def __repr__(self) -> str:
        return f"FaissVectorStore(directory={str(self.directory) if self.directory else None!r})"

    # -- VectorStore protocol ----------------------------------------------------------

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items`` (replacing those with the same ids), then snapshot."""
        check_collection(collection)
        checked = check_items(items)
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
        """The ``k`` live items most similar to ``vector`` among those matching
        ``where``, best first, at least ``threshold`` when given."""
        check_collection(collection)
        check_search(k, threshold)
        query = check_vector(vector)
        return await self._run(self._search, collection, query, k, threshold, check_where(where))

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the items with these ``ids`` and/or matching ``where`` (both: the
        ids that also match), rebuilding the collection without them, then
        snapshot; returns how many were removed."""
        check_collection(collection)
        checked_ids, checked_where = check_delete(ids, where)
        return await self._run(self._delete, collection, checked_ids, checked_where)

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many live items of ``collection`` match ``where``."""
        check_collection(collection)
        return await self._run(self._count, collection, check_where(where))

    async def aclose(self) -> None:
        """Finish pending work and stop the store's thread (snapshots are already
        on disk: every mutation wrote its own)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    # -- beyond the protocol -----------------------------------------------------------

    async def stats(self, collection: str) -> FaissStats | None:
        """Live items, tombstones and dimension of ``collection`` (None if it does not
        exist)."""
        check_collection(collection)

        def read() -> FaissStats | None:
            found = self._collections.get(collection)
            if found is None:
                return None
            return FaissStats(len(found.by_id), found.tombstones, found.dim)

        return await self._run(read)

    # -- the store's thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise MemoryUnavailable("the FAISS store is closed", backend=self.name, retryable=False)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _new_index(self, dim: int) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _upsert(self, collection: str, items: list[VectorItem]) -> None:
        dim = len(items[0].vector)
        found = self._collections.get(collection)
        if found is None:
            found = self._collections[collection] = Collection(dim, self._new_index(dim))
        else:
            check_vector(items[0].vector, found.dim)  # InvalidRequest on another dimension
        found.add(items, normalise([item.vector for item in items]))
        self._after_mutation(collection, found)

    def _delete(
        self, collection: str, ids: list[str] | None, where: dict[str, MetaValue] | None
    ) -> int:
        found = self._collections.get(collection)
        if found is None:
            return 0
        positions = found.matching(where)
        targets: list[str | None]
        if ids is None:
            targets = [found.ids[p] for p in positions or ()]
        elif positions is None:
            targets = list(ids)
        else:
            targets = [i for i in ids if found.by_id.get(i, -1) in positions]
        removed = sum(found.kill(id_) for id_ in targets if id_ is not None)
        if removed:
            # Erased means gone: no tombstoned embedding stays in the index or the
            # snapshot (those of earlier replacements go too).
            self._after_mutation(collection, found, compact=True)
        return removed

    def _count(self, collection: str, where: dict[str, MetaValue] | None) -> int:
        found = self._collections.get(collection)
        if found is None:
            return 0
        positions = found.matching(where)
        return len(found.by_id) if positions is None else len(positions)

    def _search(
        self,
        collection: str,
        query: list[float],
        k: int,
        threshold: float | None,
        where: dict[str, MetaValue] | None,
    ) -> list[VectorHit]:
        found = self._collections.get(collection)
        if found is None:
            return []
        check_vector(query, found.dim)
        q = normalise([query])
        allowed = found.matching(where)
        live = len(found.by_id) if allowed is None else len(allowed)
        if live == 0:
            return []
        if live <= EXACT_LIMIT:
            positions = np.fromiter(
                found.by_id.values() if allowed is None else allowed, dtype=np.int64, count=live
            )
            scores = found.vectors()[positions] @ q[0]
            take = min(k, live)
            best = np.argpartition(-scores, take - 1)[:take]
            best = best[np.argsort(-scores[best], kind="stable")]
            pairs = [(float(scores[i]), int(positions[i])) for i in best]
        else:
            # Missing from faiss's type stubs (1.15), present in the library.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(self.ef_search, k)
            bits: npt.NDArray[np.uint8] | None = None
            if allowed is not None or found.tombstones:
                mask = np.zeros(len(found.ids), dtype=bool)
                if allowed is None:
                    mask[list(found.by_id.values())] = True
                else:
                    mask[list(allowed)] = True
                bits = np.packbits(mask, bitorder="little")
                # The selector reads ``bits`` through a raw pointer: keep it referenced.
                params.sel = faiss.IDSelectorBitmap(len(found.ids), faiss.swig_ptr(bits))
            distances, labels = found.index.search(q, min(k, live), params=params)
            pairs = [
                (float(s), int(p)) for s, p in zip(distances[0], labels[0], strict=True) if p >= 0
            ]
            del bits
        hits: list[VectorHit] = []
        for score, position in pairs:
            score = min(1.0, max(-1.0, score))  # float error can leave 1.0000001
            if threshold is not None and score < threshold:
                break  # best first: the rest score lower still
            id_ = found.ids[position]
            if id_ is None:  # cannot happen (searches only see live items): be safe
                continue
            hits.append(
                VectorHit(id_, found.texts[position], score, dict(found.metadata[position]))
            )
        return hits

    def _after_mutation(self, collection: str, found: Collection, *, compact: bool = False) -> None:
        if found.tombstones and (
            compact or found.tombstones > self.compact_fraction * len(found.ids)
        ):
            found = self._compact(collection, found)
        if self.directory is None:
            return
        try:
            write_snapshot(self.directory, collection, found)
        except OSError as exc:
            # Nothing may stay stored that the caller is told failed: go back to the
            # last snapshot on disk (or to nothing, if this was the collection's first).
            self._restore(self.directory, collection)
            raise MemoryUnavailable(
                f"FAISS store: cannot write the snapshot of {collection!r}: {exc}",
                hint=f"check free space and permissions in {self.directory}",
                backend=self.name,
                retryable=True,
            ) from exc

    def _compact(self, collection: str, found: Collection) -> Collection:
        """A new index holding only the live items, in their current order."""
        live = sorted(found.by_id.values())
        rebuilt = Collection(found.dim, self._new_index(found.dim))
        if live:
            vectors = np.ascontiguousarray(found.vectors()[live])
            items = [
                VectorItem(str(found.ids[p]), (), found.texts[p], found.metadata[p]) for p in live
            ]  # the vectors come from the old index, not from the items
            rebuilt.add(items, vectors)
        self._collections[collection] = rebuilt
        _log.debug(
            "compacted FAISS collection %s: %d tombstones dropped",
            collection,
            len(found.ids) - len(live),
        )
        return rebuilt

    # -- snapshots -----------------------------------------------------------------------

    def _restore(self, directory: Path, collection: str) -> None:
        path = directory / f"{collection}{SUFFIX}"
        try:
            self._collections[collection] = read_snapshot(path, self.ef_construction)
        except FileNotFoundError:
            self._collections.pop(collection, None)
        except (OSError, ValueError):
            _log.exception("cannot reload the FAISS snapshot %s", path)

    def _load_all(self, directory: Path) -> None:
        for stale in directory.glob(f".*{SUFFIX}.*.tmp"):
            # A snapshot being written when its process died: never renamed into place.
            with contextlib.suppress(OSError):
                stale.unlink()
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            collection = path.name.removesuffix(SUFFIX)
            try:
                self._collections[check_collection(collection)] = read_snapshot(
                    path, self.ef_construction
                )
            except (OSError, ValueError, InvalidRequest) as exc:  # unreadable, or misnamed
                raise MemoryUnavailable(
                    f"FAISS store: cannot load the snapshot {path}: {exc}",
                    hint="move the file away to start that collection empty",
                    backend=self.name,
                    retryable=False,
                ) from exc
