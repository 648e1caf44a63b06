"""json_schema: valid draft 2020-12, YAML key names, descriptions; layering."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml
from spec_helpers import ORIGINAL

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import json_schema


def _descriptions(schema: Any) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "description" and isinstance(value, str):
                found.append(value)
            else:
                found += _descriptions(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _descriptions(value)
    return found


@pytest.mark.parametrize("kind", ["Agent", "ProviderConfig", "RuntimeConfig"])
def test_schema_is_valid_json_schema(kind: str) -> None:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_agent_schema_uses_yaml_names_and_describes_every_field() -> None:
    schema = json_schema("Agent")
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    defs = schema["$defs"]
    assert "providerRef" in defs["ModelBlockSpec"]["properties"]
    assert "source" in defs["ModelBlockSpec"]["properties"]
    assert "timeout_seconds" in defs["OrchestrationSpec"]["properties"]
    assert "timeout" in defs["OrchestrationSpec"]["properties"]
    assert "deployment" in defs["AgentBodySpec"]["properties"]
    for name, model in defs.items():
        for field, prop in model.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} has no description"
    assert any("Jinja" in d for d in _descriptions(schema))


@pytest.mark.parametrize("name", sorted(p.name for p in ORIGINAL.glob("*.agent.yaml")))
def test_original_agents_validate_against_the_schema(name: str) -> None:
    data = yaml.safe_load((ORIGINAL / name).read_text(encoding="utf-8"))
    jsonschema.validate(data, json_schema("Agent"))


def test_schema_rejects_unknown_keys() -> None:
    data = yaml.safe_load((ORIGINAL / "web-researcher.agent.yaml").read_text(encoding="utf-8"))
    data["spec"]["orchestration"]["patern"] = "react"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema("Agent"))


def test_unknown_kind() -> None:
    with pytest.raises(ConfigError) as info:
        json_schema("Agnet")
    assert info.value.hint == "did you mean 'Agent'?"


def test_spec_imports_neither_core_nor_ray() -> None:
    code = (
        "import sys, astromesh_ray.spec\n"
        "bad = [m for m in sys.modules if m == 'ray' or m.startswith(('ray.', "
        "'astromesh_ray.core', 'astromesh_ray.serve'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
