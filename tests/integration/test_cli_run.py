"""`astromesh run` and `astromesh schema --kind Event`, run as a user runs them
(a subprocess) against real OpenAI-compatible servers on loopback.  No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from astromesh_ray.core.events import event_json_schema
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import free_port
from .test_cli import Terminal, astromesh

BOSS = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: boss}
spec:
  model:
    primary: {provider: openai_compat, model: boss-model, endpoint: "URL"}
  tools:
    - {name: ask_helper, type: agent, agent: helper}
"""
HELPER = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: helper}
spec:
  model:
    primary: {provider: openai_compat, model: primary-model, endpoint: "DOWN"}
    fallback: {provider: openai_compat, model: backup-model, endpoint: "URL"}
"""
PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: providers}
spec:
  routing: {fallback_enabled: false}
"""


def test_run_calls_other_agents_and_honours_routing_defaults(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with ScriptedOpenAIServer() as llm:
        agents = tmp_path / "agents"
        agents.mkdir()
        (agents / "boss.agent.yaml").write_text(BOSS.replace("URL", llm.url))
        (agents / "helper.agent.yaml").write_text(
            HELPER.replace("DOWN", down).replace("URL", llm.url)
        )
        (tmp_path / "providers.yaml").write_text(PROVIDERS)
        llm.add_steps(
            {"tool_calls": [{"name": "ask_helper", "arguments": {"query": "hi"}}]},
            "the helper could not answer",
        )
        proc = astromesh("run", "boss", "ask", "--config", str(tmp_path), "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        llm.assert_consumed()
        # providers.yaml turns fallback off: the helper's primary failed and its
        # backup was never called (the boss's model read the helper's failure).
        assert [r["model"] for r in llm.requests] == ["boss-model", "boss-model"]
        tool_result = llm.requests[-1]["messages"][-1]["content"]
        assert "agent 'helper' failed" in tool_result and "cannot reach" in tool_result
        step = result["steps"][0]
        assert step["tool"] == "ask_helper" and step["is_error"] is True
        helper_runs = [
            s
            for s in result["trace"]
            if s["name"] == "run" and s["attributes"]["agent"] == "helper"
        ]
        assert len(helper_runs) == 1 and helper_runs[0]["status"] == "error"


def test_schema_prints_the_event_contract() -> None:
    proc = astromesh("schema", "--kind", "Event")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema == json.loads(json.dumps(event_json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["discriminator"]["propertyName"] == "type"
    assert "token" in schema["discriminator"]["mapping"]


def test_validate_checks_model_blocks_written_in_a_lone_file(tmp_path: Path) -> None:
    lone = tmp_path / "support.yaml"
    lone.write_text(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: lone}\nspec:\n"
        "  model:\n    primary: {provider: openai_compat, model: m, "
        "endpoint: 'http://127.0.0.1:9/v1', options: {bogus: 1}}\n"
    )
    proc = astromesh("validate", str(lone))
    assert proc.returncode != 0
    assert "unknown options 'bogus'" in proc.stderr


MEMO = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: memo}
spec:
  model:
    primary: {provider: openai_compat, model: m, endpoint: "URL"}
  memory:
    conversational: {backend: sqlite}
"""


def test_run_remembers_a_session_between_invocations(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / "memo.agent.yaml").write_text(MEMO.replace("URL", llm.url))
        llm.add_steps("Noted.", "You said 42.")
        for query in ("remember 42", "what did I say?"):
            proc = astromesh(
                "run", "memo", query, "--config", str(tmp_path), "--session-id", "cli-1"
            )
            assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "You said 42."
        sent = [(m["role"], m["content"]) for m in llm.requests[-1]["messages"]]
    assert sent == [
        ("user", "remember 42"),
        ("assistant", "Noted."),
        ("user", "what did I say?"),
    ]
    # The SQLite file lives in the data directory under the configuration.
    assert (tmp_path / "data" / "memory.sqlite3").is_file()


def test_run_says_when_the_run_paused_for_a_client_tool(tmp_path: Path) -> None:
    agent = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: parts}
spec:
  model:
    primary: {provider: openai_compat, model: m, endpoint: "URL"}
  tools:
    - {name: search_parts, type: client, parameters: {part: {type: string}}}
"""
    with ScriptedOpenAIServer() as llm:
        agents = tmp_path / "agents"
        agents.mkdir()
        (agents / "parts.agent.yaml").write_text(agent.replace("URL", llm.url))
        llm.add_steps({"tool_calls": [{"name": "search_parts", "arguments": {"part": "x"}}]})
        proc = astromesh("run", "parts", "find x", "--config", str(tmp_path))
        assert proc.returncode == 1
        assert "the run paused: it waits on search_parts (client)" in proc.stderr
        assert proc.stdout == ""


SWARM = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: crew}
spec:
  model:
    primary: {provider: openai_compat, model: crew-model, endpoint: "URL"}
  orchestration: {pattern: swarm, members: [triage, billing]}
"""
MEMBER = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: NAME}
spec:
  model:
    primary: {provider: openai_compat, model: NAME-model, endpoint: "URL"}
"""


def test_run_passes_a_swarm_between_its_members_in_one_process(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        agents = tmp_path / "agents"
        agents.mkdir()
        (agents / "crew.agent.yaml").write_text(SWARM.replace("URL", llm.url))
        for name in ("triage", "billing"):
            text = MEMBER.replace("NAME", name).replace("URL", llm.url)
            (agents / f"{name}.agent.yaml").write_text(text)
        llm.add_steps(
            {"tool_calls": [{"name": "transfer_to_billing", "arguments": {"reason": "a bill"}}]},
            "Billing here: it is paid.",
        )
        proc = astromesh("run", "crew", "is my bill paid?", "--config", str(tmp_path), "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        llm.assert_consumed()
    assert result["answer"] == "Billing here: it is paid."
    assert [r["model"] for r in llm.requests] == ["triage-model", "billing-model"]
    [handoff] = [s for s in result["steps"] if s["type"] == "handoff"]
    assert handoff["to_agent"] == "billing" and handoff["reason"] == "a bill"
    # Billing read the conversation: the user, triage's handoff call, its result.
    sent = llm.requests[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "transfer_to_billing"
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
    # Both members ran in this one process (LocalAgents), in the crew's trace.
    runs = {s["attributes"]["agent"]: s for s in result["trace"] if s["name"] == "run"}
    assert sorted(runs) == ["billing", "crew", "triage"]
    assert len({r["where"]["pid"] for r in runs.values()}) == 1
    assert {s["trace_id"] for s in result["trace"]} == {result["trace_id"]}


HELPER_TOOLS = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: helper}
spec:
  model:
    primary: {provider: openai_compat, model: m, endpoint: "URL"}
  tools:
    - {name: calculator, type: builtin}
"""


def test_run_streams_the_answer_as_the_model_writes_it(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / "helper.agent.yaml").write_text(HELPER_TOOLS.replace("URL", llm.url))
        llm.add_steps(
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2**10"}}]},
            {"content": "alpha beta gamma delta", "token_delay_s": 1.0},
        )
        term = Terminal("run", "helper", "2**10?", "--config", str(tmp_path))
        try:
            # On a terminal the tool call and its result are one line each.
            shown = term.expect("← calculator: 1024")
            assert '→ calculator({"expression": "2**10"})' in shown
            term.expect("alpha")
            # The first word is on the terminal while the model still writes the rest.
            assert term.proc.poll() is None and not llm.streams[-1].completed
            term.expect(" beta gamma delta\n")
            assert term.wait() == 0, term.seen
        finally:
            term.kill()
        assert llm.streams[-1].completed


def test_run_shows_tool_calls_off_a_terminal_only_with_verbose(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / "helper.agent.yaml").write_text(HELPER_TOOLS.replace("URL", llm.url))
        call = {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}]}
        llm.add_steps(call, "2")
        proc = astromesh("run", "helper", "1+1?", "--config", str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert (proc.stdout, proc.stderr) == ("2\n", "")
        llm.add_steps(call, "2")
        proc = astromesh("run", "helper", "1+1?", "--config", str(tmp_path), "--verbose")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "2\n"
        assert proc.stderr.splitlines() == [
            '→ calculator({"expression": "1+1"})',
            "← calculator: 2",
        ]


def test_run_and_agents_say_when_the_server_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["run", "helper", "hi", "--url", url], ["agents", "--url", url]):
        proc = astromesh(*args)
        assert proc.returncode == 1, args
        assert f"error [server_unreachable]: cannot reach the server at {url}" in proc.stderr
        assert "astromesh serve" in proc.stderr and proc.stdout == ""
    for command in (["run", "helper", "hi"], ["chat", "helper"]):
        proc = astromesh(*command, "--url", url, "--config", "config")
        assert proc.returncode == 2 and "not both" in proc.stderr, command


def test_a_new_agent_validates_and_runs(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(["Hello from a new agent."]) as llm:
        agents = tmp_path / "agents"
        proc = astromesh(
            "new", "greeter", "--pattern", "react", "--dir", str(agents),
            "--provider", "openai_compat", "--model", "scripted", "--endpoint", llm.url,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"wrote {agents / 'greeter.agent.yaml'}"
        proc = astromesh("validate", str(agents))
        assert (proc.returncode, proc.stdout.strip()) == (0, "ok: 1 agent(s) checked")
        proc = astromesh("run", "greeter", "hi", "--agents", str(agents))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "Hello from a new agent.\n"
        assert llm.requests[0]["model"] == "scripted"
