"""JSON Schema of each YAML kind (what ``astromesh schema`` prints)."""

from __future__ import annotations

from typing import Any

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.diagnostics import did_you_mean
from astromesh_ray.spec.loader import KINDS

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(kind: str = "Agent") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``kind``, with YAML key names and field
    descriptions."""
    model = KINDS.get(kind)
    if model is None:
        raise ConfigError(
            f"unknown kind {kind!r}",
            hint=did_you_mean(kind, list(KINDS)) or "one of: " + ", ".join(KINDS),
        )
    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT}
    schema.update(model.model_json_schema(by_alias=True, mode="validation"))
    return schema
