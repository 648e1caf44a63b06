"""Argument checks and filter semantics every vector store shares.

Each store validates through these before it touches its backend, so a bad call is
the same ``InvalidRequest`` on FAISS, Qdrant, pgvector and Chroma, and ``where``
means the same thing everywhere: every key must equal, booleans are not numbers,
``1`` and ``1.0`` are equal (as JSON, jsonb and Qdrant compare them).

Texts and string metadata values (and ``where`` values, so that they still find
them) have NUL and lone surrogates replaced by U+FFFD: PostgreSQL cannot store
either, and UTF-8 cannot encode a surrogate, so every store keeps the same text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from astromesh_ray.core.memory.base import VectorItem, Where
from astromesh_ray.core.memory.text import clean_text
from astromesh_ray.errors import InvalidRequest

__all__ = [
    "COLLECTION_PATTERN",
    "MetaValue",
    "check_collection",
    "check_delete",
    "check_items",
    "check_search",
    "check_vector",
    "check_where",
    "clean_text",
    "matches",
    "value_key",
]

MetaValue = str | int | float | bool

COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
"""Collection names: letters, digits, ``_`` and ``-``, at most 63 characters (they
become file names, table names and Qdrant collection names unchanged)."""

# Metadata keys become Qdrant payload paths and Chroma filter keys: no dots, brackets
# or operators, which those would read as syntax.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What no store can keep as text: NUL (PostgreSQL text and jsonb) and surrogates
# (not encodable as UTF-8).


def check_collection(collection: str) -> str:
    """``collection`` if it is a valid name, else ``InvalidRequest``."""
    if not isinstance(collection, str) or not COLLECTION_PATTERN.match(collection):
        raise InvalidRequest(
            f"invalid collection name {collection!r}",
            hint="use 1 to 63 letters, digits, '_' or '-', starting with a letter or digit",
        )
    return collection


def check_vector(vector: Sequence[float], dim: int | None = None) -> list[float]:
    """``vector`` as floats: non-empty, finite, not all zero (cosine is undefined for a
    zero vector), and of ``dim`` dimensions when given."""
    try:
        values = [float(x) for x in vector]
    except (TypeError, ValueError):
        raise InvalidRequest("a vector must be a sequence of numbers") from None
    if not values:
        raise InvalidRequest("a vector needs at least one dimension")
    if dim is not None and len(values) != dim:
        raise InvalidRequest(
            f"vector of dimension {len(values)} in a collection of dimension {dim}",
            hint="use one embedding model per collection",
        )
    if not all(math.isfinite(x) for x in values):
        raise InvalidRequest("a vector must not contain NaN or infinity")
    if not any(values):
        raise InvalidRequest("a zero vector has no direction: cosine similarity is undefined")
    return values


def _check_meta(data: Mapping[str, MetaValue], what: str) -> dict[str, MetaValue]:
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{what} must be a mapping of keys to values")
    out: dict[str, MetaValue] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise InvalidRequest(
                f"invalid {what} key {key!r}",
                hint="keys are 1 to 64 letters, digits, '_' or '-'",
            )
        if not isinstance(value, str | int | float | bool):
            raise InvalidRequest(
                f"{what} value of {key!r} must be a string, number or boolean, "
                f"not {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{what} value of {key!r} must be finite")
        out[key] = clean_text(value) if isinstance(value, str) else value
    return out


def check_where(where: Where | None) -> dict[str, MetaValue] | None:
    """``where`` as a plain dict (None when not given)."""
    return None if where is None else _check_meta(where, "where")


def check_items(items: Sequence[VectorItem]) -> list[VectorItem]:
    """``items`` with their vectors and metadata checked, all of one dimension, and
    NUL and lone surrogates in texts and string metadata values replaced by U+FFFD
    (``clean_text``); an id given twice keeps its last item (as two upserts in a row
    would)."""
    by_id: dict[str, VectorItem] = {}
    dim: int | None = None
    for item in items:
        if not isinstance(item, VectorItem):
            raise InvalidRequest(f"expected a VectorItem, not {type(item).__name__}")
        if not isinstance(item.id, str) or not item.id:
            raise InvalidRequest("a vector item needs a non-empty string id")
        if not isinstance(item.text, str):
            raise InvalidRequest(f"item {item.id!r}: text must be a string")
        vector = check_vector(item.vector, dim)
        dim = len(vector)
        by_id.pop(item.id, None)  # re-inserted last: the batch keeps its order
        by_id[item.id] = VectorItem(
            item.id, vector, clean_text(item.text), _check_meta(item.metadata, "metadata")
        )
    return list(by_id.values())


def check_search(k: int, threshold: float | None) -> None:
    """``k`` is a positive integer; ``threshold``, when given, a finite number."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidRequest(f"k must be a positive integer, not {k!r}")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        raise InvalidRequest(f"threshold must be a number, not {threshold!r}")


def check_delete(
    ids: Sequence[str] | None, where: Where | None
) -> tuple[list[str] | None, dict[str, MetaValue] | None]:
    """The checked ``ids`` and ``where`` of a delete: at least one must be given (an
    empty ``where`` does not count: it would match everything).  Both given: the
    items with these ids that also match ``where``."""
    checked_where = check_where(where) or None
    if ids is None and checked_where is None:
        raise InvalidRequest(
            "delete needs ids or a non-empty where",
            hint="to empty a collection, delete by a metadata value all its items share",
        )
    if ids is None:
        return None, checked_where
    if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids must be a list of strings")
    return list(dict.fromkeys(ids)), checked_where


def value_key(value: MetaValue) -> tuple[str, str | float | bool]:
    """A metadata value as compared by ``where``: booleans apart from numbers, ints
    and floats by numeric value."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("s", value)


def matches(metadata: Mapping[str, object], where: Mapping[str, MetaValue] | None) -> bool:
    """Whether ``metadata`` has every key of ``where`` with an equal value."""
    if not where:
        return True
    for key, wanted in where.items():
        if key not in metadata:
            return False
        have = metadata[key]
        if not isinstance(have, str | int | float | bool):
            return False
        if value_key(have) != value_key(wanted):
            return False
    return True
