"""Reading YAML files into validated documents, with every error positioned.

``load_document`` reads one file; ``load_config`` reads a configuration directory
(runtime.yaml, providers*.yaml, agents/*.agent.yaml) and checks what spans files
(duplicate names, ``providerRef``).  Every problem in every file is collected before
one ``ConfigError`` is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.agent import AgentSpec
from astromesh_ray.spec.base import ConfigIssue, YamlPath, render_path
from astromesh_ray.spec.channels import ChannelSpec
from astromesh_ray.spec.config import ProviderConfigSpec, RuntimeConfigSpec
from astromesh_ray.spec.diagnostics import did_you_mean, issues_from_validation
from astromesh_ray.spec.rag import RAGPipelineSpec
from astromesh_ray.spec.support import SupportIssue, check_support, check_support_data
from astromesh_ray.spec.yaml_positions import ParsedYaml, parse_yaml

Document = AgentSpec | ProviderConfigSpec | RuntimeConfigSpec | RAGPipelineSpec | ChannelSpec
"""Any document the loader returns."""

KINDS: dict[
    str,
    type[AgentSpec]
    | type[ProviderConfigSpec]
    | type[RuntimeConfigSpec]
    | type[RAGPipelineSpec]
    | type[ChannelSpec],
] = {
    "Agent": AgentSpec,
    "ProviderConfig": ProviderConfigSpec,
    "RuntimeConfig": RuntimeConfigSpec,
    "RAGPipeline": RAGPipelineSpec,
    "Channel": ChannelSpec,
}
"""Kinds the runtime loads, by ``kind``."""

_REFUSED_KINDS: tuple[str, ...] = ()

# Keys a model accepts besides the one its dump uses (aliases, populate_by_name):
# used to find the line of a support issue whose path comes from a model dump.
_ALTERNATIVE_KEYS: dict[str, tuple[str, ...]] = {
    "provider": ("source",),
    "providerRef": ("provider_ref",),
    "timeout_seconds": ("timeout", "timeout_s"),
    "timeout": ("timeout_s",),
    "apiVersion": ("api_version",),
}


@dataclass
class LoadedFile:
    """One file read: its document (when valid), its positions and its issues."""

    file: str
    parsed: ParsedYaml | None
    document: Document | None
    issues: list[ConfigIssue]

    def issue(self, path: YamlPath, message: str, hint: str | None = None) -> ConfigIssue:
        """An issue about ``path`` of this file, at that path's line."""
        found = self._yaml_path(path)
        position = self.parsed.locate(found) if self.parsed else None
        line, column = position if position else (None, None)
        shown = render_path((*found, *path[len(found) :]))
        return ConfigIssue(self.file, line, column, shown, message, hint)

    def where(self, path: YamlPath) -> str:
        """``file:line`` of ``path``."""
        position = self.parsed.locate(self._yaml_path(path)) if self.parsed else None
        return f"{self.file}:{position[0]}" if position else self.file

    def _yaml_path(self, path: YamlPath) -> YamlPath:
        data = self.parsed.data if self.parsed else None
        found: list[object] = []
        for part in path:
            candidates = (part, *_ALTERNATIVE_KEYS.get(str(part), ()))
            hit = next((c for c in candidates if isinstance(data, dict) and c in data), None)
            if hit is None and isinstance(data, list) and isinstance(part, int):
                hit = part if 0 <= part < len(data) else None
            if hit is None:
                break
            found.append(hit)
            data = data[hit]  # type: ignore[index]
        return tuple(found)

    def add_support(self, issues: list[SupportIssue]) -> None:
        """Record support-check refusals at their lines."""
        self.issues += [self.issue(i.path, i.message, i.hint) for i in issues]


def read_file(path: Path) -> LoadedFile:
    """Read, parse, validate and support-check one YAML file; never raises."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        unreadable = ConfigIssue(file, None, None, "", f"cannot read: {exc}")
        return LoadedFile(file, None, None, [unreadable])
    parsed, problems = parse_yaml(text)
    loaded = LoadedFile(
        file,
        parsed,
        None,
        [
            ConfigIssue(file, p.line, p.column, render_path(p.path), p.message, p.hint)
            for p in problems
        ],
    )
    if parsed is None:
        return loaded
    data: dict[Any, Any] = parsed.data
    kind = data.get("kind")
    if kind is None:
        loaded.issues.append(
            loaded.issue(("kind",), "missing required field 'kind'", "one of: " + ", ".join(KINDS))
        )
        return loaded
    if kind in _REFUSED_KINDS:
        loaded.add_support(check_support_data(str(kind), data))
        return loaded
    model = KINDS.get(str(kind))
    if model is None:
        loaded.issues.append(
            loaded.issue(
                ("kind",),
                f"unknown kind {kind!r}",
                did_you_mean(kind, list(KINDS)) or "one of: " + ", ".join(KINDS),
            )
        )
        return loaded
    if "apiVersion" not in data and "api_version" not in data:
        loaded.issues.append(
            loaded.issue(
                ("apiVersion",),
                "missing required field 'apiVersion'",
                "start the file with `apiVersion: astromesh/v1`",
            )
        )
    try:
        document: Document = model.model_validate(data)
    except ValidationError as exc:
        known = {(i.path, i.message) for i in loaded.issues}
        found = issues_from_validation(exc, model, parsed, file)
        loaded.issues += [i for i in found if (i.path, i.message) not in known]
        return loaded
    if isinstance(document, AgentSpec):
        document = document.with_source(file)
    loaded.document = document
    loaded.add_support(check_support(document))
    return loaded


def sort_issues(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Issues by file, then line and column."""
    return sorted(issues, key=lambda i: (i.file, i.line or 0, i.column or 0))


def config_error(issues: list[ConfigIssue]) -> ConfigError:
    """One ``ConfigError`` listing every issue, one per line."""
    ordered = sort_issues(issues)
    return ConfigError(
        "\n".join(issue.render() for issue in ordered),
        hint="each line names file:line:column and the field; "
        "`astromesh schema` prints every accepted field",
        issues=[issue.to_dict() for issue in ordered],
    )


def load_document(path: Path | str) -> Document:
    """One YAML file as its validated document; ``ConfigError`` lists every problem."""
    loaded = read_file(Path(path))
    if loaded.issues or loaded.document is None:
        raise config_error(loaded.issues)
    return loaded.document


def load_agent(path: Path | str) -> AgentSpec:
    """One ``kind: Agent`` file (no runtime defaults applied, no providers checked)."""
    loaded = read_file(Path(path))
    if loaded.document is not None and not isinstance(loaded.document, AgentSpec):
        loaded.issues.append(
            loaded.issue(("kind",), f"expected kind Agent, found {loaded.document.kind}")
        )
    if loaded.issues or not isinstance(loaded.document, AgentSpec):
        raise config_error(loaded.issues)
    return loaded.document


def expect_kind(loaded: LoadedFile, kind: str, why: str) -> BaseModel | None:
    """The file's document if it is of ``kind``; else record an issue and return None."""
    document = loaded.document
    if document is not None and document.kind != kind:
        loaded.issues.append(
            loaded.issue(("kind",), f"expected kind {kind}, found {document.kind}", why)
        )
        return None
    return document
