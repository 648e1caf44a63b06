"""An agent's A2A agent card, from its description (``describe_agent``).

The card tells an A2A client who the agent is and where to talk to it:

- identity: ``name`` (the display name, else the agent's name), ``description``,
  ``version`` (the agent document's ``metadata.version``);
- skills: one per tool the agent may call (what it can do for a caller, named as
  the tool is), or one skill for the whole agent when it has no tools;
- capabilities: streaming (``SendStreamingMessage``); no push notifications, no
  extended card;
- interfaces: the JSON-RPC endpoint ``{base}/a2a/{name}``, once as protocol 1.0
  and once as 0.3 (the same endpoint answers both method sets), so a client of
  either version finds an interface it speaks.  The URL is absolute: A2A clients
  post to it as given, so it is built from the base URL the client used.

Text in, text out: ``text/plain`` (a run answers text; a paused run's status
message also carries ``application/json`` data naming what it waits on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)

A2A_PREFIX = "/a2a"
"""Where each agent's A2A endpoint lives: ``/a2a/{name}``."""

INPUT_MODES = ("text/plain",)
OUTPUT_MODES = ("text/plain", "application/json")
PROVIDER = "astromesh-ray"


def agent_path(name: str) -> str:
    """The path of agent ``name``'s JSON-RPC endpoint (its A2A base URL)."""
    return f"{A2A_PREFIX}/{name}"


def card_path(name: str) -> str:
    """The path of agent ``name``'s card."""
    return agent_path(name) + AGENT_CARD_WELL_KNOWN_PATH


def agent_card(agent: Mapping[str, Any], base_url: str, *, bearer: bool = False) -> AgentCard:
    """The card of the agent ``agent`` describes, served under ``base_url`` (the
    gateway's absolute base URL as the client reached it, e.g. ``http://host:8000``);
    ``bearer``: the server needs an API key, which the card declares as a bearer
    token required by every call."""
    name = str(agent["name"])
    url = base_url.rstrip("/") + agent_path(name)
    title = str(agent.get("display_name") or name)
    return AgentCard(
        name=title,
        description=_description(agent, title),
        version=str(agent.get("version") or "0.1.0"),
        provider=AgentProvider(organization=PROVIDER, url=base_url.rstrip("/")),
        supported_interfaces=[
            AgentInterface(
                url=url,
                protocol_binding=TransportProtocol.JSONRPC.value,
                protocol_version=version,
            )
            for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        ],
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=False, extended_agent_card=False
        ),
        default_input_modes=list(INPUT_MODES),
        default_output_modes=list(OUTPUT_MODES),
        skills=skills(agent, title),
        security_schemes=_BEARER if bearer else None,
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList()})]
        if bearer
        else None,
    )


_BEARER = {
    "bearer": SecurityScheme(
        http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="Bearer", description="An astromesh API key: Authorization: Bearer <key>"
        )
    )
}


def skills(agent: Mapping[str, Any], title: str | None = None) -> list[AgentSkill]:
    """One skill per tool the agent may call, or one for the agent without tools."""
    name = str(agent["name"])
    title = title or str(agent.get("display_name") or name)
    pattern = str(agent.get("pattern") or "react")
    tools = [str(t) for t in agent.get("tools") or []]
    if not tools:
        return [
            AgentSkill(
                id=name,
                name=title,
                description=_description(agent, title),
                tags=[pattern],
            )
        ]
    return [
        AgentSkill(
            id=tool,
            name=tool,
            # The agent's description names its tools, not what each does.
            description=f"{title} can use its `{tool}` tool for you.",
            tags=["tool", pattern],
        )
        for tool in tools
    ]


def card_dict(card: AgentCard) -> dict[str, Any]:
    """The card as JSON: the v1.0 fields, plus the v0.3 ones (``url``,
    ``preferredTransport``, ``protocolVersion``) older clients read."""
    return agent_card_to_dict(card)


def _description(agent: Mapping[str, Any], title: str) -> str:
    description = agent.get("description")
    if description:
        return str(description)
    pattern = str(agent.get("pattern") or "react")
    return f"{title}: an astromesh-ray agent ({pattern} pattern)."
