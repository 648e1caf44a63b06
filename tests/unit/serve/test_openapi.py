"""The gateway's OpenAPI document says what the gateway answers (``serve/openapi.py``).

- Every operation documents its error statuses, each with the ``Error`` body (or
  ``OpenAIError`` on the OpenAI-compatible routes); FastAPI's ``HTTPValidationError``
  is gone.  The statuses are the error classes' own.
- ``/health`` and the channel webhooks take no key; every other operation has
  ``bearerAuth``, 401 (with ``WWW-Authenticate``), 429 (with ``Retry-After``).
- The bodies the app's handlers really send validate against ``Error``; a 405 lists
  every method of its path; what the schema calls invalid, the body models refuse.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from astromesh_ray.errors import (
    AgentNotFound,
    BudgetExceeded,
    InvalidRequest,
    MemoryConflict,
    ProviderError,
    RunTimeout,
)
from astromesh_ray.serve.auth import RULES
from astromesh_ray.serve.gateway import api
from astromesh_ray.serve.http import (
    BodySizeLimit,
    ForkBody,
    RunBody,
    SearchBody,
    install_error_handlers,
)
from astromesh_ray.serve.openapi import ROUTES
from astromesh_ray.serve.protocols.openai_chat import openai_error
from astromesh_ray.serve.rag import RagSearchBody

DOCUMENT: dict[str, Any] = api.openapi()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]
IDS = [f"{m} {p}" for m, p, _ in OPERATIONS]
UNKEYED = {("GET", "/health"), ("GET", "/v1/channels/{channel}/webhook")}
UNKEYED.add(("POST", "/v1/channels/{channel}/webhook"))
OPENAI = {"/v1/models", "/v1/models/{model}", "/v1/chat/completions"}
# Routes that run the agent: its provider's 502, its application's 503, a timeout's 504.
RUNS = {
    "/v1/agents/{name}/run",
    "/v1/agents/{name}/stream",
    "/v1/agents/{name}/runs/{run_id}/tool_results",
    "/v1/agents/{name}/runs/{run_id}/approve",
    "/v1/agents/{name}/runs/{run_id}/reject",
    "/v1/agents/{name}/runs/{run_id}/retry",
    "/v1/agui/{name}",
    "/v1/chat/completions",
}


def _valid(instance: Any, name: str) -> bool:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


def _error_schema(response: dict[str, Any]) -> str:
    ref: str = response["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_every_route_of_the_app_is_in_the_tables() -> None:
    served = {(m, p) for m, p, _ in OPERATIONS}
    assert served == set(ROUTES)
    assert served <= set(RULES)  # the gate's table: no route falls back to admin


def test_fastapi_validation_error_is_replaced_by_the_envelope() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert "HTTPValidationError" not in str(DOCUMENT)


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=IDS)
def test_every_operation_documents_its_error_statuses(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    errors = {int(s): r for s, r in responses.items() if int(s) >= 400}
    expected = {500}
    if (method, path) not in UNKEYED:
        expected |= {401, 429}
    if method == "POST":
        expected.add(413)  # every body is read under the size limit
    if "{" in path:
        expected.add(404)  # the path names an agent, a channel, a pipeline, a trace
    if path in RUNS:
        expected |= {400, 422 if path not in OPENAI else 400, 502, 503, 504}
    if "requestBody" in operation and path not in OPENAI and path != "/a2a/{name}":
        expected.add(422)  # (JSON-RPC answers a bad body with an error object in a 200)
    assert expected <= set(errors), f"missing {sorted(expected - set(errors))}"
    schema = "OpenAIError" if path in OPENAI else "Error"
    assert {_error_schema(r) for r in errors.values()} == {schema}
    for response in errors.values():
        assert response["description"].startswith("`")  # names the codes behind it


def test_statuses_and_codes_come_from_the_error_classes() -> None:
    run = DOCUMENT["paths"]["/v1/agents/{name}/run"]["post"]["responses"]
    assert ProviderError.code in run[str(ProviderError.http_status)]["description"]
    assert RunTimeout.code in run[str(RunTimeout.http_status)]["description"]
    assert BudgetExceeded.code in run[str(BudgetExceeded.http_status)]["description"]
    assert "rate_limited" in run["429"]["description"]
    fork = DOCUMENT["paths"]["/v1/memory/{name}/sessions/{session_id}/fork"]["post"]
    assert MemoryConflict.code in fork["responses"]["409"]["description"]
    # The OpenAI routes answer an invalid request with 400 (openai_error), not 422.
    chat = DOCUMENT["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert openai_error(InvalidRequest("x"))[0] == 400
    assert InvalidRequest.code in chat["400"]["description"] and "422" not in chat
    model = DOCUMENT["paths"]["/v1/models/{model}"]["get"]["responses"]
    assert AgentNotFound.code in model["404"]["description"]


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=IDS)
def test_security_is_bearer_on_every_keyed_operation(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    if (method, path) in UNKEYED:
        assert "security" not in operation
        assert "WWW-Authenticate" not in str(operation)
        return
    assert operation["security"] == [{"bearerAuth": []}]
    challenge = operation["responses"]["401"]["headers"]["WWW-Authenticate"]
    assert challenge["required"] is True
    assert "Retry-After" in operation["responses"]["429"]["headers"]


def test_health_is_public_and_the_scheme_is_http_bearer() -> None:
    health = DOCUMENT["paths"]["/health"]["get"]
    assert "security" not in health and "401" not in health["responses"]
    assert "security" not in DOCUMENT  # no global requirement
    scheme = DOCUMENT["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_streams_and_self_read_bodies_are_documented() -> None:
    paths = DOCUMENT["paths"]
    assert list(paths["/v1/agents/{name}/stream"]["post"]["responses"]["200"]["content"]) == [
        "text/event-stream"
    ]
    run = paths["/v1/agents/{name}/run"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(run)
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]
    assert chat["required"] is True
    assert _valid({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "ChatRequest")
    assert not _valid({"model": "m", "messages": []}, "ChatRequest")
    assert _valid({"event": "token", "data": '{"text": "a"}'}, "ServerSentEvent")


def test_identifiers_the_routes_check_are_constrained() -> None:
    paused = DOCUMENT["paths"]["/v1/agents/{name}/runs/{run_id}"]["get"]["parameters"]
    run_id = next(p for p in paused if p["name"] == "run_id")
    assert run_id["schema"]["pattern"] == "^[0-9a-f]{32}$"
    episodes = DOCUMENT["paths"]["/v1/memory/{name}/episodes"]["get"]["parameters"]
    types = next(p for p in episodes if p["name"] == "type")["schema"]["anyOf"][0]
    assert "model_call" in types["items"]["enum"]
    # The episodes' run id filter is not checked by the route: no pattern is claimed.
    assert "pattern" not in str(next(p for p in episodes if p["name"] == "run_id"))


def _app() -> TestClient:
    app = FastAPI()
    app.add_middleware(BodySizeLimit, limit=100)
    install_error_handlers(app)

    @app.post("/run")
    async def run(body: RunBody) -> dict[str, Any]:
        return {"query": body.query}

    @app.get("/thing/{name}")
    async def get_thing(name: str) -> dict[str, Any]:
        raise AgentNotFound(f"no agent named {name!r}", hint="loaded agents: (none)")

    @app.delete("/thing/{name}")
    async def delete_thing(name: str) -> dict[str, Any]:
        return {}

    @app.get("/budget")
    async def budget() -> dict[str, Any]:
        raise BudgetExceeded("spent", cap="tokens", retry_after_s=30)

    return TestClient(app)


def test_the_bodies_the_app_sends_are_errors_of_the_schema() -> None:
    client = _app()
    json = {"content-type": "application/json"}
    answers = [
        (client.post("/run", content=b'{"query": "\x80"}', headers=json), 400),  # not UTF-8
        (client.post("/run", json={"query": ""}), 422),
        (client.post("/run", content=b"x" * 101), 413),
        (client.get("/thing/a"), 404),
        (client.get("/nowhere"), 404),
        (client.put("/thing/a"), 405),
        (client.get("/budget"), 429),
    ]
    for reply, status in answers:
        assert reply.status_code == status, reply.text
        assert _valid(reply.json(), "Error"), reply.json()
    assert _valid(openai_error(AgentNotFound("no agent", hint="h"))[1], "OpenAIError")
    assert not _valid({"detail": "Not Found"}, "Error")
    assert not _valid({"error": {"code": "x", "message": "m"}}, "Error")  # hint: always


def test_a_405_lists_every_method_of_the_path() -> None:
    reply = _app().put("/thing/a")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, DELETE"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (RunBody, {"query": "q", "stream": 1}),
        (RunBody, {"query": "q", "stream": "true"}),
        (RunBody, {"query": 5}),
        (SearchBody, {"query": "q", "threshold": False}),
        (SearchBody, {"query": "q", "k": True}),
        (SearchBody, {"query": "q", "k": "3"}),
        (SearchBody, {"query": "q", "k": 2.5}),
        (RagSearchBody, {"query": "q", "score_threshold": "0.5"}),
        (ForkBody, {"new_session_id": 7}),
    ],
)
def test_a_value_of_another_json_type_is_refused(model: type[Any], body: dict[str, Any]) -> None:
    # The OpenAPI schema calls these invalid; pydantic's lax mode would convert them.
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_numbers_the_schema_allows_are_accepted() -> None:
    assert SearchBody.model_validate({"query": "q", "k": 98.0, "threshold": 1}).k == 98
    assert RagSearchBody.model_validate({"query": "q", "top_k": 3.0}).top_k == 3
