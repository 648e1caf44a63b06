"""``validate_files`` / ``validate_dirs``: which agents ``astromesh validate`` builds,
and with which configuration (the one ``serve`` would give them, or none)."""

from __future__ import annotations

from pathlib import Path

from spec_helpers import AGENT, WriteYaml

from astromesh_ray.spec.validation import validate_dirs, validate_files

PROVIDERS = """
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: providers}
spec:
  providers:
    llm: {type: ollama, endpoint: "http://localhost:11434", models: ["llama3.1:8b"]}
"""
RUNTIME = """
apiVersion: astromesh/v1
kind: RuntimeConfig
metadata: {name: runtime}
spec:
  defaults:
    orchestration: {max_iterations: 3}
"""
CALLER = (
    AGENT.format(name="caller")
    + """\
  tools:
    - name: ask_helper
      type: agent
      agent: helper
      description: "Ask the helper."
"""
)


def _config(write: WriteYaml) -> Path:
    write("conf/runtime.yaml", RUNTIME)
    write("conf/providers.yaml", PROVIDERS)
    write("conf/agents/helper.agent.yaml", AGENT.format(name="helper"))
    return write("conf/agents/caller.agent.yaml", CALLER).parents[1]


def test_a_config_directory_is_checked_as_serve_loads_it(write: WriteYaml) -> None:
    conf = _config(write)
    write("conf/agents/notes.yaml", "not: an agent file serve loads")  # not read
    validation = validate_files([conf])
    assert validation.issues == []
    (check,) = validation.checks
    assert sorted(a.name for a in check.agents) == ["caller", "helper"]
    assert check.config is not None and list(check.config.providers) == ["llm"]
    assert {a.spec.orchestration.max_iterations for a in check.agents} == {3}  # runtime.yaml
    assert validate_dirs(conf).checks[0].agents == check.agents


def test_agents_in_a_config_agents_directory_get_its_configuration(write: WriteYaml) -> None:
    conf = _config(write)
    # Any file name: validate reads every Agent document it is given.
    extra = write("conf/agents/support.yaml", AGENT.format(name="support"))
    for given in (conf / "agents" / "caller.agent.yaml", conf / "agents"):
        validation = validate_files([given])
        assert validation.issues == []
        (check,) = validation.checks
        assert check.config is not None and list(check.config.providers) == ["llm"]
        assert check.known is not None and {"helper", "caller"} <= set(check.known)
    (check,) = validate_files([extra]).checks
    assert [a.name for a in check.agents] == ["support"]
    assert check.agents[0].spec.orchestration.max_iterations == 3


def test_other_agents_are_checked_without_providers(write: WriteYaml, tmp_path: Path) -> None:
    loose = write("loose/support.yaml", CALLER)
    write("loose/helper.yml", AGENT.format(name="helper"))
    write("agents/lonely.agent.yaml", AGENT.format(name="lonely"))  # no config next to it
    validation = validate_files([loose, tmp_path / "loose", tmp_path / "agents"])
    assert validation.issues == []
    assert [(len(c.agents), c.config, c.known) for c in validation.checks] == [
        (1, None, None),
        (2, None, None),
        (1, None, None),
    ]
    # The same file in two checks is one agent.
    assert sorted(a.name for a in validation.agents) == ["caller", "helper", "lonely"]


def test_provider_refs_are_checked_against_the_configuration(write: WriteYaml) -> None:
    conf = _config(write)
    stray = AGENT.format(name="stray").replace(
        'provider: ollama\n      model: "llama3.1:8b"\n      endpoint: "http://localhost:11434"',
        "providerRef: lm",
    )
    path = write("conf/agents/stray.yaml", stray)
    issues = validate_files([path]).issues
    assert [(i.path, i.message) for i in issues] == [
        ("spec.model.primary.providerRef", "unknown provider 'lm'")
    ]
    assert issues[0].hint is not None and "llm" in issues[0].hint
    assert validate_files([conf]).issues == []  # serve does not load stray.yaml
