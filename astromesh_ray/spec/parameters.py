"""Tool ``parameters``: the original shorthand or a full JSON Schema.

The shorthand maps each argument to ``{type, description, required, default, enum}``;
a mapping whose own ``type`` is ``object`` is taken as a JSON Schema instead.
``parameters_json_schema`` turns either into a JSON Schema object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import AfterValidator, Discriminator, Field, Tag, WithJsonSchema

from astromesh_ray.spec.base import StrictModel

JsonType = Literal["string", "integer", "number", "boolean", "array", "object", "null"]


class ParameterSpec(StrictModel):
    """One argument in the shorthand form."""

    type: JsonType | list[JsonType] = Field(
        default="string", description="JSON Schema type of the argument."
    )
    description: str | None = Field(default=None, description="What the argument means.")
    required: bool = Field(default=False, description="Whether the model must pass it.")
    default: Any = Field(default=None, description="Value used when the argument is omitted.")
    enum: list[Any] | None = Field(default=None, description="The only values allowed.")
    items: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the elements, for arrays."
    )

    def json_schema(self) -> dict[str, Any]:
        """This argument as a JSON Schema property."""
        schema: dict[str, Any] = {"type": self.type}
        if self.description is not None:
            schema["description"] = self.description
        if "default" in self.model_fields_set:
            schema["default"] = self.default
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.items is not None:
            schema["items"] = dict(self.items)
        return schema


def _check_schema(value: dict[str, Any]) -> dict[str, Any]:
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(
            f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
        ) from None
    return value


def _parameters_form(value: Any) -> str:
    return "schema" if isinstance(value, dict) and value.get("type") == "object" else "shorthand"


_FULL_SCHEMA = {
    "type": "object",
    "description": "A full JSON Schema object (its own `type` is `object`).",
    "properties": {"type": {"const": "object"}},
    "required": ["type"],
}

ToolParameters = Annotated[
    Annotated[
        dict[str, Any], AfterValidator(_check_schema), WithJsonSchema(_FULL_SCHEMA), Tag("schema")
    ]
    | Annotated[dict[str, ParameterSpec], Tag("shorthand")],
    Discriminator(_parameters_form),
]
"""The ``parameters`` of a tool: a JSON Schema object, or the shorthand mapping."""


def parameters_json_schema(
    parameters: dict[str, Any] | dict[str, ParameterSpec] | None,
) -> dict[str, Any] | None:
    """``parameters`` as a JSON Schema object; ``None`` when not given."""
    if parameters is None:
        return None
    if parameters.get("type") == "object":
        return dict(parameters)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in parameters.items():
        parameter = spec if isinstance(spec, ParameterSpec) else ParameterSpec.model_validate(spec)
        properties[name] = parameter.json_schema()
        if parameter.required:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema
