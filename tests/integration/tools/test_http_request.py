"""The ``http_request`` built-in against a real loopback server: allowed hosts only,
the SSRF guard after DNS, shared size cap and decoding, config checks, dry runs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.tools.builders import build_toolsets
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec import AgentSpec
from astromesh_ray.testing import ScriptedProvider

from .hook_server import HookServer
from .test_webhooks import call, load, toolset


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server


@pytest.fixture
def intranet(monkeypatch: pytest.MonkeyPatch) -> None:
    """``intranet.example`` resolves to 127.0.0.1 (as an attacker's DNS would)."""
    real = socket.getaddrinfo

    def resolve(name: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if name == "intranet.example" else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


def agent(tmp_path: Path, network: dict[str, Any] | None, **config: Any) -> AgentSpec:
    entry: dict[str, Any] = {"name": "http_request", "type": "builtin"}
    if config:
        entry["config"] = config
    permissions = None if network is None else {"network": network}
    return load(tmp_path, [entry], permissions=permissions)


async def test_an_allowed_host_is_reached(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    got = await call(spec, "http_request", {"url": f"{hooks.url}/echo/a?x=1"})
    assert got.data["method"] == "GET" and got.data["query"] == [["x", "1"]]
    posted = await call(
        spec,
        "http_request",
        {
            "url": f"{hooks.url}/echo/b",
            "method": "POST",
            "headers": {"X-Trace": "t1"},
            "body": {"k": [1, 2]},
        },
    )
    assert posted.data["body"] == '{"k":[1,2]}'
    assert posted.data["headers"]["x-trace"] == "t1"
    raw = await call(
        spec, "http_request", {"url": f"{hooks.url}/echo/c", "method": "PUT", "body": "plain"}
    )
    assert raw.data["method"] == "PUT" and raw.data["body"] == "plain"


async def test_an_unlisted_host_is_refused(tmp_path: Path, hooks: HookServer) -> None:
    before = len(hooks.requests)
    spec = agent(tmp_path, {"allowed": ["api.example.com"], "allow_private": ["127.0.0.1/32"]})
    with pytest.raises(ToolError, match=r"host '127\.0\.0\.1' on port \d+ is not in"):
        await call(spec, "http_request", {"url": f"{hooks.url}/echo/x"})
    no_block = agent(tmp_path, None)
    with pytest.raises(ToolError, match="this agent has no network permissions") as info:
        await call(no_block, "http_request", {"url": f"{hooks.url}/echo/x"})
    assert "spec.permissions.network.allowed" in str(info.value.hint)
    assert len(hooks.requests) == before


@pytest.mark.usefixtures("intranet")
async def test_loopback_is_refused_without_allow_private(tmp_path: Path, hooks: HookServer) -> None:
    url = f"http://intranet.example:{hooks.port}/echo/in"
    spec = agent(tmp_path, {"allowed": ["intranet.example"]})
    with pytest.raises(ToolError, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        await call(spec, "http_request", {"url": url})
    allowed = agent(tmp_path, {"allowed": ["intranet.example"], "allow_private": ["127.0.0.1/32"]})
    got = await call(allowed, "http_request", {"url": url})
    assert got.data["headers"]["host"] == f"intranet.example:{hooks.port}"


async def test_the_model_cannot_set_the_host_header(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    with pytest.raises(ToolError, match="Host cannot be set"):
        await call(
            spec,
            "http_request",
            {"url": f"{hooks.url}/echo/x", "headers": {"Host": "admin.internal"}},
        )


async def test_config_caps_and_decoding(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]}, max_response_bytes=1000)
    with pytest.raises(ToolError, match="larger than 1000 bytes"):
        await call(spec, "http_request", {"url": f"{hooks.url}/big?size=5000&chunked=1"})
    image = await call(spec, "http_request", {"url": f"{hooks.url}/binary"})
    assert image.content == "[binary image/png, 100 bytes]"
    head = await call(spec, "http_request", {"url": f"{hooks.url}/text", "method": "HEAD"})
    assert head.data["status"] == 200 and head.data["content-type"].startswith("text/plain")
    with pytest.raises(ToolError, match=r"returned HTTP 404 Not Found: no such thing here"):
        await call(spec, "http_request", {"url": f"{hooks.url}/missing"})
    slow = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]}, timeout_seconds=0.5)
    with pytest.raises(ToolError, match="timed out"):
        await call(slow, "http_request", {"url": f"{hooks.url}/slow?s=5"})


def test_unknown_config_keys_are_named(tmp_path: Path) -> None:
    spec = agent(tmp_path, {"allowed": ["example.com"]}, timeout=3, retries=2)
    with pytest.raises(ConfigError, match="unknown config key 'retries'") as info:
        build_toolsets(ToolEnv(spec, services=local_tool_services()))
    assert "max_response_bytes" in str(info.value.hint)


async def test_side_effects_and_dry_run(tmp_path: Path, hooks: HookServer) -> None:
    network = {"allowed": [f"127.0.0.1:{hooks.port}"]}
    read_only = agent(tmp_path, network, methods=["GET"])
    (tool,) = await (await toolset(read_only)).list_tools()
    assert not tool.side_effects and tool.schema.parameters["properties"]["method"]["enum"] == [
        "GET"
    ]
    dry = load(
        tmp_path,
        [{"name": "http_request", "type": "builtin"}],
        permissions={"network": network, "execution": {"dry_run": True}},
    )
    before = len(hooks.requests)
    described = await call(dry, "http_request", {"url": f"{hooks.url}/echo/x", "method": "DELETE"})
    assert described.content.startswith("dry run: tool 'http_request' was not called")
    assert len(hooks.requests) == before
    # A GET changes nothing: a dry run makes it.
    fetched = await call(dry, "http_request", {"url": f"{hooks.url}/echo/x"})
    assert not fetched.content.startswith("dry run")
    assert len(hooks.requests) == before + 1


async def test_the_model_reads_a_refusal(tmp_path: Path) -> None:
    spec = agent(tmp_path, {"allowed": ["*.example.com"]})

    def answer(request: CompletionRequest) -> str:
        assert "is not in spec.permissions.network.allowed" in (request.messages[-1].content or "")
        return "That host is off limits."

    provider = ScriptedProvider(
        [ToolCall("c1", "http_request", {"url": "http://169.254.169.254/latest/"}), answer]
    )
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        result = await runtime.run(RunRequest(query="Fetch the metadata."))
    finally:
        await runtime.aclose()
    (step,) = [s for s in result.steps if isinstance(s, ToolStep)]
    assert step.is_error and result.answer == "That host is off limits."


# --- security review fixes --------------------------------------------------------------


async def test_identity_is_always_asked_for(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    got = await call(
        spec,
        "http_request",
        {"url": f"{hooks.url}/echo/enc", "headers": {"Accept-Encoding": "gzip, br, zstd"}},
    )
    assert got.data["headers"]["accept-encoding"] == "identity"


async def test_one_gzip_layer_is_decoded_under_the_cap(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]}, max_response_bytes=5000)
    got = await call(spec, "http_request", {"url": f"{hooks.url}/encoded?enc=gzip&size=4000"})
    assert got.content == "x" * 4000
    # ~60 bytes on the wire, 200 KB decoded: the cap counts the decoded bytes too.
    with pytest.raises(ToolError, match=r"larger than 5000 bytes"):
        await call(spec, "http_request", {"url": f"{hooks.url}/encoded?enc=gzip&size=200000"})


@pytest.mark.parametrize("enc", ["gzip,gzip", "deflate,gzip", "zstd"])
async def test_stacked_or_unknown_encodings_are_refused(
    tmp_path: Path, hooks: HookServer, enc: str
) -> None:
    if enc == "zstd":
        pytest.importorskip("zstandard")
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    with pytest.raises(ToolError, match=r"Content-Encoding .* which is not read"):
        await call(spec, "http_request", {"url": f"{hooks.url}/encoded?enc={enc}&size=200000"})


async def test_a_redirect_body_is_not_read(tmp_path: Path, hooks: HookServer) -> None:
    # The 302's body trickles for ~30 s: reading it first would run past the timeout.
    spec = agent(
        tmp_path,
        {"allowed": [f"127.0.0.1:{hooks.port}"]},
        max_response_bytes=5000,
        timeout_seconds=5,
    )
    url = f"{hooks.url}/redirect_drip?to=/echo/landed"
    got = await call(spec, "http_request", {"url": url})
    assert got.data["path"] == "/echo/landed"


async def test_a_port_out_of_range_is_a_tool_error(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": ["127.0.0.1"]})
    with pytest.raises(ToolError, match=r"port 99999 is not a valid port"):
        await call(spec, "http_request", {"url": "http://127.0.0.1:99999/"})


async def test_json_nested_too_deep_is_read_as_text(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    got = await call(spec, "http_request", {"url": f"{hooks.url}/deep?n=100000"})
    assert got.content.startswith("[[[[") and len(got.content) == 200000


async def test_a_header_with_a_line_break_is_refused(tmp_path: Path, hooks: HookServer) -> None:
    spec = agent(tmp_path, {"allowed": [f"127.0.0.1:{hooks.port}"]})
    before = len(hooks.requests)
    with pytest.raises(ToolError, match=r"header\(s\) 'X-A' contain a line break"):
        await call(
            spec,
            "http_request",
            {"url": f"{hooks.url}/echo/x", "headers": {"X-A": "v\r\nX-Injected: 1"}},
        )
    assert len(hooks.requests) == before
