"""``kind: ProviderConfig`` (providers.yaml) and ``kind: RuntimeConfig`` (runtime.yaml)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from astromesh_ray.spec.auth import AuthSpec
from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel, rule_error
from astromesh_ray.spec.deployment import DeploymentSpec, ProviderDeploymentSpec, hosts_model
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
    deployment: ProviderDeploymentSpec | None = Field(
        default=None,
        description="Where the provider's client runs (mode) and, for its own Serve "
        "deployment, its replicas and resources (GPUs).",
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

    @model_validator(mode="after")
    def _deployment_mode(self) -> ProviderEntrySpec:
        deployment = self.deployment
        if deployment is None:
            return self
        if hosts_model(self.type, self.options):
            if deployment.mode == "in_replica":
                raise rule_error(
                    ("deployment", "mode"),
                    f"a {self.type} provider hosts its model in its own Serve deployment: "
                    "mode in_replica is for remote APIs (remove it, or say dedicated)",
                )
        elif deployment.mode != "dedicated" and deployment.serve_fields():
            fields = ", ".join(deployment.serve_fields())
            raise rule_error(
                ("deployment", deployment.serve_fields()[0]),
                f"{fields}: Serve options of a dedicated provider deployment, but a remote "
                f"API ({self.type}) is called from each agent replica by default: add "
                "`mode: dedicated` to give it its own deployment, or remove them",
            )
        return self


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


class TracesSpec(StrictModel):
    """Where the gateway sends each finished run's span tree (OpenTelemetry)."""

    exporter: Literal["otlp", "console", "none"] = Field(
        default="none",
        description="otlp: OTLP over HTTP (protobuf) to ``endpoint``; console: one JSON "
        "document per span on the gateway's stdout; none: no export.",
    )
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (otlp only; "
        "default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces).",
    )
    headers_env: str | None = Field(
        default=None,
        description="Environment variable of the gateway holding the OTLP request headers "
        "as 'key=value,key2=value2' (an API key of the collector; otlp only).",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Timeout of one OTLP export request."
    )

    @model_validator(mode="after")
    def _otlp_only(self) -> TracesSpec:
        if self.exporter != "otlp":
            for name in ("endpoint", "headers_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is only used by exporter: otlp")
        return self


class RecentTracesSpec(StrictModel):
    """The recent runs' traces each gateway replica keeps for ``GET /v1/traces/{id}``."""

    max_traces: int = Field(
        default=1000, ge=0, le=100_000, description="Traces kept per replica (0: none)."
    )
    max_age_s: float = Field(
        default=3600.0, gt=0, description="How long a trace is kept after its last run."
    )


class MetricsSpec(StrictModel):
    """The gateway's Prometheus metrics (through Ray's metrics endpoint)."""

    session_window_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="astromesh_active_sessions counts the distinct session ids that had a "
        "run in this many seconds.",
    )


class TelemetrySpec(StrictModel):
    """``spec.telemetry`` of runtime.yaml: traces, recent traces and metrics."""

    service_name: str = Field(
        default="astromesh",
        min_length=1,
        max_length=200,
        description="OpenTelemetry ``service.name`` of the exported spans.",
    )
    traces: TracesSpec = Field(default_factory=TracesSpec, description="Span export.")
    recent: RecentTracesSpec = Field(
        default_factory=RecentTracesSpec, description="GET /v1/traces/{trace_id}."
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Metrics.")


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
    telemetry: TelemetrySpec = Field(
        default_factory=TelemetrySpec,
        description="OpenTelemetry traces, recent traces and Prometheus metrics.",
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="API keys, rate limits and CORS.")
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
