"""``spec.memory``: conversational, semantic and episodic memory of an agent.

Where a backend lives, when the block names no ``connection``, comes from
``spec.memory`` of runtime.yaml (``RuntimeMemorySpec``): the data directory of the
embedded stores (SQLite, FAISS, Qdrant local mode) and the Redis, PostgreSQL and
Qdrant server URLs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error
from astromesh_ray.spec.deployment import DeploymentSpec

ConversationalBackend = Literal["redis", "postgres", "postgresql", "sqlite", "in_memory"]
VectorBackend = Literal["pgvector", "chromadb", "qdrant", "faiss"]
EpisodicBackend = Literal["postgres", "postgresql", "sqlite"]


class ConnectionSpec(StrictModel):
    """Where a memory backend lives."""

    url: str = Field(
        description="Connection URL (redis://, postgresql://, http:// for a Qdrant or "
        "Chroma server), or a file path for embedded stores (sqlite, faiss, qdrant)."
    )


class ConversationalMemorySpec(StrictModel):
    """Recent turns of a session, replayed to the model on the next turn.

    A turn is stored whole (user message, tool calls and results, final answer) once
    it has answered; a turn that fails stores nothing here.
    """

    backend: ConversationalBackend = Field(
        description="Store holding the turns: sqlite (a file in the runtime's data "
        "directory), redis, postgres, or in_memory (per replica, lost on restart: for "
        "tests and demos)."
    )
    connection: ConnectionSpec | None = Field(
        default=None,
        description="Store location (default: runtime.yaml spec.memory for the backend).",
    )
    strategy: Literal["sliding_window", "summary", "token_budget"] = Field(
        default="sliding_window",
        description="What the model sees of the history: the last max_turns turns "
        "(sliding_window); the turns that fit in max_tokens, counted with the model's "
        "tokenizer where it has one (token_budget); or a running summary of older turns "
        "plus the last max_turns (summary).",
    )
    max_turns: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Turns replayed (sliding_window, summary: kept verbatim after the "
        "summary; token_budget: read at most).",
    )
    max_messages: int | None = Field(
        default=None,
        ge=1,
        description="Messages replayed at most: the oldest whole turns are dropped to fit.",
    )
    max_tokens: int = Field(
        default=4000,
        ge=16,
        description="Token budget of the replayed history (token_budget).",
    )
    ttl: int | None = Field(
        default=None,
        ge=1,
        description="Seconds a session is kept after its last turn (default: forever).",
    )

    @model_validator(mode="after")
    def _fields_used(self) -> ConversationalMemorySpec:
        if "max_tokens" in self.model_fields_set and self.strategy != "token_budget":
            raise rule_error("max_tokens", "max_tokens applies to strategy token_budget only")
        if self.backend == "in_memory" and self.connection is not None:
            raise rule_error("connection", "the in_memory backend has no connection")
        return self


class EmbeddingSpec(StrictModel):
    """The model that turns text into vectors for semantic memory."""

    provider: Literal["local", "openai", "openai_compat", "ollama"] = Field(
        default="local",
        description="local: all-MiniLM-L6-v2 in the replica, offline (384 dimensions); "
        "openai/openai_compat: an OpenAI-compatible /v1/embeddings API; ollama: /api/embed.",
    )
    model: str | None = Field(
        default=None, description="Model name (required for openai and ollama)."
    )
    endpoint: str | None = Field(default=None, description="Base URL of the embeddings API.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    batch_size: int = Field(default=32, ge=1, le=2048, description="Texts per request.")
    timeout_s: float = Field(
        default=30.0, gt=0, alias="timeout", description="Seconds per embedding request."
    )
    deployment: DeploymentSpec | None = Field(
        default=None,
        description="Run the embedder in its own Serve deployment with these resources "
        "(e.g. num_gpus), batching requests from every replica; default: in the agent "
        "replica.",
    )

    @model_validator(mode="after")
    def _model_named(self) -> EmbeddingSpec:
        if self.provider != "local" and not self.model:
            raise rule_error("model", f"the {self.provider} embedder needs a model name")
        unused = {
            "local": ("model", "endpoint", "api_key_env", "timeout_s"),
            "ollama": ("api_key_env",),
        }.get(self.provider, ())
        for name in unused:
            if name in self.model_fields_set:
                key = "timeout" if name == "timeout_s" else name
                raise rule_error(key, f"the {self.provider} embedder takes no {key}")
        return self


class SemanticMemorySpec(StrictModel):
    """Facts recalled by similarity to the query, shown to the prompt as
    ``{{ knowledge }}`` (and ``memory.semantic``)."""

    backend: VectorBackend = Field(
        description="Vector store: pgvector (PostgreSQL), qdrant (local mode in the data "
        "directory, or a server URL), faiss (an index owned by one Ray actor, snapshot "
        "to the data directory), chromadb (optional extra)."
    )
    similarity_threshold: float = Field(
        default=0.75, ge=0, le=1, description="Minimum cosine similarity of a recalled item."
    )
    max_results: int = Field(default=10, ge=1, le=1000, description="Items recalled per turn.")
    collection: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$",
        description="Collection name (default: the agent's namespace and name).",
    )
    connection: ConnectionSpec | None = Field(
        default=None,
        description="Store location (default: runtime.yaml spec.memory for the backend).",
    )
    embedding: EmbeddingSpec = Field(
        default_factory=EmbeddingSpec, description="The embedding model."
    )
    index_turns: bool = Field(
        default=True,
        description="Index every completed turn (question and answer) for later recall "
        "(false: recall only what is already in the collection).",
    )
    scope: Literal["session", "agent"] = Field(
        default="session",
        description="What recall searches: the current session's items only, or every "
        "item of the agent (shared across sessions and users).",
    )


class EpisodicMemorySpec(StrictModel):
    """An append-only log of every run: request, model and tool calls, errors, answer."""

    backend: EpisodicBackend = Field(
        description="Store holding the log: postgres, or sqlite (the runtime's data directory)."
    )
    connection: ConnectionSpec | None = Field(
        default=None,
        description="Store location (default: runtime.yaml spec.memory for the backend).",
    )


class MemorySpec(StrictModel):
    """``spec.memory``."""

    conversational: ConversationalMemorySpec | None = Field(
        default=None, description="Session history."
    )
    semantic: SemanticMemorySpec | None = Field(default=None, description="Similarity recall.")
    episodic: EpisodicMemorySpec | None = Field(default=None, description="Run log.")


class RuntimeMemorySpec(StrictModel):
    """``spec.memory`` of runtime.yaml: where memory backends live by default."""

    data_dir: str = Field(
        default="data",
        description="Directory of the embedded stores (SQLite file, FAISS snapshots, Qdrant "
        "local mode); relative to the configuration directory.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis of redis-backed memory."
    )
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        description="PostgreSQL of postgres-backed memory and pgvector.",
    )
    qdrant_url: str | None = Field(
        default=None, description="Qdrant server (default: local mode in data_dir)."
    )
    chroma_url: str | None = Field(
        default=None, description="Chroma server (default: a persistent client in data_dir)."
    )
    pool_size: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Connections per Redis or PostgreSQL store in each agent replica (mind "
        "the server's max_connections: stores x replicas x pool_size).",
    )
