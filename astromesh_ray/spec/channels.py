"""``kind: Channel``: a messaging channel that delivers users' messages to an agent
and sends its answers back (the WhatsApp Business Cloud API).

Files live in ``<config>/channels/*.yaml``, one channel each; the gateway serves
channel ``<name>`` at ``/v1/channels/<name>/webhook``.  The original Astromesh kept
its channels in one ``config/channels.yaml`` with inline ``${VAR}`` secrets; that
file is refused at load time with a pointer here, never silently skipped.

Secrets are named by environment variable only (the ``*_env`` keys): the gateway
reads them when a request needs them, so no secret sits in a file or in Serve's
application config, and a rotated one is used from the next request on.  The
agent a channel names must be one the configuration loads (checked across files
by the loader, at the line of ``spec.agent``).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel, rule_error

CHANNELS_DIR = "channels"
"""The directory of ``<config>`` holding the channel files."""

ORIGINAL_CHANNELS_FILES = ("channels.yaml", "channels.yml")
"""The original Astromesh's single channels file (refused: ``ORIGINAL_CHANNELS_HINT``)."""

ORIGINAL_CHANNELS_HINT = (
    "write each channel as its own file, channels/<name>.yaml, with apiVersion: "
    "astromesh/v1, kind: Channel and secrets named by environment variable "
    "(verify_token_env, app_secret_env, access_token_env); `astromesh schema --kind Channel` "
    "prints every field"
)

GRAPH_API_BASE = "https://graph.facebook.com/v21.0"
"""The Graph API a WhatsApp channel sends through by default (its version included)."""

MAX_CHANNEL_NAME = 64
"""The longest channel name: it prefixes the session ids of its users."""

DEFAULT_UNSUPPORTED_REPLY = (
    "Sorry, I can only read text messages. Please send your question as text."
)
DEFAULT_ERROR_REPLY = "Sorry, something went wrong while answering. Please try again later."

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_AGENT_NAME = r"^[a-z][a-z0-9-]*[a-z0-9]$"
_REPLY_CHARS = 4096  # WhatsApp's limit on one text message


def _env_field(what: str) -> Any:
    return Field(
        pattern=_ENV_NAME,
        max_length=128,
        description=f"Environment variable (of the gateway's processes) holding {what}; "
        "read at request time.",
    )


class WhatsAppChannelBodySpec(StrictModel):
    """``spec`` of a WhatsApp channel: the Meta app's secrets (by environment
    variable), the business phone number it answers from, and the agent answering."""

    type: Literal["whatsapp"] = Field(description="Channel kind.")
    agent: str = Field(
        pattern=_AGENT_NAME,
        description="The agent that answers this channel's messages (its metadata.name).",
    )
    verify_token_env: str = _env_field(
        "the verify token of the webhook subscription handshake (GET hub.verify_token)"
    )
    app_secret_env: str = _env_field(
        "the Meta app secret that signs each delivery (X-Hub-Signature-256)"
    )
    access_token_env: str = _env_field("the access token replies are sent with (Bearer)")
    phone_number_id: str = Field(
        pattern=r"^[0-9]{1,32}$",
        description="The WhatsApp business phone number id replies are sent from "
        '(digits; quote it: "1234567890").',
    )
    graph_api_base: str = Field(
        default=GRAPH_API_BASE,
        max_length=2000,
        description="Base URL of the Graph API, its version included; replies go to "
        "POST {graph_api_base}/{phone_number_id}/messages.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of one Graph API request."
    )
    dedupe_ttl_s: float = Field(
        default=86400.0,
        ge=60,
        le=30 * 86400,
        description="How long a delivered message id is remembered, so that Meta's "
        "redelivery of the same message runs the agent once.",
    )
    unsupported_reply: str | None = Field(
        default=DEFAULT_UNSUPPORTED_REPLY,
        min_length=1,
        max_length=_REPLY_CHARS,
        description="Sent to a user whose message is not text (image, audio, location, "
        "...); null: such messages are ignored.",
    )
    error_reply: str | None = Field(
        default=DEFAULT_ERROR_REPLY,
        min_length=1,
        max_length=_REPLY_CHARS,
        description="Sent to a user when the agent fails to answer (an error, or a run "
        "that waits on client tools or approvals, which WhatsApp cannot give); null: "
        "nothing is sent.",
    )

    @field_validator("phone_number_id", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML reads unquoted digits as a number (and drops leading zeros).
            raise ValueError(f'quote the phone number id: phone_number_id: "{value}"')
        return value

    @field_validator("graph_api_base")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"an http:// or https:// URL is needed (got {value!r})")
        if parts.query or parts.fragment:
            raise ValueError("a base URL has no query or fragment")
        return value.rstrip("/")


class ChannelSpec(StrictModel):
    """A whole ``kind: Channel`` document."""

    api_version: ApiVersion = Field(alias="apiVersion", description="Format version.")
    kind: Literal["Channel"] = Field(description="Document kind.")
    metadata: MetadataSpec = Field(
        description="Name (the webhook is /v1/channels/<name>/webhook), version, namespace, labels."
    )
    spec: WhatsAppChannelBodySpec = Field(description="The channel.")

    @model_validator(mode="after")
    def _short_name(self) -> ChannelSpec:
        if len(self.metadata.name) > MAX_CHANNEL_NAME:
            raise rule_error(
                ("metadata", "name"),
                f"a channel name has at most {MAX_CHANNEL_NAME} characters: it prefixes "
                "its users' session ids",
            )
        return self

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name
