"""The FAISS store's data: one collection's index and items, and its snapshot file.

A ``Collection`` is an HNSW inner-product index plus, by index position, each
item's id (``None`` once deleted: a tombstone), text and metadata, with an inverted
index from metadata values to live positions (``where`` without a scan).

A snapshot is one file: ``AMFAISS1``, the length of a JSON header (little-endian
u64), the header (dimension, ids, texts, metadata), then the serialised FAISS index.
``write_snapshot`` writes it to a temporary file, fsyncs it and renames it over the
old one (then fsyncs the directory), so a crash leaves the old or the new snapshot,
never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from astromesh_ray.core.memory.base import VectorItem
from astromesh_ray.core.memory.semantic.common import MetaValue, value_key

__all__ = ["SUFFIX", "Collection", "Vectors", "normalise", "read_snapshot", "write_snapshot"]

SUFFIX = ".faiss-snapshot"
"""A collection's snapshot is ``<collection><SUFFIX>`` in the store's directory."""
_MAGIC = b"AMFAISS1"

Vectors = npt.NDArray[np.float32]


def normalise(vectors: Sequence[Sequence[float]]) -> Vectors:
    """``vectors`` as a float32 matrix of unit rows (the index's inner product is
    then the cosine similarity)."""
    array = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    out: Vectors = np.ascontiguousarray(array / norms, dtype=np.float32)
    return out


@dataclass
class Collection:
    """One collection: its index and, by index position, its items."""

    dim: int
    index: faiss.IndexHNSWFlat
    ids: list[str | None] = field(default_factory=list)  # None: a tombstone
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, MetaValue]] = field(default_factory=list)
    by_id: dict[str, int] = field(default_factory=dict)  # live id -> position
    # key -> value_key(value) -> live positions: ``where`` without a scan.
    postings: dict[str, dict[tuple[str, Any], set[int]]] = field(default_factory=dict)

    @property
    def tombstones(self) -> int:
        return len(self.ids) - len(self.by_id)

    def vectors(self) -> Vectors:
        """The index's stored (normalised) vectors by position: a view, not a copy."""
        storage = faiss.downcast_index(self.index.storage)
        assert isinstance(storage, faiss.IndexFlat)  # what an IndexHNSWFlat stores in
        n = int(self.index.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat: Vectors = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim)
        return flat.reshape(n, self.dim)

    def add(self, items: Sequence[VectorItem], vectors: Vectors) -> None:
        """Add ``items`` with their normalised ``vectors`` (rows in the same order),
        tombstoning any live items with the same ids."""
        for item in items:
            self.kill(item.id)
        start = len(self.ids)
        self.index.add(vectors)
        for offset, item in enumerate(items):
            position = start + offset
            meta = dict(item.metadata)
            self.ids.append(item.id)
            self.texts.append(item.text)
            self.metadata.append(meta)
            self.mark_live(position, item.id, meta)

    def mark_live(self, position: int, id_: str, meta: dict[str, MetaValue]) -> None:
        """Index the item at ``position`` as live (by id and metadata)."""
        self.by_id[id_] = position
        for key, value in meta.items():
            self.postings.setdefault(key, {}).setdefault(value_key(value), set()).add(position)

    def kill(self, id_: str) -> bool:
        """Tombstone the live item ``id_``; whether there was one."""
        position = self.by_id.pop(id_, None)
        if position is None:
            return False
        self.ids[position] = None
        for key, value in self.metadata[position].items():
            values = self.postings[key]
            found = values[value_key(value)]
            found.discard(position)
            if not found:
                del values[value_key(value)]
                if not values:
                    del self.postings[key]
        self.texts[position] = ""
        self.metadata[position] = {}
        return True

    def matching(self, where: dict[str, MetaValue] | None) -> set[int] | None:
        """Live positions matching ``where``; None for all live ones (no filter)."""
        if not where:
            return None
        sets: list[set[int]] = []
        for key, value in where.items():
            found = self.postings.get(key, {}).get(value_key(value))
            if not found:
                return set()
            sets.append(found)
        sets.sort(key=len)
        return set.intersection(*sets) if len(sets) > 1 else set(sets[0])


def write_snapshot(directory: Path, collection: str, found: Collection) -> None:
    """Replace ``collection``'s snapshot in ``directory`` with ``found``, atomically."""
    header = json.dumps(
        {
            "version": 1,
            "collection": collection,
            "dim": found.dim,
            "ids": found.ids,
            "texts": found.texts,
            "metadata": found.metadata,
        },
        separators=(",", ":"),
    ).encode()
    index_bytes = faiss.serialize_index(found.index)
    path = directory / f"{collection}{SUFFIX}"
    tmp = directory / f".{collection}{SUFFIX}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            out.write(_MAGIC + struct.pack("<Q", len(header)))
            out.write(header)
            out.write(index_bytes.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


def read_snapshot(path: Path, ef_construction: int) -> Collection:
    """The collection in the snapshot at ``path``; ``ValueError`` when it is not a
    valid snapshot (``OSError`` when it cannot be read).  ``ef_construction`` (not
    part of a serialised index) applies to what is added later."""
    data = path.read_bytes()
    if data[: len(_MAGIC)] != _MAGIC:
        raise ValueError("not a FAISS store snapshot")
    (size,) = struct.unpack_from("<Q", data, len(_MAGIC))
    start = len(_MAGIC) + 8
    header = json.loads(data[start : start + size])
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=start + size))
    if not isinstance(index, faiss.IndexHNSWFlat):
        raise ValueError(f"the snapshot holds a {type(index).__name__}, not an HNSW index")
    index.hnsw.efConstruction = ef_construction  # not part of the serialised index
    ids: list[str | None] = header["ids"]
    texts: list[str] = header["texts"]
    metadata: list[dict[str, MetaValue]] = header["metadata"]
    if not int(index.ntotal) == len(ids) == len(texts) == len(metadata):
        raise ValueError("index and items disagree")
    if index.d != int(header["dim"]):
        raise ValueError("index and header disagree on the dimension")
    found = Collection(int(header["dim"]), index, ids, texts, metadata)
    for position, id_ in enumerate(ids):
        if id_ is not None:
            found.mark_live(position, id_, found.metadata[position])
    return found


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data file is synced
    finally:
        os.close(fd)
