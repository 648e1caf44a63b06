"""``spec.guardrails``: checks on the user's input and the agent's output, run in the
order listed, one model per ``type``.

Types keep the original Astromesh's names (``pii_detection``, ``topic_filter``,
``content_filter``, ``cost_limit``, ``max_length``) and accept ours as aliases
(``pii``, ``topic``, ``content``, ``cost``).  What each one does is in
``core/guardrails/``; the README's Guardrails section documents them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Discriminator, Field, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error
from astromesh_ray.spec.memory import EmbeddingSpec

GuardrailAction = Literal["redact", "block", "warn", "log"]
"""``log`` is the original's name for ``warn``: record the finding, change nothing."""

PII_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "SECRET",
)
"""The structured entity types the default install detects (no NER model needed)."""

NER_ENTITIES = ("PERSON", "LOCATION")
"""The entity types that need an NER model (``ner_model``)."""


class PiiDetectionSpec(StrictModel):
    """Finds personal data and secrets (Presidio's analyzer, offline)."""

    type: Literal["pii_detection", "pii"] = Field(description="Guardrail type.")
    action: GuardrailAction = Field(
        default="redact",
        description="redact: typed placeholders ([EMAIL_1]), the same within a session; "
        "block: refuse the text; warn/log: record only.",
    )
    entities: list[str] | None = Field(
        default=None,
        description="Entity types to find (default: every structured type: "
        + ", ".join(PII_ENTITIES)
        + "; with ner_model also PERSON and LOCATION). Other national ids Presidio "
        "knows (UK_NHS, ES_NIF, IT_FISCAL_CODE, ...) may be named too.",
    )
    restore: bool = Field(
        default=False,
        description="On output, put the caller's originals back in place of the "
        "placeholders of this session (the model and the stored history keep them).",
    )
    score_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Minimum recognizer score."
    )
    ner_model: str | None = Field(
        default=None,
        description="An installed spaCy model (name or path) for PERSON and LOCATION; "
        "the default install has none.",
    )

    @model_validator(mode="after")
    def _restore_redacts(self) -> PiiDetectionSpec:
        if self.restore and self.action != "redact":
            raise rule_error("restore", "restore applies to action redact only")
        return self


class TopicFilterSpec(StrictModel):
    """Keeps the conversation on topic: by similarity under the embedder, or keywords."""

    type: Literal["topic_filter", "topic"] = Field(description="Guardrail type.")
    allowed_topics: list[str] = Field(
        default_factory=list, description="Text must be close to one of these."
    )
    blocked_topics: list[str] = Field(
        default_factory=list, description="Text close to one of these is refused."
    )
    threshold: float = Field(
        default=0.18,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity at which text is on a topic (embedder method).",
    )
    method: Literal["embedding", "keywords"] = Field(
        default="embedding",
        description="embedding: semantic similarity under `embedding` (the offline "
        "MiniLM by default); keywords: a topic's words appear in the text.",
    )
    embedding: EmbeddingSpec | None = Field(
        default=None,
        description="The embedder (same block as memory.semantic.embedding); default "
        "the local all-MiniLM-L6-v2.",
    )
    action: GuardrailAction = Field(
        default="block", description="block: answer with `refusal`; warn/log: record only."
    )
    refusal: str = Field(
        default="I can't help with that topic.",
        description="The answer a blocked input gets (the model is not called).",
    )

    @model_validator(mode="after")
    def _topics_given(self) -> TopicFilterSpec:
        if not self.allowed_topics and not self.blocked_topics:
            raise rule_error("blocked_topics", "give allowed_topics or blocked_topics")
        if self.action == "redact":
            raise rule_error("action", "a topic cannot be redacted: use block or warn")
        if self.method == "keywords" and self.embedding is not None:
            raise rule_error("embedding", "the keywords method uses no embedder")
        return self


class ModerationSpec(StrictModel):
    """An OpenAI-compatible ``/v1/moderations`` endpoint."""

    endpoint: str = Field(description="Base URL (e.g. https://api.openai.com/v1).")
    model: str | None = Field(default=None, description="Moderation model name.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    timeout_s: float = Field(default=10.0, gt=0, alias="timeout", description="Seconds.")


class ContentFilterSpec(StrictModel):
    """Refuses text matching patterns, or judged to be in a category."""

    type: Literal["content_filter", "content"] = Field(description="Guardrail type.")
    blocked_patterns: list[str] = Field(
        default_factory=list, description="Regular expressions (case-insensitive)."
    )
    categories: list[str] = Field(
        default_factory=list,
        description="Categories judged by `moderation` (its category names, e.g. "
        "hate, violence, self-harm) or, without it, by the LLM judge (role `judge`).",
    )
    moderation: ModerationSpec | None = Field(
        default=None, description="Judge categories with this moderation endpoint."
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Moderation score at which a category hits."
    )
    action: GuardrailAction = Field(
        default="block",
        description="block: refuse the text; redact: replace pattern matches with "
        "[FILTERED]; warn/log: record only.",
    )

    @model_validator(mode="after")
    def _something_to_filter(self) -> ContentFilterSpec:
        for i, pattern in enumerate(self.blocked_patterns):
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise rule_error(
                    ("blocked_patterns", i), f"not a regular expression: {exc}"
                ) from None
            if re.fullmatch(pattern, "", re.IGNORECASE):
                raise rule_error(("blocked_patterns", i), "the pattern matches empty text")
        if not self.blocked_patterns and not self.categories:
            raise rule_error("blocked_patterns", "give blocked_patterns or categories")
        if self.moderation is not None and not self.categories:
            raise rule_error("moderation", "moderation judges categories: list them")
        if self.action == "redact" and self.categories:
            raise rule_error("action", "categories judge whole texts: use block or warn")
        return self


class CostLimitSpec(StrictModel):
    """Caps on tokens and money: per turn, per session, per agent per hour or day.

    Checked before each model call with an estimate (the call's ``max_tokens`` is
    lowered to what the tightest token cap has left) and after it with the actual
    usage; past a cap the run ends with ``budget_exceeded`` (HTTP 429)."""

    type: Literal["cost_limit", "cost"] = Field(description="Guardrail type.")
    max_tokens_per_turn: int | None = Field(default=None, ge=1, description="Tokens per turn.")
    max_cost_per_turn: float | None = Field(default=None, gt=0, description="USD per turn.")
    max_tokens_per_session: int | None = Field(
        default=None, ge=1, description="Tokens per session (every turn of it)."
    )
    max_cost_per_session: float | None = Field(default=None, gt=0, description="USD per session.")
    max_tokens_per_hour: int | None = Field(
        default=None, ge=1, description="Tokens per clock hour (UTC), for the whole agent."
    )
    max_cost_per_hour: float | None = Field(
        default=None, gt=0, description="USD per clock hour (UTC), for the whole agent."
    )
    max_tokens_per_day: int | None = Field(
        default=None, ge=1, description="Tokens per day (UTC), for the whole agent."
    )
    max_cost_per_day: float | None = Field(
        default=None, gt=0, description="USD per day (UTC), for the whole agent."
    )
    action: Literal["block", "warn", "log"] = Field(
        default="block", description="block: end the run; warn/log: record only."
    )

    @model_validator(mode="after")
    def _a_cap(self) -> CostLimitSpec:
        if not any(getattr(self, name) is not None for name in COST_CAPS):
            raise rule_error("max_tokens_per_turn", "give at least one cap")
        return self


COST_CAPS = tuple(n for n in CostLimitSpec.model_fields if n.startswith("max_"))
"""The cap fields of ``cost_limit``, in declaration order."""


class MaxLengthSpec(StrictModel):
    """Caps text length."""

    type: Literal["max_length"] = Field(description="Guardrail type.")
    max_chars: int = Field(ge=1, description="Characters allowed.")
    action: Literal["block", "truncate", "warn", "log"] = Field(
        default="block", description="block: refuse longer text; truncate: cut it."
    )


GuardrailSpec = Annotated[
    PiiDetectionSpec | TopicFilterSpec | ContentFilterSpec | CostLimitSpec | MaxLengthSpec,
    Discriminator("type"),
]
"""One guardrail, chosen by ``type``."""


class GuardrailsSpec(StrictModel):
    """``spec.guardrails``."""

    input: list[GuardrailSpec] = Field(
        default_factory=list, description="Checks on the user's input, in order."
    )
    output: list[GuardrailSpec] = Field(
        default_factory=list,
        description="Checks on the agent's output (answer, streamed tokens), in order.",
    )
