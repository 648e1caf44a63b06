"""``kind: Agent``: the whole agent document and the blocks of ``spec`` not in their
own module (identity, prompts, orchestration, permissions)."""

from __future__ import annotations

from typing import Any, Literal

import jinja2
from pydantic import Field, PrivateAttr, field_validator, model_validator

from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel, rule_error
from astromesh_ray.spec.chain import ChainSpec, check_output_schema
from astromesh_ray.spec.deployment import AgentDeploymentSpec
from astromesh_ray.spec.guardrails import GuardrailsSpec
from astromesh_ray.spec.memory import MemorySpec
from astromesh_ray.spec.model import ModelSpec
from astromesh_ray.spec.orchestration import OrchestrationSpec
from astromesh_ray.spec.tools import ToolSpec


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
        default=None,
        description="Checks on input and output (PII, topics, content, length) and cost "
        "budgets, in order.",
    )
    permissions: PermissionsSpec | None = Field(default=None, description="What tools may do.")
    output_schema: dict[str, Any] | None = Field(
        default=None,
        description="Shape of a structured answer: shorthand {field: {type}} or JSON Schema. "
        "The final answer is decoded under it where the provider can (else validated "
        "and asked again once); replies carry the parsed object as `data`.",
    )
    knowledge: dict[str, Any] | None = _extra_block("Knowledge sources")
    prefetch: dict[str, Any] | None = _extra_block("Context fetched before a turn")
    program: dict[str, Any] | None = _extra_block("Glyph program")
    chain: ChainSpec | None = Field(
        default=None, description="Agents run after this one answered (original Astromesh)."
    )
    observability: dict[str, Any] | None = _extra_block("Tracing settings")
    deployment: AgentDeploymentSpec | None = Field(
        default=None, description="Serve deployment of this agent (replicas, resources)."
    )

    @field_validator("output_schema")
    @classmethod
    def _output_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            check_output_schema(schema)
        return schema

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
