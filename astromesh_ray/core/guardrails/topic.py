"""``TopicFilter``: keeps a conversation on its topics, and off the blocked ones.

Two methods, one rule per method:

- **embedding** (``method: embedding`` with an embedder): each topic and the text
  are embedded (unit vectors, so a dot product is their cosine similarity).  A
  blocked topic hits when the text's similarity to it is ``>= threshold``; with
  ``allowed_topics`` the text is off topic when its best similarity to them is
  ``< threshold``.  Topics are embedded once, on first use.  The embedder sees the
  whole text (MiniLM reads its first 256 tokens).

  The default threshold, 0.18, is calibrated for the default embedder
  (all-MiniLM-L6-v2) on topics written as short labels ("gambling and betting")
  and questions that paraphrase them: there, related texts score about 0.2 to 0.6
  and unrelated ones below about 0.17 (``tests/data/topic_cases.jsonl``, every
  case of which the unit tests check).  Other embedders score on other scales:
  calibrate ``threshold`` for them.
- **keywords** (``method: keywords``, or no embedder configured): a topic hits when
  its phrase appears in the text, compared case-insensitively, as whole words, with
  any run of non-word characters (spaces, hyphens, punctuation) between its words:
  ``"medical advice"`` matches ``"Medical-advice?"`` but not ``"medical advices"``
  nor ``"biomedical advice"``.  Punctuation in a topic only separates its words.

A hit blocks (``action: block``: the input is answered with ``refusal``, the model
is not called) or is only recorded (``warn`` / ``log``).  Findings name the topic
(``topic:<topic>``, scored by its similarity) or ``off_topic`` (scored by the best
similarity to an allowed topic); an empty text is on no topic.  A topic can only be
judged on the whole text, so streamed output is held (``lookahead = WHOLE_TEXT``).
An embedder that fails is ``GuardrailUnavailable``: the text is not let through
unchecked.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.guardrails.base import WHOLE_TEXT, Action, Direction, Finding, Verdict
from astromesh_ray.errors import GuardrailUnavailable, MemoryUnavailable
from astromesh_ray.spec.guardrails import TopicFilterSpec

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState
    from astromesh_ray.core.memory.base import Embedder

__all__ = ["OFF_TOPIC", "TopicFilter", "keyword_pattern"]

OFF_TOPIC = "off_topic"
"""The finding of a text close to none of the allowed topics."""

NAME = "topic_filter"


def keyword_pattern(topic: str) -> re.Pattern[str]:
    """The regex the keywords method looks for ``topic`` with: its words, whole and
    in order, any run of non-word characters between them, case-insensitive."""
    words = re.findall(r"\w+", topic)
    body = r"\W+".join(map(re.escape, words)) if words else re.escape(topic.strip())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


class TopicFilter:
    """The ``topic_filter`` guardrail of ``spec``; ``embedder`` for the embedding
    method (``None``: the keywords method, whatever ``spec.method`` says)."""

    name = NAME
    lookahead: int | None = WHOLE_TEXT

    def __init__(self, spec: TopicFilterSpec, embedder: Embedder | None) -> None:
        self.spec = spec
        self.action: Action = "block" if spec.action == "block" else "warn"
        self.embedder = embedder if spec.method == "embedding" else None
        self.method = "embedding" if self.embedder is not None else "keywords"
        self._blocked = list(dict.fromkeys(spec.blocked_topics))
        self._allowed = list(dict.fromkeys(spec.allowed_topics))
        self._patterns = {t: keyword_pattern(t) for t in (*self._blocked, *self._allowed)}
        self._vectors: dict[str, list[float]] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"TopicFilter(method={self.method!r}, action={self.action!r})"

    def __getstate__(self) -> dict[str, Any]:
        # A lock belongs to one event loop: a copy (a Ray replica) makes its own.
        return {**self.__dict__, "_lock": None, "_lock_loop": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    async def check(
        self, text: str, ctx: RunContext, state: TurnState, direction: Direction
    ) -> Verdict:
        """The topics ``text`` is on: blocked ones it is close to, or ``off_topic``."""
        if not text.strip():
            return Verdict(text)
        if self.embedder is not None:
            findings = await self._by_embedding(text)
        else:
            findings = self._by_keywords(text)
        if not findings:
            return Verdict(text)
        if self.action == "block":
            return Verdict(text, findings, "block", refusal=self.spec.refusal)
        return Verdict(text, findings, "warn")

    # -- keywords ----------------------------------------------------------------------

    def _by_keywords(self, text: str) -> list[Finding]:
        findings = [Finding(f"topic:{t}") for t in self._blocked if self._patterns[t].search(text)]
        if self._allowed and not any(self._patterns[t].search(text) for t in self._allowed):
            findings.append(Finding(OFF_TOPIC, score=0.0))
        return findings

    # -- embedding ---------------------------------------------------------------------

    async def _by_embedding(self, text: str) -> list[Finding]:
        topics = await self._topic_vectors()
        (vector,) = await self._embed([text])
        threshold = self.spec.threshold
        findings: list[Finding] = []
        for topic in self._blocked:
            similarity = _dot(vector, topics[topic])
            if similarity >= threshold:
                findings.append(Finding(f"topic:{topic}", score=similarity))
        if self._allowed:
            best = max(_dot(vector, topics[t]) for t in self._allowed)
            if best < threshold:
                findings.append(Finding(OFF_TOPIC, score=best))
        return findings

    async def _topic_vectors(self) -> dict[str, list[float]]:
        """Every topic's vector, embedded once: concurrent first calls wait for the
        one that embeds them; a failed attempt leaves nothing cached (the next call
        tries again)."""
        if self._vectors is not None:
            return self._vectors
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._vectors is None:
                topics = [*self._blocked, *self._allowed]
                vectors = await self._embed(topics)
                self._vectors = dict(zip(topics, vectors, strict=True))
            return self._vectors

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        assert self.embedder is not None
        try:
            vectors = await self.embedder.embed(texts)
        except MemoryUnavailable as exc:
            raise GuardrailUnavailable(
                f"topic_filter: the embedder {self.embedder.name} failed: {exc.message}",
                hint=exc.hint,
                guardrail=NAME,
                retryable=bool(exc.details.get("retryable", True)),
            ) from exc
        if len(vectors) != len(texts):
            raise GuardrailUnavailable(
                f"topic_filter: the embedder {self.embedder.name} returned "
                f"{len(vectors)} vectors for {len(texts)} texts",
                guardrail=NAME,
                retryable=True,
            )
        return vectors
