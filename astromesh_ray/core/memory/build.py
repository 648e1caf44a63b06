"""An agent's memory from its YAML: backends from a ``MemoryFactory``, the history
strategy from ``STRATEGIES``, the semantic collection named after the agent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from astromesh_ray.core.memory.agent import AgentMemory, Semantic
from astromesh_ray.core.memory.factory import MemoryFactory
from astromesh_ray.core.memory.strategies import (
    HistoryStrategy,
    RunningSummary,
    SlidingWindow,
    TokenBudget,
)
from astromesh_ray.spec.memory import ConversationalMemorySpec

if TYPE_CHECKING:
    from astromesh_ray.core.memory.tokens import TokenCounter
    from astromesh_ray.spec import AgentSpec, ModelEndpoint


def has_memory(agent: AgentSpec) -> bool:
    """Whether ``agent`` declares any memory."""
    memory = agent.spec.memory
    return memory is not None and any((memory.conversational, memory.semantic, memory.episodic))


def _sliding_window(
    spec: ConversationalMemorySpec, counter: Callable[[], TokenCounter]
) -> HistoryStrategy:
    return SlidingWindow(spec.max_turns, spec.max_messages)


def _token_budget(
    spec: ConversationalMemorySpec, counter: Callable[[], TokenCounter]
) -> HistoryStrategy:
    return TokenBudget(
        spec.max_tokens, counter(), max_turns=spec.max_turns, max_messages=spec.max_messages
    )


def _summary(
    spec: ConversationalMemorySpec, counter: Callable[[], TokenCounter]
) -> HistoryStrategy:
    return RunningSummary(spec.max_turns, spec.max_messages)


# strategy name -> its builder (given the spec and a token counter's maker).
STRATEGIES: dict[
    str, Callable[[ConversationalMemorySpec, Callable[[], TokenCounter]], HistoryStrategy]
] = {
    "sliding_window": _sliding_window,
    "token_budget": _token_budget,
    "summary": _summary,
}


def collection_name(agent: AgentSpec) -> str:
    """The default semantic collection of ``agent``: its namespace and name."""
    raw = f"mem_{agent.metadata.namespace}_{agent.name}"
    return "".join(c if c.isalnum() else "_" for c in raw)[:63]


def build_memory(
    agent: AgentSpec, factory: MemoryFactory, counter_endpoint: ModelEndpoint | None
) -> tuple[AgentMemory, TokenCounter | None]:
    """``agent``'s memory from its YAML, with backends from ``factory``; also the
    token counter it made (``token_budget``: the model's own tokenizer where its
    provider has one, from ``counter_endpoint``), for the caller to close."""
    spec = agent.spec.memory
    assert spec is not None
    made: list[TokenCounter] = []

    def counter() -> TokenCounter:
        from astromesh_ray.core.memory.tokens import EstimateTokenCounter, token_counter

        made.append(token_counter(counter_endpoint) if counter_endpoint else EstimateTokenCounter())
        return made[-1]

    conversation = strategy = semantic = episodic = None
    if spec.conversational is not None:
        conversation = factory.conversation(spec.conversational)
        strategy = STRATEGIES[spec.conversational.strategy](spec.conversational, counter)
    if spec.semantic is not None:
        semantic = Semantic(
            store=factory.vectors(spec.semantic),
            embedder=factory.embedder(spec.semantic.embedding),
            spec=spec.semantic,
            collection=spec.semantic.collection or collection_name(agent),
        )
    if spec.episodic is not None:
        episodic = factory.episodic(spec.episodic)
    memory = AgentMemory(
        namespace=agent.metadata.namespace,
        agent=agent.name,
        conversation=conversation,
        strategy=strategy,
        semantic=semantic,
        episodic=episodic,
    )
    return memory, (made[0] if made else None)
