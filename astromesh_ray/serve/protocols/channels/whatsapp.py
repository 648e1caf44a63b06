"""The WhatsApp Business Cloud API as a ``ChannelAdapter``.

- Handshake: Meta calls ``GET ...?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C``
  once when the webhook is subscribed; the answer is ``C`` as text when ``T`` is the
  verify token (compared in constant time).
- Deliveries: ``X-Hub-Signature-256`` is ``sha256=`` and the hex HMAC-SHA256 of the raw
  body under the app secret; a missing or wrong one is refused before the body is
  read as JSON.
- The payload: ``entry[].changes[]`` with ``field: messages``; each ``value`` holds
  ``messages[]`` (``from``, ``id``, ``type``; ``text.body`` for text), ``contacts[]``
  (the sender's profile name) and ``statuses[]`` (receipts for messages sent, which
  need no answer).  A change whose ``metadata.phone_number_id`` is another number
  of the same app is not this channel's to answer.  Entries that are not messages
  are counted as ignored, not refused: Meta retries a refused delivery for days,
  and a malformed message would block nothing but itself.
- Replies: ``POST {graph_api_base}/{phone_number_id}/messages`` with the access token
  as Bearer and ``{messaging_product: whatsapp, to, type: text, text: {body}}``;
  answers over WhatsApp's 4096 characters go as several messages, cut between
  paragraphs, lines, sentences or words (``split_text``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

import httpx

from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.protocols.channels.base import (
    ChannelAdapter,
    ChannelDeliveryError,
    ChannelUnauthorized,
    ChannelUnavailable,
    Delivery,
    InboundMessage,
)
from astromesh_ray.spec.channels import ChannelSpec

__all__ = [
    "MAX_TEXT_CHARS",
    "SIGNATURE_HEADER",
    "WhatsAppAdapter",
    "parse_delivery",
    "sign",
    "signature_ok",
    "split_text",
]

MAX_TEXT_CHARS = 4096
"""The longest text one WhatsApp message may carry."""

SIGNATURE_HEADER = "X-Hub-Signature-256"
"""The header Meta signs each delivery with."""

_PREFIX = "sha256="
# A sender (wa_id) becomes part of a session id: letters, digits and . _ - only, and
# short enough for <channel (at most 64)>:<sender> to stay within 128 characters.
_SENDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAX_MESSAGE_ID = 512
# Where a long answer is best cut, best first: only in the second half of a window,
# so that no piece is much shorter than it needs to be.
_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", " ")


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (compared in
    constant time; the hex digits in either case)."""
    if not header or not header.startswith(_PREFIX) or not header.isascii():
        return False
    given = header[len(_PREFIX) :].strip().lower().encode()
    expected = sign(secret, body)[len(_PREFIX) :].encode()
    return hmac.compare_digest(given, expected)


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at the best break in
    each window (a paragraph, a line, a sentence, a word; mid-word only when a
    window has none); surrounding whitespace dropped, no piece empty."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]  # a break right after the limit still counts
        cut = limit
        for mark in _BREAKS:
            at = window.rfind(mark, limit // 2, limit + 1)
            if at >= 0:
                cut = at + (1 if mark[0] in ".!?" else 0)  # the sentence keeps its stop
                break
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _message(raw: Any, names: Mapping[str, str]) -> InboundMessage | None:
    """One ``messages[]`` item; None when it cannot be answered (no valid sender or id)."""
    if not isinstance(raw, dict):
        return None
    sender, message_id, kind = _str(raw.get("from")), _str(raw.get("id")), _str(raw.get("type"))
    if sender is None or not _SENDER.fullmatch(sender):
        return None
    if not message_id or len(message_id) > _MAX_MESSAGE_ID or not kind:
        return None
    text: str | None = None
    if kind == "text":
        body = raw.get("text")
        text = _str(body.get("body")) if isinstance(body, dict) else None
        if not text or not text.strip():
            return None  # a text message without text: nothing to answer
    return InboundMessage(sender, message_id, text, kind, names.get(sender, ""))


def _contact_names(value: Mapping[str, Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in value.get("contacts") or []:
        if not isinstance(contact, dict):
            continue
        wa_id, profile = _str(contact.get("wa_id")), contact.get("profile")
        name = _str(profile.get("name")) if isinstance(profile, dict) else None
        if wa_id and name:
            names[wa_id] = name
    return names


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_delivery(payload: Any, phone_number_id: str) -> Delivery:
    """The messages for ``phone_number_id`` in a webhook ``payload``.

    ``InvalidRequest`` when the payload is not a WhatsApp Business Account delivery
    at all (not an object, no ``entry`` list, another ``object``); everything inside
    that is not a message to answer (status receipts, other fields, other numbers,
    malformed items) is counted in ``ignored``.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise InvalidRequest(
            "not a WhatsApp webhook delivery: a JSON object with an `entry` list is expected",
            hint="Meta sends {object: whatsapp_business_account, entry: [{changes: [...]}]}",
            field="entry",
        )
    kind = payload.get("object", "whatsapp_business_account")
    if kind != "whatsapp_business_account":
        raise InvalidRequest(
            f"not a WhatsApp webhook delivery: object is {str(kind)[:60]!r}",
            hint="subscribe this URL to the whatsapp_business_account object only",
            field="object",
        )
    messages: list[InboundMessage] = []
    ignored = 0
    for entry in payload["entry"]:
        changes = _list(entry.get("changes")) if isinstance(entry, dict) else []
        for change in changes:
            if not isinstance(change, dict) or change.get("field") != "messages":
                ignored += 1
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                ignored += 1
                continue
            metadata = value.get("metadata")
            number = _str(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
            raw_messages = _list(value.get("messages"))
            ignored += len(_list(value.get("statuses")))
            if number is not None and number != phone_number_id:
                ignored += len(raw_messages)  # another number of the same app
                continue
            names = _contact_names(value)
            for raw in raw_messages:
                message = _message(raw, names)
                if message is None:
                    ignored += 1
                else:
                    messages.append(message)
    return Delivery(messages, ignored)


def _graph_error(response: httpx.Response) -> str:
    """The message of a Graph API error body (``{"error": {"message", "code"}}``)."""
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    if isinstance(error, dict) and error.get("message"):
        code = f" (code {error['code']})" if error.get("code") is not None else ""
        return f"{error['message']}{code}"
    return response.text[:200] or response.reason_phrase


class WhatsAppAdapter(ChannelAdapter):
    """A ``type: whatsapp`` channel: one business phone number of one Meta app.

    ``environ`` is where secrets are read from, at each call (default: the process
    environment); ``transport`` replaces httpx's (tests).  The pooled client is made
    on the first reply.
    """

    def __init__(
        self,
        spec: ChannelSpec,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.spec = spec.spec
        self.name = spec.name
        self.agent = self.spec.agent
        self.dedupe_ttl_s = self.spec.dedupe_ttl_s
        self.unsupported_reply = self.spec.unsupported_reply
        self.error_reply = self.spec.error_reply
        self._environ = environ
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def messages_url(self) -> str:
        """Where replies are posted."""
        return f"{self.spec.graph_api_base}/{self.spec.phone_number_id}/messages"

    def _secret(self, env: str) -> str:
        environ = self._environ if self._environ is not None else os.environ
        value = environ.get(env)
        if not value:
            raise ChannelUnavailable(
                f"channel {self.name!r} cannot take requests: environment variable {env} "
                "is not set in the gateway",
                hint="set it in the environment of the Ray nodes that run the gateway",
                channel=self.name,
                env=env,
            )
        return value

    def verify(self, params: Mapping[str, str]) -> str | None:
        expected = self._secret(self.spec.verify_token_env)
        token = params.get("hub.verify_token") or ""
        challenge = params.get("hub.challenge")
        if params.get("hub.mode") != "subscribe" or not challenge:
            return None
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return None
        return challenge

    def authenticate(self, body: bytes, headers: Mapping[str, str]) -> None:
        header = headers.get(SIGNATURE_HEADER) or headers.get(SIGNATURE_HEADER.lower())
        if not header:
            raise ChannelUnauthorized(
                f"a delivery to channel {self.name!r} without {SIGNATURE_HEADER}",
                hint="Meta signs every delivery; is this URL subscribed in the Meta app?",
                channel=self.name,
            )
        if not signature_ok(self._secret(self.spec.app_secret_env), body, header):
            raise ChannelUnauthorized(
                f"the {SIGNATURE_HEADER} of a delivery to channel {self.name!r} is wrong",
                hint=f"is {self.spec.app_secret_env} the secret of the Meta app that "
                "sends to this URL?",
                channel=self.name,
            )

    def parse(self, payload: Any) -> Delivery:
        return parse_delivery(payload, self.spec.phone_number_id)

    async def send(self, to: str, text: str) -> None:
        token = self._secret(self.spec.access_token_env)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.spec.timeout_s, transport=self._transport)
        for piece in split_text(text):
            body = {
                "messaging_product": "whatsapp",
                "to": to,
                "type": "text",
                "text": {"body": piece},
            }
            try:
                response = await self._client.post(
                    self.messages_url, json=body, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.HTTPError as exc:
                raise ChannelDeliveryError(
                    f"channel {self.name!r}: the Graph API could not be reached: "
                    f"{type(exc).__name__}: {exc}",
                    channel=self.name,
                    status=None,
                ) from exc
            if response.status_code >= 400:
                raise ChannelDeliveryError(
                    f"channel {self.name!r}: the Graph API refused a reply with "
                    f"{response.status_code}: {_graph_error(response)}",
                    hint=f"check {self.spec.access_token_env} and phone_number_id",
                    channel=self.name,
                    status=response.status_code,
                )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
