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
from astromesh_ray.spec.config import ProviderEntrySpec
from astromesh_ray.spec.deployment import DeploymentSpec
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
    block's own keys override them (``parameters`` merge, the block's entries win)."""
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
        }
    for name in ("provider", "model", "endpoint", "api_key_env", "timeout_s", "pricing", "quality"):
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
    )


def resolve_models(
    agent: AgentSpec, providers: Mapping[str, ProviderEntrySpec]
) -> list[ModelEndpoint]:
    """The agent's models in fallback order: primary, fallback; or default.candidates."""
    where = f"{agent.source or agent.name}: "
    return [resolve_block(b, providers, where=where) for b in agent.spec.model.blocks()]
