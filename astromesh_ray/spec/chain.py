"""``spec.chain`` (original Astromesh): agents run after this one's turn, and
``spec.output_schema``: the shape of a structured answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from astromesh_ray.spec.base import StrictModel, rule_error
from astromesh_ray.spec.templates import check_expression, check_template, is_template

CHAIN_VARIABLES = ("output", "query")
"""What chain templates are given: this turn's ``output`` (answer, data) and query."""


class ChainRetrySpec(StrictModel):
    """How often a chain step is tried, and how long it waits between tries."""

    max_attempts: int = Field(default=1, ge=1, le=10, description="Tries, the first included.")
    backoff: Literal["none", "fixed", "exponential"] = Field(
        default="exponential", description="Wait between tries: none, 1 s, or 1, 2, 4... s."
    )
    initial_delay_s: float = Field(
        default=1.0, ge=0, le=60, description="The first wait (seconds)."
    )


class ChainStepSpec(StrictModel):
    """``chain.on_complete[]``: run ``agent`` on this turn's output."""

    agent: str = Field(pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$", description="The agent to run.")
    when: str | None = Field(
        default=None,
        description="A Jinja expression (`output.data.score > 7`) or template "
        "(`{{ output.data.score > 7 }}`) over `output.answer` and `output.data` (the "
        "structured answer) and `query`; the step runs when it is true (default: always).",
    )
    input: str = Field(
        default="{{ output.answer }}",
        description="What the agent is asked: a Jinja template over `output` and `query`.",
    )
    retry: ChainRetrySpec = Field(default_factory=ChainRetrySpec, description="Retries.")
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        alias="timeout_seconds",
        description="Seconds the step may take (default: what the turn has left).",
    )
    on_error: Literal["continue", "fail"] = Field(
        default="continue",
        description="continue: the failure is recorded and the turn keeps its answer; "
        "fail: the turn fails.",
    )

    @model_validator(mode="after")
    def _templates_parse(self) -> ChainStepSpec:
        check_template(self.input, "input", CHAIN_VARIABLES)
        if self.when is not None:
            if is_template(self.when):
                check_template(self.when, "when", CHAIN_VARIABLES)
            else:
                check_expression(self.when, "when", CHAIN_VARIABLES)
        return self


class ChainSpec(StrictModel):
    """``spec.chain``: agents run, in order, once this agent answered."""

    mode: Literal["sequential"] = Field(
        default="sequential", description="Steps run one after the other (the only mode)."
    )
    on_complete: list[ChainStepSpec] = Field(
        min_length=1, max_length=16, description="The steps, in order."
    )


_SHORTHAND_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")


def output_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``spec.output_schema`` as a JSON Schema: a full schema (it has ``type``,
    ``properties``, ``$schema``, ``anyOf``... as JSON Schema keywords) as given; the
    original's shorthand ``{field: {type, description}}`` (a field may be called
    ``type``) as an object with every field required."""
    if _is_full_schema(schema):
        return schema
    properties = {name: dict(field) for name, field in schema.items()}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_KEYWORDS = ("type", "properties", "$schema", "anyOf", "oneOf", "allOf", "$ref", "enum")


def _is_full_schema(schema: dict[str, Any]) -> bool:
    # A keyword whose value is a shorthand field ({type: <name>}) is a field of that
    # name ("type" is a common one); as a JSON Schema keyword its value never is.
    return any(k in _KEYWORDS and not _is_field(v) for k, v in schema.items())


def _is_field(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def check_output_schema(schema: dict[str, Any]) -> None:
    """Refuse an ``output_schema`` that is neither a JSON Schema nor the shorthand."""
    if not _is_full_schema(schema):
        for name, field in schema.items():
            if not isinstance(field, dict) or field.get("type") not in _SHORTHAND_TYPES:
                raise rule_error(
                    (name,),
                    f"field {name!r} needs a type ({', '.join(_SHORTHAND_TYPES)}), or give "
                    "a full JSON Schema",
                )
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    full = _is_full_schema(schema)
    try:
        Draft202012Validator.check_schema(output_json_schema(schema))
    except SchemaError as exc:
        # Point at the bad keyword: its path in the schema (a shorthand field's
        # path in the generated schema starts with "properties").
        where = list(exc.absolute_path)
        if not full:
            where = where[1:] if where[:1] == ["properties"] else []
        raise rule_error(tuple(where), f"not a valid JSON Schema: {exc.message}") from None
