"""``GraphAPIServer``: a real loopback HTTP server speaking the WhatsApp Cloud API's
send endpoint, recording the messages sent; and the webhook side of Meta (deliveries
as Meta shapes and signs them) for tests to post to a channel.

``POST /{version}/{phone_number_id}/messages`` takes ``{messaging_product:
"whatsapp", to, type: "text", text: {body}}`` with ``Authorization: Bearer <token>``
and answers as the Graph API does: ``{messaging_product, contacts: [{input, wa_id}],
messages: [{id: "wamid..."}]}``, or its error body ``{error: {message, type, code,
fbtrace_id}}`` (190 for a wrong token, 100 for a bad parameter or another phone
number id).  Only text messages are accepted: it is the only kind the channel sends.

Imports neither Ray nor any vendor SDK; uvicorn runs it in a daemon thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from astromesh_ray.testing.loopback import ScriptedServer

__all__ = ["GraphAPIServer", "delivery", "signature", "status_update", "text_message"]

GRAPH_TEXT_LIMIT = 4096


def _graph_error(
    status: int, message: str, code: int, kind: str = "OAuthException"
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": kind,
            "code": code,
            "fbtrace_id": uuid.uuid4().hex[:22],
        }
    }
    return JSONResponse(body, status_code=status)


class GraphAPIServer(ScriptedServer):
    """The Graph API's message send endpoint on 127.0.0.1.

    Every send is answered with success unless a step is queued: a step is
    ``{"status": 500, "error": "message", "code": 131000}`` (answer that Graph
    error instead), and optionally ``delay_s``; ``{"status": 200, "delay_s": 1}``
    succeeds late.  Each accepted message goes to ``sent`` (``{to, text,
    phone_number_id, id}``), each request body to ``requests`` (headers to
    ``request_headers``), each refusal's message to ``refused``.  ``base_url`` is
    what a channel's ``graph_api_base`` is set to.
    """

    _name = "GraphAPIServer"
    _thread_name = "graph-api-{port}"
    _step_keys = frozenset({"status", "error", "code", "delay_s"})
    _answer_keys = ("status",)

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str,
        version: str = "v21.0",
        steps: Iterable[dict[str, Any]] = (),
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.version = version
        self.sent: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self._arrived = threading.Condition()
        super().__init__(steps)

    @property
    def base_url(self) -> str:
        """The Graph API base URL, its version included."""
        return f"{self.url}/{self.version}"

    def texts(self, to: str | None = None) -> list[str]:
        """The texts sent so far (to ``to`` only, when given), in order."""
        with self._arrived:
            return [m["text"] for m in self.sent if to is None or m["to"] == to]

    def wait_for(self, count: int, *, to: str | None = None, timeout_s: float = 60) -> list[str]:
        """Block until ``count`` texts were sent (to ``to``), at most ``timeout_s``
        seconds; the texts.  ``AssertionError`` naming what arrived otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while True:
                texts = [m["text"] for m in self.sent if to is None or m["to"] == to]
                left = deadline - time.monotonic()
                if len(texts) >= count or left <= 0:
                    break
                self._arrived.wait(left)
        if len(texts) < count:
            raise AssertionError(
                f"{self._name}: {len(texts)} of {count} message(s) arrived within "
                f"{timeout_s:g}s: {texts!r} (refused: {self.refused!r})"
            )
        return texts

    def _routes(self) -> list[Route]:
        return [Route("/{version}/{number}/messages", self._messages, methods=["POST"])]

    def _refuse(self, status: int, message: str, code: int, kind: str) -> JSONResponse:
        with self._arrived:
            self.refused.append(message)
        return _graph_error(status, message, code, kind)

    async def _messages(self, request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._refuse(400, "(#100) The request body is not JSON", 100, "OAuthException")
        self._record(request, body)
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return self._refuse(
                401, "Invalid OAuth access token - Cannot parse access token", 190, "OAuthException"
            )
        number = request.path_params["number"]
        if request.path_params["version"] != self.version or number != self.phone_number_id:
            return self._refuse(
                400,
                f"Unsupported post request. Object with ID '{number}' does not exist, cannot "
                "be loaded due to missing permissions, or does not support this operation",
                100,
                "GraphMethodException",
            )
        problem = self._check(body)
        if problem is not None:
            return self._refuse(400, f"(#100) {problem}", 100, "OAuthException")
        step = await self._await_step()
        if step is not None and int(step["status"]) >= 400:
            message = str(step.get("error") or "scripted failure")
            return self._refuse(int(step["status"]), message, int(step.get("code", 1)), "Scripted")
        message_id = "wamid." + uuid.uuid4().hex
        with self._arrived:
            self.sent.append(
                {
                    "to": body["to"],
                    "text": body["text"]["body"],
                    "phone_number_id": number,
                    "id": message_id,
                }
            )
            self._arrived.notify_all()
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": message_id}],
            }
        )

    @staticmethod
    def _check(body: Any) -> str | None:
        """What the Graph API would refuse in a text message body, or None."""
        if not isinstance(body, dict):
            return "The request body must be a JSON object"
        if body.get("messaging_product") != "whatsapp":
            return "The parameter messaging_product is required and must be whatsapp"
        if not isinstance(body.get("to"), str) or not body["to"]:
            return "The parameter to is required"
        if body.get("type", "text") != "text":
            return f"this loopback server sends text messages only, not {body.get('type')!r}"
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
            return "The parameter text['body'] is required"
        if len(text["body"]) > GRAPH_TEXT_LIMIT:
            return f"Param text['body'] must be at most {GRAPH_TEXT_LIMIT} characters long"
        return None


# -- Meta's side of the webhook ----------------------------------------------------------


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header Meta sends with ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def text_message(sender: str, text: str, *, message_id: str | None = None) -> dict[str, Any]:
    """A ``messages[]`` item of type text, as Meta delivers it."""
    return {
        "from": sender,
        "id": message_id or "wamid." + uuid.uuid4().hex,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }


def status_update(recipient: str, *, status: str = "delivered") -> dict[str, Any]:
    """A ``statuses[]`` item: a receipt for a message the business sent."""
    return {
        "id": "wamid." + uuid.uuid4().hex,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }


def delivery(
    phone_number_id: str,
    messages: Iterable[dict[str, Any]] = (),
    *,
    statuses: Iterable[dict[str, Any]] = (),
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A webhook payload with ``messages`` (and ``statuses``) for ``phone_number_id``;
    ``names`` gives senders' profile names (``contacts[]``)."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    listed = list(messages)
    if listed:
        senders = dict.fromkeys(m["from"] for m in listed if isinstance(m, dict) and "from" in m)
        value["contacts"] = [
            {"profile": {"name": (names or {}).get(s, "")}, "wa_id": s} for s in senders
        ]
        value["messages"] = listed
    receipts = list(statuses)
    if receipts:
        value["statuses"] = receipts
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }
