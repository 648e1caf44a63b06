"""``deployment`` blocks (our addition): how a Serve deployment is sized and placed.

Used by ``spec.deployment`` of an agent (``AgentDeploymentSpec``), provider entries in
providers.yaml and ``spec.gateway`` of runtime.yaml.  ``to_serve_options`` gives the
keyword arguments of Ray Serve's ``Deployment.options``; ``replica_selector`` the Ray
label selector the builders give replicas (``astromesh_ray.serve.builders``).

Placement uses Ray's node labels (``ray start --labels astromesh/pool=gpu``, the
``labels`` of a node type in ``cluster/*.yaml``):

- a deployment asking for no accelerator (no ``num_gpus``, ``accelerator_type`` or
  custom resources) and no ``placement`` gets ``{astromesh/pool: "!gpu"}``: any node
  *not* labelled as the GPU pool.  An unlabelled node (a laptop's ``ray.init()``, a
  plain ``ray start``) satisfies it, so single-node setups are unaffected;
- a GPU deployment gets no selector: Ray already puts ``num_gpus`` replicas only on
  nodes with GPUs (and ``accelerator_type`` on nodes of that type);
- ``placement.node_labels`` replaces the default with the operator's own selector
  (``{}``: any node, the GPU pool included);
- ``placement.colocate_with: model`` (agents only) puts the agent's replicas on the
  nodes where its model's replicas run (see ``astromesh_ray.serve.placement``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error

POOL_LABEL = "astromesh/pool"
"""The node label naming a node's pool (``cpu`` or ``gpu``) in ``cluster/*.yaml``."""
GPU_POOL = "gpu"
OFF_GPU_POOL: dict[str, str] = {POOL_LABEL: f"!{GPU_POOL}"}
"""The default selector of deployments that ask for no accelerator."""
NODE_ID_LABEL = "ray.io/node-id"
"""Ray's own label on every node: its id (what ``colocate_with`` selects on)."""

# Ray's label syntax (ray/_private/label_utils.py, Kubernetes' rules): checked here so
# a typo is a load error with the file and line, not a failed replica.
_NAME = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_KEY = re.compile(rf"^(({_NAME})(\.({_NAME}))*/)?{_NAME}$")
_SELECTOR = re.compile(rf"^!?(in)?\({_NAME}(, ?{_NAME})*\)$|^!?{_NAME}$")
_LABEL_HELP = (
    "a value (gpu), a negation (!gpu), or a set: in(a, b), !in(a, b); "
    "letters, digits, '-', '_' and '.', at most 63 characters each"
)


class AutoscalingSpec(StrictModel):
    """Ray Serve ``autoscaling_config``: replicas follow the number of ongoing requests."""

    min_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Fewest replicas (Serve's default 1).  0 scales to zero when idle: "
        "nothing is reserved, and the first request after that waits for a replica to "
        "start (a cold start: seconds for an agent or gateway, for a hosted model the "
        "node, if the autoscaler must add one, plus loading the weights: minutes).",
    )
    max_replicas: int | None = Field(
        default=None, ge=1, description="Most replicas (Serve's default 1)."
    )
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas started before any traffic (default: min)."
    )
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        description="Ongoing requests per replica the autoscaler aims at (Serve's default 2).",
    )
    upscale_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds of sustained load before adding replicas (Serve's default 30).",
    )
    downscale_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds of low load before removing replicas (Serve's default 600).",
    )
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds without traffic before the last replica goes, with "
        "min_replicas 0 (default: downscale_delay_s).",
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
        if start is not None and low is not None and start < low:
            raise rule_error(
                "initial_replicas", f"initial_replicas ({start}) is below min_replicas ({low})"
            )
        if self.downscale_to_zero_delay_s is not None and low != 0:
            raise rule_error(
                "downscale_to_zero_delay_s",
                "downscale_to_zero_delay_s needs min_replicas: 0 (scale to zero)",
            )
        return self


class RayActorOptionsSpec(StrictModel):
    """Ray Serve ``ray_actor_options``: what each replica reserves on its node."""

    num_cpus: float | None = Field(default=None, ge=0, description="Logical CPUs per replica.")
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs per replica (fractions share a GPU); only nodes with GPUs "
        "take such replicas.",
    )
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory per replica.")
    accelerator_type: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
        description="Run only on nodes with this accelerator (a Ray accelerator type: "
        "H100, A100, A10G, L4, ...; checked against Ray's list when deploying).  In-cluster "
        "vLLM takes it in options.accelerator_type instead.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica."
    )


class PlacementSpec(StrictModel):
    """Which nodes a deployment's replicas may run on, by Ray node labels."""

    node_labels: dict[str, str] | None = Field(
        default=None,
        description="Ray label selector: run only on nodes whose labels match every "
        "entry, e.g. {astromesh/pool: gpu}; values are " + _LABEL_HELP + ".  Replaces "
        "the default, which keeps deployments asking for no accelerator off nodes labelled "
        '`astromesh/pool: gpu` ({astromesh/pool: "!gpu"}; unlabelled nodes match it); '
        "{} allows any node.",
    )
    colocate_with: Literal["model"] | None = Field(
        default=None,
        description="Agents only.  model: run this agent's replicas on the nodes running "
        "its primary model's deployment (found when the agent is deployed; a replica that "
        "cannot go there goes where it would have gone without this).  The model must "
        "run in a deployment of its own with at least one replica.",
    )

    @field_validator("node_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if len(key) > 253 + 1 + 63 or not _KEY.match(key):
                raise ValueError(
                    f"node label {key!r} is not a Ray label key: a name of letters, digits, "
                    "'-', '_' and '.' (at most 63), optionally after a DNS prefix and '/', "
                    "as in astromesh/pool"
                )
            if not _SELECTOR.match(value) or any(len(v) > 63 for v in re.split(r"[(),! ]+", value)):
                raise ValueError(f"node_labels.{key}: {value!r} is not {_LABEL_HELP}")
        return labels

    @model_validator(mode="after")
    def _node_or_model(self) -> PlacementSpec:
        if self.colocate_with is not None and NODE_ID_LABEL in (self.node_labels or {}):
            raise rule_error(
                "colocate_with",
                f"colocate_with chooses the nodes by {NODE_ID_LABEL}: do not also "
                "select on it in node_labels",
            )
        return self


def wants_accelerator(actor_options: Mapping[str, Any]) -> bool:
    """Whether merged ``ray_actor_options`` ask for a GPU, an accelerator type or a
    custom resource (which already decide the node, so no default selector is added)."""
    return bool(
        actor_options.get("num_gpus")
        or actor_options.get("accelerator_type")
        or actor_options.get("resources")
    )


class DeploymentSpec(StrictModel):
    """Replica count, concurrency, autoscaling and placement of a Serve deployment."""

    colocation: ClassVar[bool] = False
    """Whether ``placement.colocate_with`` is accepted (agents only)."""

    num_replicas: int | Literal["auto"] | None = Field(
        default=None,
        description="Fixed replica count, or 'auto' for Serve's default autoscaling.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests one replica handles at a time (default: what the "
        "deployment holds: agents 100, gateway 200, remote-API providers their 100 "
        "pooled connections, ONNX models 8, embedders 256).",
    )
    autoscaling_config: AutoscalingSpec | None = Field(
        default=None, description="Autoscaling bounds (not with a fixed num_replicas)."
    )
    ray_actor_options: RayActorOptionsSpec | None = Field(
        default=None, description="Resources each replica reserves."
    )
    placement: PlacementSpec | None = Field(
        default=None, description="Nodes the replicas may run on (Ray node labels)."
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
        scaling = self.autoscaling_config
        if scaling is not None and self.num_replicas not in (None, "auto"):
            raise rule_error(
                "num_replicas",
                "give either a fixed num_replicas or autoscaling_config, not both",
            )
        if scaling is not None and self.num_replicas is None and scaling.max_replicas is None:
            # Serve's own default max_replicas is 1 (100 only with num_replicas: auto).
            for key in ("min_replicas", "initial_replicas"):
                value = getattr(scaling, key)
                if value is not None and value > 1:
                    raise rule_error(
                        ("autoscaling_config", key),
                        f"{key} ({value}) exceeds Serve's default max_replicas (1): "
                        "give max_replicas",
                    )
        if self.placement is not None and self.placement.colocate_with and not self.colocation:
            raise rule_error(
                ("placement", "colocate_with"),
                "colocate_with is for an agent's deployment (spec.deployment of an Agent): "
                "providers, embedders and the gateway are placed by their resources and "
                "node_labels",
            )
        return self

    def to_serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options()``: only the fields that are set.

        ``ray_actor_options`` here are only what the YAML says (``placement.node_labels``
        as ``label_selector``); the builders merge them over each deployment's own
        defaults and add the default selector
        (``astromesh_ray.serve.builders.serve_options``).
        """
        options: dict[str, Any] = {}
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        if self.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = self.max_ongoing_requests
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        actor: dict[str, Any] = {}
        if self.ray_actor_options is not None:
            actor = self.ray_actor_options.model_dump(exclude_none=True)
            if not actor.get("resources"):
                actor.pop("resources", None)
        labels = self.placement.node_labels if self.placement else None
        if labels:
            actor["label_selector"] = dict(labels)
        if actor or self.ray_actor_options is not None:
            options["ray_actor_options"] = actor
        return options


def replica_selector(
    spec: DeploymentSpec | None, actor_options: Mapping[str, Any]
) -> dict[str, str]:
    """The label selector of replicas with these (merged) ``ray_actor_options``, before
    any colocation: ``placement.node_labels`` when given, else the GPU pool excluded
    for a deployment that asks for no accelerator, else none (``{}``)."""
    labels = spec.placement.node_labels if spec is not None and spec.placement else None
    if labels is not None:
        return dict(labels)
    return {} if wants_accelerator(actor_options) else dict(OFF_GPU_POOL)


class AgentDeploymentSpec(DeploymentSpec):
    """An agent's ``deployment``: a ``DeploymentSpec`` that may also ask to run next to
    its model (``placement.colocate_with``)."""

    colocation: ClassVar[bool] = True

    @property
    def colocates_with_model(self) -> bool:
        """Whether ``placement.colocate_with`` is ``model``."""
        return self.placement is not None and self.placement.colocate_with == "model"


# Providers whose model runs inside Serve (a model to host), so they always get their
# own deployment: ONNX Runtime in the replica, vLLM in-cluster (``ray.serve.llm``).
def hosts_model(provider: str, options: Mapping[str, Any]) -> bool:
    """Whether provider kind ``provider`` with client ``options`` hosts its model in
    the cluster (ONNX, in-cluster vLLM) rather than calling a remote API."""
    return provider == "onnx" or (provider == "vllm" and options.get("mode") == "in_cluster")


class ProviderDeploymentSpec(DeploymentSpec):
    """``deployment`` of a providers.yaml entry: where its client runs, and the Serve
    options of its own deployment when it has one."""

    mode: Literal["dedicated", "in_replica"] | None = Field(
        default=None,
        description="in_replica: a remote API (OpenAI, Ollama, TGI, an external vLLM or "
        "llama.cpp server) is called from each agent replica, one pooled client per "
        "replica (the default for them: no extra Serve hop).  dedicated: the provider gets "
        "its own Serve deployment (the default, and the only choice, for a hosted model: "
        "ONNX, in-cluster vLLM), e.g. to cap its concurrency cluster-wide with "
        "max_ongoing_requests and replicas.  The other fields of this block apply to a "
        "dedicated deployment only.",
    )

    def serve_fields(self) -> list[str]:
        """The Serve options this block sets (every field but ``mode``)."""
        return sorted(name for name in self.model_fields_set if name != "mode")
