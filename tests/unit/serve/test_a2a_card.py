"""An agent's A2A card from its description: identity, one skill per tool (or one for
the agent), streaming, absolute interface URLs for v1.0 and v0.3, and a card the
SDK's own client parses back."""

from __future__ import annotations

from typing import Any

from a2a.client.card_resolver import parse_agent_card
from a2a.utils.proto_utils import warn_on_missing_required_fields

from astromesh_ray.serve.protocols.a2a_card import agent_card, card_dict, card_path

BASE = "http://gateway.example:8000"


def described(**over: Any) -> dict[str, Any]:
    agent = {
        "name": "support",
        "version": "2.1.0",
        "display_name": "Support Desk",
        "description": "Answers questions about orders.",
        "pattern": "react",
        "tools": ["lookup_order", "refund"],
    }
    agent.update(over)
    return agent


def test_identity_skills_and_capabilities_come_from_the_description() -> None:
    card = agent_card(described(), BASE + "/")
    assert (card.name, card.description, card.version) == (
        "Support Desk",
        "Answers questions about orders.",
        "2.1.0",
    )
    assert [(s.id, s.name) for s in card.skills] == [
        ("lookup_order", "lookup_order"),
        ("refund", "refund"),
    ]
    assert all("Support Desk" in s.description and "tool" in s.tags for s in card.skills)
    assert card.capabilities.streaming
    assert not card.capabilities.push_notifications
    assert list(card.default_input_modes) == ["text/plain"]
    assert warn_on_missing_required_fields(card, "test")  # every REQUIRED field is set


def test_an_agent_without_tools_has_one_skill_of_its_own() -> None:
    card = agent_card(described(tools=[], display_name=None, description=None), BASE)
    [skill] = card.skills
    assert (skill.id, skill.name) == ("support", "support")
    assert card.name == "support"
    assert "react" in card.description and list(skill.tags) == ["react"]
    assert warn_on_missing_required_fields(card, "test")


def test_interfaces_are_absolute_urls_for_both_protocol_versions() -> None:
    card = agent_card(described(), BASE + "/")
    interfaces = [
        (i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces
    ]
    assert interfaces == [
        (f"{BASE}/a2a/support", "JSONRPC", "1.0"),
        (f"{BASE}/a2a/support", "JSONRPC", "0.3"),
    ]
    assert card_path("support") == "/a2a/support/.well-known/agent-card.json"


def test_the_json_card_carries_the_v03_fields_and_parses_back() -> None:
    body = card_dict(agent_card(described(), BASE))
    assert body["url"] == f"{BASE}/a2a/support"  # what v0.3 clients read
    assert body["protocolVersion"] == "0.3" and body["preferredTransport"] == "JSONRPC"
    assert body["capabilities"]["streaming"] is True
    parsed = parse_agent_card(body)  # the SDK client's own parser
    assert parsed.name == "Support Desk"
    assert [s.id for s in parsed.skills] == ["lookup_order", "refund"]
    assert {i.protocol_version for i in parsed.supported_interfaces} == {"1.0", "0.3"}


def test_a_server_with_keys_declares_a_bearer_token_on_its_cards() -> None:
    open_card = card_dict(agent_card(described(), BASE))
    assert "securitySchemes" not in open_card and "securityRequirements" not in open_card
    body = card_dict(agent_card(described(), BASE, bearer=True))
    scheme = body["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]
    assert scheme["scheme"] == "Bearer"
    assert body["securityRequirements"] == [{"schemes": {"bearer": {}}}]
    assert parse_agent_card(body).security_schemes["bearer"].http_auth_security_scheme.scheme == (
        "Bearer"
    )
