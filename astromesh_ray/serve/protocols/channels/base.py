"""``ChannelAdapter``: what the gateway needs of a messaging channel, and the errors
its webhook answers with.

A channel is a webhook the messaging platform calls: once to verify the
subscription (``verify``), then with each delivery, whose origin is checked
(``authenticate``) before its body is read as the users' messages (``parse``); the
agent's answers go back through the platform's API (``send``).  The route class
(``channels/__init__.py``) does the rest the same way for every channel: look the
channel up, drop redelivered messages (``dedupe.py``), run the agent, reply.

Adapters hold no per-request state; secrets are read when a call needs them (the
``*_env`` keys of the channel's YAML), so a rotated secret applies at once.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astromesh_ray.errors import (
    ChannelDeliveryError,
    ChannelNotFound,
    ChannelUnauthorized,
    ChannelUnavailable,
    ChannelVerificationFailed,
    ConfigError,
)
from astromesh_ray.spec.channels import ChannelSpec

__all__ = [
    "ADAPTERS",
    "ChannelAdapter",
    "ChannelDeliveryError",
    "ChannelNotFound",
    "ChannelUnauthorized",
    "ChannelUnavailable",
    "ChannelVerificationFailed",
    "Delivery",
    "InboundMessage",
    "adapter_for",
]


@dataclass(frozen=True)
class InboundMessage:
    """One message a user sent through a channel.

    ``text`` is None for a message that is not text (``kind`` says what it is:
    ``image``, ``audio``, ...); ``contact_name`` is the user's profile name when the
    platform sends one ("" otherwise).
    """

    sender: str
    message_id: str
    text: str | None
    kind: str = "text"
    contact_name: str = ""


@dataclass(frozen=True)
class Delivery:
    """What one webhook delivery holds: its messages, and how many entries it held
    that are not messages to answer (status receipts, malformed entries)."""

    messages: list[InboundMessage]
    ignored: int = 0


class ChannelAdapter(ABC):
    """One configured channel (its YAML, its secrets by environment variable)."""

    name: str
    """The channel's name: its webhook is ``/v1/channels/<name>/webhook``."""
    agent: str
    """The agent that answers its messages."""
    dedupe_ttl_s: float
    """How long a message id is remembered against redelivery."""
    unsupported_reply: str | None
    """Sent for a message that is not text (None: ignored)."""
    error_reply: str | None
    """Sent when the agent fails to answer (None: nothing)."""

    @abstractmethod
    def verify(self, params: Mapping[str, str]) -> str | None:
        """The subscription handshake: what to answer (the platform's challenge)
        when ``params`` (the query string) prove the subscriber knows the verify
        token; None when they do not.  ``ChannelUnavailable`` when the token's
        environment variable is not set."""

    @abstractmethod
    def authenticate(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Check that the raw ``body`` was sent by the platform (its signature in
        ``headers``); ``ChannelUnauthorized`` when it was not."""

    @abstractmethod
    def parse(self, payload: Any) -> Delivery:
        """The messages of an authenticated delivery (its JSON ``payload``);
        ``InvalidRequest`` when the payload is not the platform's shape at all."""

    @abstractmethod
    async def send(self, to: str, text: str) -> None:
        """Send ``text`` to user ``to`` (split as the platform's limit requires);
        ``ChannelDeliveryError`` when the platform does not take it."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the adapter's connections."""

    def session_id(self, sender: str) -> str:
        """The session of ``sender``'s conversation: ``<channel>:<sender>`` (a valid
        session id: senders are checked by ``parse``)."""
        return f"{self.name}:{sender}"


ADAPTERS: dict[str, str] = {
    "whatsapp": "astromesh_ray.serve.protocols.channels.whatsapp:WhatsAppAdapter",
}
"""Channel ``type`` -> its adapter class (imported when a channel of it is used)."""


def adapter_for(spec: ChannelSpec) -> ChannelAdapter:
    """The adapter of channel ``spec``, by its ``type``."""
    path = ADAPTERS.get(spec.spec.type)
    if path is None:
        raise ConfigError(
            f"channel {spec.name!r}: no adapter for type {spec.spec.type!r}",
            hint="types: " + ", ".join(sorted(ADAPTERS)),
        )
    module, _, name = path.partition(":")
    adapter: ChannelAdapter = getattr(importlib.import_module(module), name)(spec)
    return adapter
