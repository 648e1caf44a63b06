"""Every load error names file, line, column, field path and, where it can, the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec, ConfigIssue, load_agent, load_config, load_document

BAD_AGENT = """
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: typo-agent
spec:
  model:
    primary:
      provider: olama
      model: m
  orchestration:
    pattern: reakt
    max_iterations: ten
    timeout_secs: 10
"""


def test_unknown_key_wrong_type_bad_enum_all_reported_with_positions(write: WriteYaml) -> None:
    path = write("typo.agent.yaml", BAD_AGENT)
    issues = issues_of(lambda: load_document(path))
    by_path = {i["path"]: i for i in issues}
    assert list(by_path) == [
        "spec.model.primary.provider",
        "spec.orchestration.pattern",
        "spec.orchestration.max_iterations",
        "spec.orchestration.timeout_secs",
    ]
    unknown = by_path["spec.orchestration.timeout_secs"]
    assert (unknown["line"], unknown["column"]) == (13, 5)
    assert unknown["message"] == "unknown field 'timeout_secs'"
    assert unknown["hint"] == "did you mean 'timeout_seconds'?"
    enum = by_path["spec.orchestration.pattern"]
    assert (enum["line"], enum["column"]) == (11, 14)
    assert enum["hint"] == "did you mean 'react'?"
    assert "'reakt'" in enum["message"]
    provider = by_path["spec.model.primary.provider"]
    assert (provider["line"], provider["column"]) == (8, 17)
    assert provider["hint"] == "did you mean 'ollama'?"
    wrong_type = by_path["spec.orchestration.max_iterations"]
    assert (wrong_type["line"], wrong_type["column"]) == (12, 21)
    assert "valid integer" in wrong_type["message"]
    assert "'ten'" in wrong_type["message"]


def test_error_message_renders_one_issue_per_line(write: WriteYaml) -> None:
    path = write("typo.agent.yaml", BAD_AGENT)
    with pytest.raises(ConfigError) as info:
        load_document(path)
    lines = info.value.message.splitlines()
    assert len(lines) == 4
    assert lines[1] == (
        f"{path}:11:14: spec.orchestration.pattern: invalid value 'reakt'; expected 'react', "
        "'plan_and_execute', 'parallel_fan_out', 'pipeline', 'supervisor', 'swarm' or 'glyph' "
        "(did you mean 'react'?)"
    )
    assert lines[3] == (
        f"{path}:13:5: spec.orchestration.timeout_secs: unknown field 'timeout_secs' "
        "(did you mean 'timeout_seconds'?)"
    )


def test_unknown_key_without_close_match_lists_allowed_keys(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + "  zzz: 1\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert issues[0]["path"] == "spec.zzz"
    assert issues[0]["hint"].startswith("allowed: identity, model, prompts")


def test_unknown_key_inside_tagged_union_suggests_that_members_fields(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + (
        "  tools:\n"
        "    - name: search\n"
        "      functon: pkg.mod:search\n"
        "    - name: hook\n"
        "      type: webhook\n"
        "      webhook: {url: 'http://x', metod: GET}\n"
    )
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"], i["hint"]) for i in issues] == [
        ("spec.tools[0].functon", 13, "did you mean 'function'?"),
        ("spec.tools[1].webhook.metod", 16, "did you mean 'method'?"),
    ]


def test_unknown_tool_type_suggests_the_closest(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + "  tools:\n    - name: t\n      type: mpc\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert len(issues) == 1
    assert issues[0]["path"] == "spec.tools[0].type"
    assert (issues[0]["line"], issues[0]["column"]) == (13, 13)
    assert issues[0]["hint"] == "did you mean 'mcp'?"


def test_missing_required_field_points_at_the_enclosing_block(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + "  guardrails:\n    output:\n      - type: max_length\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"], i["message"]) for i in issues] == [
        ("spec.guardrails.output[0].max_chars", 13, "missing required field 'max_chars'")
    ]


def test_missing_discriminator_lists_the_types(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + "  guardrails:\n    input:\n      - action: redact\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert issues[0]["path"] == "spec.guardrails.input[0].type"
    assert issues[0]["hint"] == (
        "one of: pii_detection, pii, topic_filter, topic, content_filter, content, "
        "cost_limit, cost, max_length"
    )


def test_duplicate_key_is_an_error(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + (
        "  orchestration:\n    max_iterations: 3\n    max_iterations: 4\n"
    )
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert len(issues) == 1
    issue = issues[0]
    assert (issue["line"], issue["column"]) == (13, 5)
    assert issue["path"] == "spec.orchestration.max_iterations"
    assert "duplicate key 'max_iterations' (first given on line 12)" in issue["message"]


def test_yaml_syntax_error_position(write: WriteYaml) -> None:
    path = write("a.agent.yaml", "apiVersion: astromesh/v1\nkind: Agent\nmetadata:\n  name: [a\n")
    issues = issues_of(lambda: load_document(path))
    assert len(issues) == 1
    assert issues[0]["line"] == 5
    assert issues[0]["message"].startswith("YAML syntax error:")
    assert "started on line 4" in issues[0]["message"]


def test_tab_indentation_syntax_error_points_at_the_tab(write: WriteYaml) -> None:
    path = write("a.agent.yaml", "kind: Agent\nmetadata:\n\tname: x\n")
    issues = issues_of(lambda: load_document(path))
    assert (issues[0]["line"], issues[0]["column"]) == (3, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "the document is not a mapping of keys"),
        ("just text\n", "the document is not a mapping of keys"),
        ("a: 1\n---\nb: 2\n", "the file holds more than one YAML document"),
    ],
)
def test_unusable_documents(write: WriteYaml, text: str, message: str) -> None:
    path = write("x.agent.yaml", text)
    issues = issues_of(lambda: load_document(path))
    assert [i["message"] for i in issues] == [message]
    assert issues[0]["file"] == str(path)


def test_multiple_documents_point_at_the_second(write: WriteYaml) -> None:
    path = write("x.agent.yaml", "a: 1\n---\nb: 2\n")
    assert issues_of(lambda: load_document(path))[0]["line"] == 2


def test_unknown_kind_and_missing_api_version(write: WriteYaml) -> None:
    path = write("x.yaml", "kind: Agnet\nmetadata: {name: ab}\n")
    issues = issues_of(lambda: load_document(path))
    assert issues[0]["message"] == "unknown kind 'Agnet'"
    assert issues[0]["hint"] == "did you mean 'Agent'?"
    path = write("y.yaml", AGENT.format(name="ab").replace("apiVersion: astromesh/v1\n", ""))
    issues = issues_of(lambda: load_document(path))
    assert [i["message"] for i in issues] == ["missing required field 'apiVersion'"]
    assert issues[0]["hint"] == "start the file with `apiVersion: astromesh/v1`"
    path = write("z.yaml", "kind: RuntimeConfig\n")  # every field defaults, but not this one
    assert [i["path"] for i in issues_of(lambda: load_document(path))] == ["apiVersion"]


def test_bad_api_version(write: WriteYaml) -> None:
    path = write("x.yaml", AGENT.format(name="ab").replace("astromesh/v1", "astromesh/v2"))
    issues = issues_of(lambda: load_document(path))
    assert issues[0]["path"] == "apiVersion"
    assert issues[0]["line"] == 1


def test_bad_metadata_name(write: WriteYaml) -> None:
    issues = issues_of(lambda: load_document(write("x.yaml", AGENT.format(name="Bad_Name"))))
    assert issues[0]["path"] == "metadata.name"
    assert issues[0]["line"] == 4
    assert "pattern" in issues[0]["message"]


def test_load_agent_refuses_other_kinds() -> None:
    from spec_helpers import ORIGINAL

    issues = issues_of(lambda: load_agent(ORIGINAL / "runtime.yaml"))
    assert issues[0]["message"] == "expected kind Agent, found RuntimeConfig"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    issues = issues_of(lambda: load_document(tmp_path / "nope.agent.yaml"))
    assert issues[0]["message"].startswith("cannot read")


def test_issues_across_files_are_all_collected(write: WriteYaml, tmp_path: Path) -> None:
    write("agents/a.agent.yaml", BAD_AGENT)
    write("agents/b.agent.yaml", AGENT.format(name="b1") + "  memory: {episodic: {backend: pg}}\n")
    write("runtime.yaml", "apiVersion: astromesh/v1\nkind: RuntimeConfig\nspec: {api: {prot: 1}}\n")
    issues = issues_of(lambda: load_config(tmp_path))
    files = {Path(i["file"]).name for i in issues}
    assert files == {"a.agent.yaml", "b.agent.yaml", "runtime.yaml"}
    assert len(issues) == 6
    runtime = next(i for i in issues if i["file"].endswith("runtime.yaml"))
    assert runtime["hint"] == "did you mean 'port'?"


def test_config_issue_render_and_error_details(write: WriteYaml) -> None:
    issue = ConfigIssue("f.yaml", 3, 7, "spec.x", "bad", "did you mean 'y'?")
    assert issue.render() == "f.yaml:3:7: spec.x: bad (did you mean 'y'?)"
    assert ConfigIssue("f.yaml", None, None, "", "gone").render() == "f.yaml: gone"
    path = write("typo.agent.yaml", BAD_AGENT)
    with pytest.raises(ConfigError) as info:
        load_document(path)
    error = info.value
    assert error.details["issues"][0]["file"] == str(path)
    assert set(error.details["issues"][0]) == {"file", "line", "column", "path", "message", "hint"}
    # The error crosses process boundaries as a value.
    again = ConfigError.from_dict(error.to_dict())
    assert again.details["issues"] == error.details["issues"]


def test_yaml_booleans_in_place_of_text_get_a_quoting_hint(write: WriteYaml) -> None:
    text = AGENT.format(name="a1") + "  identity: {display_name: no}\n  on: 1\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [
        ("spec.identity.display_name", 11),
        ("spec.True", 12),
    ]
    assert all("YAML reads yes/no/on/off" in i["hint"] for i in issues)


def test_anchors_and_merge_keys_work_and_explicit_keys_win(write: WriteYaml) -> None:
    text = """
    apiVersion: astromesh/v1
    kind: Agent
    metadata: {name: a1, version: 2024-01-01}
    spec:
      model:
        primary: &base {provider: ollama, model: small, endpoint: "http://h:11434"}
        fallback:
          <<: *base
          model: big
    """
    spec = load_document(write("a.agent.yaml", text))
    assert isinstance(spec, AgentSpec)
    assert spec.metadata.version == "2024-01-01"
    fallback = spec.spec.model.fallback
    assert fallback is not None
    assert (fallback.provider, fallback.model, fallback.endpoint) == (
        "ollama",
        "big",
        "http://h:11434",
    )
