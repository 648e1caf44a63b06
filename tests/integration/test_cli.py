"""The `astromesh` command, run as a user runs it (a subprocess), against real files
and a real OpenAI-compatible server on loopback.  No Ray."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astromesh_ray.testing import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def astromesh(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "astromesh_ray.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


class Terminal:
    """``astromesh ARGS`` on a pseudo-terminal, as a user at a terminal runs it:
    stdin, stdout and stderr are the terminal (so ``isatty()`` is true), the test
    types lines and reads what is written as it is written.  Waits are bounded."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, colour: bool = False) -> None:
        plain = {"TERM": "dumb", "NO_COLOR": "1"}  # no escape sequences to read past
        base = {k: v for k, v in os.environ.items() if not (colour and k == "NO_COLOR")}
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astromesh_ray.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env={**base, **({"TERM": "xterm"} if colour else plain), **(env or {})},
            start_new_session=True,  # the terminal is its controlling one
        )
        os.close(slave)
        self.master = master
        self.seen = ""  # everything written so far
        self._read_to = 0  # where the next expect looks from

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the process closed the terminal
            return False
        if not data:
            return False
        self.seen += data.decode(errors="replace").replace("\r\n", "\n")
        return True

    def expect(self, text: str, timeout: float = 90) -> str:
        """Wait until ``text`` is written (after what earlier expects consumed); what
        was written up to it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[self._read_to :]:
            left = deadline - time.monotonic()
            open_ = left > 0 and self._read(min(left, 0.5))
            if not open_ and text not in self.seen[self._read_to :]:
                raise AssertionError(f"{text!r} not written; the terminal shows:\n{self.seen}")
        end = self.seen.index(text, self._read_to) + len(text)
        before, self._read_to = self.seen[self._read_to : end], end
        return before

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def send_eof(self) -> None:
        os.write(self.master, b"\x04")  # Ctrl-D at the start of a line

    def wait(self, timeout: float = 90) -> int:
        """The exit status, once the process ends (reading what it still writes)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while select.select([self.master], [], [], 0)[0] and self._read(0):
            pass
        try:
            return self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            os.close(self.master)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: helper
spec:
  model:
    primary:
      providerRef: local-llm
  prompts:
    system: "Be brief, {{ name }}."
  tools:
    - name: calculator
      type: builtin
"""

PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata:
  name: providers
spec:
  providers:
    local-llm:
      type: openai_compat
      endpoint: "{url}"
      models: [scripted-model]
"""


def test_run_executes_one_turn_in_process(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(
        [{"tool_calls": [{"name": "calculator", "arguments": {"expression": "2**10"}}]}, "1024"]
    ) as llm:
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / "helper.agent.yaml").write_text(AGENT)
        (tmp_path / "providers.yaml").write_text(PROVIDERS.format(url=llm.url))
        proc = astromesh(
            "run",
            "helper",
            "2 to the 10th?",
            "--config",
            str(tmp_path),
            "--context",
            '{"name": "Bo"}',
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["answer"] == "1024"
        assert result["steps"][0]["result"] == "1024"
        assert llm.requests[0]["messages"][0]["content"] == "Be brief, Bo."
        assert llm.requests[0]["model"] == "scripted-model"
        llm.assert_consumed()

        # Environment variables choose the config directory too.
        llm.add_steps("plain")
        proc = astromesh(
            "run",
            "helper",
            "hi",
            "--context",
            '{"name": "Bo"}',
            env={"ASTROMESH_CONFIG_DIR": str(tmp_path)},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "plain"


def test_run_reports_errors_with_hints(tmp_path: Path) -> None:
    proc = astromesh("run", "nobody", "hi", "--config", str(ROOT / "config"))
    assert proc.returncode == 1
    assert "no agent named 'nobody'" in proc.stderr and "assistant" in proc.stderr
    proc = astromesh("run", "assistant", "hi", "--config", str(ROOT / "config"), "--context", "[1]")
    assert proc.returncode == 1 and "--context must be a JSON object" in proc.stderr


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    proc = astromesh("validate", "config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: 1 agent(s) checked"
    bad = tmp_path / "bad.agent.yaml"
    bad.write_text(
        AGENT.replace("  tools:", "  toolz:").replace("providerRef", "provider: olama\n      model")
    )
    proc = astromesh("validate", str(bad))
    assert proc.returncode == 1
    assert f"{bad}:" in proc.stderr
    assert "toolz" in proc.stderr and "did you mean 'tools'" in proc.stderr
    assert "did you mean 'ollama'" in proc.stderr
    assert "2 error(s)" in proc.stderr


def test_schema_prints_a_json_schema_with_descriptions() -> None:
    proc = astromesh("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    text = json.dumps(schema)
    assert "apiVersion" in text and "max_iterations" in text and "description" in text
    proc = astromesh("schema", "--kind", "ProviderConfig")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) != schema and "health_check_interval" in proc.stdout


def test_deploy_config_matches_the_committed_file() -> None:
    proc = astromesh("deploy-config", "--config", "config")
    assert proc.returncode == 0, proc.stderr
    committed = (ROOT / "deployments" / "local.yaml").read_text()
    assert proc.stdout == committed, (
        "regenerate: astromesh deploy-config --config config > deployments/local.yaml"
    )


def _app_args(stdout: str) -> list[dict[str, str]]:
    import yaml

    return [app["args"] for app in yaml.safe_load(stdout)["applications"]]


def test_deploy_config_names_the_directories_actually_loaded(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "agents").mkdir(parents=True)
    (conf / "agents" / "helper.agent.yaml").write_text(AGENT)
    (conf / "providers.yaml").write_text(PROVIDERS.format(url="http://127.0.0.1:9/v1"))
    more = tmp_path / "more"
    more.mkdir()
    (more / "other.agent.yaml").write_text(AGENT.replace("name: helper", "name: other"))

    # $ASTROMESH_CONFIG_DIR outside the working directory: an absolute path.
    proc = astromesh("deploy-config", env={"ASTROMESH_CONFIG_DIR": str(conf)})
    assert proc.returncode == 0, proc.stderr
    args = _app_args(proc.stdout)
    assert {a["config_dir"] for a in args} == {str(conf.resolve())}
    assert not any("agents_dir" in a for a in args)
    assert "agent-helper" in proc.stdout

    # Under the working directory: relative; --agents travels too.
    proc = astromesh(
        "deploy-config",
        "--agents",
        "more",
        cwd=tmp_path,
        env={"ASTROMESH_CONFIG_DIR": "conf"},
    )
    assert proc.returncode == 0, proc.stderr
    args = _app_args(proc.stdout)
    assert {(a["config_dir"], a["agents_dir"]) for a in args} == {("conf", "more")}
    assert "agent-other" in proc.stdout and "agent-helper" not in proc.stdout


def test_run_with_only_an_agents_directory(tmp_path: Path) -> None:
    if Path("/etc/astromesh").exists():
        pytest.skip("/etc/astromesh exists here: it would be the config directory")
    with ScriptedOpenAIServer(["hello"]) as llm:
        agents = tmp_path / "agents"
        agents.mkdir()
        inline = AGENT.replace(
            "providerRef: local-llm",
            f'provider: openai_compat\n      model: scripted-model\n      endpoint: "{llm.url}"',
        )
        (agents / "helper.agent.yaml").write_text(inline)
        # No ./config in the working directory and no $ASTROMESH_CONFIG_DIR.
        env = {"ASTROMESH_CONFIG_DIR": "", "ASTROMESH_AGENTS_DIR": ""}
        proc = astromesh(
            "run", "helper", "hi", "--agents", str(agents), "--context", '{"name": "Bo"}',
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "hello"
        llm.add_steps("again")  # the agents directory from the environment, too
        proc = astromesh(
            "run", "helper", "hi", "--context", '{"name": "Bo"}',
            cwd=tmp_path, env={**env, "ASTROMESH_AGENTS_DIR": str(agents)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "again"


def test_committed_serve_config_is_valid_for_ray_serve() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    body = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    parsed = (
        ServeDeploySchema.model_validate(body)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(body)
    )
    names = [app.name for app in parsed.applications]
    assert names[-1] == "gateway" and "agent-assistant" in names
    assert all(
        app.import_path.startswith("astromesh_ray.serve.builders:") for app in parsed.applications
    )


def test_validate_and_run_catch_tools_that_do_not_import(tmp_path: Path) -> None:
    agent = tmp_path / "agents" / "helper.agent.yaml"
    agent.parent.mkdir()
    agent.write_text(
        AGENT.replace("type: builtin", "type: internal\n      function: no_such_pkg.mod:fn")
    )
    (tmp_path / "providers.yaml").write_text(PROVIDERS.format(url="http://127.0.0.1:9/v1"))
    proc = astromesh("validate", str(tmp_path / "agents"))
    assert proc.returncode == 2
    assert str(agent) in proc.stderr and "cannot import 'no_such_pkg.mod:fn'" in proc.stderr
    proc = astromesh("run", "helper", "hi", "--config", str(tmp_path))
    assert proc.returncode == 2 and "cannot import 'no_such_pkg.mod:fn'" in proc.stderr


def _config_dir(root: Path, *agents: str, options: str = "") -> Path:
    (root / "agents").mkdir(parents=True)
    for name in agents:
        (root / "agents" / f"{name}.agent.yaml").write_text(AGENT.replace("helper", name))
    providers = PROVIDERS.format(url="http://127.0.0.1:9/v1")
    (root / "providers.yaml").write_text(
        providers + (f"      options: {options}\n" if options else "")
    )
    return root


def test_validate_builds_every_agent_document_whatever_its_file_is_called(
    tmp_path: Path,
) -> None:
    # An Agent written for the original Astromesh, in a file not named *.agent.yaml,
    # using a builtin this runtime does not have: serve and run refuse it, so must validate.
    support = tmp_path / "loose" / "support.yaml"
    support.parent.mkdir()
    support.write_text(
        AGENT.replace("name: helper", "name: support")
        + "    - name: send_slack\n      type: builtin\n"
    )
    (tmp_path / "loose" / "fine.yml").write_text(AGENT.replace("name: helper", "name: fine"))
    for target in (support, support.parent):
        proc = astromesh("validate", str(target))
        assert proc.returncode == 2, proc.stdout
        assert (
            f"{support}: built-in tool 'send_slack' is not supported by astromesh-ray"
            in proc.stderr
        )
        assert "fine.yml" not in proc.stderr


def test_validate_checks_provider_clients_as_serve_does(tmp_path: Path) -> None:
    conf = _config_dir(tmp_path / "conf", "helper", options="{organisation: acme}")
    agent = conf / "agents" / "helper.agent.yaml"
    refused = "unknown options 'organisation' for provider 'openai'"
    # The config directory, its agents/ directory, one agent in it, or --config: the
    # agents are checked with the providers serve would give them.
    for args in ([str(conf)], [str(conf / "agents")], [str(agent)], ["--config", str(conf)]):
        proc = astromesh("validate", *args)
        assert proc.returncode == 2, (args, proc.stdout)
        assert f"{agent}: openai:scripted-model: {refused}" in proc.stderr, args
    proc = astromesh("run", "helper", "hi", "--config", str(conf), "--context", '{"name": "Bo"}')
    assert proc.returncode == 2 and refused in proc.stderr
    # A providerRef the configuration does not define: refused next to it, as by serve.
    (conf / "agents" / "stray.agent.yaml").write_text(
        AGENT.replace("helper", "stray").replace("local-llm", "local-lm")
    )
    proc = astromesh("validate", str(conf / "agents"))
    assert proc.returncode == 1
    assert (
        "unknown provider 'local-lm'" in proc.stderr and "did you mean 'local-llm'" in proc.stderr
    )


def test_validate_counts_the_agents_it_checked(tmp_path: Path) -> None:
    conf = _config_dir(tmp_path / "conf", "helper", "other")
    loose = tmp_path / "support.yaml"
    loose.write_text(AGENT.replace("name: helper", "name: support"))
    proc = astromesh("validate", str(conf), str(loose))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: 3 agent(s) checked"
    # A file given twice (on its own and in its directory) is one agent.
    proc = astromesh("validate", str(conf), str(conf / "agents" / "helper.agent.yaml"))
    assert proc.stdout.strip() == "ok: 2 agent(s) checked", proc.stderr
    proc = astromesh("validate", str(conf), "--config", str(conf))
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_validate_one_agent_knows_its_peers_from_the_config(tmp_path: Path) -> None:
    conf = _config_dir(tmp_path / "conf", "helper")
    caller = AGENT.replace("helper", "caller") + (
        "    - name: ask_helper\n      type: agent\n      agent: helper\n"
        '      description: "Ask the helper."\n'
    )
    (conf / "agents" / "caller.agent.yaml").write_text(caller)
    proc = astromesh("validate", str(conf / "agents" / "caller.agent.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: 1 agent(s) checked"
    # Away from that configuration, the peer is not there: serve would refuse it.
    (tmp_path / "caller.yaml").write_text(caller)
    proc = astromesh("validate", str(tmp_path / "caller.yaml"))
    assert proc.returncode == 2
    assert "agent 'caller' calls agent 'helper', which is not loaded" in proc.stderr
