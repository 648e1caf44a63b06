"""``kind: ProviderConfig`` (providers.yaml) and ``kind: RuntimeConfig`` (runtime.yaml)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel
from astromesh_ray.spec.deployment import DeploymentSpec
from astromesh_ray.spec.memory import RuntimeMemorySpec
from astromesh_ray.spec.model import (
    CAPABILITIES_DESCRIPTION,
    Capability,
    CircuitBreakerSpec,
    PricingSpec,
    ProviderName,
    RoutingStrategy,
)
from astromesh_ray.spec.orchestration import PatternName


class ProviderEntrySpec(StrictModel):
    """One named provider in providers.yaml; agents point at it with ``providerRef``."""

    type: ProviderName = Field(description="Provider kind.")
    endpoint: str | None = Field(default=None, description="Base URL of the provider's API.")
    models: list[str] = Field(
        default_factory=list, description="Models it serves; the first is the default."
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    api_key: str | None = Field(
        default=None, description="Inline API key: parsed but refused; use api_key_env."
    )
    timeout_s: float | None = Field(
        default=None, alias="timeout", gt=0, description="Request timeout in seconds."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Default sampling parameters."
    )
    health_check_interval: int | None = Field(
        default=None,
        gt=0,
        description="Seconds between health probes of this provider (for agents using it).",
    )
    deployment: DeploymentSpec | None = Field(
        default=None, description="Serve deployment of this provider (replicas, GPUs)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Provider-specific client options."
    )
    pricing: PricingSpec | None = Field(
        default=None, description="Price of the entry's models, overriding the built-in table."
    )
    quality: int | None = Field(
        default=None, ge=0, description="Declared quality rank (higher is better)."
    )
    capabilities: list[Capability] | None = Field(
        default=None, description=CAPABILITIES_DESCRIPTION + " Applies to every model listed."
    )
    max_retries: int | None = Field(
        default=None, ge=0, le=10, description="Retries on 429/5xx (default 2)."
    )


class ProviderRoutingSpec(StrictModel):
    """``spec.routing`` of providers.yaml: routing defaults for every agent."""

    default_strategy: RoutingStrategy | None = Field(
        default=None, description="Strategy of agents that declare none."
    )
    fallback_enabled: bool = Field(
        default=True,
        description="Whether a failed candidate falls back to the next one in the same request.",
    )
    circuit_breaker: CircuitBreakerSpec | None = Field(
        default=None, description="Circuit breaker of agents that declare none."
    )


class ProviderConfigBodySpec(StrictModel):
    """``spec`` of a ProviderConfig."""

    providers: dict[str, ProviderEntrySpec] = Field(
        default_factory=dict, description="Provider entries by name."
    )
    routing: ProviderRoutingSpec | None = Field(
        default=None, description="Routing defaults for every agent."
    )


class ProviderConfigSpec(StrictModel):
    """A whole ``kind: ProviderConfig`` document."""

    api_version: ApiVersion = Field(alias="apiVersion", description="Format version.")
    kind: Literal["ProviderConfig"] = Field(description="Document kind.")
    metadata: MetadataSpec = Field(description="Name, version, namespace, labels.")
    spec: ProviderConfigBodySpec = Field(description="The providers.")


class ApiSpec(StrictModel):
    """Where the HTTP API listens."""

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to bind.")


class OrchestrationDefaultsSpec(StrictModel):
    """Orchestration values applied to agents that omit them."""

    pattern: PatternName | None = Field(default=None, description="Default pattern.")
    max_iterations: int | None = Field(
        default=None, ge=1, le=1000, description="Default max_iterations."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, alias="timeout_seconds", description="Default timeout_seconds."
    )


class RuntimeDefaultsSpec(StrictModel):
    """Defaults for agents."""

    orchestration: OrchestrationDefaultsSpec = Field(
        default_factory=OrchestrationDefaultsSpec, description="Orchestration defaults."
    )


class RaySpec(StrictModel):
    """The Ray cluster to use."""

    address: str | None = Field(
        default=None, description="Cluster to join (default: start a local one)."
    )
    num_cpus: int | None = Field(default=None, ge=0, description="CPUs of a local cluster.")
    num_gpus: int | None = Field(default=None, ge=0, description="GPUs of a local cluster.")
    namespace: str = Field(default="astromesh", description="Ray namespace.")


class RuntimeBodySpec(StrictModel):
    """``spec`` of a RuntimeConfig."""

    api: ApiSpec = Field(default_factory=ApiSpec, description="HTTP API.")
    defaults: RuntimeDefaultsSpec = Field(
        default_factory=RuntimeDefaultsSpec, description="Agent defaults."
    )
    gateway: DeploymentSpec | None = Field(
        default=None, description="Serve deployment of the gateway."
    )
    ray: RaySpec = Field(default_factory=RaySpec, description="Ray cluster.")
    memory: RuntimeMemorySpec = Field(
        default_factory=RuntimeMemorySpec, description="Where memory backends live by default."
    )
    services: dict[str, Any] | None = Field(
        default=None, description="Original Astromesh service switches (refused)."
    )
    peers: list[Any] | None = Field(
        default=None, description="Original Astromesh peer nodes (refused)."
    )
    mesh: dict[str, Any] | None = Field(
        default=None, description="Original Astromesh mesh settings (refused)."
    )


class RuntimeConfigSpec(StrictModel):
    """A whole ``kind: RuntimeConfig`` document."""

    api_version: ApiVersion = Field(
        default="astromesh/v1", alias="apiVersion", description="Format version."
    )
    kind: Literal["RuntimeConfig"] = Field(default="RuntimeConfig", description="Document kind.")
    metadata: MetadataSpec = Field(
        default_factory=lambda: MetadataSpec(name="default"),
        description="Name, version, namespace, labels.",
    )
    spec: RuntimeBodySpec = Field(default_factory=RuntimeBodySpec, description="The runtime.")
