"""WhatsApp channels on real Serve over HTTP: Meta's side played by this test (signed
deliveries, the subscription handshake), the Graph API by a loopback server that
records what the gateway sends, the model by scripted loopback servers.

- a signed text message is answered: the reply at the Graph API is the model's answer,
  sent with the access token to the sender; the conversation continues in the
  sender's session (``<channel>:<sender>``);
- unsigned or wrongly signed deliveries get 401 and run nothing (the model server
  gets no request); statuses-only deliveries are acknowledged and run nothing;
- the same message delivered several times at once, to a two-replica gateway, runs
  once (the dedupe actor is shared);
- non-text messages get the channel's unsupported reply; a failing model, its error
  reply; an answer over 4096 characters arrives as several messages;
- the original ``whatsapp-assistant`` agent (copied unchanged but for its endpoint
  and its refused routing strategy) answers through its channel, its PII guardrail
  redacting what reaches the model.

Webhooks are answered before the agent runs, so each test waits (bounded) for the
replies to arrive at the loopback Graph API.  "Nothing ran" is proved by a later
message that is answered, after which the model server has seen only that one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from astromesh_ray.spec.channels import DEFAULT_ERROR_REPLY, DEFAULT_UNSUPPORTED_REPLY
from astromesh_ray.testing import ScriptedOllamaServer, ScriptedOpenAIServer
from astromesh_ray.testing.graph_api_server import (
    GraphAPIServer,
    delivery,
    signature,
    status_update,
    text_message,
)

from .conftest import deployed

pytestmark = pytest.mark.integration

ORIGINAL = Path(__file__).parents[1] / "unit" / "spec" / "data" / "original"
NUMBER = "106540352242922"
TOKEN = "EAAG-loopback-access-token"
SECRET = "loopback-app-secret"
VERIFY = "loopback-verify-token"

# The gateway reads the secrets from its own environment, at request time: set here,
# at import (collection), before the session's Ray cluster starts and its workers
# inherit the environment.
os.environ["ASTRO_WA_VERIFY"] = VERIFY
os.environ["ASTRO_WA_SECRET"] = SECRET
os.environ["ASTRO_WA_TOKEN"] = TOKEN
os.environ.pop("ASTRO_WA_UNSET", None)

HELPER = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: helper}}
spec:
  model:
    primary: {{provider: openai_compat, model: m, endpoint: "{endpoint}"}}
  prompts:
    system: "You answer on {{{{ channel }}}} for {{{{ contact_name or 'a customer' }}}}."
  memory:
    conversational: {{backend: in_memory, strategy: sliding_window, max_turns: 10}}
"""


SECRETS_ENV = ("ASTRO_WA_VERIFY", "ASTRO_WA_SECRET", "ASTRO_WA_TOKEN")


def _channel(name: str, agent: str, graph: str, env: tuple[str, ...] = SECRETS_ENV) -> str:
    verify, secret, token = env
    return (
        "apiVersion: astromesh/v1\nkind: Channel\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  type: whatsapp\n"
        f"  agent: {agent}\n"
        f"  verify_token_env: {verify}\n"
        f"  app_secret_env: {secret}\n"
        f"  access_token_env: {token}\n"
        f'  phone_number_id: "{NUMBER}"\n'
        f'  graph_api_base: "{graph}"\n'
    )


def _original_whatsapp_assistant(endpoint: str) -> str:
    """The original agent as upstream ships it, with two changes: its Ollama endpoint
    is the loopback server, and its capability_match routing (refused at load time:
    not supported) is dropped, which leaves the default strategy."""
    text = (ORIGINAL / "whatsapp-assistant.agent.yaml").read_text(encoding="utf-8")
    routing = "    routing:\n      strategy: capability_match\n"
    assert text.count("http://ollama:11434") == 2 and text.count(routing) == 1
    return text.replace("http://ollama:11434", endpoint).replace(routing, "")


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphAPIServer]:
    with GraphAPIServer(access_token=TOKEN, phone_number_id=NUMBER) as server:
        yield server


@pytest.fixture(scope="module")
def ollama() -> Iterator[ScriptedOllamaServer]:
    with ScriptedOllamaServer(models=["llava:7b", "llama3.1:8b"]) as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str,
    llm: ScriptedOpenAIServer,
    ollama: ScriptedOllamaServer,
    graph: GraphAPIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("whatsapp")
    (root / "agents").mkdir()
    (root / "channels").mkdir()
    # Two gateway replicas: the dedupe store must be the shared one.
    (root / "runtime.yaml").write_text(
        "apiVersion: astromesh/v1\nkind: RuntimeConfig\nmetadata: {name: wa}\n"
        "spec: {gateway: {num_replicas: 2}}\n"
    )
    (root / "agents" / "helper.agent.yaml").write_text(HELPER.format(endpoint=llm.url))
    (root / "agents" / "whatsapp-assistant.agent.yaml").write_text(
        _original_whatsapp_assistant(ollama.url)
    )
    base = graph.base_url
    (root / "channels" / "support.yaml").write_text(_channel("support", "helper", base))
    (root / "channels" / "whatsapp.yaml").write_text(
        _channel("whatsapp", "whatsapp-assistant", base)
    )
    (root / "channels" / "unset.yaml").write_text(
        _channel("unset", "helper", base, ("ASTRO_WA_UNSET",) * 3)
    )
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


def _sender() -> str:
    return "1555" + str(uuid.uuid4().int)[:8]


def _post(
    api: str, channel: str, payload: Any, *, secret: str | None = SECRET, raw: bytes | None = None
) -> httpx.Response:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = signature(secret, body)
    return httpx.post(
        f"{api}/v1/channels/{channel}/webhook", content=body, headers=headers, timeout=30
    )


def _say(api: str, channel: str, sender: str, text: str, **names: str) -> httpx.Response:
    reply = _post(api, channel, delivery(NUMBER, [text_message(sender, text)], names=names))
    assert reply.status_code == 200, reply.text
    return reply


def _answered(api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer) -> None:
    """A fresh message is answered: every earlier delivery has been dealt with."""
    sender = _sender()
    llm.add_steps("sentinel answer")
    _say(api, "support", sender, "are you there?")
    assert graph.wait_for(1, to=sender) == ["sentinel answer"]


def test_the_subscription_handshake(api: str) -> None:
    url = f"{api}/v1/channels/support/webhook"
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    ok = httpx.get(url, params=params, timeout=30)
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    wrong = httpx.get(url, params={**params, "hub.verify_token": "guess"}, timeout=30)
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "channel_verification_failed"
    assert httpx.get(url, params={**params, "hub.mode": "x"}, timeout=30).status_code == 403
    unknown = httpx.get(f"{api}/v1/channels/telegram/webhook", params=params, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "channel_not_found"
    assert "support" in unknown.json()["error"]["hint"]
    unset = httpx.get(f"{api}/v1/channels/unset/webhook", params=params, timeout=30)
    assert unset.status_code == 503 and "ASTRO_WA_UNSET" in unset.json()["error"]["message"]


def test_a_signed_message_is_answered_through_the_graph_api(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    llm.add_steps("We open at nine, Ana.")
    reply = _say(api, "support", sender, "When do you open?", **{sender: "Ana"})
    assert reply.json() == {"received": 1, "accepted": 1, "duplicates": 0, "ignored": 0}
    assert graph.wait_for(1, to=sender) == ["We open at nine, Ana."]
    sent = graph.requests[-1]
    assert sent == {
        "messaging_product": "whatsapp",
        "to": sender,
        "type": "text",
        "text": {"body": "We open at nine, Ana."},
    }
    assert graph.request_headers[-1]["authorization"] == f"Bearer {TOKEN}"
    asked = llm.requests[-1]["messages"]
    assert asked[0] == {"role": "system", "content": "You answer on support for Ana."}
    assert asked[-1] == {"role": "user", "content": "When do you open?"}
    llm.assert_consumed()


def test_the_conversation_continues_in_the_senders_session(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    llm.add_steps("Noted: blue.", "You said blue.")
    _say(api, "support", sender, "My favourite colour is blue.")
    graph.wait_for(1, to=sender)
    _say(api, "support", sender, "What is my favourite colour?")
    assert graph.wait_for(2, to=sender) == ["Noted: blue.", "You said blue."]
    contents = [m["content"] for m in llm.requests[-1]["messages"]]
    assert "My favourite colour is blue." in contents and "Noted: blue." in contents
    history = httpx.get(f"{api}/v1/memory/helper/sessions/support:{sender}/history", timeout=30)
    assert history.status_code == 200, history.text
    llm.assert_consumed()


def test_unsigned_or_wrongly_signed_deliveries_get_401_and_run_nothing(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    payload = delivery(NUMBER, [text_message(sender, "please run me")])
    body = json.dumps(payload).encode()
    before = len(llm.requests)
    refusals = [
        _post(api, "support", payload, secret=None),
        _post(api, "support", payload, secret="not the app secret"),
        httpx.post(  # signed, but not this body
            f"{api}/v1/channels/support/webhook",
            content=body,
            headers={"X-Hub-Signature-256": signature(SECRET, body + b" ")},
            timeout=30,
        ),
    ]
    assert [r.status_code for r in refusals] == [401, 401, 401]
    assert {r.json()["error"]["code"] for r in refusals} == {"channel_unauthorized"}
    _answered(api, llm, graph)
    assert len(llm.requests) == before + 1  # the sentinel's only
    assert graph.texts(to=sender) == []


def test_a_duplicate_delivery_runs_once(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    payload = delivery(NUMBER, [text_message(sender, "Only once, please.")])
    llm.add_steps("Once.")
    with ThreadPoolExecutor(6) as pool:  # Meta's redeliveries, all at once
        replies = list(pool.map(lambda _: _post(api, "support", payload), range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    assert sum(r.json()["accepted"] for r in replies) == 1
    assert sum(r.json()["duplicates"] for r in replies) == 5
    assert graph.wait_for(1, to=sender) == ["Once."]
    again = _post(api, "support", payload)  # later, after the answer
    assert again.json()["duplicates"] == 1
    before = len(llm.requests)
    _answered(api, llm, graph)
    assert len(llm.requests) == before + 1
    assert graph.texts(to=sender) == ["Once."]


def test_a_statuses_only_delivery_is_acknowledged_and_runs_nothing(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    before = len(llm.requests)
    receipts = [status_update("15550001111"), status_update("15550001111", status="read")]
    reply = _post(api, "support", delivery(NUMBER, statuses=receipts))
    assert reply.status_code == 200
    assert reply.json() == {"received": 0, "accepted": 0, "duplicates": 0, "ignored": 2}
    _answered(api, llm, graph)
    assert len(llm.requests) == before + 1


def test_a_non_text_message_gets_the_unsupported_reply(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    before = len(llm.requests)
    sticker = {"from": sender, "id": "wamid." + uuid.uuid4().hex, "type": "sticker"}
    assert _post(api, "support", delivery(NUMBER, [sticker])).json()["accepted"] == 1
    assert graph.wait_for(1, to=sender) == [DEFAULT_UNSUPPORTED_REPLY]
    assert len(llm.requests) == before


def test_a_failing_model_gets_the_error_reply(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    llm.add_steps({"status": 400, "error": "this model refuses"})
    _say(api, "support", sender, "Hello?")
    assert graph.wait_for(1, to=sender) == [DEFAULT_ERROR_REPLY]
    llm.assert_consumed()


def test_a_long_answer_arrives_as_several_messages(
    api: str, llm: ScriptedOpenAIServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    answer = " ".join(f"word{i}" for i in range(1100))  # 8,789 characters: 3 messages
    llm.add_steps(answer)
    _say(api, "support", sender, "Tell me everything.")
    graph.wait_for(3, to=sender)
    _answered(api, llm, graph)  # nothing more is on its way
    pieces = graph.texts(to=sender)
    assert len(pieces) == 3 and all(len(p) <= 4096 for p in pieces)
    assert " ".join(pieces) == answer
    llm.assert_consumed()


def test_a_signed_body_that_is_not_json_is_refused(api: str) -> None:
    reply = _post(api, "support", None, raw=b"not json")
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "invalid_request"
    shape = _post(api, "support", {"object": "page", "entry": []})
    assert shape.status_code == 422 and shape.json()["error"]["field"] == "object"


def test_the_original_whatsapp_assistant_answers_through_its_channel(
    api: str, ollama: ScriptedOllamaServer, graph: GraphAPIServer
) -> None:
    sender = _sender()
    ollama.add_steps("¡Hola! Claro, te ayudo con tu pedido.")
    _say(api, "whatsapp", sender, "Hola, soy jane.doe@example.com, ¿me ayudas con mi pedido?")
    assert graph.wait_for(1, to=sender) == ["¡Hola! Claro, te ayudo con tu pedido."]
    asked = ollama.requests[-1]
    assert asked["model"] == "llava:7b"  # its primary model
    assert "friendly and helpful WhatsApp assistant" in asked["messages"][0]["content"]
    user = asked["messages"][-1]["content"]
    assert "[EMAIL_1]" in user and "jane.doe@example.com" not in user  # its PII guardrail
    history = httpx.get(
        f"{api}/v1/memory/whatsapp-assistant/sessions/whatsapp:{sender}/history", timeout=30
    )
    assert history.status_code == 200, history.text
    ollama.assert_consumed()
