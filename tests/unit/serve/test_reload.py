"""Hot reload without a cluster: the fingerprints of built applications (the same for
the same configuration, another where an input of the application changed), the
plan diff, the checks that refuse a configuration as `astromesh validate` does, and
the watcher's polling."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from ray import serve

from astromesh_ray.cli import main
from astromesh_ray.serve.builders import BUILDERS, plan
from astromesh_ray.serve.fingerprint import AppRecord, canonical, fingerprint
from astromesh_ray.serve.reload import (
    AppChange,
    Refusal,
    Reloaded,
    Running,
    Watcher,
    check_config,
    diff,
    render,
    snapshot,
)
from astromesh_ray.spec import LoadedConfig, load_config

PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: providers}
spec:
  providers:
    llm_a: {type: openai_compat, endpoint: "http://127.0.0.1:9/v1", models: [m]}
    llm_b: {type: openai_compat, endpoint: "http://127.0.0.1:10/v1", models: [m]}
"""

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  identity: {{description: "{description}"}}
  model:
    primary: {{providerRef: {provider}}}
  prompts:
    system: "{prompt}"
"""


def _agent(
    root: Path, name: str, provider: str, prompt: str = "Be brief.", description: str = "d"
) -> Path:
    path = root / "agents" / f"{name}.agent.yaml"
    path.write_text(
        AGENT.format(name=name, provider=provider, prompt=prompt, description=description)
    )
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    _agent(tmp_path, "alpha", "llm_a")
    _agent(tmp_path, "beta", "llm_b")
    return tmp_path


def fingerprints(root: Path) -> dict[str, str | None]:
    """Each planned application of ``root``, built as `serve` and `apply` build it."""
    loaded = load_config(root)
    return {
        app.name: fingerprint(BUILDERS[app.builder](app.args))
        for app in plan(loaded, str(root.resolve()))
    }


def changed(before: dict[str, str | None], after: dict[str, str | None]) -> set[str]:
    """Applications added, removed or with another fingerprint."""
    return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}


def test_the_same_configuration_has_the_same_fingerprints(root: Path) -> None:
    first = fingerprints(root)
    assert set(first) >= {"agent-alpha", "agent-beta", "gateway"}
    assert all(first.values()), first
    assert len(set(first.values())) == len(first)  # each application its own
    assert fingerprints(root) == first


def test_a_changed_prompt_changes_only_its_agent(root: Path) -> None:
    before = fingerprints(root)
    _agent(root, "alpha", "llm_a", prompt="Be very brief.")
    # The gateway gets what describe_agent shows (no prompt): it stays as it is.
    assert changed(before, fingerprints(root)) == {"agent-alpha"}


def test_a_changed_description_changes_the_agent_and_the_gateway(root: Path) -> None:
    before = fingerprints(root)
    _agent(root, "beta", "llm_b", description="another")
    assert changed(before, fingerprints(root)) == {"agent-beta", "gateway"}


def test_a_changed_provider_entry_changes_it_and_the_agents_naming_it(root: Path) -> None:
    # llm_a has its own deployment; llm_b is a remote API called from agent-beta's replicas.
    base = PROVIDERS.replace("models: [m]}", "models: [m], deployment: {mode: dedicated}}", 1)
    (root / "providers.yaml").write_text(base)
    before = fingerprints(root)
    providers = {n for n in before if n.startswith("provider-")}
    (alpha_provider,) = providers
    # Parameters travel with each request: same provider application, other content.
    text = base.replace("models: [m], deployment", "models: [m], parameters: {t: 1}, deployment")
    (root / "providers.yaml").write_text(text)
    after = fingerprints(root)
    assert set(after) == set(before)
    assert changed(before, after) == {alpha_provider, "agent-alpha"}

    # Another endpoint: another provider application; the gateway lists providers.
    (root / "providers.yaml").write_text(text.replace("127.0.0.1:9/", "127.0.0.1:11/"))
    moved = fingerprints(root)
    assert alpha_provider not in moved
    (new_provider,) = set(moved) - set(after)
    assert changed(after, moved) == {alpha_provider, new_provider, "agent-alpha", "gateway"}

    # The remote API's parameters are agent-beta's alone; its endpoint is listed too.
    beta = text.replace('10/v1", models: [m]}', '10/v1", models: [m], parameters: {t: 1}}')
    (root / "providers.yaml").write_text(beta)
    assert changed(after, fingerprints(root)) == {"agent-beta"}
    (root / "providers.yaml").write_text(beta.replace("127.0.0.1:10/", "127.0.0.1:12/"))
    assert changed(after, fingerprints(root)) == {"agent-beta", "gateway"}


def test_replicas_and_resources_change_the_fingerprint(root: Path) -> None:
    before = fingerprints(root)
    path = _agent(root, "alpha", "llm_a")
    path.write_text(path.read_text() + "  deployment: {num_replicas: 2}\n")
    assert changed(before, fingerprints(root)) == {"agent-alpha"}


def test_an_added_and_a_removed_agent(root: Path) -> None:
    before = fingerprints(root)
    (root / "agents" / "beta.agent.yaml").unlink()
    _agent(root, "gamma", "llm_b")
    after = fingerprints(root)
    assert "agent-beta" not in after and "agent-gamma" in after
    assert changed(before, after) == {"agent-beta", "agent-gamma", "gateway"}


@serve.deployment
class Holder:
    def __init__(self, value: object) -> None:
        self.value = value


def test_a_value_without_a_content_form_has_no_fingerprint() -> None:
    assert fingerprint(Holder.bind(object())) is None  # type: ignore[attr-defined]
    first = fingerprint(Holder.bind({"b": {3, 1, 2}, "a": (1.5, None)}))  # type: ignore[attr-defined]
    again = fingerprint(Holder.bind({"b": {2, 3, 1}, "a": (1.5, None)}))  # type: ignore[attr-defined]
    assert first is not None and first == again
    # Mapping order is kept (listings follow it); sets are sorted.
    assert canonical({"a": 1, "b": 2}) != canonical({"b": 2, "a": 1})
    assert canonical(frozenset({"x", "y"})) == canonical(frozenset({"y", "x"}))


def test_the_diff_of_a_plan_against_what_runs() -> None:
    running = {
        "same": Running("RUNNING", 10.0),
        "edited": Running("RUNNING", 10.0),
        "recreated": Running("RUNNING", 20.0),  # deleted and made again by someone else
        "failed": Running("DEPLOY_FAILED", 10.0),
        "unknown": Running("RUNNING", 10.0),  # no record: not deployed by us
        "starting": Running("DEPLOYING", 10.0),
    }
    records = {
        name: AppRecord("fp", 10.0)
        for name in ("same", "edited", "recreated", "failed", "starting", "nofp")
    }
    names = [*running, "new", "nofp"]
    fingerprints: dict[str, str | None] = {name: "fp" for name in names}
    fingerprints["edited"] = "fp2"
    fingerprints["nofp"] = None
    running["nofp"] = Running("RUNNING", 10.0)
    assert diff(names, fingerprints, running, records) == {
        "same": ("unchanged", ""),
        "edited": ("changed", ""),
        "recreated": ("changed", ""),
        "failed": ("changed", "was DEPLOY_FAILED"),
        "unknown": ("changed", ""),
        "starting": ("unchanged", ""),  # already on its way to what is asked
        "new": ("added", ""),
        "nofp": ("changed", ""),
    }


def _validate_stderr(root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert main(["validate", "--config", str(root)]) != 0
    return capsys.readouterr().err.rstrip("\n").split("\n")


def test_a_yaml_error_is_refused_as_validate_prints_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(check_config(root), LoadedConfig)
    path = _agent(root, "alpha", "llm_a")
    path.write_text(path.read_text() + "  bogus_field: 1\n")
    refused = check_config(root)
    assert isinstance(refused, Refusal)
    assert refused.lines[-1] == "1 error(s)"
    assert "alpha.agent.yaml" in refused.lines[0] and "bogus_field" in refused.lines[0]
    assert refused.lines == _validate_stderr(root, capsys)


def test_a_build_error_is_refused_as_validate_prints_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _agent(root, "alpha", "llm_a")
    path.write_text(path.read_text() + "  tools:\n    - {name: no_such_tool, type: builtin}\n")
    refused = check_config(root)
    assert isinstance(refused, Refusal)
    assert refused.lines[0].startswith("error: ") and "no_such_tool" in "\n".join(refused.lines)
    assert refused.lines == _validate_stderr(root, capsys)


def test_a_snapshot_sees_content_changes_at_the_same_time_and_size(root: Path) -> None:
    path = root / "agents" / "alpha.agent.yaml"
    before = snapshot(root)
    assert str(path) in before and str(root / "providers.yaml") in before
    stat = path.stat()
    path.write_text(path.read_text().replace("Be brief.", "Be BRIEF."))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = snapshot(root)
    assert after[str(path)][:2] == before[str(path)][:2]
    assert after != before
    (root / "notes.txt").write_text("not YAML")
    assert snapshot(root) == after


def test_the_watcher_refuses_a_broken_file_once_and_waits_for_it_to_settle(root: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    watcher = Watcher(root, out=out, err=err)
    assert watcher.poll() is None  # nothing changed
    path = root / "agents" / "alpha.agent.yaml"
    path.write_text("apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: alpha\n")
    assert watcher.poll() is None  # changed since the last look: let it settle
    refused = watcher.poll()
    assert isinstance(refused, Refusal)
    assert "alpha.agent.yaml" in err.getvalue() and "the running version stays" in err.getvalue()
    assert watcher.apps is None
    assert watcher.poll() is None  # not retried until the files change again


def test_the_apply_table() -> None:
    result = Reloaded(
        [
            AppChange("provider-x", "unchanged", "RUNNING"),
            AppChange("agent-a", "changed", "RUNNING"),
            AppChange("agent-c", "added", "DEPLOY_FAILED"),
            AppChange("agent-b", "removed"),
        ]
    )
    text = render(result)
    lines = text.split("\n")
    assert lines[0].split() == ["APPLICATION", "CHANGE", "STATUS", "NOTE"]
    assert lines[2].split() == ["agent-a", "changed", "RUNNING"]
    assert lines[4].split() == ["agent-b", "removed", "-"]
    assert lines[-1] == "1 added, 1 changed, 1 removed, 1 unchanged"
    assert result.apps == ["provider-x", "agent-a", "agent-c"]
    assert [c.name for c in result.failed] == ["agent-c"]
    assert render(Refusal(["a.yaml:1: bad", "1 error(s)"])) == "a.yaml:1: bad\n1 error(s)"
