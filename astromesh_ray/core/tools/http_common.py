"""What webhooks and ``http_request`` share: sending a request through a
``NetworkPolicy`` client, reading the response under a size cap, decoding it by
content type, and turning HTTP failures into ``ToolError``s the model reads.

Error messages name the request by ``label`` (the caller decides what is safe to
show: a webhook shows its URL template, never its secrets) and never echo headers.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from astromesh_ray.core.tools.base import ToolResult
from astromesh_ray.core.tools.net import MAX_REDIRECTS, REDIRECT_STATUS
from astromesh_ray.errors import ToolError

DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
DEFAULT_TIMEOUT_S = 30.0
EXCERPT_CHARS = 300
RETRYABLE_STATUS = frozenset({502, 503, 504})

_TEXTUAL = re.compile(
    r"^(text/.*|application/(xml|javascript|x-www-form-urlencoded|yaml|x-yaml|x-ndjson)"
    r"|.*\+xml)$"
)


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A response read whole (it fitted under the cap)."""

    status: int
    reason: str
    content_type: str  # media type, lower case, without parameters
    charset: str
    body: bytes
    url: str  # after redirects
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case


@dataclass(frozen=True)
class Redactor:
    """Replaces secret values (from ``${ENV}`` substitution) by their ``${NAME}`` in
    whatever is shown to the model.  Values shorter than 8 characters are not secrets
    worth mangling every result for.  Each value is also looked for stripped and in
    the escaped forms error messages and JSON show it in (``repr()`` of the text and
    of its bytes, a JSON string): ``b'tok\\n'`` must not show ``tok``."""

    secrets: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, text: str) -> str:
        for form, name in self._forms():
            if form in text:
                text = text.replace(form, "${" + name + "}")
        return text

    def _forms(self) -> list[tuple[str, str]]:
        forms: dict[str, str] = {}
        for name, value in self.secrets.items():
            for variant in (value, value.strip()):
                for form in (
                    variant,
                    repr(variant)[1:-1],
                    repr(variant.encode("utf-8", "surrogateescape"))[2:-1],
                    json.dumps(variant)[1:-1],
                    json.dumps(variant, ensure_ascii=False)[1:-1],
                ):
                    if len(form) >= 8:
                        forms.setdefault(form, name)
        return sorted(forms.items(), key=lambda item: -len(item[0]))  # longest first

    def __bool__(self) -> bool:
        return any(len(v.strip()) >= 8 for v in self.secrets.values())


SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate")


class BodyReader:
    """Reads a body from its raw (as sent) bytes under ``max_bytes``, decoding one
    ``gzip`` or ``deflate`` layer at most, never more than ``max_bytes`` decoded bytes
    (``zlib`` with a bounded ``max_length``: a small bomb cannot fill memory)."""

    def __init__(self, encoding: str, *, max_bytes: int, label: str) -> None:
        layers = [e.strip().lower() for e in encoding.split(",")]
        layers = [e for e in layers if e and e != "identity"]
        self._label = label
        self._max = max_bytes
        self._layers = layers
        self._zlib: Any = None
        self._deflate_raw_tried = False
        self.raw = 0
        self.size = 0
        self._chunks: list[bytes] = []

    def _check_encoding(self) -> None:
        if not self._layers:
            return
        if len(self._layers) > 1 or self._layers[0] not in SUPPORTED_ENCODINGS:
            raise ToolError(
                f"{self._label}: the response has Content-Encoding "
                f"{', '.join(self._layers)!r}, which is not read (only an uncompressed body "
                "or one gzip or deflate layer is)",
                hint="the endpoint ignored Accept-Encoding: identity; ask it for an "
                "uncompressed response",
            )
        if self._zlib is None:
            wbits = 16 + zlib.MAX_WBITS if "gzip" in self._layers[0] else zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(wbits)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.raw += len(chunk)
        if self.raw > self._max:
            raise too_large(self._label, self._max)
        self._check_encoding()  # only a body that is there: HEAD and 204 are fine
        if self._zlib is None:
            self._add(chunk)
        else:
            self._inflate(chunk)

    def _add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._max:
            raise too_large(self._label, self._max)
        if data:
            self._chunks.append(data)

    def _inflate(self, data: bytes) -> None:
        decoder = self._zlib
        if decoder.eof:
            return  # data after the end of the stream is ignored
        try:
            while True:
                # One byte more than the cap allows: reaching it is the overflow.
                out = decoder.decompress(data, self._max - self.size + 1)
                self._add(out)
                data = decoder.unconsumed_tail
                if decoder.eof or (not data and not out):
                    break
        except zlib.error as exc:
            if self._layers[0] == "deflate" and not self._deflate_raw_tried and not self.size:
                # Some servers send raw deflate (no zlib header) as "deflate".
                self._deflate_raw_tried = True
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._inflate(data)
                return
            raise ToolError(
                f"{self._label}: the response body is not valid {self._layers[0]} ({exc})"
            ) from None

    def body(self) -> bytes:
        if self._zlib is not None and not self._zlib.eof:
            self._inflate(b"")
            try:
                self._add(self._zlib.flush(1024))
            except zlib.error as exc:
                raise ToolError(
                    f"{self._label}: the response body is not valid {self._layers[0]} ({exc})"
                ) from None
        return b"".join(self._chunks)


_SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, port)


def _next_request(
    request: httpx.Request, response: httpx.Response, private: frozenset[str], label: str
) -> httpx.Request:
    """The request a redirect asks for (as ``httpx`` would make it), without the
    caller's ``private`` headers (and credentials) when it leaves the origin."""
    try:
        url = httpx.URL(response.headers["location"])
        if url.scheme and not url.host:
            url = url.copy_with(host=request.url.host)
        if url.is_relative_url:
            url = request.url.join(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ToolError(f"{label}: a redirect has an invalid Location") from None
    method = request.method
    status = response.status_code
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    headers.pop("Cookie", None)
    if _origin(url) != _origin(request.url):
        for name in list(headers.keys()):
            if name.lower() in private or name.lower() in _SENSITIVE_HEADERS:
                headers.pop(name, None)
        headers["Host"] = url.netloc.decode("ascii")
    stream: Any = request.stream
    if method != request.method and method == "GET":
        headers.pop("Content-Length", None)
        headers.pop("Transfer-Encoding", None)
        stream = None
    return httpx.Request(method, url, headers=headers, stream=stream, extensions=request.extensions)


def _failure(label: str, exc: BaseException, redact: Redactor, what: str = "failed") -> ToolError:
    detail = redact(str(exc))
    return ToolError(f"{label} {what}: {type(exc).__name__}" + (f": {detail}" if detail else ""))


async def fetch(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    max_bytes: int,
    label: str,
    redact: Redactor | None = None,
    private_headers: Collection[str] = (),
) -> HttpReply:
    """Send ``request`` and read its body, stopping (a ``ToolError``) as soon as it
    passes ``max_bytes`` (raw bytes as sent, and decoded bytes).  The request asks for
    ``Accept-Encoding: identity`` whatever its headers say.  Redirects (at most
    ``MAX_REDIRECTS``) are followed here, their bodies never read, each hop checked by
    the client's policy; a hop to another origin (scheme, host, port) drops
    ``private_headers`` (a webhook's configured headers) and credentials.  Every
    failure is a ``ToolError`` (its message passed through ``redact``), except connect
    failures, which the caller may retry (``httpx.ConnectError``/``ConnectTimeout``)."""
    redact = redact or Redactor()
    private = frozenset(h.lower() for h in private_headers)
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            request.headers["Accept-Encoding"] = "identity"
            response = await _send(client, request, label, redact)
            if response.status_code not in REDIRECT_STATUS or "location" not in response.headers:
                return await _read(response, max_bytes=max_bytes, label=label, redact=redact)
            await response.aclose()  # unread
            request = _next_request(request, response, private, label)
        raise ToolError(f"{label}: too many redirects (at most {MAX_REDIRECTS} are followed)")
    except (ToolError, httpx.ConnectError, httpx.ConnectTimeout):
        raise
    except Exception as exc:  # whatever the transport or a decoder raised
        raise _failure(label, exc, redact) from None


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, label: str, redact: Redactor
) -> httpx.Response:
    try:
        return await client.send(request, stream=True, follow_redirects=False)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise
    except ToolError as exc:  # the policy refused the URL
        raise ToolError(redact(exc.message), hint=exc.hint, **exc.details) from None
    except httpx.TimeoutException as exc:
        raise ToolError(f"{label} timed out ({type(exc).__name__})") from None


async def _read(
    response: httpx.Response, *, max_bytes: int, label: str, redact: Redactor
) -> HttpReply:
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large(label, max_bytes)
        reader = BodyReader(
            response.headers.get("content-encoding", ""), max_bytes=max_bytes, label=label
        )
        async for chunk in response.aiter_raw():
            reader.feed(chunk)
        body = reader.body()
    except httpx.TimeoutException as exc:
        raise ToolError(f"{label} timed out reading the response ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise _failure(label, exc, redact, "reading the response failed") from None
    finally:
        await response.aclose()
    media, _, params = response.headers.get("content-type", "").partition(";")
    charset = _charset(params)
    return HttpReply(
        status=response.status_code,
        reason=response.reason_phrase,
        content_type=media.strip().lower(),
        charset=charset,
        body=body,
        url=str(response.url),
        headers={k.lower(): v for k, v in response.headers.items()},
    )


def connect_error(label: str, exc: httpx.HTTPError, redact: Redactor | None = None) -> ToolError:
    """A request that never reached the endpoint."""
    detail = (redact or Redactor())(str(exc)) or type(exc).__name__
    return ToolError(
        f"{label}: could not connect ({type(exc).__name__}: {detail})",
        hint="the endpoint is down or unreachable; try again later or do without it",
    )


def too_large(label: str, max_bytes: int) -> ToolError:
    return ToolError(
        f"{label}: the response is larger than {max_bytes} bytes (max_response_bytes); "
        "it was not read",
        hint="ask for less (filters, pagination), or raise max_response_bytes in the YAML",
    )


def _charset(params: str) -> str:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def text_of(reply: HttpReply) -> str:
    try:
        return reply.body.decode(reply.charset, errors="replace")
    except (LookupError, ValueError):  # an unknown charset name, or not a text codec
        return reply.body.decode("utf-8", errors="replace")


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def decode(reply: HttpReply, redact: Redactor | None = None) -> ToolResult:
    """The model's view of a successful response: JSON as compact JSON text (and the
    parsed value as ``data``), text as text, anything else as a short description."""
    redact = redact or Redactor()
    if is_json(reply.content_type) or (not reply.content_type and _looks_json(reply.body)):
        try:
            value = json.loads(text_of(reply))
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            return ToolResult(content=redact(text_of(reply)))
        if redact and redact(text) != text:
            text = redact(text)
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):  # a secret was cut out of an escaped string
                value = text
        return ToolResult(content=text, data=value)
    if not reply.content_type or _TEXTUAL.match(reply.content_type):
        text = redact(text_of(reply))
        return ToolResult(content=text, data=text)
    return ToolResult(
        content=f"[binary {reply.content_type}, {len(reply.body)} bytes]",
        data={"content_type": reply.content_type, "bytes": len(reply.body)},
    )


def safe_decode(label: str, reply: HttpReply, redact: Redactor | None = None) -> ToolResult:
    """``decode``, any failure of which is a ``ToolError`` (never one that fails the
    run)."""
    try:
        return decode(reply, redact)
    except Exception as exc:
        error = _failure(label, exc, redact or Redactor(), "returned a body that cannot be read")
        raise error from None


def _looks_json(body: bytes) -> bool:
    head = body.lstrip()[:1]
    return head in (b"{", b"[")


def status_error(label: str, reply: HttpReply, redact: Redactor | None = None) -> ToolError:
    """A non-2xx response: its status and the start of its body."""
    redact = redact or Redactor()
    excerpt = ""
    if reply.body and (
        is_json(reply.content_type) or not reply.content_type or _TEXTUAL.match(reply.content_type)
    ):
        excerpt = " ".join(redact(text_of(reply)).split())
        if len(excerpt) > EXCERPT_CHARS:
            excerpt = excerpt[:EXCERPT_CHARS] + "..."
        excerpt = f": {excerpt}"
    hint = None
    if reply.status in (401, 403):
        hint = "the endpoint refused the credentials configured for this tool"
    elif reply.status == 429 or reply.status in RETRYABLE_STATUS:
        hint = "the endpoint is overloaded or down; try again later or do without it"
    elif 400 <= reply.status < 500:
        hint = "check the arguments and call again"
    return ToolError(
        f"{label} returned HTTP {reply.status} {reply.reason}{excerpt}",
        hint=hint,
        status=reply.status,
    )


def query_value(value: Any) -> str:
    """An argument as it appears in a URL: strings as they are, booleans lower case,
    numbers as written, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
