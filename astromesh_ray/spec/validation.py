"""``astromesh validate``'s reading of paths: agent files alone, agents/ directories
(paired with the configuration directory they would be served with) and whole
configuration directories, every issue YAML alone shows, and the agents read for
the checks that need the code (``core.build.check_buildable``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from astromesh_ray.spec.agent import AgentSpec
from astromesh_ray.spec.base import ConfigIssue
from astromesh_ray.spec.directory import LoadedConfig, _collect, _Collector, _yaml_files
from astromesh_ray.spec.loader import sort_issues


def _looks_like_config_dir(directory: Path) -> bool:
    return (
        bool(_yaml_files(directory, "runtime.yaml", "runtime.yml", "providers*.yaml"))
        or (directory / "agents").is_dir()
    )


@dataclass
class AgentCheck:
    """Agents for ``astromesh validate`` to build-check (``core.build.check_buildable``),
    with the configuration they would be served with: its providers, routing and
    runtime defaults (already applied to ``agents``).  ``config`` is None when none is
    known: the agents are checked without providers.  ``known`` is every agent they
    may call as a tool (None: ``agents`` themselves)."""

    agents: list[AgentSpec]
    config: LoadedConfig | None
    known: dict[str, AgentSpec] | None = None


@dataclass
class Validation:
    """What ``validate_files`` / ``validate_dirs`` found: every issue YAML alone shows,
    and the agents read, for the checks that need the code."""

    issues: list[ConfigIssue]
    checks: list[AgentCheck]

    @property
    def agents(self) -> list[AgentSpec]:
        """Every agent read, once each (by file and name)."""
        seen: dict[tuple[Path | None, str], AgentSpec] = {}
        for check in self.checks:
            for agent in check.agents:
                where = Path(agent.source).resolve() if agent.source else None
                seen.setdefault((where, agent.name), agent)
        return list(seen.values())


def _served_with(path: Path) -> Path | None:
    # The configuration directory the loader pairs these agents with: they are in its
    # agents/ directory (a file in it, or the directory itself), and it declares
    # providers or a runtime (an agents/ directory alone says nothing about them).
    agents_dir = path if path.is_dir() else path.parent
    parent = agents_dir.parent
    if agents_dir.name != "agents" or agents_dir.resolve() == parent.resolve():
        return None
    declared = _yaml_files(
        parent, "runtime.yaml", "runtime.yml", "providers*.yaml", "providers*.yml"
    )
    return parent if declared or (parent / "rag").is_dir() else None


def _agent_files(
    files: list[Path], config_dir: Path | None
) -> tuple[list[ConfigIssue], AgentCheck]:
    collector = _Collector()
    if config_dir is not None:
        collector.config_files(config_dir)
    for file in files:
        loaded = collector.read(file)
        if isinstance(loaded.document, AgentSpec):
            collector.add_agent(loaded)
    if config_dir is None:
        collector.apply_defaults()
        return collector.all_issues(), AgentCheck(list(collector.config.agents.values()), None)
    collector.check_refs()
    collector.apply_defaults()
    agents = collector.config.agents
    # Their peers are the agents serve would load next to them (issues in those
    # files are theirs to report, when they are validated).
    served = _collect(config_dir, None, check_refs=False).config.agents
    known = {**served, **agents}
    return collector.all_issues(), AgentCheck(list(agents.values()), collector.config, known)


def validate_files(paths: list[Path]) -> Validation:
    """Every issue in ``paths``, and their agents for the build checks (``astromesh
    validate``).

    A configuration directory (runtime.yaml, providers*.yaml or agents/) is read as
    ``load_config`` reads it.  Another directory has each YAML file under it read, and
    agent names checked for duplicates; a file is read on its own.  Every Agent
    document is kept, whatever its file is called.  Agents in the ``agents/``
    directory of a configuration directory (a file in it, or the directory) are
    checked with that configuration's providers and runtime defaults, as ``serve``
    would run them; other agents without providers.
    """
    issues: list[ConfigIssue] = []
    checks: list[AgentCheck] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and _looks_like_config_dir(path):
            collector = _collect(path, None)
            issues += collector.all_issues()
            checks.append(AgentCheck(list(collector.config.agents.values()), collector.config))
        elif path.is_dir() or path.is_file():
            files = _yaml_files(path, "**/*.yaml", "**/*.yml") if path.is_dir() else [path]
            found, check = _agent_files(files, _served_with(path))
            issues += found
            checks.append(check)
        else:
            issues.append(ConfigIssue(str(path), None, None, "", "no such file or directory"))
    # A file given twice (a directory and a file in it) is reported once.
    return Validation(sort_issues(list(dict.fromkeys(issues))), checks)


def validate_dirs(config_dir: Path | None, agents_dir: Path | None = None) -> Validation:
    """``validate_files`` for what ``load_config(config_dir, agents_dir=...)`` loads:
    what ``astromesh serve`` and ``run`` would run with the same directories."""
    collector = _collect(config_dir, agents_dir)
    agents = list(collector.config.agents.values())
    return Validation(collector.all_issues(), [AgentCheck(agents, collector.config)])


def validate_paths(paths: list[Path]) -> list[ConfigIssue]:
    """Every issue in ``paths`` that YAML alone shows (``validate_files``)."""
    return validate_files(paths).issues
