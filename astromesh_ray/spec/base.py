"""What every YAML model shares: ``StrictModel``, ``MetadataSpec`` and ``ConfigIssue``.

``StrictModel`` forbids unknown keys and is frozen; a typo in a YAML file is an
error, never a silently ignored key.  ``ConfigIssue`` is one problem found at load
time, with the file, line and column it points at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

YamlPath = tuple[object, ...]
"""A path into a YAML document: mapping keys and list indices, outermost first."""

ApiVersion = Literal["astromesh/v1", "astromech/v1"]
"""``astromech/v1`` is a typo that shipped in original Astromesh files; both load."""

SPEC_RULE = "spec_rule"
"""Error type of the checks models make across fields (see ``rule_error``)."""


def rule_error(key: str | tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error a model validator raises about its field ``key`` (a YAML key, or a
    path of keys and indices below the model).

    The loader appends ``key`` to the error location, so the position reported is
    the line of that key rather than the line of the enclosing block.
    """
    path = [key] if isinstance(key, str) else list(key)
    return PydanticCustomError(SPEC_RULE, "{message}", {"key": path, "message": message})


def _alias_properties(schema: dict[str, Any], cls: type[Any]) -> None:
    """Document the alternative YAML keys a model accepts (``source`` for
    ``provider``, ...) in its JSON Schema, so files using them validate."""
    aliases: dict[str, str] = getattr(cls, "schema_aliases", {})
    properties = schema.get("properties", {})
    for alias, target in aliases.items():
        if target in properties:
            copied = dict(properties[target])
            copied["description"] = f"Alternative key for {target!r}; give only one of them."
            properties[alias] = copied


class StrictModel(BaseModel):
    """Base of every YAML model: unknown keys are errors, objects are frozen."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        json_schema_extra=_alias_properties,
    )

    schema_aliases: ClassVar[dict[str, str]] = {}
    """YAML keys accepted as alternatives to a field's key: ``{alternative: key}``."""


def count_present(data: Any, *keys: str) -> list[str]:
    """Which of ``keys`` a raw mapping holds (for "give only one of" checks)."""
    if not isinstance(data, dict):
        return []
    return [key for key in keys if key in data]


class MetadataSpec(StrictModel):
    """``metadata``: who a document is."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$",
        description="Lowercase name: letters, digits and dashes; starts with a letter, "
        "ends with a letter or digit.",
    )
    version: str = Field(default="0.1.0", description="Version of this document.")
    namespace: str = Field(default="default", description="Namespace grouping documents.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # `version: 1.0` is a float in YAML (and 2024-01-01 a date); still a version.
        if isinstance(value, (int, float, date)) and not isinstance(value, bool):
            return str(value)
        return value


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        """``file:line:col: path: message (hint)``."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        """The issue as a JSON-friendly dict."""
        return asdict(self)


def render_path(path: YamlPath) -> str:
    """``("spec", "tools", 0, "name")`` → ``spec.tools[0].name``."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
