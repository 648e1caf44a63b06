"""``spec.tools[]``: what an agent can call, one model per ``type``.

``type`` picks the model and defaults to ``internal`` (a Python function).  Types the
runtime does not run (``integration``, ``api``) still parse, so the schema documents
them, and are refused by the support check.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Discriminator, Field, Tag, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error
from astromesh_ray.spec.parameters import ParameterSpec, ToolParameters, parameters_json_schema


class RateLimitSpec(StrictModel):
    """At most ``max_calls`` calls per ``window_seconds``, counted per tool and agent
    across the whole cluster."""

    max_calls: int = Field(default=10, ge=1, description="Calls allowed per window.")
    window_seconds: float = Field(default=60, gt=0, description="Window length in seconds.")


class ToolResourcesSpec(StrictModel):
    """Ray resources a Python tool runs with: it then runs as a Ray task on a node that
    has them, not in the agent's replica."""

    num_cpus: float | None = Field(default=None, ge=0, description="CPUs per call.")
    num_gpus: float | None = Field(default=None, ge=0, description="GPUs per call.")
    memory: int | None = Field(default=None, ge=0, description="Memory per call, in bytes.")


class ToolSpecBase(StrictModel):
    """Keys every tool type shares."""

    schema_aliases: ClassVar[dict[str, str]] = {"confirm": "requires_approval"}

    name: str = Field(
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$",
        description="Name the model calls the tool by.",
    )
    description: str | None = Field(default=None, description="What the tool does.")
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="Calls allowed per window, per tool and agent, cluster-wide."
    )
    requires_approval: bool = Field(
        default=False,
        validation_alias=AliasChoices("requires_approval", "confirm"),
        serialization_alias="requires_approval",
        description="Pause the run before each call until the caller approves or rejects "
        "it (`confirm` is an old spelling).",
    )
    side_effects: bool | None = Field(
        default=None,
        description="Whether a call changes something outside the agent; under "
        "permissions.execution.dry_run such calls are described, not made "
        "(default: what the tool type says).",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        alias="timeout_seconds",
        description="Seconds one call may take before the model is told it timed out "
        "(default: whatever is left of the run's timeout_seconds).",
    )
    max_result_chars: int = Field(
        default=20_000,
        ge=100,
        description="A longer result is cut to this many characters before the model reads it.",
    )

    def json_schema(self) -> dict[str, Any] | None:
        """The tool's arguments as a JSON Schema object; ``None`` when not declared."""
        return None


class ParameterizedToolSpec(ToolSpecBase):
    """A tool whose arguments the YAML declares in ``parameters``."""

    parameters: ToolParameters | None = Field(
        default=None,
        description="Arguments: shorthand {arg: {type, description, required, default, enum}} "
        "or a full JSON Schema object.",
    )

    def json_schema(self) -> dict[str, Any] | None:
        """``parameters`` normalised to a JSON Schema object (``required`` from the
        shorthand's ``required: true``); ``None`` when not given."""
        params: dict[str, Any] | dict[str, ParameterSpec] | None = self.parameters
        return parameters_json_schema(params)


class InternalToolSpec(ParameterizedToolSpec):
    """``type: internal``: a Python function."""

    type: Literal["internal"] = Field(default="internal", description="Tool type.")
    function: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="Import path `package.module:callable` (default: a registered "
        "function of the same name).",
    )
    resources: ToolResourcesSpec | None = Field(
        default=None,
        description="Run each call as a Ray task with these resources (under Serve).",
    )


class BuiltinToolSpec(ToolSpecBase):
    """``type: builtin``: a tool shipped with the runtime."""

    type: Literal["builtin"] = Field(description="Tool type.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the built-in tool (each documents its own)."
    )


class McpServerSpec(StrictModel):
    """How to reach an MCP server."""

    transport: Literal["stdio", "sse", "http"] = Field(
        description="stdio (a subprocess), sse, or http (streamable HTTP)."
    )
    command: str | None = Field(default=None, description="Executable to start (stdio).")
    args: list[str] = Field(default_factory=list, description="Its arguments (stdio).")
    env: dict[str, str] = Field(default_factory=dict, description="Its environment (stdio).")
    url: str | None = Field(default=None, description="Server URL (sse, http).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers (sse, http); ${ENV_VAR} substituted."
    )
    bearer_token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding a bearer token (sse, http).",
    )
    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Times a stdio server that died is restarted in a row before its "
        "tools report it down.",
    )

    @model_validator(mode="after")
    def _reachable(self) -> McpServerSpec:
        if self.transport == "stdio" and not self.command:
            raise rule_error("command", "transport stdio needs command")
        if self.transport != "stdio" and not self.url:
            raise rule_error("url", f"transport {self.transport} needs url")
        return self


class McpToolSpec(ToolSpecBase):
    """``type: mcp``: every tool an MCP server lists, optionally filtered."""

    type: Literal["mcp"] = Field(description="Tool type.")
    mcp: McpServerSpec = Field(description="The server.")
    include: list[str] | None = Field(
        default=None, description="Register only these of the server's tools."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Do not register these of the server's tools."
    )
    prefix: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,31}$",
        description="Prepended to each of the server's tool names (e.g. `time_`).",
    )

    @model_validator(mode="after")
    def _include_or_exclude(self) -> McpToolSpec:
        both = sorted(set(self.include or ()) & set(self.exclude))
        if both:
            raise rule_error("exclude", f"{', '.join(both)} both included and excluded")
        return self


class WebhookSpec(StrictModel):
    """An HTTP endpoint called with the tool's arguments."""

    url: str = Field(description="URL; ${ENV_VAR} substituted.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        default="POST", description="HTTP method."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers; ${ENV_VAR} substituted."
    )
    timeout_s: float | None = Field(
        default=None, alias="timeout", gt=0, description="Request timeout in seconds."
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Retries of a call that failed to connect or got 502/503/504 "
        "(with backoff; only GET, PUT and DELETE, or any method when idempotent).",
    )
    idempotent: bool = Field(
        default=False, description="The endpoint may be called twice for one call."
    )
    max_response_bytes: int = Field(
        default=1_000_000, ge=1, description="A longer response is refused (a tool error)."
    )


class WebhookToolSpec(ParameterizedToolSpec):
    """``type: webhook``: an HTTP call."""

    type: Literal["webhook"] = Field(description="Tool type.")
    webhook: WebhookSpec = Field(description="The endpoint.")


class RagSpec(StrictModel):
    """Retrieval from a collection or a RAG pipeline."""

    collection: str | None = Field(default=None, description="Vector collection to search.")
    pipeline: str | None = Field(default=None, description="RAGPipeline to run.")
    top_k: int = Field(default=5, ge=1, description="Passages returned.")
    score_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Minimum similarity of a passage."
    )

    @model_validator(mode="after")
    def _one_source(self) -> RagSpec:
        if (self.collection is None) == (self.pipeline is None):
            raise rule_error("collection", "give exactly one of collection or pipeline")
        return self


class RagToolSpec(ToolSpecBase):
    """``type: rag``: retrieval as a tool."""

    type: Literal["rag"] = Field(description="Tool type.")
    rag: RagSpec = Field(description="What to search.")


class AgentToolSpec(ParameterizedToolSpec):
    """``type: agent``: another agent called as a tool with ``{"query": str}``; it
    answers in a sub-run sharing the caller's trace, deadline and usage."""

    type: Literal["agent"] = Field(description="Tool type.")
    agent: str = Field(description="Name of the agent to call (metadata.name).")
    context_transform: str | None = Field(
        default=None,
        description="Template shaping what is passed to the agent (refused for now).",
    )


class ClientToolSpec(ParameterizedToolSpec):
    """``type: client`` (original Astromesh): the caller executes it.  The run pauses
    with ``status: requires_action`` and resumes when the caller posts the result."""

    type: Literal["client"] = Field(description="Tool type.")


class IntegrationToolSpec(ToolSpecBase):
    """``type: integration`` (original Astromesh): a connector action. Refused."""

    type: Literal["integration"] = Field(description="Tool type.")
    connection: str | dict[str, Any] | None = Field(default=None, description="Connection.")
    actions: list[Any] = Field(default_factory=list, description="Actions exposed.")


class ApiToolSpec(ToolSpecBase):
    """``type: api`` (original Astromesh): operations of a described API. Refused."""

    type: Literal["api"] = Field(description="Tool type.")
    connection: str | dict[str, Any] | None = Field(default=None, description="Connection.")
    auth: str | dict[str, Any] | None = Field(default=None, description="Authentication.")
    operations: list[Any] | dict[str, Any] | None = Field(
        default=None, description="Operations exposed."
    )


def _tool_type(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("type", "internal")
    return getattr(value, "type", "internal")


ToolSpec = Annotated[
    Annotated[InternalToolSpec, Tag("internal")]
    | Annotated[BuiltinToolSpec, Tag("builtin")]
    | Annotated[McpToolSpec, Tag("mcp")]
    | Annotated[WebhookToolSpec, Tag("webhook")]
    | Annotated[RagToolSpec, Tag("rag")]
    | Annotated[AgentToolSpec, Tag("agent")]
    | Annotated[ClientToolSpec, Tag("client")]
    | Annotated[IntegrationToolSpec, Tag("integration")]
    | Annotated[ApiToolSpec, Tag("api")],
    Discriminator(_tool_type),
]
"""One entry of ``spec.tools``, chosen by ``type`` (default ``internal``)."""
