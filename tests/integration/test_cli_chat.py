"""``astromesh chat``, ``astromesh agents`` and ``--url``, run as a user runs them: on a
pseudo-terminal (typed lines, answers read as they are written) or through pipes,
against loopback OpenAI-compatible model servers; in this process, and against a
real Serve deployment for ``agents`` and ``--url``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed
from .test_cli import ROOT, Terminal, astromesh

pytestmark = pytest.mark.integration

HELPER = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: helper}
spec:
  model:
    primary: {provider: openai_compat, model: m, endpoint: "URL"}
  tools:
    - {name: calculator, type: builtin}
"""
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


def _config(root: Path, url: str) -> Path:
    (root / "agents").mkdir(parents=True)
    (root / "agents" / "helper.agent.yaml").write_text(HELPER.replace("URL", url))
    (root / "agents" / "memo.agent.yaml").write_text(MEMO.replace("URL", url))
    return root


def _sent(llm: ScriptedOpenAIServer, index: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in llm.requests[index]["messages"]]


def _session(header: str) -> str:
    found = re.search(r"session (chat-[0-9a-f]+)", header)
    assert found, header
    return found.group(1)


def test_chat_with_memory_remembers_the_session(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        conf = _config(tmp_path, llm.url)
        llm.add_steps("Noted.", "You said 42.")
        term = Terminal("chat", "memo", "--config", str(conf))
        try:
            session = _session(term.expect("/exit or Ctrl-D to quit)"))
            term.expect("you> ")
            term.send("remember 42")
            assert "Noted." in term.expect("you> ")
            term.send("what did I say?")
            assert "You said 42." in term.expect("you> ")
            term.send("/exit")
            assert term.wait() == 0, term.seen
        finally:
            term.kill()
        # The memory replayed the first turn: no history was sent twice.
        assert _sent(llm) == [
            ("user", "remember 42"),
            ("assistant", "Noted."),
            ("user", "what did I say?"),
        ]
        # The session printed is the one the memory keeps.
        llm.add_steps("Still 42.")
        proc = astromesh("run", "memo", "and now?", "--config", str(conf), "--session-id", session)
        assert proc.returncode == 0, proc.stderr
        assert [c for _, c in _sent(llm)] == [
            "remember 42",
            "Noted.",
            "what did I say?",
            "You said 42.",
            "and now?",
        ]


def test_chat_without_memory_sends_the_conversation_as_history(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        conf = _config(tmp_path, llm.url)
        llm.add_steps(
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
            "It is 42.",
            "You asked about 6*7.",
            "Hello, stranger.",
        )
        term = Terminal("chat", "helper", "--config", str(conf))
        try:
            term.expect("you> ")
            term.send("/help")
            assert "/new" in term.expect("you> ")
            term.send("what is 6*7?")
            shown = term.expect("you> ")
            # On a terminal, the tool call is one line (stderr), before the answer.
            assert '→ calculator({"expression": "6*7"})' in shown
            assert shown.index("→ calculator") < shown.index("It is 42.")
            term.send("what did I ask?")
            assert "You asked about 6*7." in term.expect("you> ")
            term.send("/new")
            assert "new conversation, session chat-" in term.expect("you> ")
            term.send("who am I?")
            assert "Hello, stranger." in term.expect("you> ")
            term.send_eof()
            assert term.wait() == 0, term.seen
        finally:
            term.kill()
        assert _sent(llm, 2) == [
            ("user", "what is 6*7?"),
            ("assistant", "It is 42."),
            ("user", "what did I ask?"),
        ]
        assert _sent(llm, 3) == [("user", "who am I?")]  # /new forgot it
        llm.assert_consumed()


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as llm:
        conf = _config(tmp_path, llm.url)
        llm.add_steps({"content": "one two three four five six", "token_delay_s": 1.0}, "Next.")
        term = Terminal("chat", "helper", "--config", str(conf))
        try:
            term.expect("you> ")
            term.send("count")
            term.expect("one")
            term.proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert "(stopped)" in term.expect("you> ")
            # The run was cancelled: the model server saw its client go.
            deadline = time.monotonic() + 30
            while not llm.streams[-1].client_gone and time.monotonic() < deadline:
                time.sleep(0.1)
            assert llm.streams[-1].client_gone and not llm.streams[-1].completed
            term.send("and now?")
            assert "Next." in term.expect("you> ")
            term.send("/exit")
            assert term.wait() == 0, term.seen
        finally:
            term.kill()
        # The stopped turn is not part of the conversation.
        assert _sent(llm) == [("user", "and now?")]


def test_chat_reads_lines_from_a_pipe(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(["One.", "Two."]) as llm:
        conf = _config(tmp_path, llm.url)
        proc = subprocess.run(
            [*_cli(), "chat", "helper", "--config", str(conf)],
            input="first\n\nsecond\n",
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "One.\nTwo.\n"  # answers only: no prompt on a pipe
        assert "chat with helper, session chat-" in proc.stderr
        assert _sent(llm) == [("user", "first"), ("assistant", "One."), ("user", "second")]


def test_chat_goes_on_after_a_failed_turn(tmp_path: Path) -> None:
    with ScriptedOpenAIServer([{"status": 400, "error": "bad request"}, "Fine now."]) as llm:
        conf = _config(tmp_path, llm.url)
        proc = subprocess.run(
            [*_cli(), "chat", "helper", "--config", str(conf)],
            input="one\ntwo\n",
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        assert "error [provider_error]" in proc.stderr
        assert proc.stdout == "Fine now.\n"
        # The failed turn is not part of the conversation.
        assert _sent(llm) == [("user", "two")]


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "astromesh_ray.cli"]


# -- against a running server: astromesh agents, run --url, chat --url ------------------


@pytest.fixture(scope="module")
def served(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    conf = _config(tmp_path_factory.mktemp("cli-serve"), llm.url)
    with deployed(conf):
        yield serve_url


def test_agents_lists_the_served_agents(served: str) -> None:
    proc = astromesh("agents", "--url", served)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "NAME    PATTERN  TOOLS  HEALTH",
        "helper  react    1      ok",
        "memo    react    0      ok",
    ]
    proc = astromesh("agents", "--url", served + "/", "--json")
    assert proc.returncode == 0, proc.stderr
    agents = json.loads(proc.stdout)
    assert [(a["name"], a["tools"], a["health"]["status"]) for a in agents] == [
        ("helper", ["calculator"], "ok"),
        ("memo", [], "ok"),
    ]
    # On a terminal (and without NO_COLOR): the header bold, the health green.
    term = Terminal("agents", "--url", served, colour=True)
    try:
        assert term.wait() == 0, term.seen
    finally:
        term.kill()
    assert "\033[1mNAME    PATTERN  TOOLS  HEALTH\033[0m" in term.seen
    assert "helper  react    1      \033[32mok\033[0m" in term.seen


def test_run_url_streams_from_the_server(served: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2**5"}}]},
        {"content": "thirty two it is", "token_delay_s": 1.0},
    )
    term = Terminal("run", "helper", "2**5?", "--url", served)
    try:
        assert '→ calculator({"expression": "2**5"})' in term.expect("← calculator: 32")
        term.expect("thirty")
        # The first word is on the terminal while the server still holds the rest.
        assert term.proc.poll() is None and not llm.streams[-1].completed
        term.expect(" two it is\n")
        assert term.wait() == 0, term.seen
    finally:
        term.kill()
    llm.add_steps("plain")
    proc = astromesh("run", "helper", "hi", "--url", served, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == "plain" and result["status"] == "completed"
    # The server's errors keep their code and hint.
    proc = astromesh("run", "nobody", "hi", "--url", served)
    assert proc.returncode == 1
    assert "error [agent_not_found]" in proc.stderr and "nobody" in proc.stderr


def test_chat_url_keeps_the_conversation(served: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("Hi Bo.", "Your name is Bo.", "Noted.", "You said 42.")
    # No memory: the conversation goes as the request's earlier messages.
    proc = subprocess.run(
        [*_cli(), "chat", "helper", "--url", served],
        input="I am Bo\nwho am I?\n/exit\nnot sent\n",
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hi Bo.\nYour name is Bo.\n"
    assert _sent(llm) == [("user", "I am Bo"), ("assistant", "Hi Bo."), ("user", "who am I?")]
    # Conversational memory: the server replays the session, once.
    proc = subprocess.run(
        [*_cli(), "chat", "memo", "--url", served, "--session-id", "cli-chat-url"],
        input="remember 42\nwhat did I say?\n",
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Noted.\nYou said 42.\n"
    assert "session cli-chat-url" in proc.stderr
    assert _sent(llm) == [
        ("user", "remember 42"),
        ("assistant", "Noted."),
        ("user", "what did I say?"),
    ]
