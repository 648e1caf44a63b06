"""The ``capability_match`` strategy: candidates that lack what a request needs are
dropped (and recorded on the route), the others keep their declared order; YAML
``capabilities`` reach the router's candidates; the original whatsapp-assistant runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from astromesh_ray.core.build import build_models, build_runtime, check_buildable
from astromesh_ray.core.capabilities import request_needs, screen
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, Message, ToolCall, ToolSchema
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.router import Candidate, ModelRouter
from astromesh_ray.errors import ProviderError
from astromesh_ray.spec import AgentSpec, ModelEndpoint, ProviderEntrySpec
from astromesh_ray.testing import ScriptedProvider

ORIGINAL = Path(__file__).parents[1] / "spec" / "data" / "original"
TOOL = ToolSchema("lookup", "Look something up.", {"type": "object", "properties": {}})
PLAIN = CompletionRequest(messages=[Message("user", "hello")])
WITH_TOOLS = CompletionRequest(messages=[Message("user", "hello")], tools=[TOOL])
SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}}
STRUCTURED = CompletionRequest(messages=[Message("user", "hello")], response_schema=SCHEMA)


def cand(key: str, steps: list[object], caps: set[str] | None = None) -> Candidate:
    provider = ScriptedProvider(steps, name=key)  # type: ignore[arg-type]
    return Candidate(key, provider, capabilities=None if caps is None else frozenset(caps))


def down(name: str) -> ProviderError:
    # No HTTP status: the client's retries (of 429 and 5xx) leave it to the router.
    return ProviderError(f"{name}: down", provider=name, status=None, retryable=True)


def test_needs_come_from_tools_and_response_schema() -> None:
    assert request_needs(PLAIN) == ()
    assert request_needs(WITH_TOOLS) == ("tools",)
    both = CompletionRequest(PLAIN.messages, tools=[TOOL], response_schema=SCHEMA)
    assert request_needs(both) == ("tools", "json_schema")


async def test_tool_requests_skip_candidates_lacking_tools_and_record_them() -> None:
    vision = cand("llava", [], caps=set())
    json_only = cand("json", [], caps={"json_schema"})
    tools = cand("llama", ["from llama"], caps={"tools"})
    router = ModelRouter([vision, json_only, tools], strategy="capability_match")
    completion = await router.complete(WITH_TOOLS)
    assert completion.message.content == "from llama"
    assert [(s["candidate"], s["reason"], s["outcome"]) for s in completion.route] == [
        ("llava", "lacks tools", "dropped"),
        ("json", "lacks tools", "dropped"),
        ("llama", "has tools", "ok"),
    ]
    assert "breaker" not in completion.route[0]  # a dropped candidate is not admitted


async def test_fitting_candidates_keep_declared_order_and_fall_back() -> None:
    first = cand("first", [down("first")], caps={"tools", "json_schema"})
    unknown = cand("unknown", ["from unknown"])  # declares nothing: assumed to fit
    last = cand("last", [], caps={"tools"})
    router = ModelRouter([first, unknown, last], strategy="capability_match")
    assert [c.key for c, _ in router.order(WITH_TOOLS)] == ["first", "unknown", "last"]
    completion = await router.complete(WITH_TOOLS)
    assert completion.message.content == "from unknown"
    assert [(s["candidate"], s["reason"], s["outcome"]) for s in completion.route] == [
        ("first", "has tools", "failed: first: down"),
        ("unknown", "capabilities not declared: assumed to fit", "ok"),
    ]


async def test_a_request_without_needs_drops_nothing() -> None:
    router = ModelRouter(
        [cand("llava", ["seen"], caps=set()), cand("llama", [], caps={"tools"})],
        strategy="capability_match",
    )
    completion = await router.complete(PLAIN)
    assert completion.message.content == "seen"
    assert [(s["candidate"], s["reason"]) for s in completion.route] == [
        ("llava", "request needs no capability")
    ]


async def test_json_schema_orders_but_does_not_drop() -> None:
    """The engine validates structured answers and asks again, so a model that cannot
    constrain its decoding still serves: after those that can."""
    plain = cand("plain", ["{}"], caps={"tools"})
    constrained = cand("constrained", [down("constrained")], caps={"json_schema"})
    router = ModelRouter([plain, constrained], strategy="capability_match")
    assert [c.key for c, _ in router.order(STRUCTURED)] == ["constrained", "plain"]
    completion = await router.complete(STRUCTURED)
    assert completion.message.content == "{}"
    assert [(s["candidate"], s["reason"]) for s in completion.route] == [
        ("constrained", "has json_schema"),
        ("plain", "lacks json_schema: its answer is validated, not constrained"),
    ]


async def test_no_fitting_candidate_fails_naming_the_capability_without_calling() -> None:
    router = ModelRouter(
        [cand("llava", [], caps=set()), cand("json", [], caps={"json_schema"})],
        strategy="capability_match",
    )
    with pytest.raises(ProviderError) as info:
        await router.complete(WITH_TOOLS)
    error = info.value
    assert error.message == (
        "no model candidate supports tools, which this request needs (capability_match; "
        "declared: llava (no capabilities), json (json_schema))"
    )
    assert error.hint is not None and error.hint.startswith("add tools to the capabilities")
    assert error.details["missing"] == ["tools"]
    assert error.retryable is False
    assert [s["outcome"] for s in error.details["route"]] == ["dropped", "dropped"]
    # The scripted providers had no steps: a call would have failed the test.


async def test_streaming_drops_the_same_way() -> None:
    router = ModelRouter(
        [cand("llava", [], caps=set()), cand("llama", ["streamed answer"], caps={"tools"})],
        strategy="capability_match",
    )
    chunks = [chunk async for chunk in router.stream(WITH_TOOLS)]
    assert "".join(c.text for c in chunks) == "streamed answer"
    last = chunks[-1]
    assert [(s["candidate"], s["outcome"]) for s in last.route] == [
        ("llava", "dropped"),
        ("llama", "ok"),
    ]
    with pytest.raises(ProviderError, match="no model candidate supports tools"):
        only = ModelRouter([cand("llava", [], caps=set())], strategy="capability_match")
        async for _ in only.stream(WITH_TOOLS):
            pass


async def test_when_the_fitting_ones_fail_the_error_lists_the_dropped_too() -> None:
    router = ModelRouter(
        [cand("llava", [], caps=set()), cand("a", [down("a")]), cand("b", [down("b")])],
        strategy="capability_match",
    )
    with pytest.raises(ProviderError) as info:
        await router.complete(WITH_TOOLS)
    assert info.value.message == (
        "every model provider failed: a: down; b: down; "
        "dropped by capability_match: llava (lacks tools)"
    )
    assert info.value.retryable is True


async def test_without_fallback_only_the_first_fitting_candidate_is_called() -> None:
    router = ModelRouter(
        [cand("llava", [], caps=set()), cand("a", [down("a")]), cand("b", [])],
        strategy="capability_match",
        fallback=False,
    )
    with pytest.raises(ProviderError) as info:
        await router.complete(WITH_TOOLS)
    assert [s["candidate"] for s in info.value.details["route"]] == ["llava", "a"]


def test_screen_is_pure_and_keeps_every_candidate_once() -> None:
    candidates = [cand("x", [], caps=set()), cand("y", []), cand("z", [], caps={"tools"})]
    found = screen(candidates, WITH_TOOLS)
    assert [c.key for c, _ in found.kept] == ["y", "z"]
    assert [c.key for c, _ in found.dropped] == ["x"]
    assert found.needs == ("tools",)


# -- from YAML to the router's candidates ------------------------------------------


def agent_of(model: dict[str, Any], **spec: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "apiVersion": "astromesh/v1",
            "kind": "Agent",
            "metadata": {"name": "caps"},
            "spec": {"model": model, **spec},
        }
    )


def routers(agent: AgentSpec, providers: dict[str, ProviderEntrySpec], *roles: str) -> Any:
    return build_models(
        agent,
        providers,
        lambda ep: ScriptedProvider([], name=ep.model),
        roles=roles or ("reasoner",),
    )


def test_capabilities_flow_from_entries_and_blocks_to_candidates() -> None:
    providers = {
        "local": ProviderEntrySpec.model_validate(
            {"type": "ollama", "models": ["llama3.1:8b"], "capabilities": ["tools", "json_schema"]}
        )
    }
    agent = agent_of(
        {
            "default": {
                "strategy": "capability_match",
                "candidates": [
                    {"providerRef": "local"},  # the entry's list
                    {"providerRef": "local", "model": "llava:7b", "capabilities": []},  # replaced
                    {"provider": "ollama", "model": "qwen3:8b"},  # not declared
                ],
            }
        }
    )
    router = routers(agent, providers)["reasoner"]
    assert isinstance(router, ModelRouter) and router.strategy == "capability_match"
    assert [c.capabilities for c in router.candidates] == [
        frozenset({"tools", "json_schema"}),
        frozenset(),
        None,
    ]


def test_default_strategy_from_providers_yaml_applies() -> None:
    from astromesh_ray.spec.config import ProviderRoutingSpec

    agent = agent_of({"primary": {"provider": "ollama", "model": "m", "capabilities": ["tools"]}})
    models = build_models(
        agent,
        {},
        lambda ep: ScriptedProvider([], name=ep.model),
        roles=("reasoner",),
        routing=ProviderRoutingSpec(default_strategy="capability_match"),
    )
    router = models["reasoner"]
    assert isinstance(router, ModelRouter) and router.strategy == "capability_match"


def test_roles_with_the_same_endpoint_but_other_capabilities_get_their_own_router() -> None:
    block = {"provider": "ollama", "model": "m"}
    agent = agent_of(
        {
            "default": {"candidates": [block], "strategy": "capability_match"},
            "roles": {
                "planner": {"candidates": [{**block, "capabilities": []}]},
                "executor": {"candidates": [{**block, "capabilities": ["tools"]}]},
            },
        },
        orchestration={"pattern": "plan_and_execute"},
    )
    models = routers(agent, {}, "planner", "executor", "synthesizer")
    assert models["planner"] is not models["executor"]
    executor = models["executor"]
    assert isinstance(executor, ModelRouter)
    assert [c.capabilities for c in executor.candidates] == [frozenset({"tools"})]


# -- the original whatsapp-assistant ---------------------------------------------


def whatsapp(
    spec: dict[str, Any] | None = None, capabilities: tuple[list[str], list[str]] | None = None
) -> AgentSpec:
    """The upstream file as it is, plus ``spec`` keys and, given, the capabilities of
    its primary and fallback."""
    data = yaml.safe_load((ORIGINAL / "whatsapp-assistant.agent.yaml").read_text("utf-8"))
    data["spec"].update(spec or {})
    if capabilities is not None:
        model = data["spec"]["model"]
        model["primary"]["capabilities"], model["fallback"]["capabilities"] = capabilities
    agent = AgentSpec.model_validate(data)
    check_buildable([agent])
    return agent


async def run_turn(
    tmp_path: Path, agent: AgentSpec, scripts: dict[str, list[object]], query: str
) -> tuple[Any, dict[str, ScriptedProvider]]:
    clients: dict[str, ScriptedProvider] = {}

    def make_provider(endpoint: ModelEndpoint) -> Provider:
        assert endpoint.endpoint == "http://ollama:11434"
        clients[endpoint.model] = ScriptedProvider(scripts[endpoint.model], name=endpoint.model)  # type: ignore[arg-type]
        return clients[endpoint.model]

    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, make_provider=make_provider, memory=memory)
    try:
        return await runtime.run(RunRequest(query=query, session_id="s1")), clients
    finally:
        await runtime.aclose()
        await memory.aclose()


def routes(result: Any) -> list[list[tuple[str, str, str]]]:
    return [
        [(s["provider"], s["reason"], s["outcome"]) for s in span.attributes["route"]]
        for span in result.trace
        if span.name == "model_call"
    ]


async def test_whatsapp_assistant_runs_on_its_primary(tmp_path: Path) -> None:
    result, clients = await run_turn(
        tmp_path,
        whatsapp(),
        {"llava:7b": ["Hi! How can I help?"], "llama3.1:8b": []},
        "hello",
    )
    assert result.answer == "Hi! How can I help?"
    assert routes(result) == [[("llava:7b", "request needs no capability", "ok")]]
    assert clients["llama3.1:8b"].requests == []


async def test_whatsapp_assistant_falls_back_when_llava_fails(tmp_path: Path) -> None:
    result, _ = await run_turn(
        tmp_path,
        whatsapp(),
        {"llava:7b": [down("llava")], "llama3.1:8b": ["From the fallback."]},
        "hello",
    )
    assert result.answer == "From the fallback."
    assert [step[2] for step in routes(result)[0]] == ["failed: llava: down", "ok"]


async def test_whatsapp_assistant_with_tools_routes_tool_calls_to_the_tool_model(
    tmp_path: Path,
) -> None:
    """Declare that llava has no tools and llama3.1 has: with a tool the turn's calls
    (every one offers the tool) go to llama3.1, and the route says why."""
    agent = whatsapp(
        {
            "tools": [{"name": "calculator", "type": "builtin"}],
            "permissions": {"allowed_actions": ["calculator"]},
        },
        capabilities=([], ["tools"]),
    )
    call = ToolCall("c1", "calculator", {"expression": "6*7"})
    result, clients = await run_turn(
        tmp_path, agent, {"llava:7b": [], "llama3.1:8b": [call, "It is 42."]}, "what is 6*7?"
    )
    assert result.answer == "It is 42."
    assert (
        routes(result)
        == [[("llava:7b", "lacks tools", "dropped"), ("llama3.1:8b", "has tools", "ok")]] * 2
    )
    assert [len(r.tools) for r in clients["llama3.1:8b"].requests] == [1, 1]
    assert clients["llava:7b"].requests == []
