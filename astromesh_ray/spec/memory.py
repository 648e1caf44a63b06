"""``spec.memory``: conversational, semantic and episodic memory (parsed; refused for now)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from astromesh_ray.spec.base import StrictModel


class ConnectionSpec(StrictModel):
    """Where a memory backend lives."""

    url: str = Field(description="Connection URL (redis://, postgresql://, http://, ...).")


class ConversationalMemorySpec(StrictModel):
    """Recent turns of a session."""

    backend: Literal["redis", "postgres", "postgresql", "sqlite", "in_memory"] = Field(
        description="Store holding the turns."
    )
    connection: ConnectionSpec | None = Field(default=None, description="Store location.")
    strategy: Literal["sliding_window", "summary", "token_budget"] = Field(
        default="sliding_window", description="What is kept when history grows."
    )
    max_turns: int = Field(default=50, ge=1, description="Turns kept by sliding_window.")
    max_messages: int | None = Field(default=None, ge=1, description="Messages kept at most.")
    ttl: int | None = Field(default=None, ge=1, description="Seconds a session is kept.")


class SemanticMemorySpec(StrictModel):
    """Facts recalled by similarity."""

    backend: Literal["pgvector", "chromadb", "qdrant", "faiss"] = Field(description="Vector store.")
    similarity_threshold: float = Field(
        default=0.75, ge=0, le=1, description="Minimum similarity of a recalled item."
    )
    max_results: int = Field(default=10, ge=1, description="Items recalled per turn.")
    collection: str | None = Field(default=None, description="Collection name.")
    connection: ConnectionSpec | None = Field(default=None, description="Store location.")


class EpisodicMemorySpec(StrictModel):
    """A log of what happened in past runs."""

    backend: Literal["postgres", "postgresql"] = Field(description="Store holding the log.")
    connection: ConnectionSpec | None = Field(default=None, description="Store location.")


class MemorySpec(StrictModel):
    """``spec.memory``."""

    conversational: ConversationalMemorySpec | None = Field(
        default=None, description="Session history."
    )
    semantic: SemanticMemorySpec | None = Field(default=None, description="Similarity recall.")
    episodic: EpisodicMemorySpec | None = Field(default=None, description="Run log.")
