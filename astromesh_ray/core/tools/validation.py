"""Argument validation against a tool's JSON Schema, before the tool runs."""

from __future__ import annotations

from typing import Any

from jsonschema.validators import validator_for

from astromesh_ray.errors import ToolError


def validate_arguments(tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Raise ``ToolError`` naming every argument that does not match ``schema``."""
    validator = validator_for(schema)(schema)
    problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
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
