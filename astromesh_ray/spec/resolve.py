"""From an agent's model blocks (and providers.yaml) to concrete endpoints.

A ``ModelEndpoint`` is everything needed to call one model; its ``key`` names the
Serve deployment that serves it, so agents sharing a model share a deployment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.agent import AgentSpec
from astromesh_ray.spec.config import ProviderEntrySpec, ProviderRoutingSpec
from astromesh_ray.spec.deployment import DeploymentSpec, hosts_model
from astromesh_ray.spec.diagnostics import did_you_mean
from astromesh_ray.spec.model import ModelBlockSpec, PricingSpec

_ALIASES = {"openai_compat": "openai"}


def normalise_provider(name: str) -> str:
    """The provider kind the runtime knows (``openai_compat`` → ``openai``)."""
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class ModelEndpoint:
    """One model reachable through one provider, ready to be called."""

    provider: str
    model: str
    endpoint: str | None = None
    api_key_env: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict, hash=False)
    timeout_s: float | None = None
    deployment: DeploymentSpec | None = field(default=None, hash=False)
    ref: str | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    pricing: PricingSpec | None = field(default=None, hash=False)
    quality: int | None = None
    # None: not declared (never dropped by capability_match); else the complete set.
    capabilities: frozenset[str] | None = None
    max_retries: int = field(default=2, hash=False)  # applied by the caller, per agent

    @property
    def dedicated(self) -> bool:
        """Whether this endpoint gets its own Serve deployment: a hosted model (ONNX,
        in-cluster vLLM), or one whose YAML asks for it (``deployment.mode:
        dedicated``); else each agent replica calls the remote API itself."""
        mode = getattr(self.deployment, "mode", None)
        return hosts_model(self.provider, self.options) or mode == "dedicated"

    @property
    def key(self) -> str:
        """A stable deployment name, e.g. ``provider-ollama-llama3-1-8b-1a2b3c``.

        Built from provider, model, endpoint, api_key_env, timeout and options;
        parameters are left out because they travel with each request.
        """
        options = json.dumps(self.options, sort_keys=True, default=str)
        identity = "\x1f".join(
            str(part)
            for part in (
                self.provider,
                self.model,
                self.endpoint,
                self.api_key_env,
                self.timeout_s,
                options,
            )
        )
        digest = hashlib.sha1(identity.encode("utf-8"), usedforsecurity=False).hexdigest()[:6]
        slug = re.sub(r"[^a-z0-9]+", "-", self.model.lower()).strip("-")[:40].strip("-")
        return f"provider-{self.provider}-{slug or 'model'}-{digest}"


def resolve_block(
    block: ModelBlockSpec, providers: Mapping[str, ProviderEntrySpec], *, where: str = ""
) -> ModelEndpoint:
    """One model block as an endpoint; ``providerRef`` values are the base, the
    block's own keys override them (``parameters`` merge, the block's entries win;
    ``capabilities`` is replaced whole: a list describes one model completely)."""
    base: dict[str, Any] = {"parameters": {}, "options": {}}
    ref = block.provider_ref
    if ref is not None:
        entry = providers.get(ref)
        if entry is None:
            raise ConfigError(
                f"{where}providerRef {ref!r} names no provider entry",
                hint=did_you_mean(ref, list(providers))
                or "defined providers: " + (", ".join(sorted(providers)) or "(none)"),
            )
        base = {
            "provider": entry.type,
            "model": entry.models[0] if entry.models else None,
            "endpoint": entry.endpoint,
            "api_key_env": entry.api_key_env,
            "timeout_s": entry.timeout_s,
            "parameters": dict(entry.parameters),
            "deployment": entry.deployment,
            "options": dict(entry.options),
            "pricing": entry.pricing,
            "quality": entry.quality,
            "capabilities": entry.capabilities,
            "max_retries": entry.max_retries,
        }
    for name in (
        "provider",
        "model",
        "endpoint",
        "api_key_env",
        "timeout_s",
        "pricing",
        "quality",
        "capabilities",
        "max_retries",
    ):
        value = getattr(block, name)
        if value is not None:
            base[name] = value
    base["parameters"] = {**base["parameters"], **block.parameters}
    base["options"] = {**base["options"], **block.options}
    if base.get("model") is None:
        raise ConfigError(
            f"{where}model block has no model",
            hint=f"give model, or list models in provider entry {ref!r}",
        )
    return ModelEndpoint(
        provider=normalise_provider(str(base.get("provider") or "openai_compat")),
        model=str(base["model"]),
        endpoint=base.get("endpoint"),
        api_key_env=base.get("api_key_env"),
        parameters=base["parameters"],
        timeout_s=base.get("timeout_s"),
        deployment=base.get("deployment"),
        ref=ref,
        options=base["options"],
        pricing=base.get("pricing"),
        quality=base.get("quality"),
        capabilities=None if base.get("capabilities") is None else frozenset(base["capabilities"]),
        max_retries=2 if base.get("max_retries") is None else int(base["max_retries"]),
    )


def resolve_models(
    agent: AgentSpec, providers: Mapping[str, ProviderEntrySpec]
) -> list[ModelEndpoint]:
    """Every model the agent may call: primary, fallback (or default.candidates), then
    each role's candidates; each endpoint once."""
    where = f"{agent.source or agent.name}: "
    model = agent.spec.model
    blocks = list(model.blocks())
    for group in model.roles.values():
        blocks.extend(group.candidates)
    found: dict[str, ModelEndpoint] = {}
    for block in blocks:
        endpoint = resolve_block(block, providers, where=where)
        found.setdefault(endpoint.key, endpoint)
    return list(found.values())


@dataclass(frozen=True)
class ModelRoute:
    """How one role of an agent reaches its models: candidates and routing policy."""

    role: str
    endpoints: tuple[ModelEndpoint, ...]
    strategy: str | None
    failure_threshold: int
    cooldown_s: float
    fallback: bool
    health_check_interval_s: float | None


def resolve_route(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    routing: ProviderRoutingSpec | None = None,
    *,
    role: str = "reasoner",
) -> ModelRoute:
    """The candidates and policy for ``role`` (after ``orchestration.role_map``).

    Legacy shape: primary then fallback, with ``spec.model.routing``.  Role shape:
    ``roles[role]`` if declared, else ``default``.  What the agent leaves out comes
    from ``spec.routing`` of providers.yaml, then the built-in defaults
    (declared order, 3 failures, 60 s cooldown).
    """
    where = f"{agent.source or agent.name}: "
    model = agent.spec.model
    mapped = agent.spec.orchestration.role_map.get(role, role)
    breaker = None
    health: float | None = None
    if model.primary is not None:
        blocks = model.blocks()
        legacy = model.routing
        strategy = legacy.strategy if legacy else None
        breaker = legacy.circuit_breaker if legacy else None
        health = legacy.health_check_interval if legacy else None
    else:
        group = model.roles.get(mapped) or model.default
        assert group is not None  # ModelSpec validation guarantees a shape
        blocks, strategy = list(group.candidates), group.strategy
    endpoints = tuple(resolve_block(b, providers, where=where) for b in blocks)
    if health is None:
        intervals = [
            entry.health_check_interval
            for entry in (providers.get(e.ref) for e in endpoints if e.ref is not None)
            if entry is not None and entry.health_check_interval is not None
        ]
        health = min(intervals, default=None)
    if routing is not None:
        strategy = strategy or routing.default_strategy
        breaker = breaker or routing.circuit_breaker
    return ModelRoute(
        role=mapped,
        endpoints=endpoints,
        strategy=strategy,
        failure_threshold=breaker.failure_threshold if breaker else 3,
        cooldown_s=breaker.cooldown_s if breaker else 60.0,
        fallback=routing.fallback_enabled if routing is not None else True,
        health_check_interval_s=float(health) if health else None,
    )
