"""Guardrails from YAML: each ``spec.guardrails`` entry to its ``Guardrail``, the
``cost_limit`` entries to the agent's ``BudgetPolicy``, and what they need from
whoever builds the runtime (``GuardrailEnv``: the placeholder vault, the budget
ledger and embedders; in one process or, under Serve, cluster-wide actors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.guardrails.base import Direction, Guardrail
from astromesh_ray.core.guardrails.chain import GuardChain
from astromesh_ray.core.guardrails.guards import MaxLengthGuardrail, PiiGuardrail
from astromesh_ray.core.guardrails.vault import PlaceholderVault
from astromesh_ray.spec.guardrails import (
    ContentFilterSpec,
    CostLimitSpec,
    MaxLengthSpec,
    PiiDetectionSpec,
    TopicFilterSpec,
)
from astromesh_ray.spec.memory import EmbeddingSpec

if TYPE_CHECKING:
    from astromesh_ray.core.guardrails.budget import BudgetPolicy, Ledger
    from astromesh_ray.core.memory.base import Embedder
    from astromesh_ray.core.stages import Stages
    from astromesh_ray.spec import AgentSpec

JUDGE_ROLE = "judge"
"""The model role of the LLM judge of content categories (the agent's primary
model unless ``spec.model.roles.judge`` names another)."""


@dataclass(frozen=True)
class GuardrailEnv:
    """What guardrails get from whoever builds the runtime."""

    vault: PlaceholderVault
    ledger: Callable[[], Ledger]
    embedder: Callable[[EmbeddingSpec], Embedder]


def has_guardrails(agent: AgentSpec) -> bool:
    g = agent.spec.guardrails
    return g is not None and bool(g.input or g.output)


def needs_judge(agent: AgentSpec) -> bool:
    """Whether a content filter judges categories with the LLM judge."""
    g = agent.spec.guardrails
    if g is None:
        return False
    return any(
        isinstance(s, ContentFilterSpec) and s.categories and s.moderation is None
        for s in (*g.input, *g.output)
    )


def build_guardrail(spec: Any, env: GuardrailEnv) -> Guardrail | None:
    """The guardrail of one YAML entry (``None`` for ``cost_limit``: a budget)."""
    if isinstance(spec, CostLimitSpec):
        return None
    if isinstance(spec, PiiDetectionSpec):
        from astromesh_ray.core.guardrails.pii import pii_detector

        detector = pii_detector(spec.entities, spec.score_threshold, spec.ner_model)
        return PiiGuardrail(spec, detector, env.vault)
    if isinstance(spec, MaxLengthSpec):
        return MaxLengthGuardrail(spec)
    if isinstance(spec, TopicFilterSpec):
        from astromesh_ray.core.guardrails.topic import TopicFilter

        embedder = None
        if spec.method == "embedding":
            embedder = env.embedder(spec.embedding or EmbeddingSpec())
        return TopicFilter(spec, embedder)
    if isinstance(spec, ContentFilterSpec):
        from astromesh_ray.core.guardrails.content import ContentFilter, ModerationClient

        moderation = ModerationClient(spec.moderation) if spec.moderation else None
        return ContentFilter(spec, moderation=moderation, judge_role=JUDGE_ROLE)
    raise TypeError(f"unknown guardrail spec {type(spec).__name__}")


def build_chain(specs: Sequence[Any], direction: str, env: GuardrailEnv) -> GuardChain:
    """The guardrails of ``specs``, in order, as one direction's chain."""
    built = [g for g in (build_guardrail(s, env) for s in specs) if g is not None]
    side: Direction = "input" if direction == "input" else "output"
    return GuardChain(built, side)


def guardrail_resources(stages: Stages) -> list[Any]:
    """The guardrails of ``stages`` that hold a client to close with the runtime (a
    content filter's moderation client)."""
    found = []
    for stage in (*stages.prepare, *stages.transformers):
        chain = getattr(stage, "chain", None)
        if isinstance(chain, GuardChain):
            found += [g for g in chain.guardrails if hasattr(g, "aclose")]
    return found


def cost_specs(agent: AgentSpec) -> list[CostLimitSpec]:
    """Every ``cost_limit`` entry of ``agent``, input and output lists alike (a
    budget covers the whole turn, wherever the YAML lists it)."""
    g = agent.spec.guardrails
    if g is None:
        return []
    return [s for s in (*g.input, *g.output) if isinstance(s, CostLimitSpec)]


def budget_policy(agent: AgentSpec, env: GuardrailEnv | None) -> BudgetPolicy | None:
    """``agent``'s budget (``None``: it has no cost_limit)."""
    specs = cost_specs(agent)
    if not specs or env is None:
        return None
    from astromesh_ray.core.guardrails.budget import BudgetPolicy

    # A call's hold must outlive the call: the run's timeout bounds it.
    hold_ttl_s = max(600.0, 2 * agent.spec.orchestration.timeout_s)
    return BudgetPolicy.from_specs(agent.name, specs, env.ledger(), hold_ttl_s=hold_ttl_s)
