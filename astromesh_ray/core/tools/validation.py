"""Argument validation against a tool's JSON Schema, before the tool runs.

A schema is compiled once (``compile_validator``) when the tool is listed, not on
every call.
"""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from astromesh_ray.core.tools.base import Validator
from astromesh_ray.errors import ConfigError, ToolError


def compile_validator(tool: str, schema: dict[str, Any]) -> Validator:
    """A validator for ``schema`` that raises ``ToolError`` naming every argument that
    does not match; an invalid schema is a ``ConfigError`` now, not at call time."""
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(
            f"tool {tool!r}: its parameters are not a valid JSON Schema: {exc.message}"
        ) from None
    checker = cls(schema)

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        problems = sorted(checker.iter_errors(arguments), key=lambda e: list(e.path))
        if problems:
            lines = []
            for err in problems:
                field = ".".join(str(p) for p in err.path) or "(arguments)"
                lines.append(f"{field}: {err.message}")
            raise ToolError(
                f"invalid arguments for tool {tool!r}: " + "; ".join(lines),
                hint="call the tool again with arguments matching its schema",
                tool=tool,
            )
        return arguments

    return validate
