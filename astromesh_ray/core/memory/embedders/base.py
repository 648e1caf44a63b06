"""What every embedder shares: batching, checking what came back, L2 normalisation.

An embedder supplies one coroutine that embeds one batch (an HTTP request, a model
forward pass); ``embed_batched`` cuts the texts into batches, runs them in order,
checks that each batch answered one vector per text and that all vectors have the
same dimension, and normalises them, so every ``Embedder`` returns unit vectors
(their dot product is their cosine similarity).  Texts that are not valid Unicode
(a lone surrogate such as ``"\\ud83d"``, which tokenizers refuse and UTF-8 cannot
encode) have such code points replaced with U+FFFD first (``clean_text``), so
every backend gets text it can encode.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence

from astromesh_ray.core.memory.text import clean_text
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

__all__ = ["batches", "check_batch_size", "clean_text", "embed_batched", "normalise"]

EmbedBatch = Callable[[list[str]], Awaitable[list[list[float]]]]


def check_batch_size(owner: str, batch_size: int) -> int:
    """``batch_size`` if it is a positive integer, else ``ConfigError``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{owner}: batch_size must be a positive integer, not {batch_size!r}")
    return batch_size


def batches(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    """``texts`` in consecutive lists of at most ``size``."""
    for start in range(0, len(texts), size):
        yield list(texts[start : start + size])


def normalise(vector: Sequence[float], *, backend: str) -> list[float]:
    """``vector`` scaled to length 1; a zero or non-finite vector is the backend
    answering garbage (``MemoryUnavailable``)."""
    values = [float(x) for x in vector]
    norm = math.sqrt(math.fsum(x * x for x in values))
    if not math.isfinite(norm) or norm == 0.0:
        raise MemoryUnavailable(
            f"{backend} returned a {'zero' if norm == 0.0 else 'non-finite'} vector",
            backend=backend,
            retryable=False,
        )
    return [x / norm for x in values]


async def embed_batched(
    texts: Sequence[str],
    batch_size: int,
    embed_batch: EmbedBatch,
    *,
    backend: str,
    normalised: bool = False,
) -> list[list[float]]:
    """Embed ``texts`` through ``embed_batch``, ``batch_size`` at a time, in order.

    ``normalised``: the batches' vectors are unit vectors already (computed so
    here), so they are not scaled again.  ``embed_batch`` gets the texts through
    ``clean_text``.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("embed takes a list of strings")
    texts = [clean_text(t) for t in texts]
    out: list[list[float]] = []
    dim: int | None = None
    for batch in batches(texts, batch_size):
        vectors = await embed_batch(batch)
        if len(vectors) != len(batch):
            raise MemoryUnavailable(
                f"{backend} returned {len(vectors)} vectors for {len(batch)} texts",
                backend=backend,
                retryable=False,
            )
        for vector in vectors:
            if dim is None:
                dim = len(vector)
            if len(vector) != dim or dim == 0:
                raise MemoryUnavailable(
                    f"{backend} returned vectors of dimensions {dim} and {len(vector)}",
                    backend=backend,
                    retryable=False,
                )
            out.append(list(vector) if normalised else normalise(vector, backend=backend))
    return out
