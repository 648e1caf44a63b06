"""What the per-agent built-ins share: ``SchemaTool`` (a ``Tool`` described by a JSON
Schema, its defaults filled in before the call) and ``parse_config`` (a built-in's
``config`` block checked against a pydantic model, unknown keys named with the
known ones)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.tools import BuiltinToolSpec

ConfigT = TypeVar("ConfigT", bound=pydantic.BaseModel)


class ToolConfig(pydantic.BaseModel):
    """Base of a built-in's ``config`` model: frozen, no unknown keys."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def parse_config(
    spec: BuiltinToolSpec, model: type[ConfigT], *, moved: Mapping[str, str] | None = None
) -> ConfigT:
    """``spec.config`` as ``model``; a ``ConfigError`` naming the tool and every bad
    key (an unknown one with the list of known ones).  ``moved``: keys of the original
    Astromesh that are set elsewhere here, with where (the hint says so)."""
    known = ", ".join(sorted(model.model_fields)) or "(none)"
    for key, instead in (moved or {}).items():
        if key in spec.config:
            raise ConfigError(
                f"built-in tool {spec.name!r}: config key {key!r} is not used by astromesh-ray",
                hint=instead,
            )
    try:
        return model.model_validate(spec.config)
    except pydantic.ValidationError as exc:
        problems = []
        unknown = False
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            if err["type"] == "extra_forbidden":
                unknown = True
                problems.append(f"unknown config key {key!r}")
            else:
                problems.append(f"config.{key}: {err['msg']}")
        raise ConfigError(
            f"built-in tool {spec.name!r}: " + "; ".join(problems),
            hint=f"known config keys of {spec.name}: {known}"
            if unknown
            else f"fix config of tool {spec.name!r}",
        ) from None


class SchemaTool(ABC):
    """A ``Tool`` whose arguments a JSON Schema describes.  Subclasses implement
    ``run``; ``validate`` checks the schema and fills each missing argument that has
    a ``default`` in it, so ``run`` sees every argument."""

    side_effects = False

    def __init__(self, name: str, description: str, parameters: dict[str, Any]) -> None:
        self._schema = ToolSchema(name=name, description=description, parameters=parameters)
        self._check = compile_validator(name, parameters)
        self._defaults = {
            key: prop["default"]
            for key, prop in parameters.get("properties", {}).items()
            if isinstance(prop, dict) and "default" in prop
        }

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    @property
    def name(self) -> str:
        return self._schema.name

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        self._check(arguments)
        return {**self._defaults, **arguments}

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self.run(arguments, ctx)

    @abstractmethod
    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Do the call with validated ``arguments``; ``ToolError`` for what the model
        should read."""


def json_result(data: Any) -> ToolResult:
    """``data`` as the JSON text the model reads (and as ``ToolResult.data``)."""
    return ToolResult(content=json.dumps(data, ensure_ascii=False, default=str), data=data)
