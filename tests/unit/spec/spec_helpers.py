"""Helpers shared by the spec tests (imported by name: tests are not packages)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.errors import ConfigError

ORIGINAL = Path(__file__).parent / "data" / "original"

WriteYaml = Callable[[str, str], Path]


@pytest.fixture
def write(tmp_path: Path) -> WriteYaml:
    """``write("agents/a.agent.yaml", text)``: a dedented file under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


def issues_of(call: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run ``call``, which must raise ConfigError; its issues as dicts."""
    with pytest.raises(ConfigError) as info:
        call()
    issues: list[dict[str, Any]] = info.value.details["issues"]
    assert issues, "a ConfigError must list its issues"
    return issues


AGENT = """
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary:
      provider: ollama
      model: "llama3.1:8b"
      endpoint: "http://localhost:11434"
"""
"""A minimal valid agent (format with name=...)."""
