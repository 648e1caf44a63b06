"""Webhook URL templates, environment substitution, secret redaction and response
decoding, without a server (the loopback tests are in tests/integration/tools)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from astromesh_ray.core.tools.http_common import (
    HttpReply,
    Redactor,
    decode,
    fetch,
    status_error,
)
from astromesh_ray.core.tools.webhook import UrlTemplate, Webhook
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.tools import WebhookToolSpec


def spec(**webhook: object) -> WebhookToolSpec:
    params = webhook.pop("parameters", None)
    data: dict[str, object] = {"name": "hook", "type": "webhook", "webhook": webhook}
    if params is not None:
        data["parameters"] = params
    return WebhookToolSpec.model_validate(data)


def reply(body: bytes, content_type: str = "application/json", status: int = 200) -> HttpReply:
    return HttpReply(status, "Reason", content_type, "utf-8", body, "https://x/")


def test_template_fills_placeholders_url_encoded() -> None:
    template = UrlTemplate.parse("https://api.example.com/{org}/items/{id}?v=2", {}, "hook")
    assert template.placeholders == ["org", "id"]
    url = template.render({"org": "a b/c?d", "id": 7}, {})
    assert url == "https://api.example.com/a%20b%2Fc%3Fd/items/7?v=2"
    assert template.render({"org": True}, {"id": "x"}).endswith("/true/items/x?v=2")
    with pytest.raises(ToolError, match="argument 'id' is required: it is part of the URL"):
        template.render({"org": "o"}, {})


def test_environment_is_substituted_once_and_never_reparsed() -> None:
    environ = {"BASE": "https://api.example.com", "KEY": "{not_a_placeholder}"}
    template = UrlTemplate.parse("${BASE}/v1?key=${KEY}&q={q}", environ, "hook")
    assert template.placeholders == ["q"]
    assert (
        template.render({"q": "1"}, {}) == "https://api.example.com/v1?key={not_a_placeholder}&q=1"
    )
    assert template.shown == "${BASE}/v1?key=${KEY}&q={q}"
    assert template.secrets == environ
    with pytest.raises(ConfigError, match=r"webhook url uses \$\{NOPE\}, but NOPE is not set"):
        UrlTemplate.parse("https://x/${NOPE}", {}, "hook")


def test_webhook_from_spec_retries_and_side_effects() -> None:
    get = Webhook.from_spec(spec(url="https://x/a", method="GET", retries=2), {})
    post = Webhook.from_spec(spec(url="https://x/a", retries=2), {})
    idem = Webhook.from_spec(spec(url="https://x/a", retries=2, idempotent=True), {})
    assert (get.attempts, post.attempts, idem.attempts) == (3, 1, 3)
    assert not get.side_effects and post.side_effects
    assert get.label == "webhook 'hook' (GET https://x/a)"


def test_header_secrets_are_substituted_and_redacted() -> None:
    hook = Webhook.from_spec(
        spec(url="https://x/a", headers={"Authorization": "Bearer ${TOKEN}"}),
        {"TOKEN": "abcdef123456"},
    )
    assert hook.headers == {"Authorization": "Bearer abcdef123456"}
    echoed = decode(reply(b'{"auth": "Bearer abcdef123456", "n": 1}'), hook.redact)
    assert echoed.content == '{"auth":"Bearer ${TOKEN}","n":1}'
    assert echoed.data == {"auth": "Bearer ${TOKEN}", "n": 1}
    error = status_error(
        hook.label, reply(b"bad token abcdef123456", "text/plain", 401), hook.redact
    )
    assert "abcdef123456" not in str(error) and "${TOKEN}" in error.message


def test_short_values_are_not_redacted() -> None:
    assert Redactor({"V": "v1"})("api v1") == "api v1"


def test_decoding_by_content_type() -> None:
    assert decode(reply(b'{"a": [1, 2]}')).content == '{"a":[1,2]}'
    assert decode(reply(b'{"a": 1}', "application/problem+json")).data == {"a": 1}
    assert decode(reply(b"[1]", "")).data == [1]  # no content type: sniffed
    assert decode(reply(b"not json", "application/json")).content == "not json"
    assert decode(reply("héllo".encode(), "text/plain")).content == "héllo"
    assert decode(reply(b"<a/>", "application/xml")).content == "<a/>"
    assert decode(reply(b"\x00" * 12, "application/octet-stream")).content == (
        "[binary application/octet-stream, 12 bytes]"
    )


def test_status_error_excerpt_is_short() -> None:
    error = status_error("webhook 'h' (GET https://x/)", reply(b"e " * 1000, "text/plain", 500))
    assert error.message.startswith("webhook 'h' (GET https://x/) returned HTTP 500 Reason: e e")
    assert error.message.endswith("...") and len(error.message) < 400
    binary = status_error("w", reply(b"\x00\x01", "image/png", 502))
    assert binary.message == "w returned HTTP 502 Reason" and binary.details["status"] == 502


# --- security review fixes ------------------------------------------------------------


def test_redactor_finds_escaped_and_stripped_forms() -> None:
    redact = Redactor({"TOKEN": "s3cr3t-token-value\n"})
    # httpx/h11 show a bad header value as bytes repr: the newline is escaped.
    shown = redact("LocalProtocolError: Illegal header value b'Bearer s3cr3t-token-value\\n'")
    assert "s3cr3t" not in shown and "${TOKEN}" in shown
    assert redact("token s3cr3t-token-value.") == "token ${TOKEN}."  # stripped form
    assert "s3cr3t" not in redact('{"v": "s3cr3t-token-value\\n"}')  # JSON-escaped


def test_a_header_value_with_a_line_break_is_a_config_error() -> None:
    for value in ("s3cr3t-token-value\n", "s3cr3t\r\nX-Evil: 1", "s3cr3t\x00value"):
        with pytest.raises(ConfigError, match=r"webhook header 'Authorization' has a line") as info:
            Webhook.from_spec(
                spec(url="https://x/a", headers={"Authorization": "Bearer ${TOKEN}"}),
                {"TOKEN": value},
            )
        assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match=r"header name 'X Bad' is not a valid"):
        Webhook.from_spec(spec(url="https://x/a", headers={"X Bad": "v"}), {})


@pytest.mark.parametrize("value", ["..", ".", "..."])
def test_dot_segments_from_arguments_are_refused(value: str) -> None:
    template = UrlTemplate.parse("https://api.example.com/api/{p}/echo?q={q}", {}, "hook")
    with pytest.raises(ToolError, match=r"argument 'p' makes a URL path segment"):
        template.render({"p": value, "q": "x"}, {})
    adjacent = UrlTemplate.parse("https://api.example.com/api/{a}{b}", {}, "hook")
    with pytest.raises(ToolError, match=r"argument 'a', 'b' makes a URL path segment '\.\.'"):
        adjacent.render({"a": ".", "b": "."}, {})


def test_dots_that_make_no_dot_segment_are_kept() -> None:
    template = UrlTemplate.parse("https://api.example.com/api/x{p}/{f}?q={q}", {}, "hook")
    url = template.render({"p": "..", "f": "a.json", "q": ".."}, {})
    assert url == "https://api.example.com/api/x../a.json?q=.."
    # An encoded dot is sent encoded (%252E): the server reads "%2E", not "."
    assert template.render({"p": "", "f": "%2E%2E", "q": "1"}, {}).endswith("/%252E%252E?q=1")


def test_json_nested_too_deep_is_read_as_text() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    result = decode(reply(body))
    assert result.content.startswith("[[[") and result.data is None


# --- fetch: encodings, caps, redirects ---------------------------------------------------


class Drip(httpx.AsyncByteStream):
    """A response body that counts how much of it was read."""

    def __init__(self, chunks: int = 1000, size: int = 1000) -> None:
        self.left, self.size, self.read, self.closed = chunks, size, 0, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.left:
            self.left -= 1
            self.read += self.size
            yield b"r" * self.size

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


async def fetch_with(
    handler: Handler,
    url: str = "https://api.example.com/a",
    *,
    max_bytes: int = 10_000,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> HttpReply:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("GET", url, headers=headers)
        return await fetch(client, request, max_bytes=max_bytes, label="hook", **options)


def encoded(body: bytes, encoding: str) -> Handler:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        stream = httpx.ByteStream(body)  # as a transport hands it over: not read yet
        return httpx.Response(200, headers={"content-encoding": encoding}, stream=stream)

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


async def test_identity_is_asked_for_whatever_the_headers_say() -> None:
    handler = encoded(b"plain", "identity")
    got = await fetch_with(handler, headers={"Accept-Encoding": "gzip, br, zstd"})
    assert got.body == b"plain"
    (request,) = handler.seen  # type: ignore[attr-defined]
    assert request.headers.get_list("accept-encoding") == ["identity"]


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(b'{"a": 1}')),
        ("x-gzip", gzip.compress(b'{"a": 1}')),
        ("deflate", zlib.compress(b'{"a": 1}')),
        ("deflate", zlib.compress(b'{"a": 1}')[2:-4]),  # raw deflate, no zlib header
        ("identity", b'{"a": 1}'),
    ],
)
async def test_one_gzip_or_deflate_layer_is_decoded(encoding: str, body: bytes) -> None:
    assert (await fetch_with(encoded(body, encoding))).body == b'{"a": 1}'


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip, gzip", gzip.compress(gzip.compress(b"x" * 1000))),
        ("deflate, gzip", gzip.compress(zlib.compress(b"x" * 1000))),
        ("br", b"\x0b\x02\x80hello\x03"),
        ("zstd", b"(\xb5/\xfd\x20\x05)\x00\x00hello"),
    ],
)
async def test_stacked_and_other_encodings_are_refused(encoding: str, body: bytes) -> None:
    with pytest.raises(ToolError, match=r"Content-Encoding .* which is not read"):
        await fetch_with(encoded(body, encoding))


async def test_a_gzip_bomb_is_stopped_at_the_cap_without_inflating_it() -> None:
    bomb = gzip.compress(bytes(50_000_000), compresslevel=9)  # ~50 KB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ToolError, match=r"larger than 100000 bytes"):
            await fetch_with(encoded(bomb, "gzip"), max_bytes=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # never the 50 MB it inflates to


async def test_the_cap_counts_raw_bytes() -> None:
    with pytest.raises(ToolError, match=r"larger than 1000 bytes"):
        await fetch_with(encoded(b"y" * 5000, "identity"), max_bytes=1000)


async def test_a_redirect_body_is_never_read() -> None:
    drip = Drip()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(302, headers={"location": "/b"}, stream=drip)
        return httpx.Response(200, stream=httpx.ByteStream(b"landed"))

    got = await fetch_with(handler, max_bytes=1000)
    assert got.body == b"landed" and got.url == "https://api.example.com/b"
    assert drip.read == 0 and drip.closed


async def test_redirects_are_capped_at_five() -> None:
    hops: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        hops.append(request.url.path)
        return httpx.Response(302, headers={"location": f"/{len(hops)}"})

    with pytest.raises(ToolError, match=r"too many redirects \(at most 5"):
        await fetch_with(handler)
    assert len(hops) == 6


async def test_a_redirect_to_another_origin_drops_the_private_headers() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/a":
            return httpx.Response(302, headers={"location": "/same"})
        if request.url.path == "/same":
            return httpx.Response(307, headers={"location": "https://evil.example:8443/x"})
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    headers = {"X-Api-Key": "k-0123456789", "Authorization": "Bearer t", "X-Trace": "1"}
    await fetch_with(handler, headers=headers, private_headers=["x-api-key", "X-Trace"])
    _, same, other = seen
    assert same.headers["x-api-key"] == "k-0123456789" and same.headers["x-trace"] == "1"
    assert "x-api-key" not in other.headers and "x-trace" not in other.headers
    assert "authorization" not in other.headers
    assert other.headers["host"] == "evil.example:8443"


@pytest.mark.parametrize(
    "error",
    [
        httpx.LocalProtocolError("Illegal header value b'Bearer s3cr3t-token-value\\n'"),
        ExceptionGroup("unhandled errors in a TaskGroup", [OverflowError("port out of range")]),
        RecursionError("maximum recursion depth exceeded"),
        httpx.RemoteProtocolError("peer closed s3cr3t-token-value\n"),
    ],
)
async def test_every_failure_is_a_tool_error_without_secrets(error: Exception) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(ToolError, match=r"^hook failed: ") as info:
        await fetch_with(handler, redact=Redactor({"TOKEN": "s3cr3t-token-value\n"}))
    assert "s3cr3t" not in str(info.value)
