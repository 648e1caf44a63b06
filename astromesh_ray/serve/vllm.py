"""In-cluster vLLM: a provider application built with ``ray.serve.llm`` on GPU nodes.

A ``vllm`` model block with ``options: {mode: in_cluster, ...}`` is not a client of
an external server: ``provider_app`` builds Ray's own ``LLMServer`` deployment for it
(``vllm_app``), with tensor parallelism, context length, accelerator type, GPUs and
autoscaling taken from YAML.  Without ``mode`` a ``vllm`` block stays the external
OpenAI-compatible client (``core/providers/openai.py``).

The agent reaches the model exactly as it reaches every other provider application:
``ServeProvider`` calls ``complete`` / ``stream`` / ``health`` with plain dicts and
gets outcomes back (``serve/outcome.py``).  Those three methods are added to Ray's
``LLMServer`` by a subclass, so our ``CompletionRequest`` is translated to vLLM's
``ChatCompletionRequest`` inside the replica that already has vLLM, and no agent or
CPU node needs vLLM installed (Ray's request and response models import vLLM).

The translation is the OpenAI wire format ``core/providers/openai_wire.py`` (the code
``OpenAIProvider`` speaks to an external vLLM), adapted to ``LLMServer`` in
``serve/vllm_chat.py``; this module maps YAML onto Ray's ``LLMConfig``
(``llm_config_fields``, plain Python) and builds the application; ``ray.serve.llm`` is
imported only in ``vllm_app``, when actually deploying.

How YAML maps onto Ray 2.60's ``LLMConfig``:

- ``model`` → ``model_loading_config.model_source`` (a Hugging Face id or a path);
  ``options.model_id`` (default: ``model``) is the name vLLM serves it under.
- ``tensor_parallel_size``, ``pipeline_parallel_size``, ``max_model_len``,
  ``gpu_memory_utilization``, ``tool_call_parser`` and ``engine_kwargs`` →
  ``engine_kwargs``; ``accelerator_type`` → ``accelerator_type``.
- ``deployment`` (from the block's providers.yaml entry) → ``deployment_config``,
  except ``ray_actor_options.num_gpus``: in ``ray.serve.llm`` GPUs belong to the
  engine workers (one placement-group bundle per tensor/pipeline shard), not to the
  replica actor, whose resources Ray adds to the first bundle.  So ``num_gpus`` is
  read as GPUs per shard and becomes ``placement_group_config.bundle_per_worker``;
  a replica reserves ``num_gpus × tensor_parallel_size × pipeline_parallel_size``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError
from ray.serve import Application

from astromesh_ray.errors import ConfigError
from astromesh_ray.serve.placement import check_accelerator_type
from astromesh_ray.serve.vllm_chat import ProviderMethods
from astromesh_ray.spec import ModelEndpoint, StrictModel
from astromesh_ray.spec.diagnostics import did_you_mean

__all__ = [
    "INSTALL_HINT",
    "InClusterOptions",
    "gpus_per_replica",
    "in_cluster",
    "in_cluster_options",
    "llm_config",
    "llm_config_fields",
    "vllm_app",
]

IN_CLUSTER = "in_cluster"
INSTALL_HINT = "in-cluster vLLM needs `pip install ray[llm]==2.60.0` on GPU nodes"

# `options:` keys of an in-cluster vLLM block, with what each does (shown on a miss).
_OPTIONS: dict[str, str] = {
    "mode": "in_cluster: run the model in this Ray cluster with ray.serve.llm "
    "(omit mode for an external vLLM server)",
    "model_id": "name the model is served under (default: model)",
    "tensor_parallel_size": "GPUs one copy of the model is split across (default 1)",
    "pipeline_parallel_size": "pipeline stages of one copy of the model (default 1)",
    "max_model_len": "context length in tokens (default: the model's)",
    "gpu_memory_utilization": "fraction of each GPU's memory vLLM may use (0-1]",
    "accelerator_type": "GPU type the replicas must run on, e.g. H100, A100, L4",
    "tool_call_parser": "vLLM tool-call parser (hermes, llama3_json, mistral, ...); "
    "needed for tool calling",
    "placement_strategy": "PACK, STRICT_PACK, SPREAD or STRICT_SPREAD for a replica's GPUs",
    "engine_kwargs": "any other vLLM engine arguments",
}
# Engine arguments set from named options or by Ray itself: one spelling each.
_FROM_OPTIONS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_model_len",
    "gpu_memory_utilization",
    "tool_call_parser",
    "enable_auto_tool_choice",
)
_RAY_OWNED = ("model", "served_model_name", "distributed_executor_backend")


class InClusterOptions(StrictModel):
    """The ``options`` of a ``vllm`` model block in ``mode: in_cluster``."""

    mode: Literal["in_cluster"] = Field(description=_OPTIONS["mode"])
    model_id: str | None = Field(default=None, min_length=1, description=_OPTIONS["model_id"])
    tensor_parallel_size: int = Field(default=1, ge=1, description=_OPTIONS["tensor_parallel_size"])
    pipeline_parallel_size: int = Field(
        default=1, ge=1, description=_OPTIONS["pipeline_parallel_size"]
    )
    max_model_len: int | None = Field(default=None, ge=1, description=_OPTIONS["max_model_len"])
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description=_OPTIONS["gpu_memory_utilization"]
    )
    accelerator_type: str | None = Field(default=None, description=_OPTIONS["accelerator_type"])
    tool_call_parser: str | None = Field(
        default=None, min_length=1, description=_OPTIONS["tool_call_parser"]
    )
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] | None = Field(
        default=None, description=_OPTIONS["placement_strategy"]
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=_OPTIONS["engine_kwargs"]
    )


def _name(endpoint: ModelEndpoint) -> str:
    # The same provider name ServeProvider and the router use for this endpoint.
    return f"{endpoint.provider}:{endpoint.model}"


def in_cluster(endpoint: ModelEndpoint) -> bool:
    """Whether ``endpoint`` is served in-cluster by ``ray.serve.llm`` (``vllm_app``)
    rather than reached over HTTP; its options are checked either way.

    ``mode`` is accepted only as ``in_cluster`` and only on ``vllm``; the in-cluster
    keys only together with it, so the external client never receives them.
    """
    options = endpoint.options
    where = f"{_name(endpoint)}: options"
    if "mode" not in options:
        stray = sorted(set(options) & (set(_OPTIONS) - {"mode"}))
        if endpoint.provider == "vllm" and stray:
            raise ConfigError(
                f"{where}: {', '.join(map(repr, stray))} only apply to in-cluster vLLM",
                hint="add `mode: in_cluster` to the options, or remove them to use an "
                "external vLLM server at `endpoint`",
            )
        return False
    if options["mode"] != IN_CLUSTER:
        raise ConfigError(
            f"{where}.mode: {options['mode']!r} is not a mode",
            hint="the only mode is 'in_cluster'; leave mode out for an external server",
        )
    if endpoint.provider != "vllm":
        raise ConfigError(
            f"{where}.mode: provider {endpoint.provider!r} has no in-cluster mode",
            hint="use provider: vllm for a model served inside the Ray cluster",
        )
    return True


def in_cluster_options(endpoint: ModelEndpoint) -> InClusterOptions:
    """The validated in-cluster options of ``endpoint``; every mistake is a
    ``ConfigError`` naming the key (unknown keys list the valid ones)."""
    where = f"{_name(endpoint)}: options"
    unknown = sorted(set(endpoint.options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown {', '.join(map(repr, unknown))} for in-cluster vLLM",
            hint=" ".join(
                part
                for part in (
                    did_you_mean(unknown[0], list(_OPTIONS)),
                    "valid options: " + "; ".join(f"{k} ({v})" for k, v in _OPTIONS.items()),
                )
                if part
            ),
        )
    for key, value in (("endpoint", endpoint.endpoint), ("api_key_env", endpoint.api_key_env)):
        if value is not None:
            raise ConfigError(
                f"{_name(endpoint)}: {key} has no meaning for an in-cluster model",
                hint=f"remove {key}, or drop `mode: in_cluster` to call a vLLM server",
            )
    try:
        options = InClusterOptions.model_validate(endpoint.options)
    except ValidationError as exc:
        problems = [f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(problems), problems=problems) from None
    check_accelerator_type(where, options.accelerator_type, llm=True)
    _check_placement(endpoint)
    clash = sorted(set(options.engine_kwargs) & set(_FROM_OPTIONS + _RAY_OWNED))
    if clash:
        raise ConfigError(
            f"{where}.engine_kwargs: {', '.join(map(repr, clash))} cannot be set here",
            hint="set tensor_parallel_size, pipeline_parallel_size, max_model_len, "
            "gpu_memory_utilization and tool_call_parser as options of their own; the "
            "model comes from `model`/`model_id` and Ray picks the executor",
        )
    return options


def _check_placement(endpoint: ModelEndpoint) -> None:
    # Ray's LLMServer places a replica by its GPU bundles (placement_group_config) and
    # LLMConfig.accelerator_type; actor-level selectors would fight them.
    deployment = endpoint.deployment
    actor = deployment.ray_actor_options if deployment else None
    where = f"{_name(endpoint)}: deployment"
    if actor is not None and actor.accelerator_type is not None:
        raise ConfigError(
            f"{where}.ray_actor_options.accelerator_type: in-cluster vLLM takes the GPU "
            "type in options.accelerator_type",
            hint=f"move accelerator_type: {actor.accelerator_type} to the entry's options",
        )
    if deployment is not None and deployment.placement is not None:
        raise ConfigError(
            f"{where}.placement: in-cluster vLLM is placed by its GPU bundles "
            "(num_gpus x tensor_parallel_size) and options.accelerator_type",
            hint="remove placement; GPU replicas only go to nodes with GPUs",
        )


def _gpus_per_shard(endpoint: ModelEndpoint) -> float:
    actor = endpoint.deployment.ray_actor_options if endpoint.deployment else None
    gpus = actor.num_gpus if actor is not None and actor.num_gpus is not None else 1.0
    if gpus <= 0:
        raise ConfigError(
            f"{_name(endpoint)}: deployment.ray_actor_options.num_gpus must be above 0 for "
            "in-cluster vLLM (it is GPUs per tensor-parallel shard)",
            hint="for a CPU-only model run an external vLLM server and drop `mode: in_cluster`",
        )
    return float(gpus)


def gpus_per_replica(endpoint: ModelEndpoint) -> float:
    """GPUs one replica reserves: GPUs per shard × tensor × pipeline parallel size."""
    options = in_cluster_options(endpoint)
    shards = options.tensor_parallel_size * options.pipeline_parallel_size
    return _gpus_per_shard(endpoint) * shards


def llm_config_fields(endpoint: ModelEndpoint) -> dict[str, Any]:
    """The keyword arguments of Ray's ``LLMConfig`` for an in-cluster endpoint."""
    options = in_cluster_options(endpoint)
    engine: dict[str, Any] = {"tensor_parallel_size": options.tensor_parallel_size}
    if options.pipeline_parallel_size > 1:
        engine["pipeline_parallel_size"] = options.pipeline_parallel_size
    if options.max_model_len is not None:
        engine["max_model_len"] = options.max_model_len
    if options.gpu_memory_utilization is not None:
        engine["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.tool_call_parser is not None:
        # vLLM refuses requests with tools unless auto tool choice has a parser.
        engine["enable_auto_tool_choice"] = True
        engine["tool_call_parser"] = options.tool_call_parser
    engine.update(options.engine_kwargs)

    serve_options = endpoint.deployment.to_serve_options() if endpoint.deployment else {}
    actor = dict(serve_options.pop("ray_actor_options", {}))
    actor.pop("num_gpus", None)  # GPUs go to the engine workers' bundles (module docstring)
    if actor:
        serve_options["ray_actor_options"] = actor
    placement: dict[str, Any] = {"bundle_per_worker": {"GPU": _gpus_per_shard(endpoint)}}
    if options.placement_strategy is not None:
        placement["strategy"] = options.placement_strategy

    fields: dict[str, Any] = {
        "model_loading_config": {
            "model_id": options.model_id or endpoint.model,
            "model_source": endpoint.model,
        },
        "engine_kwargs": engine,
        "deployment_config": serve_options,
        "placement_group_config": placement,
    }
    if options.accelerator_type is not None:
        fields["accelerator_type"] = options.accelerator_type
    return fields


def llm_config(endpoint: ModelEndpoint, config_cls: type[Any] | None = None) -> Any:
    """Ray's ``LLMConfig`` for ``endpoint``, validated.

    ``config_cls`` defaults to the ``LLMConfig`` that imports without vLLM (the base
    of ``ray.serve.llm.LLMConfig``), so configs can be checked on any machine.
    """
    fields = llm_config_fields(endpoint)
    if config_cls is None:
        try:
            from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
        except ImportError as exc:  # pyarrow and friends come with ray[llm]
            raise ConfigError(f"{_name(endpoint)}: {INSTALL_HINT} ({exc})") from None
        config_cls = LLMConfig
    try:
        return config_cls(**fields)
    except ValidationError as exc:
        problems = [f"{_name(endpoint)}: LLMConfig: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(problems), problems=problems) from None


def vllm_app(endpoint: ModelEndpoint) -> Application:
    """The provider application of an in-cluster endpoint: Ray's ``LLMServer`` with
    our ``complete`` / ``stream`` / ``health`` methods (see ``VLLMChatAdapter``)."""
    llm_config_fields(endpoint)  # YAML mistakes are reported before a missing vLLM
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as exc:
        raise ConfigError(
            f"{_name(endpoint)}: {INSTALL_HINT}: {exc}",
            hint="install it on every node that may build or run this application "
            "(see cluster/gpu.yaml), or use an external vLLM server",
        ) from None
    config = llm_config(endpoint, LLMConfig)
    settings = {
        "name": _name(endpoint),
        "model_id": config.model_id,
        "timeout_s": endpoint.timeout_s,
    }
    return build_llm_deployment(
        config, deployment_cls=_server_class(), bind_kwargs={"astromesh": settings}
    )


def _server_class() -> type[Any]:
    # Defined on demand: its base class imports vLLM.  Serve ships the class to the
    # replicas by value (cloudpickle), so nothing needs to import this at module level.
    from ray.serve.llm.deployment import LLMServer
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    class AstromeshLLMServer(ProviderMethods, LLMServer):
        """Ray's ``LLMServer`` answering our provider protocol on plain dicts."""

        async def __init__(  # type: ignore[misc]
            self, llm_config: Any, *, astromesh: dict[str, Any], **kwargs: Any
        ) -> None:
            await super().__init__(llm_config, **kwargs)  # starts the vLLM engine
            self.init_provider_methods(astromesh, lambda body: ChatCompletionRequest(**body))

    return AstromeshLLMServer
