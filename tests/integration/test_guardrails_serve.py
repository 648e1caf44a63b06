"""Guardrails on real Serve over HTTP, against a loopback OpenAI-compatible server
that records what it received.

- Under ``redact``, PII in the user's message never reaches the model server; PII in
  the model's answer never reaches the client: not in the JSON reply, not in the SSE
  stream nor the WebSocket's frames, also when the server streams it split over
  several chunks (a phone number, an IBAN and a card number are several words: the
  server sends one chunk per word).
- Budgets: concurrent requests spread over two replicas, with a session budget and
  an agent (per hour) budget kept by the one ledger actor: the tokens the model
  server actually spent never exceed a cap by more than one call's estimate; past
  a cap the reply is 429 naming the cap, what was spent and when it resets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve
from websockets.sync.client import connect

from astromesh_ray.testing import ScriptedOpenAIServer
from astromesh_ray.testing.scripted import count_words

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
IBAN = "GB82 WEST 1234 5698 7654 32"
CARD = "4111 1111 1111 1111"
SECRETS = (EMAIL, "7946 0958", "5698 7654", "1111 1111")

ANSWER = "All good here."
SESSION_CAP = 120
HOUR_CAP = 260


GUARDED = """\
  prompts: {system: "You help."}
  guardrails:
    input:
      - {type: pii_detection, action: redact}
    output:
      - {type: pii_detection, action: redact}
"""
BUDGETED = f"""\
  prompts: {{system: "You help."}}
  guardrails:
    output:
      - type: cost_limit
        max_tokens_per_session: {SESSION_CAP}
        max_tokens_per_hour: {HOUR_CAP}
  deployment: {{num_replicas: 2, max_ongoing_requests: 4}}
"""


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]]:
    with ScriptedOpenAIServer() as guarded, ScriptedOpenAIServer() as budgeted:
        yield guarded, budgeted


@pytest.fixture(scope="module")
def api(
    serve_url: str,
    models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("guardrails")
    (root / "agents").mkdir()
    (root / "agents" / "guarded.agent.yaml").write_text(
        agent_yaml("guarded", models[0].url, GUARDED, orchestration="")
    )
    (root / "agents" / "budgeted.agent.yaml").write_text(
        agent_yaml("budgeted", models[1].url, BUDGETED, orchestration="")
    )
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


def _sent(server: ScriptedOpenAIServer) -> str:
    return json.dumps(server.requests)


def test_pii_in_the_users_message_never_reaches_the_model(
    api: str, models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    llm = models[0]
    llm.add_steps("Thanks, noted.")
    reply = httpx.post(
        f"{api}/v1/agents/guarded/run",
        json={"query": f"I am {EMAIL}, phone {PHONE}, IBAN {IBAN}, card {CARD}."},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    sent = _sent(llm)
    assert "[EMAIL_1]" in sent and "[PHONE_1]" in sent and "[IBAN_1]" in sent
    assert not [s for s in SECRETS if s in sent]
    spans = [s for s in reply.json()["trace"] if s["name"] == "guardrail"]
    assert [s["attributes"]["direction"] for s in spans] == ["input"]
    llm.assert_consumed()


def test_pii_in_the_answer_never_reaches_the_client_as_json(
    api: str, models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    llm = models[0]
    llm.add_steps(f"Write to {EMAIL} or call {PHONE}; pay to {IBAN}.")
    reply = httpx.post(f"{api}/v1/agents/guarded/run", json={"query": "contacts?"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.text
    assert not [s for s in SECRETS if s in body]
    assert reply.json()["answer"] == "Write to [EMAIL_1] or call [PHONE_1]; pay to [IBAN_1]."
    llm.assert_consumed()


def test_pii_split_over_stream_chunks_never_reaches_the_client_over_sse(
    api: str, models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    llm = models[0]
    llm.add_steps(f"Sure: call {PHONE}, or pay with card {CARD} to {IBAN} today, thanks.")
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{api}/v1/agents/guarded/stream", json={"query": "how?"}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert llm.requests[-1]["stream"] is True  # the server streamed word by word
    events = [json.loads(line[6:]) for line in lines]
    streamed = "".join(e["text"] for e in events if e["type"] == "token")
    assert streamed == "Sure: call [PHONE_1], or pay with card [CARD_1] to [IBAN_1] today, thanks."
    assert not [line for line in lines if any(s in line for s in SECRETS)]  # no event at all
    assert any(e["type"] == "guardrail" and e["stage"] == "output" for e in events)
    llm.assert_consumed()


def test_pii_split_over_stream_chunks_never_reaches_the_client_over_websocket(
    api: str, models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    llm = models[0]
    llm.add_steps(f"Sure: call {PHONE}, or pay with card {CARD} to {IBAN} today, thanks.")
    frames: list[str] = []
    url = api.replace("http://", "ws://") + "/v1/ws/agent/guarded"
    with connect(url, open_timeout=60) as ws:
        ws.send(json.dumps({"query": "how?"}))
        while True:
            frame = str(ws.recv(timeout=60))
            frames.append(frame)
            if json.loads(frame)["type"] in ("done", "error"):
                break
    events = [json.loads(f) for f in frames]
    assert events[-1]["type"] == "done", events[-1]
    assert llm.requests[-1]["stream"] is True  # the server streamed word by word
    streamed = "".join(e["text"] for e in events if e["type"] == "token")
    assert streamed == "Sure: call [PHONE_1], or pay with card [CARD_1] to [IBAN_1] today, thanks."
    assert events[-1]["answer"] == streamed
    assert not [f for f in frames if any(s in f for s in SECRETS)]  # no frame at all
    llm.assert_consumed()


def _spent(server: ScriptedOpenAIServer) -> int:
    """Tokens the model server charged: its own rule (words of every message, plus
    the answer's)."""
    total = 0
    for body in server.requests:
        total += sum(count_words(m.get("content")) for m in body["messages"])
        total += count_words(ANSWER)
    return total


def test_budgets_hold_across_replicas_under_concurrent_requests(
    api: str, models: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    llm = models[1]
    llm.add_steps(*[ANSWER] * 40)

    def run(i: int, session: str) -> httpx.Response:
        query = f"question number {i} about our order please"
        return httpx.post(
            f"{api}/v1/agents/budgeted/run",
            json={"query": query, "session_id": session},
            timeout=60,
        )

    with ThreadPoolExecutor(8) as pool:
        one_session = list(pool.map(lambda i: run(i, "shared"), range(12)))
    ok = [r for r in one_session if r.status_code == 200]
    refused = [r for r in one_session if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 12
    where = {r.json()["where"]["replica"] for r in ok}
    spent_session = _spent(llm)
    # The largest single call's estimate is bounded by its prompt plus its answer.
    one_call = max(sum(count_words(m.get("content")) for m in b["messages"]) for b in llm.requests)
    assert spent_session <= SESSION_CAP + one_call + count_words(ANSWER)
    error: dict[str, Any] = refused[0].json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["cap"] == "max_tokens_per_session" and error["limit"] == SESSION_CAP
    assert error["scope"] == "session" and error["unit"] == "tokens"
    assert error["spent"] <= SESSION_CAP + one_call + count_words(ANSWER)
    # Now many sessions at once: the agent's hourly cap binds them all together.
    with ThreadPoolExecutor(8) as pool:
        many = list(pool.map(lambda i: run(i, f"s{i}"), range(24)))
    hourly = [r.json()["error"] for r in many if r.status_code == 429]
    assert hourly and {e["cap"] for e in hourly} == {"max_tokens_per_hour"}
    assert all(e["resets_at"] for e in hourly)
    assert int(next(r for r in many if r.status_code == 429).headers["Retry-After"]) > 0
    where |= {r.json()["where"]["replica"] for r in many if r.status_code == 200}
    assert len(where) == 2  # both replicas answered: they shared the ledger
    assert _spent(llm) <= HOUR_CAP + one_call + count_words(ANSWER)
    assert llm.discard_remaining() + len(llm.requests) == 40
