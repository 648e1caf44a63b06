"""``spec.guardrails``: checks on input and output, one model per ``type``
(parsed; refused for now)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field

from astromesh_ray.spec.base import StrictModel

GuardrailAction = Literal["redact", "block", "warn", "log"]


class PiiDetectionSpec(StrictModel):
    """Finds personal data (emails, phone numbers, ...)."""

    type: Literal["pii_detection"] = Field(description="Guardrail type.")
    action: GuardrailAction = Field(default="redact", description="What to do on a match.")


class TopicFilterSpec(StrictModel):
    """Blocks topics."""

    type: Literal["topic_filter"] = Field(description="Guardrail type.")
    blocked_topics: list[str] = Field(default_factory=list, description="Topics refused.")
    action: GuardrailAction = Field(default="block", description="What to do on a match.")


class ContentFilterSpec(StrictModel):
    """Blocks text matching patterns."""

    type: Literal["content_filter"] = Field(description="Guardrail type.")
    blocked_patterns: list[str] = Field(
        default_factory=list, description="Regular expressions refused."
    )
    action: GuardrailAction = Field(default="block", description="What to do on a match.")


class CostLimitSpec(StrictModel):
    """Caps tokens per turn."""

    type: Literal["cost_limit"] = Field(description="Guardrail type.")
    max_tokens_per_turn: int = Field(ge=1, description="Tokens allowed per turn.")
    action: GuardrailAction = Field(default="block", description="What to do past the cap.")


class MaxLengthSpec(StrictModel):
    """Caps text length."""

    type: Literal["max_length"] = Field(description="Guardrail type.")
    max_chars: int = Field(ge=1, description="Characters allowed.")
    action: GuardrailAction = Field(default="block", description="What to do past the cap.")


GuardrailSpec = Annotated[
    PiiDetectionSpec | TopicFilterSpec | ContentFilterSpec | CostLimitSpec | MaxLengthSpec,
    Discriminator("type"),
]
"""One guardrail, chosen by ``type``."""


class GuardrailsSpec(StrictModel):
    """``spec.guardrails``."""

    input: list[GuardrailSpec] = Field(
        default_factory=list, description="Checks on the user's input."
    )
    output: list[GuardrailSpec] = Field(
        default_factory=list, description="Checks on the agent's answer."
    )
