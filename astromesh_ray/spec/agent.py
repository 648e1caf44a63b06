"""``kind: Agent``: the whole agent document and the blocks of ``spec`` not in their
own module (identity, prompts, orchestration, permissions)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import jinja2
from pydantic import AliasChoices, Field, PrivateAttr, model_validator

from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel, count_present, rule_error
from astromesh_ray.spec.deployment import DeploymentSpec
from astromesh_ray.spec.guardrails import GuardrailsSpec
from astromesh_ray.spec.memory import MemorySpec
from astromesh_ray.spec.model import ModelSpec
from astromesh_ray.spec.tools import ToolSpec

PatternName = Literal[
    "react", "plan_and_execute", "parallel_fan_out", "pipeline", "supervisor", "swarm", "glyph"
]
"""Orchestration patterns the YAML may name (only ``react`` runs for now)."""


class IdentitySpec(StrictModel):
    """``spec.identity``: how the agent presents itself."""

    display_name: str | None = Field(default=None, description="Human-readable name.")
    description: str | None = Field(default=None, description="What the agent does.")
    avatar: str | None = Field(default=None, description="Avatar name or URL.")


class PromptsSpec(StrictModel):
    """``spec.prompts``: the system prompt (a Jinja template) and templates it includes."""

    system: str = Field(default="", description="System prompt, a Jinja template.")
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Named Jinja templates the system prompt can {% include %}.",
    )

    @model_validator(mode="after")
    def _templates_parse(self) -> PromptsSpec:
        env = jinja2.Environment(autoescape=False)
        sources: list[tuple[tuple[str, ...], str]] = [(("system",), self.system)]
        sources += [(("templates", name), text) for name, text in self.templates.items()]
        for key, text in sources:
            try:
                env.parse(text)
            except jinja2.TemplateSyntaxError as exc:
                raise rule_error(
                    key, f"template syntax error on its line {exc.lineno}: {exc.message}"
                ) from None
        return self


class OrchestrationSpec(StrictModel):
    """``spec.orchestration``: how turns are run."""

    schema_aliases: ClassVar[dict[str, str]] = {"timeout": "timeout_seconds"}

    pattern: PatternName = Field(default="react", description="Orchestration pattern.")
    max_iterations: int = Field(
        default=10, ge=1, le=1000, description="Model calls allowed per turn."
    )
    timeout_s: float = Field(
        default=120,
        gt=0,
        validation_alias=AliasChoices("timeout_seconds", "timeout"),
        serialization_alias="timeout_seconds",
        description="Seconds a turn may take (`timeout` is a deprecated spelling).",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Pattern role → model role (refused for now)."
    )
    narrate: bool | None = Field(default=None, description="Narrate steps (refused).")
    max_repairs: int | None = Field(default=None, ge=0, description="Repair attempts (refused).")

    @model_validator(mode="before")
    @classmethod
    def _one_timeout(cls, data: Any) -> Any:
        if len(count_present(data, "timeout_seconds", "timeout", "timeout_s")) > 1:
            raise rule_error("timeout", "give timeout_seconds only (timeout is its old name)")
        return data


class FilesystemPermissionsSpec(StrictModel):
    """Directories the file tools may read and write.  A relative path is taken against
    the directory astromesh was started in; symlinks and ``..`` are resolved before a
    path is checked."""

    read: list[str] = Field(
        default_factory=list, description="Directories (or files) read_file may read."
    )
    write: list[str] = Field(
        default_factory=list, description="Directories (or files) write_file may write."
    )


class NetworkPermissionsSpec(StrictModel):
    """Hosts that webhooks, http_request and remote MCP servers may reach."""

    allowed: list[str] = Field(
        default_factory=list,
        description="Hosts: `example.com`, `example.com:8443`, `*.example.com`, an IP, or "
        "a URL (its host and port are taken).  Webhooks and MCP servers may always reach "
        "the host of their own URL.",
    )
    allow_private: list[str] = Field(
        default_factory=list,
        description="Private, loopback or link-local address ranges (CIDR, e.g. "
        "`127.0.0.1/32`) that may be reached; all others are refused after DNS "
        "resolution.  An IP literal or `localhost` listed in `allowed` counts too.",
    )


class ExecutionPermissionsSpec(StrictModel):
    """How tools execute."""

    dry_run: bool = Field(
        default=False,
        description="Tools with side effects report what they would do instead of doing it.",
    )


class PermissionsSpec(StrictModel):
    """``spec.permissions``."""

    allowed_actions: list[str] | None = Field(
        default=None, description="Tool names the agent may call (default: all its tools)."
    )
    filesystem: FilesystemPermissionsSpec | None = Field(
        default=None, description="What the file tools may read and write (default: nothing)."
    )
    network: NetworkPermissionsSpec | None = Field(
        default=None,
        description="Where network tools may connect (default: only the webhooks' and MCP "
        "servers' own hosts, public addresses only).",
    )
    execution: ExecutionPermissionsSpec | None = Field(default=None, description="Execution mode.")


def _extra_block(what: str) -> Any:
    return Field(default=None, description=f"{what} (original Astromesh; refused for now).")


class AgentBodySpec(StrictModel):
    """``spec`` of an Agent."""

    identity: IdentitySpec | None = Field(default=None, description="Presentation.")
    model: ModelSpec = Field(description="The LLMs the agent calls.")
    prompts: PromptsSpec = Field(default_factory=PromptsSpec, description="Prompts.")
    orchestration: OrchestrationSpec = Field(
        default_factory=OrchestrationSpec, description="How turns run."
    )
    tools: list[ToolSpec] = Field(default_factory=list, description="Callable tools.")
    memory: MemorySpec | None = Field(default=None, description="Memory (refused for now).")
    guardrails: GuardrailsSpec | None = Field(
        default=None, description="Input and output checks (refused for now)."
    )
    permissions: PermissionsSpec | None = Field(default=None, description="What tools may do.")
    output_schema: dict[str, Any] | None = Field(
        default=None,
        description="Shape of a structured answer: shorthand {field: {type}} or JSON Schema "
        "(refused for now).",
    )
    knowledge: dict[str, Any] | None = _extra_block("Knowledge sources")
    prefetch: dict[str, Any] | None = _extra_block("Context fetched before a turn")
    program: dict[str, Any] | None = _extra_block("Glyph program")
    chain: dict[str, Any] | None = _extra_block("Agents run after this one")
    observability: dict[str, Any] | None = _extra_block("Tracing settings")
    deployment: DeploymentSpec | None = Field(
        default=None, description="Serve deployment of this agent (replicas, resources)."
    )

    @model_validator(mode="after")
    def _unique_tools(self) -> AgentBodySpec:
        seen: set[str] = set()
        for index, tool in enumerate(self.tools):
            if tool.name in seen:
                raise rule_error(("tools", index, "name"), f"tool name {tool.name!r} is repeated")
            seen.add(tool.name)
        return self

    @model_validator(mode="after")
    def _in_memory_in_one_replica(self) -> AgentBodySpec:
        conversational = self.memory.conversational if self.memory else None
        deployment = self.deployment
        if conversational is None or conversational.backend != "in_memory" or not deployment:
            return self
        if deployment.num_replicas not in (None, 1) or deployment.autoscaling_config:
            raise rule_error(
                ("memory", "conversational", "backend"),
                "in_memory history lives in one replica: with several, a session's turns "
                "would be split between them; use sqlite, redis or postgres",
            )
        return self


class AgentSpec(StrictModel):
    """A whole ``kind: Agent`` document."""

    api_version: ApiVersion = Field(alias="apiVersion", description="Format version.")
    kind: Literal["Agent"] = Field(description="Document kind.")
    metadata: MetadataSpec = Field(description="Name, version, namespace, labels.")
    spec: AgentBodySpec = Field(description="The agent.")

    _source: str | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def source(self) -> str | None:
        """The file this agent was loaded from (``None`` when built in code)."""
        return self._source

    def with_source(self, source: str | None) -> AgentSpec:
        """A copy recording that it came from ``source``."""
        copy = self.model_copy()
        copy._source = source
        return copy
