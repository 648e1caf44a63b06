"""Configuration directories: runtime defaults, providers, providerRef, discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import AGENT, ORIGINAL, WriteYaml, issues_of

from astromesh_ray.spec import (
    LoadedConfig,
    directory,
    load_config,
    load_from_environment,
    resolve_config_dir,
    validate_paths,
)
from astromesh_ray.spec.directory import resolve_dirs

RUNTIME = """
apiVersion: astromesh/v1
kind: RuntimeConfig
metadata: {name: default}
spec:
  api: {host: 0.0.0.0, port: 9000}
  defaults:
    orchestration: {max_iterations: 4, timeout_seconds: 33}
  gateway:
    num_replicas: 2
  ray: {num_cpus: 2}
"""

PROVIDERS = """
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: local}
spec:
  providers:
    local-vllm:
      type: vllm
      endpoint: http://gpu:8000/v1
      models: [meta/llama-3-8b, meta/llama-3-70b]
      timeout: 30
      parameters: {temperature: 0.1, top_p: 0.9}
      deployment:
        mode: dedicated
        ray_actor_options: {num_gpus: 1}
"""

REF_AGENT = """
apiVersion: astromesh/v1
kind: Agent
metadata: {name: ref-agent}
spec:
  model:
    primary:
      providerRef: local-vllm
      parameters: {temperature: 0.7}
    fallback:
      providerRef: local-vllm
      model: meta/llama-3-70b
  orchestration:
    max_iterations: 7
"""


def test_runtime_defaults_apply_to_agents_that_omit_them(write: WriteYaml, tmp_path: Path) -> None:
    write("runtime.yaml", RUNTIME)
    write("agents/plain.agent.yaml", AGENT.format(name="plain"))
    write("providers.yaml", PROVIDERS)
    write("agents/ref.agent.yaml", REF_AGENT)
    loaded = load_config(tmp_path)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.root == tmp_path
    plain = loaded.agents["plain"].spec.orchestration
    assert (plain.max_iterations, plain.timeout_s, plain.pattern) == (4, 33, "react")
    own = loaded.agents["ref-agent"].spec.orchestration
    assert (own.max_iterations, own.timeout_s) == (7, 33)  # its own value wins
    assert loaded.agents["plain"].source == str(tmp_path / "agents" / "plain.agent.yaml")
    runtime = loaded.runtime.spec
    assert (runtime.api.host, runtime.api.port, runtime.ray.num_cpus) == ("0.0.0.0", 9000, 2)
    assert runtime.gateway is not None
    assert runtime.gateway.to_serve_options() == {"num_replicas": 2}
    assert set(loaded.providers) == {"local-vllm"}


def test_original_runtime_defaults(write: WriteYaml, tmp_path: Path) -> None:
    write("runtime.yaml", (ORIGINAL / "runtime.yaml").read_text(encoding="utf-8"))
    write("agents/w.agent.yaml", AGENT.format(name="w1"))
    loaded = load_config(tmp_path)
    assert loaded.runtime.api_version == "astromech/v1"
    assert loaded.agents["w1"].spec.orchestration.max_iterations == 10


def test_without_runtime_file_defaults_are_used(write: WriteYaml, tmp_path: Path) -> None:
    write("agents/w.agent.yaml", AGENT.format(name="w1"))
    loaded = load_config(tmp_path)
    assert loaded.runtime.spec.api.port == 8000
    assert loaded.runtime.spec.ray.namespace == "astromesh"
    assert loaded.providers == {}
    assert loaded.agents["w1"].spec.orchestration.max_iterations == 10


def test_agents_yml_extension_and_agents_dir_override(write: WriteYaml, tmp_path: Path) -> None:
    write("config/agents/a.agent.yml", AGENT.format(name="a1"))
    write("other/b.agent.yaml", AGENT.format(name="b1"))
    write("other/notes.yaml", "not: an agent\n")  # not *.agent.yaml: not read
    assert set(load_config(tmp_path / "config").agents) == {"a1"}
    chosen = load_config(tmp_path / "config", agents_dir=tmp_path / "other")
    assert set(chosen.agents) == {"b1"}
    assert set(load_config(agents_dir=tmp_path / "other").agents) == {"b1"}


def test_duplicate_agent_names_name_both_files(write: WriteYaml, tmp_path: Path) -> None:
    write("agents/a.agent.yaml", AGENT.format(name="same"))
    write("agents/b.agent.yaml", AGENT.format(name="same"))
    issues = issues_of(lambda: load_config(tmp_path))
    assert len(issues) == 1
    assert issues[0]["file"].endswith("b.agent.yaml")
    assert issues[0]["line"] == 4
    assert f"also defined in {tmp_path / 'agents' / 'a.agent.yaml'}:4" in issues[0]["message"]


def test_providers_files_merge_by_entry_name(write: WriteYaml, tmp_path: Path) -> None:
    write("providers.yaml", PROVIDERS)
    write(
        "providers-extra.yaml",
        PROVIDERS.replace("local-vllm", "other").replace("name: local", "name: extra"),
    )
    assert set(load_config(tmp_path).providers) == {"local-vllm", "other"}
    write("providers-dup.yaml", PROVIDERS.replace("name: local", "name: dup"))
    issues = issues_of(lambda: load_config(tmp_path))
    assert [(Path(i["file"]).name, i["path"]) for i in issues] == [
        ("providers-dup.yaml", "spec.providers.local-vllm")
    ]
    assert "also defined in" in issues[0]["message"]


def test_unknown_provider_ref_with_did_you_mean(write: WriteYaml, tmp_path: Path) -> None:
    write("providers.yaml", PROVIDERS)
    typo = REF_AGENT.replace("local-vllm\n      parameters", "local-vlm\n      parameters")
    write("agents/r.agent.yaml", typo)
    issues = issues_of(lambda: load_config(tmp_path))
    assert [(i["path"], i["line"], i["column"]) for i in issues] == [
        ("spec.model.primary.providerRef", 7, 7)
    ]
    assert issues[0]["message"] == "unknown provider 'local-vlm'"
    assert issues[0]["hint"] == "did you mean 'local-vllm'?"


def test_provider_ref_without_any_providers(write: WriteYaml, tmp_path: Path) -> None:
    write("agents/r.agent.yaml", REF_AGENT)
    issues = issues_of(lambda: load_config(tmp_path))
    assert len(issues) == 2
    assert all("no provider entries are defined" in i["hint"] for i in issues)


def test_wrong_kind_in_place(write: WriteYaml, tmp_path: Path) -> None:
    write("providers.yaml", RUNTIME)
    issues = issues_of(lambda: load_config(tmp_path))
    assert issues[0]["message"] == "expected kind ProviderConfig, found RuntimeConfig"
    assert issues[0]["line"] == 2


def test_missing_directories(tmp_path: Path) -> None:
    issues = issues_of(lambda: load_config(tmp_path / "nope"))
    assert issues[0]["message"] == "configuration directory not found"
    issues = issues_of(lambda: load_config(tmp_path, agents_dir=tmp_path / "none"))
    assert issues[0]["message"] == "agents directory not found"


def test_resolve_config_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASTROMESH_CONFIG_DIR", raising=False)
    assert resolve_config_dir(None) == Path("/etc/astromesh")
    (tmp_path / "config").mkdir()
    assert resolve_config_dir(None) == Path("config")
    monkeypatch.setenv("ASTROMESH_CONFIG_DIR", "/srv/conf")
    assert resolve_config_dir(None) == Path("/srv/conf")
    assert resolve_config_dir("mine") == Path("mine")


def test_load_from_environment(
    write: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("conf/agents/a.agent.yaml", AGENT.format(name="a1"))
    write("more/b.agent.yaml", AGENT.format(name="b1"))
    monkeypatch.setenv("ASTROMESH_CONFIG_DIR", str(tmp_path / "conf"))
    monkeypatch.delenv("ASTROMESH_AGENTS_DIR", raising=False)
    assert set(load_from_environment().agents) == {"a1"}
    monkeypatch.setenv("ASTROMESH_AGENTS_DIR", str(tmp_path / "more"))
    assert set(load_from_environment().agents) == {"b1"}
    assert set(load_from_environment(agents=str(tmp_path / "conf" / "agents")).agents) == {"a1"}


def test_agents_dir_without_a_config_dir_loads_with_defaults(
    write: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("only/a.agent.yaml", AGENT.format(name="a1"))
    monkeypatch.chdir(tmp_path)  # no ./config here
    monkeypatch.delenv("ASTROMESH_CONFIG_DIR", raising=False)
    monkeypatch.delenv("ASTROMESH_AGENTS_DIR", raising=False)
    system = tmp_path / "etc-astromesh"  # stands in for /etc/astromesh, absent
    monkeypatch.setattr(directory, "SYSTEM_CONFIG_DIR", system)

    loaded = load_from_environment(agents=str(tmp_path / "only"))
    assert set(loaded.agents) == {"a1"}
    assert loaded.root is None and loaded.agents_dir == tmp_path / "only"
    assert loaded.providers == {} and loaded.runtime == LoadedConfig(root=None).runtime
    monkeypatch.setenv("ASTROMESH_AGENTS_DIR", "only")
    loaded = load_from_environment()
    assert set(loaded.agents) == {"a1"} and loaded.agents_dir == Path("only")

    # Still errors: a named config directory that is missing, or no agents directory.
    issues = issues_of(lambda: load_from_environment(config=str(tmp_path / "nope")))
    assert issues[0]["message"] == "configuration directory not found"
    monkeypatch.delenv("ASTROMESH_AGENTS_DIR")
    issues = issues_of(lambda: load_from_environment())
    assert issues[0]["file"] == str(system)
    # An existing system directory is used with the agents directory.
    write("etc-astromesh/runtime.yaml", RUNTIME)
    loaded = load_from_environment(agents="only")
    assert loaded.root == system and loaded.runtime.spec.api is not None
    assert set(loaded.agents) == {"a1"}


def test_resolve_dirs_against_a_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASTROMESH_CONFIG_DIR", raising=False)
    monkeypatch.delenv("ASTROMESH_AGENTS_DIR", raising=False)
    assert resolve_dirs("conf", "more", base=tmp_path) == (tmp_path / "conf", tmp_path / "more")
    assert resolve_dirs("/abs/conf", None, base=tmp_path) == (Path("/abs/conf"), None)
    (tmp_path / "config").mkdir()
    assert resolve_dirs(base=tmp_path) == (tmp_path / "config", None)


def test_validate_paths_files_and_directories(write: WriteYaml, tmp_path: Path) -> None:
    good = write("loose/good.agent.yaml", AGENT.format(name="g1"))
    write("loose/dup.agent.yaml", AGENT.format(name="g1"))
    assert validate_paths([good]) == []
    issues = validate_paths([tmp_path / "loose"])
    assert [i.message for i in issues] == [
        f"agent 'g1' is also defined in {tmp_path / 'loose' / 'dup.agent.yaml'}:4"
    ]
    originals = validate_paths(sorted(ORIGINAL.glob("*.agent.yaml")))
    assert {Path(i.file).name for i in originals} == {
        "role-router-demo.agent.yaml",  # its litellm source
    }
    assert all(i.line is not None for i in originals)
    missing = validate_paths([tmp_path / "absent.yaml"])
    assert [i.message for i in missing] == ["no such file or directory"]
    write("conf/agents/r.agent.yaml", REF_AGENT)
    refs = validate_paths([tmp_path / "conf"])
    assert [i.path for i in refs] == [
        "spec.model.primary.providerRef",
        "spec.model.fallback.providerRef",
    ]
