"""Where network tools may connect: the host allow-list and the SSRF guard.

Webhooks, the ``http_request`` built-in and remote MCP servers reach the network
only through a ``NetworkPolicy`` built from ``spec.permissions.network``:

- the URL's host must match ``network.allowed`` (``example.com``,
  ``example.com:8443``, ``*.example.com`` for its subdomains, an IP, or a URL whose
  host and port are taken) or be the tool's own host (a webhook's or MCP server's
  URL in the YAML);
- the host is then resolved and *every* address it resolves to must be public:
  private, loopback, link-local, multicast, reserved and unspecified addresses,
  IPv4-mapped IPv6 and the cloud metadata address are refused, unless a range in
  ``network.allow_private`` contains them or the allowed entry that matched is
  itself an IP literal or ``localhost`` (the YAML named that host on purpose);
- the clients it makes (``client()``, ``mcp_client_factory()``) connect only to the
  addresses that were checked, for every request and every redirect hop: the
  request goes to the pinned IP while the Host header and TLS SNI/certificate check
  keep the hostname, so a DNS answer that changes between the check and the
  connection (DNS rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from astromesh_ray.errors import ConfigError, ToolError

if TYPE_CHECKING:
    from astromesh_ray.spec.agent import PermissionsSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses`` (strings, as ``getaddrinfo`` gives them)."""

ALLOWED_FIELD = "spec.permissions.network.allowed"
PRIVATE_FIELD = "spec.permissions.network.allow_private"
MAX_REDIRECTS = 5
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A host written as a number (2130706433), in hex or octal (0x7f.1, 0177.0.0.1) or
# with fewer parts (127.1): resolvers read it as an IPv4 address, and so do we.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.I)
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, reading the legacy IPv4 spellings resolvers accept
    (``2130706433``, ``0x7f.1``, ``127.1``); ``None`` for a hostname."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"a loopback address"``), or ``None``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
        embedded = ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None:  # 6to4 / NAT64: what is reached is the IPv4 inside
            inner = classify(embedded)
            return None if inner is None else f"an IPv6 address embedding {embedded}, {inner}"
    if ip in _METADATA:
        return "the cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


@dataclass(frozen=True, slots=True)
class HostRule:
    """One allowed host: ``host`` exactly (or its subdomains when ``wildcard``), on
    ``port`` (any port when ``None``).  ``explicit``: an IP literal or ``localhost``,
    which may be private (the YAML named it)."""

    written: str
    host: str
    port: int | None = None
    wildcard: bool = False
    explicit: bool = False
    source: str = ALLOWED_FIELD

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    @staticmethod
    def parse(entry: str, source: str = ALLOWED_FIELD) -> HostRule:
        """``example.com``, ``example.com:8443``, ``*.example.com``, an IP (``::1``,
        ``[::1]:8080``) or a URL (its host, and its port or the scheme's)."""
        text = entry.strip()
        wildcard = text.startswith("*.")
        if wildcard:
            text = text[2:]
        ip = parse_ip(text)
        if ip is not None and ":" in text and not text.startswith("["):
            host, port = canonical_host(text), None  # a bare IPv6 literal
        else:
            url_text = text if "://" in text else f"http://{text}"
            try:
                url = httpx.URL(url_text)
            except (httpx.InvalidURL, ValueError) as exc:
                raise _bad_entry(entry, source, str(exc)) from None
            if not url.host or "*" in url.host:
                raise _bad_entry(entry, source, "no host")
            if "://" in text and url.scheme not in DEFAULT_PORTS:
                raise _bad_entry(entry, source, f"scheme {url.scheme!r} is not http or https")
            host = canonical_host(url.raw_host.decode("ascii"))
            # A URL names its port (the scheme's by default); a bare host any port.
            # The port is read from the text: httpx drops a scheme's default port
            # (``example.com:80`` would otherwise allow every port).
            written = _written_port(text)
            if written is not None and not 1 <= written <= 65535:
                raise _bad_entry(entry, source, f"port {written} is not 1..65535")
            if "://" in text:
                port = written if written is not None else DEFAULT_PORTS[url.scheme]
            else:
                port = written
            if "://" not in text and (url.path not in ("", "/") or url.query):
                raise _bad_entry(entry, source, "a host has no path (write a URL with its scheme)")
        explicit = not wildcard and (parse_ip(host) is not None or host == "localhost")
        return HostRule(entry, host, port, wildcard, explicit, source)


def _bad_entry(entry: str, source: str, why: str) -> ConfigError:
    return ConfigError(
        f"{source}: {entry!r} is not a host ({why})",
        hint="write example.com, example.com:8443, *.example.com, an IP or a URL",
    )


_AUTHORITY_END = re.compile(r"[/?#]")


def _written_port(text: str) -> int | None:
    """The port written in ``host:port``, ``[v6]:port`` or ``scheme://host:port/...``
    (``None`` when none is written)."""
    authority = _AUTHORITY_END.split(text.split("://", 1)[-1], maxsplit=1)[0]
    authority = authority.rsplit("@", 1)[-1]
    if authority.startswith("["):
        rest = authority.partition("]")[2]
    else:
        rest = authority[authority.find(":") :] if ":" in authority else ""
    digits = rest[1:] if rest.startswith(":") else ""
    return int(digits) if digits.isdigit() else None


def _port_of(url: httpx.URL) -> int:
    return url.port if url.port is not None else DEFAULT_PORTS[url.scheme]


def canonical_host(host: str) -> str:
    """The form hosts are compared in: lower case, no trailing dot, IPs normalised."""
    ip = parse_ip(host)
    if ip is not None:
        return str(ip)
    return host.strip("[]").rstrip(".").lower()


def origin_of(url: httpx.URL) -> str:
    """``scheme://host[:port]/``: how errors name a URL (paths and queries may carry
    secrets, user info always does)."""
    netloc = url.netloc.decode("ascii", "replace").rsplit("@", 1)[-1]
    return f"{url.scheme}://{netloc}/"


@dataclass(frozen=True, slots=True)
class CheckedTarget:
    """A URL that passed the policy, with the addresses it may be reached at."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]
    rule: HostRule


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The system's resolver, off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class NetworkPolicy:
    """The hosts an agent's network tools may reach (see the module docstring)."""

    rules: tuple[HostRule, ...]
    allow_private: tuple[IPNetwork, ...] = ()
    configured: bool = False  # the agent has a permissions.network block
    resolver: Resolver = field(default=system_resolver, compare=False)

    @staticmethod
    def for_agent(
        permissions: PermissionsSpec | None,
        *,
        own_urls: Sequence[str] = (),
        resolver: Resolver = system_resolver,
    ) -> NetworkPolicy:
        """The policy of an agent's ``permissions``, plus each ``own_urls`` host (a
        webhook's or MCP server's URL from YAML, when its host is not templated)."""
        network = permissions.network if permissions is not None else None
        rules: list[HostRule] = []
        networks: list[IPNetwork] = []
        if network is not None:
            rules.extend(HostRule.parse(entry) for entry in network.allowed)
            for cidr in network.allow_private:
                try:
                    networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
                except ValueError:
                    raise ConfigError(
                        f"{PRIVATE_FIELD}: {cidr!r} is not an address range",
                        hint="write a CIDR range such as 127.0.0.1/32 or 10.0.0.0/8",
                    ) from None
        for url in own_urls:
            scheme, sep, rest = url.partition("://")
            # The host part ends at the path, the query or the fragment: a
            # placeholder after it (``https://h?x={q}``) leaves the host as written.
            head = _AUTHORITY_END.split(rest if sep else url, maxsplit=1)[0]
            if _PLACEHOLDER.search(head) or "${" in head:
                continue
            # The tool's own host; its addresses are still checked like any other.
            rule = HostRule.parse(
                f"{scheme}://{head}" if sep else head, source="the tool's own URL"
            )
            rules.append(HostRule(rule.written, rule.host, rule.port, source=rule.source))
        return NetworkPolicy(tuple(rules), tuple(networks), network is not None, resolver)

    def _rule_for(self, host: str, port: int) -> HostRule | None:
        return next((r for r in self.rules if r.matches(host, port)), None)

    def _private_ok(self, ip: IPAddress) -> bool:
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        return any(form in net for form in forms for net in self.allow_private)

    async def check(self, url: str | httpx.URL) -> CheckedTarget:
        """``url`` if it may be fetched, with the addresses to connect to; else a
        ``ToolError`` saying why (the model reads it) and what the YAML could allow."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ToolError(f"not a valid URL: {exc}") from None
        if parsed.scheme not in DEFAULT_PORTS:
            raise ToolError(
                f"URL scheme {parsed.scheme!r} is not allowed", hint="use an http or https URL"
            )
        if not parsed.host:
            raise ToolError("the URL has no host")
        origin = origin_of(parsed)
        host = canonical_host(parsed.raw_host.decode("ascii"))
        port = _port_of(parsed)
        if not 1 <= port <= 65535:
            raise ToolError(f"{origin}: port {port} is not a valid port (1..65535)")
        rule = self._rule_for(host, port)
        if rule is None:
            raise self._not_allowed(origin, host, port)
        ip = parse_ip(host)
        addresses = [ip] if ip is not None else await self._resolve(origin, host, port)
        for address in addresses:
            reason = classify(address)
            if reason is None or rule.explicit or self._private_ok(address):
                continue
            raise ToolError(
                f"{origin} resolves to {address}, {reason}; private, loopback, link-local "
                "and other non-public addresses are refused",
                hint=f"if the agent must reach it, add a range containing {address} "
                f"(e.g. {address}/{address.max_prefixlen}) to {PRIVATE_FIELD}",
                host=host,
            )
        return CheckedTarget(parsed, host, port, tuple(addresses), rule)

    def _not_allowed(self, origin: str, host: str, port: int) -> ToolError:
        if not self.configured:
            return ToolError(
                f"{origin}: host {host!r} is not allowed: this agent has no network permissions",
                hint=f"list the hosts the agent may reach in {ALLOWED_FIELD}",
                host=host,
            )
        same_host = [r.written for r in self.rules if r.matches(host, r.port or port)]
        detail = f" (it lists {', '.join(same_host)})" if same_host else ""
        return ToolError(
            f"{origin}: host {host!r} on port {port} is not in {ALLOWED_FIELD}{detail}",
            hint=f"add {host} to {ALLOWED_FIELD} if the agent may reach it",
            host=host,
        )

    async def _resolve(self, origin: str, host: str, port: int) -> list[IPAddress]:
        try:
            found = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise ToolError(f"{origin}: cannot resolve {host!r}: {exc}", host=host) from None
        addresses: list[IPAddress] = []
        for text in found:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ToolError(f"{origin}: {host!r} resolves to no address", host=host)
        return addresses

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose every request (and redirect hop, at most
        five) is checked and sent to a checked address.  ``verify``, ``cert``,
        ``http1``, ``http2`` and ``limits`` configure its connections; other keyword
        arguments go to ``httpx.AsyncClient``."""
        transport = GuardedTransport(self, **_pop_transport_kwargs(kwargs))
        kwargs.setdefault("follow_redirects", True)
        kwargs["max_redirects"] = min(
            int(kwargs.get("max_redirects", MAX_REDIRECTS)), MAX_REDIRECTS
        )
        return httpx.AsyncClient(transport=transport, **kwargs)

    def mcp_client_factory(self) -> Callable[..., Any]:
        """A factory for the ``mcp`` SDK's ``httpx_client_factory`` parameter (its
        ``McpHttpClientFactory``): ``(headers=None, timeout=None, auth=None) ->
        httpx2.AsyncClient`` (the SDK speaks ``httpx2``), with the same checks and
        pinning as ``client()``.  Like the SDK's own factory it leaves redirects to
        the SDK (which follows them within the server's origin), each hop checked."""
        import httpx2

        policy = self

        class Guarded2(httpx2.AsyncBaseTransport):
            def __init__(self) -> None:
                self._pinner = _Pinner(policy, httpx2, {})

            async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
                response: httpx2.Response = await self._pinner.send(request)
                return response

            async def aclose(self) -> None:
                await self._pinner.aclose()

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            if timeout is None:  # the SDK's defaults: SSE streams stay open
                timeout = httpx2.Timeout(30.0, read=300.0)
            return httpx2.AsyncClient(
                headers=headers, timeout=timeout, auth=auth, transport=Guarded2()
            )

        return factory


class _Pinner:
    """Sends each request to an address its policy checked, for ``httpx`` or
    ``httpx2`` (the same API): one connection pool per (scheme, host, port), so a
    TLS connection made for one hostname is never reused for another."""

    def __init__(self, policy: NetworkPolicy, http: Any, transport_kwargs: dict[str, Any]):
        self._policy = policy
        self._http = http
        self._kwargs = transport_kwargs
        self._pools: dict[tuple[str, str, int], Any] = {}

    async def send(self, request: Any) -> Any:
        target = await self._policy.check(str(request.url))
        key = (target.url.scheme, target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self._http.AsyncHTTPTransport(**self._kwargs)
        extensions = dict(request.extensions)
        if target.url.scheme == "https" and parse_ip(target.host) is None:
            # TLS still names (and verifies the certificate of) the hostname.
            extensions["sni_hostname"] = target.host
        headers = request.headers.copy()  # keeps the Host header of the hostname
        # No compressed bodies: what is read is what the size caps count.
        headers["Accept-Encoding"] = "identity"
        error: Exception | None = None
        for address in target.addresses:
            pinned = self._http.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                response = await pool.handle_async_request(pinned)
            except self._http.ConnectError as exc:  # the next checked address, if any
                error = exc
                continue
            return await self._unread_redirect(response)
        assert error is not None
        raise error

    async def _unread_redirect(self, response: Any) -> Any:
        """A redirect's body is never read: ``httpx`` reads it in full, without any
        cap, before it follows the redirect.  The body is dropped unread."""
        if response.status_code not in REDIRECT_STATUS or "location" not in response.headers:
            return response
        await response.aclose()
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        return self._http.Response(
            response.status_code, headers=headers, extensions=dict(response.extensions)
        )

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """The transport of ``NetworkPolicy.client()`` (see ``_Pinner``)."""

    def __init__(self, policy: NetworkPolicy, **transport_kwargs: Any) -> None:
        self._pinner = _Pinner(policy, httpx, transport_kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await self._pinner.send(request)
        return response

    async def aclose(self) -> None:
        await self._pinner.aclose()


def _pop_transport_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    for forbidden in ("transport", "mounts", "proxy", "app"):
        if forbidden in kwargs:
            raise TypeError(f"NetworkPolicy clients choose their own transport ({forbidden}=)")
    keys = ("verify", "cert", "http1", "http2", "limits")
    return {k: kwargs.pop(k) for k in keys if k in kwargs}
