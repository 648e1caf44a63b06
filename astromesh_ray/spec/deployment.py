"""``deployment`` blocks (our addition): how a Serve deployment is sized and placed.

Used by ``spec.deployment`` of an agent, provider entries in providers.yaml and
``spec.gateway`` of runtime.yaml.  ``to_serve_options`` gives the keyword arguments
of Ray Serve's ``Deployment.options``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error


class AutoscalingSpec(StrictModel):
    """Ray Serve ``autoscaling_config``: replicas follow the number of ongoing requests."""

    min_replicas: int | None = Field(default=None, ge=0, description="Fewest replicas.")
    max_replicas: int | None = Field(default=None, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas started before any traffic."
    )
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Ongoing requests per replica the autoscaler aims at."
    )
    upscale_delay_s: float | None = Field(
        default=None, ge=0, description="Seconds of sustained load before adding replicas."
    )
    downscale_delay_s: float | None = Field(
        default=None, ge=0, description="Seconds of low load before removing replicas."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise rule_error("min_replicas", f"min_replicas ({low}) exceeds max_replicas ({high})")
        start = self.initial_replicas
        if start is not None and high is not None and start > high:
            raise rule_error(
                "initial_replicas", f"initial_replicas ({start}) exceeds max_replicas ({high})"
            )
        return self


class RayActorOptionsSpec(StrictModel):
    """Ray Serve ``ray_actor_options``: what each replica reserves on its node."""

    num_cpus: float | None = Field(default=None, ge=0, description="Logical CPUs per replica.")
    num_gpus: float | None = Field(
        default=None, ge=0, description="GPUs per replica (fractions share a GPU)."
    )
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica."
    )


class DeploymentSpec(StrictModel):
    """Replica count, concurrency, autoscaling and placement of a Serve deployment."""

    num_replicas: int | Literal["auto"] | None = Field(
        default=None,
        description="Fixed replica count, or 'auto' for Serve's default autoscaling.",
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests one replica handles at a time."
    )
    autoscaling_config: AutoscalingSpec | None = Field(
        default=None, description="Autoscaling bounds (not with a fixed num_replicas)."
    )
    ray_actor_options: RayActorOptionsSpec | None = Field(
        default=None, description="Resources each replica reserves."
    )

    @field_validator("num_replicas", mode="before")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        # One clear message instead of one per member of the union.
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("num_replicas must be a whole number of at least 1, or 'auto'")
        return value

    @model_validator(mode="after")
    def _exclusive(self) -> DeploymentSpec:
        if self.autoscaling_config is not None and self.num_replicas not in (None, "auto"):
            raise rule_error(
                "num_replicas",
                "give either a fixed num_replicas or autoscaling_config, not both",
            )
        return self

    def to_serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options()``: only the fields that are set.

        ``ray_actor_options`` here are only what the YAML says; the builders merge them
        over each deployment's own defaults (``astromesh_ray.serve.builders.serve_options``).
        """
        options: dict[str, Any] = {}
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        if self.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = self.max_ongoing_requests
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        if self.ray_actor_options is not None:
            actor = self.ray_actor_options.model_dump(exclude_none=True)
            if not actor.get("resources"):
                actor.pop("resources", None)
            options["ray_actor_options"] = actor
        return options
