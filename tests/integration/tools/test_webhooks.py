"""Webhook tools against a real loopback HTTP server (allowed explicitly by the
test agents' permissions), the SSRF guard with the default permissions, an agent
turn through build_runtime, and one through Serve over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import ANONYMOUS, RunRequest
from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.tools.base import ToolContext, Toolset
from astromesh_ray.core.tools.builders import build_toolsets
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import AgentSpec, load_agent, load_config
from astromesh_ray.testing import ScriptedOpenAIServer, ScriptedProvider

from ..conftest import free_port
from .hook_server import HookServer

LOOPBACK = {"network": {"allow_private": ["127.0.0.1/32"]}}


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server


def agent_yaml(tools: list[dict[str, Any]], permissions: dict[str, Any] | None) -> str:
    spec: dict[str, Any] = {
        "model": {"primary": {"provider": "ollama", "model": "m"}},
        "orchestration": {"pattern": "react", "max_iterations": 4, "timeout_seconds": 30},
        "tools": tools,
    }
    if permissions is not None:
        spec["permissions"] = permissions
    doc = {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "hooked"}}
    return yaml.safe_dump({**doc, "spec": spec}, sort_keys=False)


def load(tmp_path: Path, tools: list[dict[str, Any]], permissions: Any = LOOPBACK) -> AgentSpec:
    path = tmp_path / "hooked.agent.yaml"
    path.write_text(agent_yaml(tools, permissions))
    return load_agent(path)


def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    params = extra.pop("parameters", None)
    entry: dict[str, Any] = {"name": name, "type": "webhook", "webhook": {"url": url, **extra}}
    if params is not None:
        entry["parameters"] = params
    return entry


async def toolset(spec: AgentSpec) -> Toolset:
    (built,) = build_toolsets(ToolEnv(spec, services=local_tool_services()))
    await built.list_tools()
    return built


def context() -> ToolContext:
    return ToolContext(
        run_id="run-1",
        agent="hooked",
        session_id=None,
        caller=ANONYMOUS,
        deadline=asyncio.get_running_loop().time() + 30,
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        lineage=(),
    )


async def call(spec: AgentSpec, name: str, arguments: dict[str, Any]) -> Any:
    """Validate ``arguments`` as the tool step does, then call tool ``name``."""
    (tools,) = build_toolsets(ToolEnv(spec, services=local_tool_services()))
    (tool,) = [t for t in await tools.list_tools() if t.name == name]
    try:
        return await tools.call(name, tool.validate(arguments), context())
    finally:
        await tools.aclose()


# --- requests ------------------------------------------------------------------------


async def test_get_sends_arguments_as_query_and_fills_the_url(
    tmp_path: Path, hooks: HookServer
) -> None:
    params = {
        "user": {"type": "string", "required": True},
        "q": {"type": "string"},
        "limit": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": "boolean"},
    }
    spec = load(
        tmp_path,
        [
            webhook(
                "find", hooks.url + "/echo/users/{user}/items?v=1", method="GET", parameters=params
            )
        ],
    )
    result = await call(
        spec, "find", {"user": "a b/c", "q": "x", "limit": 3, "tags": ["p", "q"], "exact": True}
    )
    seen = result.data
    assert seen["method"] == "GET"
    assert seen["raw_path"] == "/echo/users/a%20b%2Fc/items"
    assert seen["query"] == [
        ["v", "1"],
        ["q", "x"],
        ["limit", "3"],
        ["tags", "p"],
        ["tags", "q"],
        ["exact", "true"],
    ]
    assert seen["body"] == ""
    # JSON responses reach the model as compact JSON text.
    assert result.content.startswith('{"method":"GET","path":"/echo/users/a b/c/items"')


async def test_post_sends_a_json_body(tmp_path: Path, hooks: HookServer) -> None:
    params = {"title": {"type": "string"}, "count": {"type": "integer"}, "meta": {"type": "object"}}
    spec = load(tmp_path, [webhook("create", hooks.url + "/echo/orders", parameters=params)])
    args = {"title": "Lamp", "count": 2, "meta": {"color": "red"}}
    seen = (await call(spec, "create", args)).data
    assert seen["method"] == "POST"
    assert seen["headers"]["content-type"] == "application/json"
    assert yaml.safe_load(seen["body"]) == args


async def test_environment_in_url_and_headers_and_secrets_stay_hidden(
    tmp_path: Path, hooks: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_BASE", hooks.url)
    monkeypatch.setenv("HOOK_TOKEN", "tok-0123456789-secret")
    spec = load(
        tmp_path,
        [
            webhook(
                "whoami",
                "${HOOK_BASE}/echo/me",
                method="GET",
                headers={"Authorization": "Bearer ${HOOK_TOKEN}", "X-Team": "blue"},
            )
        ],
    )
    result = await call(spec, "whoami", {})
    server_saw = hooks.requests[-1]["headers"]
    assert server_saw["authorization"] == "Bearer tok-0123456789-secret"
    assert server_saw["x-team"] == "blue"
    # The endpoint echoed the token back: the model reads the variable's name instead.
    assert "tok-0123456789-secret" not in result.content
    assert result.data["headers"]["authorization"] == "Bearer ${HOOK_TOKEN}"


def test_a_missing_environment_variable_is_a_config_error(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        [webhook("t", "https://api.example.com/x", headers={"X-Key": "${NOT_SET_ANYWHERE}"})],
    )
    with pytest.raises(
        ConfigError, match=r"\$\{NOT_SET_ANYWHERE\}, but NOT_SET_ANYWHERE is not set"
    ):
        build_toolsets(ToolEnv(spec, services=local_tool_services()))


def test_url_placeholders_must_be_declared_parameters(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        [
            webhook(
                "t", "https://api.example.com/{org}/{repo}", parameters={"org": {"type": "string"}}
            )
        ],
    )
    with pytest.raises(ConfigError, match=r"uses \{repo\}, which is not a declared parameter"):
        build_toolsets(ToolEnv(spec, services=local_tool_services()))


async def test_side_effects_follow_the_method(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        [
            webhook("look", "https://api.example.com/a", method="GET"),
            webhook("make", "https://api.example.com/b", method="POST"),
            {**webhook("safe", "https://api.example.com/c", method="POST"), "side_effects": False},
        ],
    )
    tools = {t.name: t for t in await (await toolset(spec)).list_tools()}
    assert not tools["look"].side_effects and tools["make"].side_effects
    assert not tools["safe"].side_effects


# --- failures ------------------------------------------------------------------------


async def test_retries_after_503(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(tmp_path, [webhook("get", hooks.url + "/flaky/a?fail=2", method="GET", retries=2)])
    result = await call(spec, "get", {})
    assert result.data == {"ok": True, "calls": 3}
    assert hooks.count("/flaky/a") == 3


async def test_retries_give_up_with_the_last_status(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(tmp_path, [webhook("get", hooks.url + "/flaky/b?fail=9", method="GET", retries=1)])
    with pytest.raises(
        ToolError, match=r"returned HTTP 503 Service Unavailable: try later \(after 2 attempts\)"
    ):
        await call(spec, "get", {})
    assert hooks.count("/flaky/b") == 2


async def test_post_is_retried_only_when_idempotent(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(
        tmp_path,
        [
            webhook("once", hooks.url + "/flaky/c?fail=1", retries=3),
            webhook("again", hooks.url + "/flaky/d?fail=1", retries=3, idempotent=True),
        ],
    )
    with pytest.raises(ToolError, match="HTTP 503"):
        await call(spec, "once", {})
    assert hooks.count("/flaky/c") == 1
    assert (await call(spec, "again", {})).data["ok"] is True
    assert hooks.count("/flaky/d") == 2


async def test_connect_failures_are_retried(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing-listens"
    spec = load(tmp_path, [webhook("down", url, method="GET", retries=2)])
    with pytest.raises(ToolError, match=r"could not connect \(ConnectError.*\(after 3 attempts\)"):
        await call(spec, "down", {})


@pytest.mark.parametrize("chunked", [False, True])
async def test_response_size_cap(tmp_path: Path, hooks: HookServer, chunked: bool) -> None:
    url = hooks.url + "/big?size=50000" + ("&chunked=1" if chunked else "")
    spec = load(tmp_path, [webhook("big", url, method="GET", max_response_bytes=10000)])
    with pytest.raises(ToolError, match="larger than 10000 bytes"):
        await call(spec, "big", {})
    fits = load(tmp_path, [webhook("big", url, method="GET", max_response_bytes=60000)])
    assert len((await call(fits, "big", {})).content) == 50000


async def test_timeout(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(tmp_path, [webhook("slow", hooks.url + "/slow?s=5", method="GET", timeout=0.5)])
    with pytest.raises(ToolError, match="timed out"):
        await call(spec, "slow", {})


async def test_non_2xx_is_a_tool_error_with_an_excerpt(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(tmp_path, [webhook("gone", hooks.url + "/missing", method="GET", retries=3)])
    with pytest.raises(ToolError) as info:
        await call(spec, "gone", {})
    assert str(info.value.message) == (
        f"webhook 'gone' (GET {hooks.url}/missing) returned HTTP 404 Not Found: no such thing here"
    )
    assert info.value.details["status"] == 404
    assert hooks.count("/missing") == 1  # a 404 is not retried


async def test_decoding_by_content_type(tmp_path: Path, hooks: HookServer) -> None:
    spec = load(
        tmp_path,
        [
            webhook("text", hooks.url + "/text", method="GET"),
            webhook("image", hooks.url + "/binary", method="GET"),
        ],
    )
    assert (await call(spec, "text", {})).content == "plain words"
    assert (await call(spec, "image", {})).content == "[binary image/png, 100 bytes]"


# --- the SSRF guard with the default permissions ---------------------------------------


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1:{port}", "127.0.0.1, a loopback address"),
        ("169.254.169.254", "169.254.169.254, the cloud metadata address"),
        ("10.0.0.1", "10.0.0.1, a private address"),
        ("localhost:{port}", "127.0.0.1, a loopback address"),
        ("intranet.example:{port}", "127.0.0.1, a loopback address"),
    ],
)
async def test_default_permissions_refuse_internal_addresses(
    tmp_path: Path, hooks: HookServer, monkeypatch: pytest.MonkeyPatch, host: str, shown: str
) -> None:
    real = socket.getaddrinfo

    def resolve(name: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if name == "intranet.example" else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    before = len(hooks.requests)
    url = f"http://{host.format(port=hooks.port)}/echo/x"
    spec = load(tmp_path, [webhook("peek", url, method="GET")], permissions=None)
    with pytest.raises(ToolError, match=shown) as info:
        await call(spec, "peek", {})
    assert "allow_private" in str(info.value.hint)
    assert len(hooks.requests) == before  # nothing reached the server


async def test_a_redirect_to_the_metadata_address_is_refused(
    tmp_path: Path, hooks: HookServer
) -> None:
    url = hooks.url + "/redirect?to=http://169.254.169.254/latest/meta-data/"
    spec = load(tmp_path, [webhook("hop", url, method="GET")])
    with pytest.raises(ToolError, match=r"is not in spec.permissions.network.allowed"):
        await call(spec, "hop", {})


# --- agent turns -----------------------------------------------------------------------


async def test_agent_turn_calls_the_webhook(tmp_path: Path, hooks: HookServer) -> None:
    params = {"sku": {"type": "string", "required": True}}
    spec = load(
        tmp_path,
        [webhook("stock", hooks.url + "/echo/stock/{sku}", method="GET", parameters=params)],
    )

    def answer(request: CompletionRequest) -> str:
        tool_message = request.messages[-1]
        assert tool_message.role == "tool" and '"path":"/echo/stock/LAMP-1"' in (
            tool_message.content or ""
        )
        return "In stock."

    provider = ScriptedProvider([ToolCall("c1", "stock", {"sku": "LAMP-1"}), answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        result = await runtime.run(RunRequest(query="Is LAMP-1 in stock?"))
    finally:
        await runtime.aclose()
    assert result.answer == "In stock."
    (step,) = [s for s in result.steps if isinstance(s, ToolStep)]
    assert step.tool == "stock" and not step.is_error
    provider.assert_consumed()


async def test_model_reads_the_ssrf_refusal_as_a_tool_error(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        [webhook("meta", "http://169.254.169.254/latest/meta-data/", method="GET")],
        permissions=None,
    )

    def answer(request: CompletionRequest) -> str:
        assert "the cloud metadata address" in (request.messages[-1].content or "")
        return "I cannot reach that."

    provider = ScriptedProvider([ToolCall("c1", "meta", {}), answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        result = await runtime.run(RunRequest(query="Read the instance metadata."))
    finally:
        await runtime.aclose()
    (step,) = [s for s in result.steps if isinstance(s, ToolStep)]
    assert step.is_error and "169.254.169.254" in step.result
    assert result.answer == "I cannot reach that."


SERVE_AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: hooked}}
spec:
  model:
    primary: {{provider: openai_compat, model: scripted-model, endpoint: "{endpoint}"}}
  orchestration: {{pattern: react, max_iterations: 3, timeout_seconds: 30}}
  tools:
    - name: stock
      type: webhook
      description: Stock of an item.
      parameters: {{sku: {{type: string, required: true}}}}
      webhook: {{url: "{hooks}/echo/stock/{{sku}}", method: GET, timeout: 5}}
  permissions:
    network: {{allow_private: ["127.0.0.1/32"]}}
"""


def test_webhook_turn_through_serve(serve_url: str, hooks: HookServer, tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        agents = tmp_path / "agents"
        agents.mkdir()
        text = SERVE_AGENT.format(endpoint=llm.url, hooks=hooks.url)
        (agents / "hooked.agent.yaml").write_text(text)
        apps = deploy_apps(load_config(tmp_path), config_dir=tmp_path)
        try:
            llm.add_steps(
                {"tool_calls": [{"name": "stock", "arguments": {"sku": "LAMP-9"}}]}, "Yes."
            )
            reply = httpx.post(
                f"{serve_url}/v1/agents/hooked/run", json={"query": "LAMP-9?"}, timeout=60
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["answer"] == "Yes."
            step = body["steps"][0]
            assert step["tool"] == "stock" and not step["is_error"]
            assert '"path":"/echo/stock/LAMP-9"' in step["result"]
            assert llm.requests[-1]["messages"][-1]["content"] == step["result"]
        finally:
            for name in reversed(apps):
                serve.delete(name)


# --- security review fixes --------------------------------------------------------------


async def test_a_redirect_to_another_origin_drops_the_configured_headers(
    tmp_path: Path, hooks: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "key-0123456789-secret")
    headers = {"X-Api-Key": "${HOOK_KEY}", "Authorization": "Bearer ${HOOK_KEY}"}
    with HookServer() as other:
        permissions = {
            "network": {"allowed": [f"127.0.0.1:{other.port}"], "allow_private": ["127.0.0.1/32"]}
        }
        away = f"{hooks.url}/redirect?code=307&to={other.url}/echo/away"
        spec = load(
            tmp_path,
            [
                webhook("away", away, method="GET", headers=headers),
                webhook(
                    "home", f"{hooks.url}/redirect?to=/echo/home", method="GET", headers=headers
                ),
            ],
            permissions=permissions,
        )
        landed = await call(spec, "away", {})
        assert landed.data["path"] == "/echo/away"
        (seen,) = other.requests
        assert "x-api-key" not in seen["headers"] and "authorization" not in seen["headers"]
        assert seen["headers"]["host"] == f"127.0.0.1:{other.port}"
    # Within the webhook's origin they are kept.
    home = await call(spec, "home", {})
    assert home.data["path"] == "/echo/home"
    assert hooks.requests[-1]["headers"]["x-api-key"] == "key-0123456789-secret"


async def test_dot_segments_cannot_change_the_path(tmp_path: Path, hooks: HookServer) -> None:
    params = {"p": {"type": "string", "required": True}}
    spec = load(
        tmp_path,
        [webhook("item", hooks.url + "/echo/api/{p}/x", method="GET", parameters=params)],
    )
    before = len(hooks.requests)
    for value in ("..", ".", "...."):
        with pytest.raises(ToolError, match=r"argument 'p' makes a URL path segment"):
            await call(spec, "item", {"p": value})
    assert len(hooks.requests) == before
    got = await call(spec, "item", {"p": "a..b"})
    assert got.data["path"] == "/echo/api/a..b/x"


async def test_own_host_is_allowed_with_only_a_query_placeholder(
    tmp_path: Path, hooks: HookServer
) -> None:
    params = {"q": {"type": "string", "required": True}}
    spec = load(tmp_path, [webhook("find", hooks.url + "?x={q}", method="GET", parameters=params)])
    got = await call(spec, "find", {"q": "lamp"})
    assert got.data["path"] == "/" and got.data["query"] == [["x", "lamp"]]


def test_a_secret_with_a_trailing_newline_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "s3cr3t-token-value\n")
    spec = load(
        tmp_path,
        [
            webhook(
                "t", "https://api.example.com/x", headers={"Authorization": "Bearer ${HOOK_TOKEN}"}
            )
        ],
    )
    with pytest.raises(
        ConfigError, match=r"webhook header 'Authorization' has a line break"
    ) as info:
        build_toolsets(ToolEnv(spec, services=local_tool_services()))
    assert "s3cr3t" not in str(info.value)


async def test_transport_errors_are_tool_errors_without_secrets(
    tmp_path: Path, hooks: HookServer
) -> None:
    # A header value h11 refuses (it cannot come from the YAML any more: built by hand).
    from astromesh_ray.core.tools.http_common import Redactor
    from astromesh_ray.core.tools.net import NetworkPolicy
    from astromesh_ray.core.tools.webhook import Webhook, WebhookToolset
    from astromesh_ray.spec.tools import WebhookToolSpec

    spec = load(tmp_path, [webhook("bad", hooks.url + "/echo/x", method="GET")])
    (entry,) = spec.spec.tools
    assert isinstance(entry, WebhookToolSpec)
    hook = Webhook.from_spec(entry, {})
    secret = "s3cr3t-token-value\n"
    bad: Webhook = dataclasses.replace(
        hook, headers={"Authorization": f"Bearer {secret}"}, redact=Redactor({"TOKEN": secret})
    )
    policy = NetworkPolicy.for_agent(spec.spec.permissions, own_urls=[bad.url.skeleton()])
    tools = WebhookToolset([bad], policy)
    try:
        with pytest.raises(ToolError, match=r"failed: LocalProtocolError") as info:
            await tools.call("bad", {}, context())
    finally:
        await tools.aclose()
    assert "s3cr3t" not in str(info.value) and "${TOKEN}" in str(info.value)
