"""The WhatsApp adapter without Ray or sockets: the signature check, the handshake,
parsing Cloud API deliveries, splitting long answers, sending through the Graph API
(httpx's mock transport), the dedupe store and the per-sender locks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from astromesh_ray.core.context import SESSION_ID
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.protocols.channels import SenderLocks
from astromesh_ray.serve.protocols.channels.base import (
    ChannelDeliveryError,
    ChannelUnauthorized,
    ChannelUnavailable,
    InboundMessage,
    adapter_for,
)
from astromesh_ray.serve.protocols.channels.dedupe import MemoryDedupeStore
from astromesh_ray.serve.protocols.channels.whatsapp import (
    MAX_TEXT_CHARS,
    WhatsAppAdapter,
    parse_delivery,
    sign,
    signature_ok,
    split_text,
)
from astromesh_ray.spec.channels import ChannelSpec
from astromesh_ray.testing.graph_api_server import (
    delivery,
    signature,
    status_update,
    text_message,
)

NUMBER = "106540352242922"
ENV = {"WA_VERIFY": "verify-me", "WA_SECRET": "app-secret", "WA_TOKEN": "EAAG-token"}

# GitHub's published webhook example: HMAC-SHA256 of "Hello, World!" under this key.
KEY = "It's a Secret to Everybody"
HELLO_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def _spec(**spec: Any) -> ChannelSpec:
    body = {
        "type": "whatsapp",
        "agent": "helper",
        "verify_token_env": "WA_VERIFY",
        "app_secret_env": "WA_SECRET",
        "access_token_env": "WA_TOKEN",
        "phone_number_id": NUMBER,
        "graph_api_base": "https://graph.example/v21.0",
        **spec,
    }
    return ChannelSpec.model_validate(
        {"apiVersion": "astromesh/v1", "kind": "Channel", "metadata": {"name": "wa"}, "spec": body}
    )


def _adapter(
    environ: dict[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> WhatsAppAdapter:
    return WhatsAppAdapter(
        _spec(), environ=dict(ENV) if environ is None else environ, transport=transport
    )


# -- signatures ---------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_the_raw_body() -> None:
    assert sign(KEY, b"Hello, World!") == HELLO_SIGNATURE
    assert signature(KEY, b"Hello, World!") == HELLO_SIGNATURE  # the test helper agrees
    assert signature_ok(KEY, b"Hello, World!", HELLO_SIGNATURE)
    assert signature_ok(KEY, b"Hello, World!", "sha256=" + HELLO_SIGNATURE[7:].upper())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        HELLO_SIGNATURE[7:],  # no sha256= prefix
        "sha1=" + HELLO_SIGNATURE[7:],
        HELLO_SIGNATURE[:-1] + "0",
        HELLO_SIGNATURE + "00",
        "sha256=ü" + HELLO_SIGNATURE[8:],
    ],
)
def test_wrong_or_missing_signatures_fail(header: str | None) -> None:
    assert not signature_ok(KEY, b"Hello, World!", header)


def test_a_changed_body_or_secret_fails() -> None:
    assert not signature_ok(KEY, b"Hello, World?", HELLO_SIGNATURE)
    assert not signature_ok("another secret", b"Hello, World!", HELLO_SIGNATURE)


def test_authenticate_refuses_unsigned_and_wrongly_signed_deliveries() -> None:
    adapter = _adapter()
    body = json.dumps(delivery(NUMBER, [text_message("15551234567", "hi")])).encode()
    adapter.authenticate(body, {"X-Hub-Signature-256": signature("app-secret", body)})
    adapter.authenticate(body, {"x-hub-signature-256": signature("app-secret", body)})
    with pytest.raises(ChannelUnauthorized, match="without X-Hub-Signature-256"):
        adapter.authenticate(body, {})
    with pytest.raises(ChannelUnauthorized, match="is wrong") as info:
        adapter.authenticate(body, {"X-Hub-Signature-256": signature("other", body)})
    assert info.value.http_status == 401 and "WA_SECRET" in (info.value.hint or "")


def test_secrets_are_read_when_a_request_needs_them() -> None:
    environ = dict(ENV)
    adapter = _adapter(environ)
    body = b"{}"
    old = signature("app-secret", body)
    adapter.authenticate(body, {"X-Hub-Signature-256": old})
    environ["WA_SECRET"] = "rotated"  # rotated: the next request uses it
    with pytest.raises(ChannelUnauthorized):
        adapter.authenticate(body, {"X-Hub-Signature-256": old})
    adapter.authenticate(body, {"X-Hub-Signature-256": signature("rotated", body)})
    del environ["WA_SECRET"]
    with pytest.raises(ChannelUnavailable, match="WA_SECRET is not set") as info:
        adapter.authenticate(body, {"X-Hub-Signature-256": old})
    assert info.value.http_status == 503 and info.value.details["env"] == "WA_SECRET"


# -- the handshake ------------------------------------------------------------------------


def test_the_handshake_answers_the_challenge_for_the_verify_token() -> None:
    adapter = _adapter()
    ok = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"}
    assert adapter.verify(ok) == "1158201444"
    assert adapter.verify({**ok, "hub.verify_token": "nope"}) is None
    assert adapter.verify({**ok, "hub.mode": "unsubscribe"}) is None
    assert adapter.verify({k: v for k, v in ok.items() if k != "hub.challenge"}) is None
    assert adapter.verify({k: v for k, v in ok.items() if k != "hub.verify_token"}) is None
    with pytest.raises(ChannelUnavailable, match="WA_VERIFY"):
        _adapter({}).verify(ok)


# -- parsing deliveries -------------------------------------------------------------------


def test_text_messages_are_parsed_with_sender_id_and_profile_name() -> None:
    first = text_message("15551234567", "Hola", message_id="wamid.A")
    second = text_message("447700900123", "Hello", message_id="wamid.B")
    parsed = parse_delivery(delivery(NUMBER, [first, second], names={"15551234567": "Ana"}), NUMBER)
    assert parsed.messages == [
        InboundMessage("15551234567", "wamid.A", "Hola", "text", "Ana"),
        InboundMessage("447700900123", "wamid.B", "Hello", "text", ""),
    ]
    assert parsed.ignored == 0


def test_a_statuses_only_delivery_holds_no_messages() -> None:
    payload = delivery(NUMBER, statuses=[status_update("15551234567"), status_update("1555")])
    parsed = parse_delivery(payload, NUMBER)
    assert parsed.messages == [] and parsed.ignored == 2


def test_non_text_messages_are_kept_without_text() -> None:
    image = {
        "from": "15551234567",
        "id": "wamid.IMG",
        "type": "image",
        "image": {"id": "1479537139650973", "mime_type": "image/jpeg"},
    }
    (message,) = parse_delivery(delivery(NUMBER, [image]), NUMBER).messages
    assert (message.text, message.kind, message.message_id) == (None, "image", "wamid.IMG")


def test_messages_for_another_phone_number_are_ignored() -> None:
    parsed = parse_delivery(delivery("999", [text_message("15551234567", "hi")]), NUMBER)
    assert parsed.messages == [] and parsed.ignored == 1


def test_malformed_items_are_ignored_not_refused() -> None:
    good = text_message("15551234567", "fine")
    bad = [
        {"id": "wamid.X", "type": "text", "text": {"body": "no sender"}},
        {"from": "15551234567", "type": "text", "text": {"body": "no id"}},
        {"from": "1555 123", "id": "wamid.Y", "type": "text", "text": {"body": "bad sender"}},
        {"from": "15551234567", "id": "wamid.Z", "type": "text", "text": {"body": "  "}},
        {"from": "15551234567", "id": "wamid.W", "type": "text"},
        "not an object",
    ]
    payload = delivery(NUMBER, [good, *bad])
    payload["entry"].append({"changes": [{"field": "account_update", "value": {}}, "x"]})
    payload["entry"].append("not an entry")
    parsed = parse_delivery(payload, NUMBER)
    assert [m.text for m in parsed.messages] == ["fine"]
    assert parsed.ignored == len(bad) + 2


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "entry"),
        ({"object": "whatsapp_business_account"}, "entry"),
        ({"entry": {"changes": []}}, "entry"),
        ({"object": "page", "entry": []}, "object"),
    ],
)
def test_a_payload_of_another_shape_is_an_invalid_request(payload: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_delivery(payload, NUMBER)
    assert info.value.details["field"] == field and info.value.http_status == 422


def test_session_ids_are_per_channel_and_sender_and_valid() -> None:
    adapter = _adapter()
    assert adapter.session_id("15551234567") == "wa:15551234567"
    longest = "9" * 63  # the longest sender parse_delivery accepts
    assert parse_delivery(delivery(NUMBER, [text_message(longest, "x")]), NUMBER).messages
    long_channel = WhatsAppAdapter(
        ChannelSpec.model_validate(
            {**_spec().model_dump(by_alias=True), "metadata": {"name": "w" * 64}}
        )
    )
    assert SESSION_ID.fullmatch(long_channel.session_id(longest))


# -- long answers -------------------------------------------------------------------------


def test_short_and_empty_texts() -> None:
    assert split_text("  Hello there.  ") == ["Hello there."]
    assert split_text(" \n ") == []
    assert split_text("x" * MAX_TEXT_CHARS) == ["x" * MAX_TEXT_CHARS]


def test_long_texts_are_cut_at_paragraphs_then_sentences_then_words() -> None:
    para = "word " * 500  # 2500 characters
    pieces = split_text(f"{para.strip()}\n\n{para.strip()}")
    assert pieces == [para.strip(), para.strip()]
    sentences = "This is one sentence. " * 300
    pieces = split_text(sentences)
    assert len(pieces) == 2 and all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert pieces[0].endswith("sentence.") and pieces[1].startswith("This")
    words = split_text("abcdefghi " * 1000, limit=95)
    assert all(len(p) <= 95 for p in words) and all(p.endswith("abcdefghi") for p in words)


def test_a_text_without_breaks_is_cut_at_the_limit() -> None:
    pieces = split_text("y" * 9000)
    assert [len(p) for p in pieces] == [4096, 4096, 808]


def test_splitting_keeps_every_word_in_order() -> None:
    text = " ".join(f"w{i}" for i in range(3000)) + "\n" + "z" * 5000
    pieces = split_text(text, limit=1000)
    assert all(0 < len(p) <= 1000 for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace(
        "\n", ""
    )


# -- sending ------------------------------------------------------------------------------


class Graph:
    """Records the requests the adapter sends; answers with ``status``/``body``."""

    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body if body is not None else {"messages": [{"id": "wamid.OUT"}]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body)


def test_a_reply_is_posted_to_the_phone_numbers_messages_endpoint() -> None:
    graph = Graph()
    adapter = _adapter(transport=httpx.MockTransport(graph))
    asyncio.run(adapter.send("15551234567", "Hi Ana!"))
    (request,) = graph.requests
    assert str(request.url) == f"https://graph.example/v21.0/{NUMBER}/messages"
    assert request.method == "POST" and request.headers["Authorization"] == "Bearer EAAG-token"
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp",
        "to": "15551234567",
        "type": "text",
        "text": {"body": "Hi Ana!"},
    }
    asyncio.run(adapter.aclose())


def test_a_long_reply_goes_as_several_messages() -> None:
    graph = Graph()
    adapter = _adapter(transport=httpx.MockTransport(graph))
    answer = ("A paragraph of words. " * 150).strip() + "\n\n" + ("More words. " * 200).strip()
    asyncio.run(adapter.send("15551234567", answer))
    bodies = [json.loads(r.content)["text"]["body"] for r in graph.requests]
    assert len(bodies) == 2 and bodies == split_text(answer)
    assert all(len(b) <= MAX_TEXT_CHARS for b in bodies)


def test_a_graph_error_is_a_delivery_error_with_its_message() -> None:
    body = {
        "error": {"message": "Invalid OAuth access token", "type": "OAuthException", "code": 190}
    }
    adapter = _adapter(transport=httpx.MockTransport(Graph(401, body)))
    with pytest.raises(ChannelDeliveryError) as info:
        asyncio.run(adapter.send("15551234567", "hi"))
    assert info.value.details["status"] == 401
    assert "Invalid OAuth access token (code 190)" in info.value.message


def test_an_unreachable_graph_api_is_a_delivery_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    adapter = _adapter(transport=httpx.MockTransport(refuse))
    with pytest.raises(ChannelDeliveryError, match="could not be reached") as info:
        asyncio.run(adapter.send("15551234567", "hi"))
    assert info.value.details["status"] is None


def test_no_access_token_sends_nothing() -> None:
    graph = Graph()
    environ = {k: v for k, v in ENV.items() if k != "WA_TOKEN"}
    adapter = _adapter(environ, transport=httpx.MockTransport(graph))
    with pytest.raises(ChannelUnavailable, match="WA_TOKEN"):
        asyncio.run(adapter.send("15551234567", "hi"))
    assert graph.requests == []


def test_the_registry_builds_the_adapter_of_the_channel_type() -> None:
    adapter = adapter_for(_spec(error_reply=None))
    assert isinstance(adapter, WhatsAppAdapter)
    assert (adapter.name, adapter.agent, adapter.error_reply) == ("wa", "helper", None)
    assert adapter.messages_url == f"https://graph.example/v21.0/{NUMBER}/messages"


# -- dedupe and ordering ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_message_id_is_claimed_once_until_its_ttl_ends() -> None:
    clock = Clock()
    store = MemoryDedupeStore(clock=clock)
    assert asyncio.run(store.claim(["wa:A", "wa:B", "wa:A"], 60)) == [True, True, False]
    clock.now += 59
    assert store.claim_now(["wa:A", "wa:C"], 60) == [False, True]
    clock.now += 1.5  # A and B expired; C has not
    assert store.claim_now(["wa:A", "wa:B", "wa:C"], 60) == [True, True, False]
    assert len(store) == 3


def test_the_store_forgets_the_claims_that_expire_first_when_full() -> None:
    clock = Clock()
    store = MemoryDedupeStore(clock=clock, max_keys=2)
    store.claim_now(["short"], 10)
    store.claim_now(["long"], 1000)
    assert store.claim_now(["third"], 100) == [True]
    assert len(store) == 2
    assert store.claim_now(["long", "third"], 100) == [False, False]
    assert store.claim_now(["short"], 10) == [True]  # forgotten: claimable again


def test_a_senders_messages_run_one_after_the_other() -> None:
    locks = SenderLocks()
    order: list[str] = []

    async def run(key: str, name: str, wait: asyncio.Event | None) -> None:
        async with locks.hold(key):
            order.append(f"{name} start")
            if wait is not None:
                await wait.wait()
            order.append(f"{name} end")

    async def main() -> None:
        release = asyncio.Event()
        first = asyncio.create_task(run("wa:1", "first", release))
        await asyncio.sleep(0)
        second = asyncio.create_task(run("wa:1", "second", None))
        other = asyncio.create_task(run("wa:2", "other", None))
        await other  # another sender is not held up
        assert order == ["first start", "other start", "other end"]
        release.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert order[3:] == ["first end", "second start", "second end"]
    assert len(locks) == 0  # no lock is kept once nobody holds it
