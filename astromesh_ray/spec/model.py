"""``spec.model``: which LLMs an agent calls.

Two shapes, both from the original Astromesh, in one model: the legacy
``primary`` / ``fallback`` / ``routing`` and the newer ``default`` + ``roles``.
Exactly one of them is used per agent.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from astromesh_ray.spec.base import StrictModel, count_present, rule_error

ProviderName = Literal[
    "openai",
    "openai_compat",
    "ollama",
    "vllm",
    "llamacpp",
    "hf_tgi",
    "onnx",
    "litellm",
    "azure_openai",
    "centinela",
]
"""Provider kinds the YAML may name (``openai_compat`` is an alias of ``openai``).
Some parse but are refused at load time (see ``astromesh_ray.spec.support``)."""

RoutingStrategy = Literal[
    "cost_optimized", "latency_optimized", "quality_first", "round_robin", "capability_match"
]
"""How the original router picks among candidates."""

Capability = Literal["tools", "json_schema", "vision"]
"""What a model can be declared to do, for the ``capability_match`` strategy: call
tools natively, constrain its answer to a JSON Schema, read images (``vision``
parses but is refused: requests carry text only, so none needs it yet)."""

CAPABILITIES_DESCRIPTION = (
    "What this model can do, for the capability_match strategy: tools (native tool "
    "calls), json_schema (answers constrained to a JSON Schema). The list is complete: "
    "a request needing what it lacks skips this model. Not given: not known to lack "
    "anything, so capability_match never drops it. vision is refused until requests "
    "can carry images."
)


class PricingSpec(StrictModel):
    """What a model costs, in USD per million tokens (overrides the built-in price table)."""

    input_per_mtok: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million completion tokens.")


class ModelBlockSpec(StrictModel):
    """One model: a provider, a model name and how to reach it."""

    schema_aliases: ClassVar[dict[str, str]] = {"source": "provider"}

    provider: ProviderName | None = Field(
        default=None,
        validation_alias=AliasChoices("provider", "source"),
        description="Provider kind (also accepted as `source`). Defaults to openai_compat "
        "unless providerRef names a providers.yaml entry.",
    )
    provider_ref: str | None = Field(
        default=None,
        alias="providerRef",
        description="Name of an entry in providers.yaml whose values this block starts "
        "from; the block's own keys override them.",
    )
    model: str | None = Field(
        default=None,
        description="Model name as the provider knows it (default: the first of the "
        "referenced entry's models).",
    )
    endpoint: str | None = Field(default=None, description="Base URL of the provider's API.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    api_key: str | None = Field(
        default=None,
        description="Inline API key: parsed but refused; use api_key_env.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Sampling parameters sent with every request (temperature, top_p, ...).",
    )
    temperature: float | None = Field(
        default=None,
        description="Shorthand for parameters.temperature (an explicit parameters entry wins).",
    )
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Shorthand for parameters.max_tokens (an explicit parameters entry wins).",
    )
    timeout_s: float | None = Field(
        default=None, alias="timeout", gt=0, description="Request timeout in seconds."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Provider-specific client options (e.g. chat_template for hf_tgi, "
        "execution_provider for onnx); each provider validates its own and names "
        "unknown keys.",
    )
    pricing: PricingSpec | None = Field(
        default=None, description="Price of this model, overriding the built-in table."
    )
    quality: int | None = Field(
        default=None,
        ge=0,
        description="Declared quality rank for the quality_first strategy (higher is better).",
    )
    capabilities: list[Capability] | None = Field(
        default=None,
        description=CAPABILITIES_DESCRIPTION + " Replaces the referenced entry's list.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Retries of a call answered 429 or 5xx, with exponential backoff "
        "honouring Retry-After (default 2).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if len(count_present(data, "provider", "source")) > 1:
            raise rule_error("source", "give either provider or source (its alias), not both")
        if not count_present(data, "provider", "source", "providerRef", "provider_ref"):
            data = {**data, "provider": "openai_compat"}
        shorthand = {k: data[k] for k in ("temperature", "max_tokens") if data.get(k) is not None}
        if shorthand and isinstance(data.get("parameters", {}), dict):
            data = {**data, "parameters": {**shorthand, **data.get("parameters", {})}}
        return data

    @model_validator(mode="after")
    def _needs_model(self) -> ModelBlockSpec:
        if self.model is None and self.provider_ref is None:
            raise rule_error(
                "model", "a model block needs model, or providerRef naming a provider entry"
            )
        return self


class CircuitBreakerSpec(StrictModel):
    """When to stop calling a failing provider, and for how long."""

    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failures that open the circuit."
    )
    cooldown_s: float = Field(
        default=60,
        gt=0,
        validation_alias=AliasChoices("cooldown_s", "recovery_timeout"),
        description="Seconds the circuit stays open before one probe request is let "
        "through (also accepted as recovery_timeout).",
    )


class RoutingSpec(StrictModel):
    """``spec.model.routing`` (legacy shape): how to choose between primary and fallback."""

    strategy: RoutingStrategy | None = Field(
        default=None,
        description="Routing strategy; without one, primary is tried first, then fallback.",
    )
    health_check_interval: int | None = Field(
        default=None,
        gt=0,
        description="Seconds between health probes of each candidate; failing probes "
        "count against its circuit breaker.",
    )
    circuit_breaker: CircuitBreakerSpec | None = Field(
        default=None, description="Circuit breaker of this agent's providers."
    )


class RoleModelsSpec(StrictModel):
    """Candidates for one role (``default`` or an entry of ``roles``)."""

    candidates: list[ModelBlockSpec] = Field(
        min_length=1, description="Model blocks in fallback order."
    )
    strategy: RoutingStrategy | None = Field(
        default=None, description="Routing strategy among the candidates."
    )


class ModelSpec(StrictModel):
    """``spec.model``: ``primary`` (+ ``fallback``, ``routing``) or ``default`` (+ ``roles``)."""

    primary: ModelBlockSpec | None = Field(
        default=None, description="Legacy shape: the model called first."
    )
    fallback: ModelBlockSpec | None = Field(
        default=None, description="Legacy shape: the model called when primary fails."
    )
    routing: RoutingSpec | None = Field(
        default=None, description="Legacy shape: routing between primary and fallback."
    )
    default: RoleModelsSpec | None = Field(
        default=None, description="Role shape: the candidates used for every role."
    )
    roles: dict[str, RoleModelsSpec] = Field(
        default_factory=dict,
        description="Role shape: candidates per role the pattern asks for (react: reasoner).",
    )

    @model_validator(mode="after")
    def _one_shape(self) -> ModelSpec:
        legacy = self.primary is not None
        if legacy and self.default is not None:
            raise rule_error("default", "use either primary/fallback or default/roles, not both")
        if not legacy and self.default is None:
            raise rule_error("primary", "spec.model needs primary (or default.candidates)")
        if legacy and self.roles:
            raise rule_error("roles", "roles belongs to the default/roles shape; use default")
        if not legacy:
            for key in ("fallback", "routing"):
                if getattr(self, key) is not None:
                    raise rule_error(
                        key, f"{key} belongs to the primary shape; list candidates under default"
                    )
        return self

    def blocks(self) -> list[ModelBlockSpec]:
        """The model blocks in fallback order: primary, fallback; or default.candidates."""
        if self.primary is not None:
            return [b for b in (self.primary, self.fallback) if b is not None]
        return list(self.default.candidates) if self.default else []
