"""NetworkPolicy: the host allow-list, address classification after DNS, and the
pinned client (DNS is faked here; no socket is opened)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import httpx
import httpx2
import pytest

from astromesh_ray.core.tools.net import (
    HostRule,
    NetworkPolicy,
    canonical_host,
    classify,
    parse_ip,
)
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.agent import PermissionsSpec


def permissions(allowed: Sequence[str] = (), allow_private: Sequence[str] = ()) -> PermissionsSpec:
    return PermissionsSpec.model_validate(
        {"network": {"allowed": list(allowed), "allow_private": list(allow_private)}}
    )


class FakeDns:
    """A resolver answering from a table; records what it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


PUBLIC = "93.184.215.14"


def policy(
    allowed: Sequence[str] = (),
    allow_private: Sequence[str] = (),
    dns: dict[str, list[str]] | None = None,
    own_urls: Sequence[str] = (),
) -> NetworkPolicy:
    return NetworkPolicy.for_agent(
        permissions(allowed, allow_private),
        own_urls=own_urls,
        resolver=FakeDns(dns or {}),
    )


# --- allow-list -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "url", "allowed"),
    [
        ("example.com", "https://example.com/a", True),
        ("example.com", "http://EXAMPLE.com./a", True),
        ("example.com", "https://api.example.com/", False),
        ("example.com", "https://example.com.evil.net/", False),
        ("example.com:8443", "https://example.com:8443/", True),
        ("example.com:8443", "https://example.com/", False),
        ("*.example.com", "https://api.example.com/", True),
        ("*.example.com", "https://a.b.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("*.example.com", "https://badexample.com/", False),
        ("https://api.example.com/v1/hook", "https://api.example.com/other", True),
        ("https://api.example.com/v1/hook", "http://api.example.com/", False),
        ("http://api.example.com:8080", "http://api.example.com:8080/x", True),
        ("bücher.de", "https://xn--bcher-kva.de/", True),
        # A written port is that port only, the scheme's default included.
        ("example.com:80", "http://example.com/", True),
        ("example.com:80", "http://example.com:80/", True),
        ("example.com:80", "https://example.com:80/", True),
        ("example.com:80", "http://example.com:8080/", False),
        ("example.com:80", "https://example.com/", False),
        ("example.com:443", "https://example.com/", True),
        ("example.com:443", "http://example.com/", False),
        ("http://example.com:80", "http://example.com:8080/", False),
    ],
)
async def test_allow_list_matching(entry: str, url: str, allowed: bool) -> None:
    dns = {
        h: [PUBLIC]
        for h in (
            "example.com",
            "api.example.com",
            "a.b.example.com",
            "example.com.evil.net",
            "badexample.com",
            "xn--bcher-kva.de",
        )
    }
    p = policy([entry], dns=dns)
    if allowed:
        target = await p.check(url)
        assert target.addresses == (ipaddress.ip_address(PUBLIC),)
    else:
        with pytest.raises(ToolError, match=r"is not in spec.permissions.network.allowed"):
            await p.check(url)


def test_host_rule_parses_ip_literals_as_explicit() -> None:
    assert HostRule.parse("10.0.0.1").explicit
    assert HostRule.parse("localhost").explicit
    assert HostRule.parse("[::1]:8080") == HostRule("[::1]:8080", "::1", 8080, explicit=True)
    assert HostRule.parse("::1").host == "::1"
    assert not HostRule.parse("example.com").explicit
    assert not HostRule.parse("*.localhost").explicit


def test_a_written_default_port_is_kept() -> None:
    assert HostRule.parse("example.com:80").port == 80
    assert HostRule.parse("[::1]:80").port == 80
    assert HostRule.parse("http://example.com:80/x").port == 80
    assert HostRule.parse("https://example.com").port == 443
    assert HostRule.parse("example.com").port is None


@pytest.mark.parametrize(
    "entry",
    ["", "*", "ftp://example.com", "example.com/path", "a:b:c", "example.com:99999", "h:0"],
)
def test_bad_allow_list_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"spec.permissions.network.allowed: .* is not a host"):
        NetworkPolicy.for_agent(permissions([entry]))


def test_bad_private_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"allow_private: 'localhost' is not an address range"):
        NetworkPolicy.for_agent(permissions([], ["localhost"]))


async def test_no_network_block_allows_only_own_hosts() -> None:
    p = NetworkPolicy.for_agent(
        None,
        own_urls=["https://hooks.example.com/x"],
        resolver=FakeDns({"hooks.example.com": [PUBLIC]}),
    )
    assert (await p.check("https://hooks.example.com/other")).host == "hooks.example.com"
    with pytest.raises(ToolError, match=r"no network permissions") as info:
        await p.check("https://example.org/")
    assert "spec.permissions.network.allowed" in str(info.value.hint)


async def test_own_url_with_templated_host_is_not_allowed() -> None:
    p = NetworkPolicy.for_agent(
        None, own_urls=["https://{tenant}.example.com/x", "https://${HOST}/y"]
    )
    assert p.rules == ()
    with pytest.raises(ToolError, match=r"no network permissions"):
        await p.check("https://acme.example.com/x")


@pytest.mark.parametrize(
    "own", ["https://hooks.example.com?x={q}", "https://hooks.example.com#{f}", "hooks.example.com"]
)
async def test_own_url_with_a_placeholder_after_the_host_allows_its_host(own: str) -> None:
    p = NetworkPolicy.for_agent(
        None, own_urls=[own], resolver=FakeDns({"hooks.example.com": [PUBLIC]})
    )
    assert (await p.check("https://hooks.example.com/?x=1")).host == "hooks.example.com"


@pytest.mark.parametrize("port", ["99999", "65536", "0"])
async def test_a_port_out_of_range_is_a_tool_error(port: str) -> None:
    p = policy(["allowed.example"], dns={"allowed.example": [PUBLIC]})
    with pytest.raises(ToolError, match=rf"port {port} is not a valid port"):
        await p.check(f"http://allowed.example:{port}/")


async def test_own_loopback_url_is_still_refused() -> None:
    # The webhook's own host is allowed, but not its loopback address.
    p = NetworkPolicy.for_agent(None, own_urls=["http://127.0.0.1:9000/hook"])
    with pytest.raises(ToolError, match=r"127.0.0.1, a loopback address"):
        await p.check("http://127.0.0.1:9000/hook")


async def test_scheme_must_be_http() -> None:
    p = policy(["example.com"])
    for url in ("file:///etc/passwd", "gopher://example.com/", "ftp://example.com/"):
        with pytest.raises(ToolError, match=r"is not allowed"):
            await p.check(url)


async def test_unresolvable_host_is_a_tool_error() -> None:
    p = policy(["nowhere.example"])
    with pytest.raises(ToolError, match=r"cannot resolve 'nowhere.example'"):
        await p.check("https://nowhere.example/")


# --- addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("192.168.1.10", "a private address"),
        ("172.16.0.1", "a private address"),
        ("169.254.169.254", "the cloud metadata address"),
        ("169.254.10.1", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("100.64.0.1", "a non-public address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("ff02::1", "a multicast address"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped IPv6 address (of 127.0.0.1)"),
        ("::ffff:8.8.8.8", "an IPv4-mapped IPv6 address (of 8.8.8.8)"),
        ("2002:7f00:1::1", "embedding 127.0.0.1, a loopback address"),
        ("64:ff9b::a00:1", "embedding 10.0.0.1, a private address"),
    ],
)
def test_non_public_addresses(address: str, reason: str) -> None:
    found = classify(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", PUBLIC, "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
    ],
)
def test_ip_spellings(host: str, ip: str | None) -> None:
    parsed = parse_ip(host)
    assert parsed == (ipaddress.ip_address(ip) if ip else None)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1/", "127.0.0.1, a loopback address"),
        ("http://2130706433/", "127.0.0.1, a loopback address"),
        ("http://0x7f.1/", "127.0.0.1, a loopback address"),
        ("http://017700000001/", "127.0.0.1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "an IPv4-mapped IPv6 address"),
        ("http://[::1]:8080/", "::1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "the cloud metadata address"),
        ("http://10.0.0.1/", "10.0.0.1, a private address"),
        ("http://0.0.0.0/", "an unspecified address"),
    ],
)
async def test_internal_ip_urls_are_refused(url: str, shown: str) -> None:
    host = canonical_host(httpx.URL(url).host)
    p = policy([host])  # the host is listed: only the address check stands in the way
    if HostRule.parse(host).explicit:
        p = NetworkPolicy.for_agent(None, own_urls=[url])  # own host, not explicit
    with pytest.raises(ToolError, match=shown) as info:
        await p.check(url)
    assert "spec.permissions.network.allow_private" in str(info.value.hint)


async def test_refusal_message_names_origin_not_path_or_credentials() -> None:
    p = NetworkPolicy.for_agent(None, own_urls=["http://10.0.0.1/"])
    with pytest.raises(ToolError) as info:
        await p.check("http://user:s3cret@10.0.0.1/path?token=abc")
    message = str(info.value)
    assert message.startswith("http://10.0.0.1/ resolves to 10.0.0.1, a private address;")
    assert "s3cret" not in message and "token" not in message


async def test_every_resolved_address_is_checked() -> None:
    p = policy(["mixed.example"], dns={"mixed.example": [PUBLIC, "10.1.2.3"]})
    with pytest.raises(ToolError, match=r"resolves to 10.1.2.3, a private address"):
        await p.check("https://mixed.example/")


async def test_hostname_resolving_to_loopback_is_refused() -> None:
    p = policy(["internal.example"], dns={"internal.example": ["127.0.0.1"]})
    with pytest.raises(ToolError, match=r"https://internal.example/ resolves to 127.0.0.1"):
        await p.check("https://internal.example/")


async def test_allow_private_ranges() -> None:
    dns = {"internal.example": ["127.0.0.1", "::ffff:127.0.0.1"], "other.example": ["10.0.0.5"]}
    p = policy(["internal.example", "other.example"], ["127.0.0.0/8"], dns=dns)
    target = await p.check("http://internal.example:8000/")
    assert [str(a) for a in target.addresses] == ["127.0.0.1", "::ffff:7f00:1"]
    with pytest.raises(ToolError, match=r"10.0.0.5, a private address"):
        await p.check("http://other.example/")


async def test_explicit_ip_and_localhost_entries_may_be_private() -> None:
    p = policy(["127.0.0.1", "localhost:8080"], dns={"localhost": ["127.0.0.1", "::1"]})
    assert (await p.check("http://127.0.0.1:9/")).host == "127.0.0.1"
    assert (await p.check("http://2130706433/")).host == "127.0.0.1"  # same address
    assert len((await p.check("http://localhost:8080/")).addresses) == 2
    with pytest.raises(ToolError, match=r"on port 8081 is not in"):
        await p.check("http://localhost:8081/")


async def test_wildcard_entry_is_not_explicit() -> None:
    p = policy(["*.corp.example"], dns={"db.corp.example": ["10.0.0.7"]})
    with pytest.raises(ToolError, match=r"10.0.0.7, a private address"):
        await p.check("http://db.corp.example/")


# --- the pinned client ----------------------------------------------------------------


class Recorder:
    """Stands in for the connection pool: records what would go on the wire."""

    def __init__(self, responses: list[httpx.Response] | None = None) -> None:
        self.sent: list[Any] = []
        self.responses = responses or []

    async def handle(self, _transport: Any, request: Any) -> Any:
        self.sent.append(request)
        if self.responses:
            return self.responses.pop(0)
        if isinstance(request, httpx2.Request):
            return httpx2.Response(200, text="ok")
        return httpx.Response(200, text="ok")


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()

    async def handle(transport: Any, request: Any) -> Any:
        return await recorder.handle(transport, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle)
    monkeypatch.setattr(httpx2.AsyncHTTPTransport, "handle_async_request", handle)
    return recorder


async def test_client_connects_to_the_checked_address(wire: Recorder) -> None:
    p = policy(["api.example.com"], dns={"api.example.com": [PUBLIC]})
    async with p.client() as client:
        response = await client.get("https://api.example.com/v1/x?q=1")
    assert response.text == "ok"
    (sent,) = wire.sent
    assert str(sent.url) == f"https://{PUBLIC}/v1/x?q=1"
    assert sent.headers["host"] == "api.example.com"
    assert sent.extensions["sni_hostname"] == "api.example.com"


async def test_dns_rebinding_cannot_reach_an_internal_address(wire: Recorder) -> None:
    dns = FakeDns({"rebind.example": [PUBLIC]})
    p = NetworkPolicy.for_agent(permissions(["rebind.example"]), resolver=dns)
    async with p.client() as client:
        await client.get("http://rebind.example/")
        dns.table["rebind.example"] = ["127.0.0.1"]  # the attacker's DNS flips
        with pytest.raises(ToolError, match=r"resolves to 127.0.0.1, a loopback address"):
            await client.get("http://rebind.example/")
    assert [str(r.url) for r in wire.sent] == [f"http://{PUBLIC}/"]


async def test_each_redirect_hop_is_checked(wire: Recorder) -> None:
    dns = {"a.example": [PUBLIC], "b.example": ["8.8.8.8"]}
    p = policy(["a.example", "b.example"], dns=dns)
    wire.responses = [
        httpx.Response(302, headers={"location": "http://b.example/next"}),
        httpx.Response(200, text="landed"),
        httpx.Response(302, headers={"location": "http://169.254.169.254/latest"}),
    ]
    async with p.client() as client:
        assert (await client.get("http://a.example/")).text == "landed"
        with pytest.raises(ToolError, match=r"is not in spec.permissions.network.allowed"):
            await client.get("http://a.example/")
    assert [r.headers["host"] for r in wire.sent] == ["a.example", "b.example", "a.example"]


async def test_redirects_are_capped_at_five(wire: Recorder) -> None:
    p = policy(["a.example"], dns={"a.example": [PUBLIC]})
    wire.responses = [httpx.Response(302, headers={"location": "/again"}) for _ in range(10)]
    async with p.client(max_redirects=50) as client:
        with pytest.raises(httpx.TooManyRedirects):
            await client.get("http://a.example/")
    assert len(wire.sent) == 6


async def test_client_refuses_a_foreign_transport() -> None:
    with pytest.raises(TypeError, match=r"transport"):
        policy().client(transport=httpx.AsyncHTTPTransport())


async def test_mcp_client_factory_pins_too(wire: Recorder) -> None:
    p = policy(["mcp.example"], dns={"mcp.example": [PUBLIC]})
    factory = p.mcp_client_factory()
    async with factory(headers={"X-Key": "k"}) as client:
        assert isinstance(client, httpx2.AsyncClient)
        response = await client.post("https://mcp.example/mcp", json={"a": 1})
    assert response.status_code == 200
    (sent,) = wire.sent
    assert str(sent.url) == f"https://{PUBLIC}/mcp"
    assert sent.headers["host"] == "mcp.example" and sent.headers["x-key"] == "k"
    assert sent.extensions["sni_hostname"] == "mcp.example"
    with pytest.raises(ToolError, match=r"not in spec.permissions.network.allowed"):
        async with factory() as client:
            await client.get("https://elsewhere.example/")


class Trickle(httpx.AsyncByteStream):
    """A body that counts how much of it was read."""

    def __init__(self) -> None:
        self.read = 0
        self.closed = False

    async def __aiter__(self) -> Any:
        for _ in range(1000):
            self.read += 1000
            yield b"r" * 1000

    async def aclose(self) -> None:
        self.closed = True


async def test_client_asks_for_identity_and_never_reads_a_redirect_body(wire: Recorder) -> None:
    p = policy(["a.example"], dns={"a.example": [PUBLIC]})
    body = Trickle()
    wire.responses = [
        httpx.Response(302, headers={"location": "/next"}, stream=body),
        httpx.Response(200, text="landed"),
    ]
    async with p.client() as client:
        response = await client.get("http://a.example/", headers={"Accept-Encoding": "gzip"})
    assert response.text == "landed"
    assert body.read == 0 and body.closed  # httpx itself reads a 3xx body in full
    assert [r.headers.get_list("accept-encoding") for r in wire.sent] == [["identity"]] * 2
