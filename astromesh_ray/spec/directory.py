"""A configuration directory: runtime.yaml, providers*.yaml, agents/*.agent.yaml,
rag/*.yaml (``kind: RAGPipeline``) and channels/*.yaml (``kind: Channel``).

Checks that span files live here: duplicate agent, provider, RAG pipeline or channel
names, ``providerRef`` naming a provider entry, rag tools naming a loaded pipeline,
channels naming a loaded agent, and the runtime's orchestration defaults applied to
agents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from astromesh_ray.spec.agent import AgentSpec
from astromesh_ray.spec.base import ConfigIssue, YamlPath
from astromesh_ray.spec.channels import (
    CHANNELS_DIR,
    ORIGINAL_CHANNELS_FILES,
    ORIGINAL_CHANNELS_HINT,
    ChannelSpec,
)
from astromesh_ray.spec.config import (
    OrchestrationDefaultsSpec,
    ProviderConfigSpec,
    ProviderEntrySpec,
    ProviderRoutingSpec,
    RuntimeConfigSpec,
)
from astromesh_ray.spec.diagnostics import did_you_mean
from astromesh_ray.spec.loader import LoadedFile, config_error, expect_kind, read_file, sort_issues
from astromesh_ray.spec.model import ModelBlockSpec, ModelSpec
from astromesh_ray.spec.rag import RAGPipelineSpec
from astromesh_ray.spec.tools import BuiltinToolSpec, RagToolSpec

SYSTEM_CONFIG_DIR = Path("/etc/astromesh")


@dataclass
class LoadedConfig:
    """Everything a configuration directory declares, validated."""

    root: Path | None
    runtime: RuntimeConfigSpec = field(default_factory=RuntimeConfigSpec)
    providers: dict[str, ProviderEntrySpec] = field(default_factory=dict)
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    # kind: RAGPipeline documents of <root>/rag/*.yaml, by name.
    rag_pipelines: dict[str, RAGPipelineSpec] = field(default_factory=dict)
    # kind: Channel documents of <root>/channels/*.yaml, by name.
    channels: dict[str, ChannelSpec] = field(default_factory=dict)
    routing: ProviderRoutingSpec | None = None
    # The agents directory when one was given (flag or environment); None when the
    # agents came from <root>/agents.
    agents_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The embedded stores' directory (runtime.yaml ``spec.memory.data_dir``),
        absolute: a relative one is taken against the configuration directory (the
        working directory when there is none)."""
        path = Path(self.runtime.spec.memory.data_dir).expanduser()
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / path
        return path.resolve()


def _yaml_files(directory: Path, *patterns: str) -> list[Path]:
    found = {p for pattern in patterns for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)


def model_blocks(model: ModelSpec) -> list[tuple[YamlPath, ModelBlockSpec]]:
    """Every model block of ``spec.model`` with its YAML path."""
    base: YamlPath = ("spec", "model")
    blocks: list[tuple[YamlPath, ModelBlockSpec]] = []
    for key in ("primary", "fallback"):
        block = getattr(model, key)
        if block is not None:
            blocks.append(((*base, key), block))
    if model.default is not None:
        for i, block in enumerate(model.default.candidates):
            blocks.append(((*base, "default", "candidates", i), block))
    for role, models in model.roles.items():
        for i, block in enumerate(models.candidates):
            blocks.append(((*base, "roles", role, "candidates", i), block))
    return blocks


def apply_defaults(agent: AgentSpec, defaults: OrchestrationDefaultsSpec) -> AgentSpec:
    """``agent`` with the runtime's orchestration defaults for the keys it omits."""
    orchestration = agent.spec.orchestration
    update = {
        name: getattr(defaults, name)
        for name in ("pattern", "max_iterations", "timeout_s")
        if getattr(defaults, name) is not None and name not in orchestration.model_fields_set
    }
    if not update:
        return agent
    body = agent.spec.model_copy(update={"orchestration": orchestration.model_copy(update=update)})
    return agent.model_copy(update={"spec": body})


class _Collector:
    """Reads a configuration, keeping every issue instead of stopping at the first."""

    def __init__(self) -> None:
        self.files: list[LoadedFile] = []
        self.issues: list[ConfigIssue] = []
        self.config = LoadedConfig(root=None)
        self._provider_files: dict[str, LoadedFile] = {}
        self._agent_files: dict[str, LoadedFile] = {}
        self._rag_files: dict[str, LoadedFile] = {}
        self._channel_files: dict[str, LoadedFile] = {}
        self._routing_file: LoadedFile | None = None

    def read(self, path: Path) -> LoadedFile:
        loaded = read_file(path)
        self.files.append(loaded)
        return loaded

    def config_files(self, config_dir: Path) -> None:
        """Read ``runtime.yaml`` and ``providers*.yaml`` of ``config_dir``."""
        self.config.root = config_dir
        for runtime in _yaml_files(config_dir, "runtime.yaml", "runtime.yml")[:1]:
            self.runtime(runtime)
        # providers.yaml first, then the others by name: duplicates are reported
        # in the extra files, not in the main one.
        provider_files = _yaml_files(config_dir, "providers*.yaml", "providers*.yml")
        for providers in sorted(provider_files, key=lambda p: (p.stem != "providers", p.name)):
            self.providers(providers)
        # RAG pipelines: <config>/rag/*.yaml (the original's *.rag.yaml among them).
        for pipeline in _yaml_files(config_dir / "rag", "*.yaml", "*.yml"):
            self.rag_pipeline(pipeline)
        # Channels: <config>/channels/*.yaml; the original's single channels.yaml is
        # refused, not skipped (its inline ${VAR} secrets are not read).
        for channel in _yaml_files(config_dir / CHANNELS_DIR, "*.yaml", "*.yml"):
            self.channel(channel)
        for original in _yaml_files(config_dir, *ORIGINAL_CHANNELS_FILES):
            self.issues.append(
                ConfigIssue(
                    str(original),
                    None,
                    None,
                    "",
                    "a channels file of the original Astromesh is not read by astromesh-ray",
                    ORIGINAL_CHANNELS_HINT,
                )
            )

    def channel(self, path: Path) -> None:
        self._named(path, "Channel", "channels/", "channel", self._channel_files)

    def check_channel_refs(self) -> None:
        """Every channel names a loaded agent."""
        agents = self.config.agents
        for name, channel in self.config.channels.items():
            loaded = self._channel_files[name]
            ref = channel.spec.agent
            if ref not in agents:
                hint = did_you_mean(ref, list(agents)) or (
                    "loaded agents: " + ", ".join(sorted(agents))
                    if agents
                    else "no agents are loaded (<config>/agents/*.agent.yaml)"
                )
                loaded.issues.append(
                    loaded.issue(("spec", "agent"), f"unknown agent {ref!r}", hint)
                )

    def rag_pipeline(self, path: Path) -> None:
        self._named(path, "RAGPipeline", "rag/", "RAG pipeline", self._rag_files)

    def _named(
        self, path: Path, kind: str, folder: str, what: str, files: dict[str, LoadedFile]
    ) -> None:
        """Read one ``kind`` document of ``folder`` into the configuration; a second
        document of the same name is an issue at its name, naming the first."""
        loaded = self.read(path)
        document = expect_kind(loaded, kind, f"files in {folder} hold {kind}s")
        if not isinstance(document, ChannelSpec | RAGPipelineSpec):
            return
        first = files.get(document.name)
        if first is not None:
            loaded.issues.append(
                loaded.issue(
                    ("metadata", "name"),
                    f"{what} {document.name!r} is also defined in "
                    f"{first.where(('metadata', 'name'))}",
                    f"{what} names must be unique",
                )
            )
            return
        files[document.name] = loaded
        if isinstance(document, ChannelSpec):
            self.config.channels[document.name] = document
        else:
            self.config.rag_pipelines[document.name] = document

    def check_rag_refs(self) -> None:
        """Every ``type: rag`` tool and ``rag_query``/``rag_ingest`` built-in names a
        loaded pipeline."""
        pipelines = self.config.rag_pipelines
        for name, agent in self.config.agents.items():
            loaded = self._agent_files[name]
            for index, tool in enumerate(agent.spec.tools):
                found: object = None
                if isinstance(tool, RagToolSpec):
                    found, key = tool.rag.pipeline, ("rag", "pipeline")
                elif isinstance(tool, BuiltinToolSpec) and tool.name in ("rag_query", "rag_ingest"):
                    # Not a string: the tool's own build check names what is wrong.
                    found, key = tool.config.get("pipeline"), ("config", "pipeline")
                if not isinstance(found, str):
                    continue
                ref, path = found, ("spec", "tools", index, *key)
                if ref not in pipelines:
                    hint = did_you_mean(ref, list(pipelines)) or (
                        "defined RAG pipelines: " + ", ".join(sorted(pipelines))
                        if pipelines
                        else "no RAG pipelines are defined (<config>/rag/*.yaml)"
                    )
                    loaded.issues.append(loaded.issue(path, f"unknown RAG pipeline {ref!r}", hint))

    def missing_dir(self, path: Path, what: str, hint: str) -> None:
        self.issues.append(ConfigIssue(str(path), None, None, "", f"{what} not found", hint))

    def runtime(self, path: Path) -> None:
        loaded = self.read(path)
        document = expect_kind(loaded, "RuntimeConfig", "runtime.yaml holds the RuntimeConfig")
        if isinstance(document, RuntimeConfigSpec) and not loaded.issues:
            self.config.runtime = document

    def providers(self, path: Path) -> None:
        loaded = self.read(path)
        document = expect_kind(loaded, "ProviderConfig", "providers*.yaml hold ProviderConfigs")
        if not isinstance(document, ProviderConfigSpec):
            return
        if document.spec.routing is not None:
            if self._routing_file is not None:
                loaded.issues.append(
                    loaded.issue(
                        ("spec", "routing"),
                        "spec.routing is also defined in "
                        f"{self._routing_file.where(('spec', 'routing'))}",
                        "define the routing defaults in one providers*.yaml",
                    )
                )
            else:
                self._routing_file = loaded
                self.config.routing = document.spec.routing
        for name, entry in document.spec.providers.items():
            first = self._provider_files.get(name)
            if first is not None:
                loaded.issues.append(
                    loaded.issue(
                        ("spec", "providers", name),
                        f"provider entry {name!r} is also defined in "
                        f"{first.where(('spec', 'providers', name))}",
                        "give each provider entry one name across providers*.yaml",
                    )
                )
                continue
            self._provider_files[name] = loaded
            self.config.providers[name] = entry

    def agent(self, path: Path) -> None:
        self.add_agent(self.read(path))

    def add_agent(self, loaded: LoadedFile) -> None:
        document = expect_kind(loaded, "Agent", "files named *.agent.yaml hold Agents")
        if not isinstance(document, AgentSpec):
            return
        first = self._agent_files.get(document.name)
        if first is not None:
            loaded.issues.append(
                loaded.issue(
                    ("metadata", "name"),
                    f"agent {document.name!r} is also defined in "
                    f"{first.where(('metadata', 'name'))}",
                    "agent names must be unique",
                )
            )
            return
        self._agent_files[document.name] = loaded
        self.config.agents[document.name] = document

    def check_refs(self) -> None:
        self.check_rag_refs()
        providers = self.config.providers
        for name, agent in self.config.agents.items():
            loaded = self._agent_files[name]
            for path, block in model_blocks(agent.spec.model):
                ref = block.provider_ref
                if ref is None:
                    continue
                entry = providers.get(ref)
                if entry is None:
                    hint = did_you_mean(ref, list(providers)) or (
                        "defined providers: " + ", ".join(sorted(providers))
                        if providers
                        else "no provider entries are defined (config/providers*.yaml)"
                    )
                    loaded.issues.append(
                        loaded.issue((*path, "providerRef"), f"unknown provider {ref!r}", hint)
                    )
                elif block.model is None and not entry.models:
                    loaded.issues.append(
                        loaded.issue(
                            (*path, "providerRef"),
                            f"no model: provider entry {ref!r} lists no models",
                            "give model in this block, or models in the entry",
                        )
                    )

    def apply_defaults(self) -> None:
        """Give the agents the runtime's orchestration defaults, as ``serve`` runs them."""
        defaults = self.config.runtime.spec.defaults.orchestration
        self.config.agents = {
            name: apply_defaults(agent, defaults) for name, agent in self.config.agents.items()
        }

    def all_issues(self) -> list[ConfigIssue]:
        return sort_issues(self.issues + [i for f in self.files for i in f.issues])


def _collect(
    config_dir: Path | None, agents_dir: Path | None, *, check_refs: bool = True
) -> _Collector:
    collector = _Collector()
    collector.config.root = config_dir
    collector.config.agents_dir = agents_dir
    if config_dir is not None:
        if not config_dir.is_dir():
            collector.missing_dir(
                config_dir,
                "configuration directory",
                "pass --config DIR or set ASTROMESH_CONFIG_DIR",
            )
            return collector
        collector.config_files(config_dir)
    if agents_dir is not None and not agents_dir.is_dir():
        collector.missing_dir(
            agents_dir, "agents directory", "pass --agents DIR or set ASTROMESH_AGENTS_DIR"
        )
    agents_root = agents_dir or (config_dir / "agents" if config_dir else None)
    if agents_root is not None and agents_root.is_dir():
        for agent in _yaml_files(agents_root, "*.agent.yaml", "*.agent.yml"):
            collector.agent(agent)
    if check_refs:
        collector.check_refs()
        collector.check_channel_refs()
    collector.apply_defaults()
    return collector


def load_config(config_dir: Path | None = None, *, agents_dir: Path | None = None) -> LoadedConfig:
    """Load ``<config_dir>/runtime.yaml`` (defaults when absent), ``providers*.yaml``
    (merged by entry name), ``<config_dir>/agents/*.agent.yaml`` (or ``agents_dir``) and
    ``<config_dir>/rag/*.yaml`` (RAG pipelines).

    Raises ``ConfigError`` listing every issue in every file.
    """
    collector = _collect(
        Path(config_dir) if config_dir is not None else None,
        Path(agents_dir) if agents_dir is not None else None,
    )
    issues = collector.all_issues()
    if issues:
        raise config_error(issues)
    return collector.config


def _under(base: Path | None, path: Path) -> Path:
    return path if base is None or path.is_absolute() else base / path


def resolve_config_dir(explicit: str | None, *, base: Path | None = None) -> Path:
    """The configuration directory: ``explicit``, else ``$ASTROMESH_CONFIG_DIR``, else
    ``./config`` when it exists (dev mode), else ``/etc/astromesh`` (system mode).

    Relative paths are taken against ``base`` (default: the working directory).
    """
    chosen = explicit or os.environ.get("ASTROMESH_CONFIG_DIR")
    if chosen:
        return _under(base, Path(chosen))
    local = _under(base, Path("config"))
    return local if local.is_dir() else SYSTEM_CONFIG_DIR


def resolve_dirs(
    config: str | None = None, agents: str | None = None, *, base: Path | None = None
) -> tuple[Path | None, Path | None]:
    """The configuration and agents directories to load, as the CLI and the Serve
    builders find them: ``(config_dir, agents_dir)``.

    The agents directory is ``agents``, else ``$ASTROMESH_AGENTS_DIR``, else None
    (``<config>/agents``).  The configuration directory is as in
    ``resolve_config_dir``; but when an agents directory is given and only the
    ``/etc/astromesh`` fallback is left, which does not exist, there is none: the
    runtime and providers take their defaults.  Relative paths are taken against
    ``base`` (default: the working directory).
    """
    agents = agents or os.environ.get("ASTROMESH_AGENTS_DIR") or None
    agents_dir = _under(base, Path(agents)) if agents else None
    config_dir: Path | None = resolve_config_dir(config, base=base)
    named = config or os.environ.get("ASTROMESH_CONFIG_DIR")
    if agents_dir is not None and not named and config_dir == SYSTEM_CONFIG_DIR:
        config_dir = config_dir if config_dir.is_dir() else None
    return config_dir, agents_dir


def load_from_environment(
    config: str | None = None, agents: str | None = None, *, base: Path | None = None
) -> LoadedConfig:
    """``load_config`` of the directories ``resolve_dirs`` finds (the CLI's
    ``--config``/``--agents``, the builders' ``config_dir``/``agents_dir``)."""
    config_dir, agents_dir = resolve_dirs(config, agents, base=base)
    return load_config(config_dir, agents_dir=agents_dir)
