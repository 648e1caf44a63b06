"""``type: webhook``: HTTP endpoints as tools.

    - name: create_ticket
      type: webhook
      description: Open a support ticket.
      parameters:
        project: {type: string, required: true}
        title: {type: string, required: true}
      webhook:
        url: https://tickets.example.com/api/{project}/tickets
        method: POST
        headers: {Authorization: "Bearer ${TICKETS_TOKEN}"}
        timeout: 10
        retries: 2

``{arg}`` placeholders in the URL are filled from the call's arguments
(URL-encoded; each must be a declared parameter); ``${ENV_VAR}`` in the URL and the
headers is substituted when the agent is built (a variable that is not set is a
``ConfigError``).  The other arguments go in the query string of a GET and in a
JSON body otherwise.  Every request goes through the agent's ``NetworkPolicy``
(the webhook's own host is allowed; its addresses must still be public unless
``permissions.network.allow_private`` says otherwise).  Connect failures and
502/503/504 are retried with backoff when the method is idempotent (GET, PUT,
DELETE) or the YAML says ``idempotent: true``.  Secrets substituted from the
environment never reach the model: headers are not echoed, and their values are
replaced by ``${NAME}`` in results and errors.  A header value with a line break or
NUL (after substitution) is a ``ConfigError``.  Redirects are followed (at most 5,
each hop checked by the policy); one that leaves the webhook's origin (scheme, host,
port) is followed *without* the configured headers, so a redirect cannot carry the
webhook's credentials to another host.  A URL path segment filled from arguments may
not be ``.``, ``..`` or only dots (it would name another path).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import httpx

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.builders import limits_of
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.function import ToolLimits
from astromesh_ray.core.tools.http_common import (
    DEFAULT_TIMEOUT_S,
    RETRYABLE_STATUS,
    Redactor,
    connect_error,
    fetch,
    query_value,
    safe_decode,
    status_error,
)
from astromesh_ray.core.tools.net import NetworkPolicy
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.tools import WebhookToolSpec

IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
RETRY_BACKOFF_S = 0.25  # first retry; doubled each time, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 4.0

_TOKEN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Placeholder:
    """``{name}`` in a URL template: filled from argument ``name``."""

    name: str


def _env_value(var: str, environ: Mapping[str, str], tool: str, where: str) -> str:
    value = environ.get(var)
    if value is None:
        raise ConfigError(
            f"tool {tool!r}: webhook {where} uses ${{{var}}}, but {var} is not set",
            hint=f"set the environment variable {var} where the agent runs",
        )
    return value


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_header(tool: str, key: str, value: str) -> None:
    """A header that could not be sent (or would split the request) is refused when
    the agent is built; the message never shows the value (it may hold a secret)."""
    if not _HEADER_NAME.match(key):
        raise ConfigError(
            f"tool {tool!r}: webhook header name {key!r} is not a valid HTTP header name",
            hint="use letters, digits and - in header names",
        )
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(
            f"tool {tool!r}: webhook header {key!r} has a line break or NUL character "
            "in its value (after ${ENV} substitution)",
            hint="remove the line break (a trailing newline in the environment variable "
            "or the secret file, for instance)",
        )


@dataclass(frozen=True)
class UrlTemplate:
    """A webhook URL: literal text (environment already substituted) and
    placeholders.  ``shown`` is the template as written (``${VAR}`` kept), which is
    how errors name the webhook."""

    parts: tuple[str | Placeholder, ...]
    shown: str
    secrets: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def parse(template: str, environ: Mapping[str, str], tool: str) -> UrlTemplate:
        parts: list[str | Placeholder] = []
        secrets: dict[str, str] = {}
        position = 0
        for match in _TOKEN.finditer(template):
            parts.append(template[position : match.start()])
            env_var, argument = match.group(1), match.group(2)
            if env_var is not None:
                secrets[env_var] = _env_value(env_var, environ, tool, "url")
                parts.append(secrets[env_var])
            else:
                parts.append(Placeholder(argument))
            position = match.end()
        parts.append(template[position:])
        return UrlTemplate(tuple(p for p in parts if p != ""), template, secrets)

    @property
    def placeholders(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, Placeholder)]

    def skeleton(self) -> str:
        """The URL with the environment substituted and ``{name}`` left in place (the
        policy allows its host when the host is not templated)."""
        return "".join(p if isinstance(p, str) else "{" + p.name + "}" for p in self.parts)

    def render(self, arguments: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
        """The URL for a call.  A path segment that arguments fill must not come out
        as ``.``, ``..`` or only dots: the URL would be normalised to another path
        (``/api/{p}/echo`` with ``p=".."`` is ``/echo``)."""
        out = []
        in_path = True  # before the query or fragment (and the host is no segment)
        segment: list[str] = []
        filled: list[str] = []  # the arguments in the current segment
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                if in_path:
                    text = re.split(r"[?#]", part, maxsplit=1)
                    pieces = text[0].split("/")
                    for piece in pieces[:-1]:
                        segment.append(piece)
                        _check_segment(segment, filled)
                        segment, filled = [], []
                    segment.append(pieces[-1])
                    if len(text) > 1:
                        _check_segment(segment, filled)
                        in_path = False
                continue
            value = arguments.get(part.name, defaults.get(part.name))
            if value is None:
                raise ToolError(
                    f"argument {part.name!r} is required: it is part of the URL",
                    hint=f"call the tool again with {part.name}",
                )
            quoted = quote(query_value(value), safe="")
            out.append(quoted)
            if in_path:
                segment.append(quoted)
                filled.append(part.name)
        if in_path:
            _check_segment(segment, filled)
        return "".join(out)


def _check_segment(segment: list[str], filled: list[str]) -> None:
    text = unquote("".join(segment))
    if filled and text and not text.strip("."):
        names = ", ".join(repr(n) for n in filled)
        raise ToolError(
            f"argument {names} makes a URL path segment {text!r}: a path of only dots "
            "would lead to another path, and is not sent",
            hint="pass the name of the item itself",
        )


@dataclass(frozen=True)
class Webhook:
    """One ``type: webhook`` entry, ready to call."""

    name: str
    description: str
    parameters: dict[str, Any]
    url: UrlTemplate
    method: str
    headers: dict[str, str]
    timeout_s: float
    attempts: int
    max_response_bytes: int
    side_effects: bool
    limits: ToolLimits
    redact: Redactor

    @property
    def label(self) -> str:
        return f"webhook {self.name!r} ({self.method} {self.url.shown})"

    @staticmethod
    def from_spec(spec: WebhookToolSpec, environ: Mapping[str, str]) -> Webhook:
        hook = spec.webhook
        url = UrlTemplate.parse(hook.url, environ, spec.name)
        secrets = dict(url.secrets)
        headers: dict[str, str] = {}
        for key, value in hook.headers.items():
            for var in _ENV.findall(value):
                secrets[var] = _env_value(var, environ, spec.name, f"header {key!r}")
            headers[key] = _ENV.sub(lambda m: secrets[m.group(1)], value)
            _check_header(spec.name, key, headers[key])
        parameters = spec.json_schema() or {"type": "object", "properties": {}}
        declared = parameters.get("properties") or {}
        missing = [p for p in url.placeholders if p not in declared]
        if missing:
            raise ConfigError(
                f"tool {spec.name!r}: webhook url uses {', '.join('{' + m + '}' for m in missing)}"
                ", which is not a declared parameter",
                hint="declare each URL placeholder in parameters (or write ${VAR} for an "
                "environment variable)",
            )
        limits = limits_of(spec)
        retried = hook.idempotent or hook.method in IDEMPOTENT_METHODS
        return Webhook(
            name=spec.name,
            description=spec.description or f"Call {hook.method} {hook.url}.",
            parameters=parameters,
            url=url,
            method=hook.method,
            headers=headers,
            timeout_s=hook.timeout_s or DEFAULT_TIMEOUT_S,
            attempts=1 + (hook.retries if retried else 0),
            max_response_bytes=hook.max_response_bytes,
            side_effects=(
                limits.side_effects if limits.side_effects is not None else hook.method != "GET"
            ),
            limits=limits,
            redact=Redactor(secrets),
        )

    def defaults(self) -> dict[str, Any]:
        properties = self.parameters.get("properties") or {}
        return {
            name: prop["default"]
            for name, prop in properties.items()
            if isinstance(prop, dict) and "default" in prop
        }


class WebhookToolset:
    """An agent's webhooks, sharing one guarded HTTP client (made on first call,
    closed with the toolset)."""

    name = "webhooks"

    def __init__(
        self,
        hooks: Sequence[Webhook],
        policy: NetworkPolicy,
        *,
        backoff_s: float = RETRY_BACKOFF_S,
    ) -> None:
        self._hooks = {h.name: h for h in hooks}
        self._policy = policy
        self._backoff_s = backoff_s
        self._client: httpx.AsyncClient | None = None

    async def list_tools(self) -> Sequence[ToolDef]:
        return [
            ToolDef(
                schema=ToolSchema(name=h.name, description=h.description, parameters=h.parameters),
                validate=compile_validator(h.name, h.parameters),
                timeout_s=h.limits.timeout_s,
                max_result_chars=h.limits.max_result_chars,
                side_effects=h.side_effects,
            )
            for h in self._hooks.values()
        ]

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._policy.client()
        return self._client

    def _request(self, hook: Webhook, arguments: dict[str, Any], timeout_s: float) -> httpx.Request:
        url = hook.url.render(arguments, hook.defaults())
        rest = {
            k: v for k, v in arguments.items() if k not in hook.url.placeholders and v is not None
        }
        body: dict[str, Any] | None = None
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ToolError(hook.redact(f"{hook.label}: the URL is not valid: {exc}")) from None
        if hook.method == "GET":
            # Added to the template's own query string (httpx's params= would replace it).
            target = target.copy_merge_params(
                {
                    k: [query_value(i) for i in v] if isinstance(v, list) else query_value(v)
                    for k, v in rest.items()
                }
            )
        else:
            body = rest
        try:
            return self._http().build_request(
                hook.method, target, json=body, headers=hook.headers, timeout=timeout_s
            )
        except Exception as exc:  # e.g. a header value httpx cannot encode
            raise ToolError(
                hook.redact(f"{hook.label}: the request could not be made: {exc}")
            ) from None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        hook = self._hooks[name]
        error: ToolError | None = None
        tries = 0
        for attempt in range(hook.attempts):
            if attempt:
                delay = min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if ctx.remaining_s() <= delay:
                    break  # no time left for another try: report the last failure
                await asyncio.sleep(delay)
            timeout_s = max(min(hook.timeout_s, ctx.remaining_s()), 0.001)
            request = self._request(hook, arguments, timeout_s)
            tries += 1
            try:
                async with asyncio.timeout(timeout_s):
                    reply = await fetch(
                        self._http(),
                        request,
                        max_bytes=hook.max_response_bytes,
                        label=hook.label,
                        redact=hook.redact,
                        private_headers=hook.headers.keys(),
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = connect_error(hook.label, exc, hook.redact)
                continue
            except TimeoutError:
                raise ToolError(
                    f"{hook.label} timed out after {timeout_s:g} s",
                    hint="try again later, or raise the webhook's timeout in the YAML",
                ) from None
            if 200 <= reply.status < 300:
                return safe_decode(hook.label, reply, hook.redact)
            error = status_error(hook.label, reply, hook.redact)
            if reply.status not in RETRYABLE_STATUS:
                break
        assert error is not None
        if tries > 1:
            raise ToolError(
                f"{error.message} (after {tries} attempts)", hint=error.hint, **error.details
            )
        raise error

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def build_webhook_toolsets(specs: Sequence[Any], env: ToolEnv) -> list[Toolset]:
    """The agent's ``type: webhook`` tools as one ``WebhookToolset``; ``${ENV_VAR}``
    is read from this process's environment now."""
    hooks = []
    for spec in specs:
        assert isinstance(spec, WebhookToolSpec)
        hooks.append(Webhook.from_spec(spec, os.environ))
    policy = NetworkPolicy.for_agent(
        env.agent.spec.permissions, own_urls=[h.url.skeleton() for h in hooks]
    )
    return [WebhookToolset(hooks, policy)]
