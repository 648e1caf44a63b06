"""The docs match the code: README tables, CLI list and examples are checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from astromesh_ray.cli import _parser
from astromesh_ray.core.build import check_buildable
from astromesh_ray.core.patterns import PATTERNS
from astromesh_ray.errors import AstromeshError
from astromesh_ray.serve.http import HTTP_ERROR_CODES, MAX_BODY_BYTES
from astromesh_ray.spec import (
    AgentSpec,
    check_support,
    load_agent,
    load_config,
    validate_paths,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PATTERNS_DIR = ROOT / "patterns"
PATTERNS_README = PATTERNS_DIR / "README.md"


def table_rows(text: str, header: str) -> list[list[str]]:
    block = text[text.index(header) :].split("\n\n")[0]
    rows = [line.strip("|").split("|") for line in block.splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_readme_error_table_matches_the_error_classes() -> None:
    by_code = {cls.code: cls.http_status for cls in _all_errors()}
    # Errors Starlette raises itself (no route, wrong method, body too large).
    by_code.update({code: status for status, code in HTTP_ERROR_CODES.items()})
    assert by_code["request_too_large"] == 413
    rows = table_rows(README, "| Status | `code` | When |")
    assert rows
    for status, code, _ in rows:
        assert by_code[code.strip("`")] == int(status), code
    assert "over 1 MiB" in README and MAX_BODY_BYTES == 1024 * 1024


def _all_errors() -> list[type[AstromeshError]]:
    found, todo = [], [AstromeshError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_readme_lists_every_cli_command() -> None:
    parser = _parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    listed = set(re.findall(r"^astromesh ([a-z-]+)", README, re.MULTILINE))
    assert listed == commands


def test_readme_agent_example_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = README.split("An agent, in full")[1].split("```yaml\n")[1].split("```")[0]
    path = tmp_path / "example.agent.yaml"
    path.write_text(example)
    assert validate_paths([path]) == []
    agent = load_agent(path)
    assert agent.spec.deployment is not None and agent.spec.permissions is not None
    # The example's own tool module, as a user would write it: the agent must build.
    package = tmp_path / "my_tools"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "orders.py").write_text(
        "def lookup_order(order_id: str) -> str:\n"
        '    """Status of an order.\n\n    Args:\n        order_id: The order number.\n    """\n'
        "    return 'shipped'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check_buildable([agent])


def test_readme_not_yet_supported_list_is_refused() -> None:
    refused = {
        "`vision`": "spec:\n  model:\n    primary: {model: m, capabilities: [vision]}\n",
        "embedders on GPUs": "spec:\n  model:\n    primary: {model: m}\n  memory:\n"
        "    semantic:\n      backend: faiss\n"
        "      embedding: {deployment: {ray_actor_options: {num_gpus: 1}}}\n",
        "knowledge": "spec:\n  model:\n    primary: {model: m}\n  knowledge: {}\n",
    }
    for feature, body in refused.items():
        assert feature in README
        doc = yaml.safe_load(
            "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: demo}\n" + body
        )
        assert check_support(AgentSpec.model_validate(doc)), feature


def test_patterns_readme_lists_exactly_the_supported_patterns() -> None:
    text = PATTERNS_README.read_text()
    rows = table_rows(text, "| Pattern | Example | Status |")
    supported = {row[0].strip("`") for row in rows if row[2] == "supported"}
    assert supported == set(PATTERNS)
    headings = set(re.findall(r"^## `([a-z_]+)`$", text, re.MULTILINE))
    assert headings == set(PATTERNS), "one section per pattern"
    for name, example, _ in rows:
        name = name.strip("`")
        path = PATTERNS_DIR / f"{name}.agent.yaml"
        assert f"]({path.name})" in example, name
        assert validate_paths([path]) == []
        assert load_agent(path).spec.orchestration.pattern == name


def test_patterns_gallery_loads_as_one_agents_directory() -> None:
    """Every file of the gallery, workers and members included, loads and builds
    together (``--agents patterns``), and every agent name is used once."""
    files = sorted(PATTERNS_DIR.glob("*.agent.yaml"))
    assert validate_paths(files) == []
    agents = load_config(agents_dir=PATTERNS_DIR).agents
    assert len(agents) == len(files)
    check_buildable(agents.values())
    for pattern in PATTERNS:
        assert (PATTERNS_DIR / f"{pattern}.agent.yaml").is_file(), pattern


def test_patterns_readme_yaml_snippets_validate() -> None:
    """The ``spec`` snippets of patterns/README.md (output_schema, chain) are valid
    and supported."""
    snippets = re.findall(r"```yaml\n(.*?)```", PATTERNS_README.read_text(), re.DOTALL)
    assert len(snippets) >= 2
    for snippet in snippets:
        doc = yaml.safe_load(snippet)
        doc["spec"]["model"] = {"primary": {"provider": "ollama", "model": "m"}}
        agent = AgentSpec.model_validate(
            {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "demo"}, **doc}
        )
        assert check_support(agent) == [], snippet
