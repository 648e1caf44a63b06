"""check_buildable: what YAML alone cannot tell, found before anything is deployed."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.core.build import build_runtime, check_buildable
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import load_agent

HEAD = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: probe}
spec:
  model:
    primary: {provider: ollama, model: m}
"""


def agent(tmp_path: Path, body: str) -> object:
    path = tmp_path / "probe.agent.yaml"
    path.write_text(HEAD + body)
    return load_agent(path)


async def test_a_valid_agent_builds(tmp_path: Path) -> None:
    spec = agent(tmp_path, "  tools:\n    - {name: calculator, type: builtin}\n")
    check_buildable([spec])  # type: ignore[list-item]
    runtime = build_runtime(spec)  # type: ignore[arg-type]
    await runtime.start()
    assert runtime.tools is not None and runtime.tools.names == ["calculator"]


def test_allowed_actions_typo_is_named(tmp_path: Path) -> None:
    spec = agent(
        tmp_path,
        "  tools:\n    - {name: calculator, type: builtin}\n"
        "  permissions: {allowed_actions: [calculater]}\n",
    )
    with pytest.raises(ConfigError, match="'calculater', which is not a tool") as info:
        check_buildable([spec])  # type: ignore[list-item]
    assert "did you mean 'calculator'?" in str(info.value)


def test_declared_parameters_must_match_the_function(tmp_path: Path) -> None:
    spec = agent(
        tmp_path,
        "  tools:\n    - name: datetime_now\n      type: internal\n"
        "      parameters: {tz: {type: string}}\n",
    )
    with pytest.raises(ConfigError, match="the function has no argument 'tz'"):
        check_buildable([spec])  # type: ignore[list-item]


def test_include_of_a_missing_template_is_named(tmp_path: Path) -> None:
    spec = agent(
        tmp_path,
        "  prompts:\n    system: \"{% include 'polcy' %}\"\n    templates: {policy: x}\n",
    )
    with pytest.raises(ConfigError, match="includes 'polcy', which is not in"):
        check_buildable([spec])  # type: ignore[list-item]


def test_unused_roles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "roles.agent.yaml"
    path.write_text(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: roles}\nspec:\n"
        "  model:\n    default: {candidates: [{provider: ollama, model: m}]}\n"
        "    roles: {planner: {candidates: [{provider: ollama, model: big}]}}\n"
    )
    with pytest.raises(ConfigError, match="'planner' are not used by the react pattern"):
        check_buildable([load_agent(path)])


def test_role_map_routes_reasoner_to_a_declared_role(tmp_path: Path) -> None:
    path = tmp_path / "mapped.agent.yaml"
    path.write_text(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: mapped}\nspec:\n"
        "  model:\n    default: {candidates: [{provider: ollama, model: small}]}\n"
        "    roles: {smart: {candidates: [{provider: ollama, model: big}], "
        "strategy: quality_first}}\n"
        "  orchestration: {role_map: {reasoner: smart}}\n"
    )
    spec = load_agent(path)
    check_buildable([spec])
    router = build_runtime(spec).models["reasoner"]
    assert [c.provider.name for c in router.candidates] == ["ollama:big"]  # type: ignore[attr-defined]
    assert router.strategy == "quality_first"  # type: ignore[attr-defined]


def test_provider_options_and_parameters_are_checked_before_deploying(tmp_path: Path) -> None:
    from astromesh_ray.spec import load_config

    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "a.agent.yaml").write_text(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: bad-options}\nspec:\n"
        "  model:\n    primary: {provider: ollama, model: m, parameters: {temprature: 0.2}}\n"
    )
    loaded = load_config(tmp_path)
    with pytest.raises(ConfigError, match="temprature"):
        check_buildable(loaded.agents.values(), loaded.providers)
    # Without providers.yaml, a model block written out in the agent is checked too.
    with pytest.raises(ConfigError, match="temprature"):
        check_buildable(loaded.agents.values())


def test_tool_secrets_are_known_to_the_redactor(tmp_path: Path) -> None:
    from astromesh_ray.core.build import tool_secret_envs

    spec = agent(
        tmp_path,
        "  tools:\n"
        "    - name: hook\n      type: webhook\n"
        "      webhook: {url: 'https://h/x?key=${HOOK_KEY}',\n"
        "                headers: {A: 'Bearer ${HOOK_TOKEN}'}}\n"
        "    - name: srv\n      type: mcp\n"
        "      mcp: {transport: http, url: 'https://m/mcp', bearer_token_env: MCP_TOKEN,\n"
        "            headers: {X-Key: '${MCP_KEY}'}}\n"
        "    - name: sql_query\n      type: builtin\n      config: {dsn_env: DB_DSN}\n",
    )
    assert sorted(tool_secret_envs(spec)) == [  # type: ignore[arg-type]
        "DB_DSN",
        "HOOK_KEY",
        "HOOK_TOKEN",
        "MCP_KEY",
        "MCP_TOKEN",
    ]
