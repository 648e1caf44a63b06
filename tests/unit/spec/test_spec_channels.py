"""``kind: Channel``: loaded from <config>/channels/*.yaml, every mistake reported at
its file, line and field; a channel must name a loaded agent; secrets only by
environment variable name; the original Astromesh's channels.yaml is refused."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import json_schema, load_config, load_document, validate_paths
from astromesh_ray.spec.channels import (
    DEFAULT_ERROR_REPLY,
    DEFAULT_UNSUPPORTED_REPLY,
    GRAPH_API_BASE,
    ChannelSpec,
)

GOOD = """
apiVersion: astromesh/v1
kind: Channel
metadata:
  name: whatsapp
spec:
  type: whatsapp
  agent: whatsapp-assistant
  verify_token_env: WHATSAPP_VERIFY_TOKEN
  app_secret_env: WHATSAPP_APP_SECRET
  access_token_env: WHATSAPP_ACCESS_TOKEN
  phone_number_id: "106540352242922"
"""


def _config(write: WriteYaml, channel: str = GOOD, agent: str = "whatsapp-assistant") -> None:
    write(f"agents/{agent}.agent.yaml", AGENT.format(name=agent))
    write("channels/whatsapp.yaml", channel)


def _line(path: Path, line: int) -> str:
    return path.read_text(encoding="utf-8").splitlines()[line - 1]


def test_a_channel_loads_from_the_channels_directory(write: WriteYaml, tmp_path: Path) -> None:
    _config(write)
    loaded = load_config(tmp_path)
    channel = loaded.channels["whatsapp"]
    assert isinstance(channel, ChannelSpec) and channel.name == "whatsapp"
    spec = channel.spec
    assert (spec.type, spec.agent, spec.phone_number_id) == (
        "whatsapp",
        "whatsapp-assistant",
        "106540352242922",
    )
    assert spec.app_secret_env == "WHATSAPP_APP_SECRET"
    # Defaults: Meta's Graph API, a day of dedupe, replies for non-text and failures.
    assert spec.graph_api_base == GRAPH_API_BASE and spec.dedupe_ttl_s == 86400
    assert spec.unsupported_reply == DEFAULT_UNSUPPORTED_REPLY
    assert spec.error_reply == DEFAULT_ERROR_REPLY


def test_optional_fields_and_nulls(write: WriteYaml, tmp_path: Path) -> None:
    _config(
        write,
        GOOD
        + "  graph_api_base: http://127.0.0.1:9999/v21.0/\n"
        + "  dedupe_ttl_s: 600\n  timeout_s: 3\n"
        + "  unsupported_reply: null\n  error_reply: null\n",
    )
    spec = load_config(tmp_path).channels["whatsapp"].spec
    assert spec.graph_api_base == "http://127.0.0.1:9999/v21.0"  # trailing slash dropped
    assert (spec.dedupe_ttl_s, spec.timeout_s) == (600, 3)
    assert spec.unsupported_reply is None and spec.error_reply is None


def test_an_unknown_agent_is_reported_at_its_line(write: WriteYaml, tmp_path: Path) -> None:
    _config(write, GOOD.replace("agent: whatsapp-assistant", "agent: whatsap-assistant"))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    path = tmp_path / "channels" / "whatsapp.yaml"
    assert issue["file"] == str(path) and issue["path"] == "spec.agent"
    assert issue["message"] == "unknown agent 'whatsap-assistant'"
    assert issue["hint"] == "did you mean 'whatsapp-assistant'?"
    assert _line(path, issue["line"]).strip() == "agent: whatsap-assistant"


def test_an_unknown_agent_with_no_agents_at_all(write: WriteYaml, tmp_path: Path) -> None:
    write("channels/whatsapp.yaml", GOOD)
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "spec.agent" and "no agents are loaded" in issue["hint"]


def test_the_agent_may_come_from_a_separate_agents_directory(
    write: WriteYaml, tmp_path: Path
) -> None:
    write("config/channels/whatsapp.yaml", GOOD)
    write("elsewhere/whatsapp-assistant.agent.yaml", AGENT.format(name="whatsapp-assistant"))
    loaded = load_config(tmp_path / "config", agents_dir=tmp_path / "elsewhere")
    assert list(loaded.channels) == ["whatsapp"]


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("app_secret: s3cr3t", "did you mean 'app_secret_env'?"),
        ("verify_token: abc", "did you mean 'verify_token_env'?"),
        ("rate_limit: {max_messages: 30}", "allowed: type, agent, verify_token_env"),
    ],
)
def test_unknown_fields_are_refused_inline_secrets_among_them(
    write: WriteYaml, tmp_path: Path, key: str, hint: str
) -> None:
    _config(write, GOOD + f"  {key}\n")
    (issue,) = issues_of(lambda: load_config(tmp_path))
    name = key.split(":")[0]
    assert issue["path"] == f"spec.{name}" and issue["message"] == f"unknown field {name!r}"
    assert issue["hint"].startswith(hint)
    assert _line(tmp_path / "channels" / "whatsapp.yaml", issue["line"]).strip() == key


def test_an_unquoted_phone_number_id_is_refused(write: WriteYaml, tmp_path: Path) -> None:
    _config(write, GOOD.replace('"106540352242922"', "106540352242922"))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "spec.phone_number_id"
    assert 'quote the phone number id: phone_number_id: "106540352242922"' in issue["message"]


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("WHATSAPP_APP_SECRET", "not a name", "spec.app_secret_env"),
        ('"106540352242922"', '"+1 555"', "spec.phone_number_id"),
        ("type: whatsapp", "type: telegram", "spec.type"),
        ("  agent", "  graph_api_base: ftp://x\n  agent", "spec.graph_api_base"),
        ("  phone_number_id", "  dedupe_ttl_s: 5\n  phone_number_id", "spec.dedupe_ttl_s"),
        ("  phone_number_id", '  error_reply: ""\n  phone_number_id', "spec.error_reply"),
    ],
)
def test_bad_values_are_reported_at_their_field(
    write: WriteYaml, tmp_path: Path, old: str, new: str, path: str
) -> None:
    _config(write, GOOD.replace(old, new, 1))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == path and issue["line"] is not None


def test_missing_required_fields(write: WriteYaml, tmp_path: Path) -> None:
    _config(write, GOOD.replace("  access_token_env: WHATSAPP_ACCESS_TOKEN\n", ""))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "spec.access_token_env"
    assert issue["message"] == "missing required field 'access_token_env'"


def test_duplicate_channel_names(write: WriteYaml, tmp_path: Path) -> None:
    _config(write)
    write("channels/whatsapp2.yml", GOOD)
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["file"].endswith("whatsapp2.yml") and issue["path"] == "metadata.name"
    assert "also defined in" in issue["message"] and "whatsapp.yaml:4" in issue["message"]


def test_another_kind_in_the_channels_directory(write: WriteYaml, tmp_path: Path) -> None:
    _config(write)
    write("channels/agent.yaml", AGENT.format(name="stray"))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "kind" and issue["message"] == "expected kind Channel, found Agent"


def test_a_long_channel_name_is_refused(write: WriteYaml, tmp_path: Path) -> None:
    _config(write, GOOD.replace("name: whatsapp", "name: " + "w" * 65))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "metadata.name" and "at most 64 characters" in issue["message"]


def test_the_original_channels_yaml_is_refused_not_skipped(
    write: WriteYaml, tmp_path: Path
) -> None:
    write(
        "channels.yaml",
        """
        channels:
          whatsapp:
            verify_token: "${WHATSAPP_VERIFY_TOKEN}"
            default_agent: "whatsapp-assistant"
        """,
    )
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["file"] == str(tmp_path / "channels.yaml")
    assert "original Astromesh" in issue["message"]
    assert "channels/<name>.yaml" in issue["hint"] and "kind: Channel" in issue["hint"]


def test_a_channel_file_loads_and_validates_alone(write: WriteYaml, tmp_path: Path) -> None:
    path = write("whatsapp.yaml", GOOD)
    assert isinstance(load_document(path), ChannelSpec)
    assert validate_paths([path]) == []


def test_validating_one_agent_does_not_report_the_channels_agent(
    write: WriteYaml, tmp_path: Path
) -> None:
    """Validating one agent file of a configuration reads the channels with it,
    but their agent is checked against the whole configuration only."""
    _config(write)
    write("agents/other.agent.yaml", AGENT.format(name="other"))
    write("runtime.yaml", "apiVersion: astromesh/v1\nkind: RuntimeConfig\n")
    assert validate_paths([tmp_path / "agents" / "other.agent.yaml"]) == []
    assert validate_paths([tmp_path]) == []


def test_the_schema_documents_the_channel_kind() -> None:
    schema = json_schema("Channel")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(GOOD), schema)
    body = schema["$defs"]["WhatsAppChannelBodySpec"]
    assert body["additionalProperties"] is False
    assert all(p.get("description") for p in body["properties"].values())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**yaml.safe_load(GOOD), "extra": 1}, schema)
