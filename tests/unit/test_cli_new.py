"""``astromesh new``: the scaffold of every pattern passes ``astromesh validate`` (the
YAML checks and the build checks serve makes), supervisor and swarm get their
delegates, and nothing is ever overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.cli import main
from astromesh_ray.cli_new import PATTERNS, scaffold
from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunResult
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.patterns import PATTERNS as ENGINE_PATTERNS
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedProvider

WORKERS = {"supervisor": "researcher,writer", "swarm": "front,back"}


def test_the_scaffold_knows_every_pattern_of_the_engine() -> None:
    assert set(PATTERNS) == set(ENGINE_PATTERNS)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_scaffolds_an_agent_that_validates_and_builds(
    pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = tmp_path / "agents"
    args = ["new", "my-agent", "--pattern", pattern, "--dir", str(agents)]
    if pattern in WORKERS:
        args += ["--workers", WORKERS[pattern]]
    assert main(args) == 0
    written = sorted(p.name for p in agents.iterdir())
    expected = ["my-agent.agent.yaml"] + [
        f"{w}.agent.yaml" for w in WORKERS.get(pattern, "").split(",") if w
    ]
    assert written == sorted(expected)
    assert f"wrote {agents / 'my-agent.agent.yaml'}" in capsys.readouterr().out

    assert main(["validate", str(agents)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {len(expected)} agent(s) checked"
    loaded = load_config(agents_dir=agents).agents
    check_buildable(list(loaded.values()), known=loaded)
    agent = loaded["my-agent"]
    assert agent.spec.orchestration.pattern == pattern
    if pattern == "supervisor":
        assert agent.spec.orchestration.workers == ["researcher", "writer"]
    if pattern == "swarm":
        assert agent.spec.orchestration.members == ["front", "back"]


def test_model_flags_are_written_and_checked(tmp_path: Path) -> None:
    files = scaffold(
        "bot", "react", tmp_path, provider="openai_compat", model="m", endpoint="http://x/v1"
    )
    text = files[tmp_path / "bot.agent.yaml"]
    assert 'provider: openai_compat\n      model: "m"\n      endpoint: "http://x/v1"' in text
    with pytest.raises(ConfigError) as caught:
        main_raises(
            ["new", "bot", "--pattern", "react", "--dir", str(tmp_path), "--provider", "olama"]
        )
    assert "did you mean 'ollama'" in caught.value.message
    assert not list(tmp_path.iterdir())  # nothing written


def main_raises(argv: list[str]) -> None:
    """``astromesh new`` without main's error printing: the ConfigError itself."""
    from astromesh_ray.cli import _parser

    args = _parser().parse_args(argv)
    args.handler(args)


def test_delegates_already_in_the_directory_are_used_not_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "researcher", "--pattern", "react", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "researcher.agent.yaml").read_text()
    # An agent named `writer` in a file not named after it: found by metadata.name.
    (tmp_path / "other.agent.yaml").write_text(before.replace("name: researcher", "name: writer"))
    argv = ["new", "boss", "--pattern", "supervisor", "--dir", str(tmp_path)]
    assert main([*argv, "--workers", "researcher,writer"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "boss.agent.yaml",
        "other.agent.yaml",
        "researcher.agent.yaml",
    ]
    assert (tmp_path / "researcher.agent.yaml").read_text() == before
    # A new agent may not take a name another file already uses.
    assert main(["new", "writer", "--pattern", "react", "--dir", str(tmp_path)]) == 2
    assert "an agent named 'writer' is already in" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 0
    assert "ok: 3 agent(s) checked" in capsys.readouterr().out


def test_refuses_to_overwrite_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["new", "bot", "--pattern", "react", "--dir", str(tmp_path)]
    assert main(argv) == 0
    mine = tmp_path / "bot.agent.yaml"
    mine.write_text("# edited by hand\n")
    assert main(argv) == 2
    assert f"refusing to overwrite {mine}" in capsys.readouterr().err
    assert mine.read_text() == "# edited by hand\n"

    # A swarm whose member file exists: nothing at all is written.
    (tmp_path / "two.agent.yaml").write_text("# someone's\n")
    swarm = ["new", "crew", "--pattern", "swarm", "--dir", str(tmp_path), "--workers", "one,two"]
    assert main(swarm) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (
        not (tmp_path / "crew.agent.yaml").exists() and not (tmp_path / "one.agent.yaml").exists()
    )

    for bad in ("Bot", "bot_1", "1bot", "bot-", "b"):
        assert main(["new", bad, "--pattern", "react", "--dir", str(tmp_path)]) == 2
        assert f"NAME {bad!r} is not a valid agent name" in capsys.readouterr().err
    assert main([*swarm[:-1], "Bad,two"]) == 2
    assert "worker 'Bad' is not a valid agent name" in capsys.readouterr().err


def test_delegates_are_required_where_the_pattern_needs_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--dir", str(tmp_path)]
    assert main(["new", "boss", "--pattern", "supervisor", *base]) == 2
    assert "a supervisor agent needs at least 1 workers" in capsys.readouterr().err
    assert main(["new", "crew", "--pattern", "swarm", *base, "--workers", "solo"]) == 2
    assert "a swarm agent needs at least 2 members" in capsys.readouterr().err
    assert main(["new", "bot", "--pattern", "react", *base, "--workers", "xy"]) == 2
    assert "--workers applies to the supervisor, swarm and plan_and_execute" in (
        capsys.readouterr().err
    )
    assert main(["new", "crew", "--pattern", "swarm", *base, "--workers", "a1,a1"]) == 2
    assert "names an agent twice" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # plan_and_execute: workers are optional.
    assert main(["new", "plan", "--pattern", "plan_and_execute", *base]) == 0
    assert main(["new", "plan2", "--pattern", "plan_and_execute", *base, "--workers", "x1"]) == 0
    assert (tmp_path / "x1.agent.yaml").exists()


async def _run_scaffold(
    directory: Path, name: str, query: str, **models: ScriptedProvider
) -> RunResult:
    agents = LocalAgents(load_config(agents_dir=directory).agents, scripted=models)
    try:
        return await (await agents.runtime(name)).run(RunRequest(query=query))
    finally:
        await agents.aclose()


async def test_a_scaffolded_pipeline_runs_its_two_stages(tmp_path: Path) -> None:
    assert main(["new", "writer", "--pattern", "pipeline", "--dir", str(tmp_path)]) == 0
    model = ScriptedProvider(["1. a 2. b 3. c", "The paragraph."])
    result = await _run_scaffold(tmp_path, "writer", "why tests?", writer=model)
    assert result.answer == "The paragraph."
    prompts = [r.messages[-1].content or "" for r in model.requests]
    assert "outline of an answer to: why tests?" in prompts[0]
    assert 'Answer "why tests?"' in prompts[1] and "1. a 2. b 3. c" in prompts[1]


async def test_a_scaffolded_swarm_hands_off_between_its_members(tmp_path: Path) -> None:
    argv = ["new", "crew", "--pattern", "swarm", "--dir", str(tmp_path), "--workers", "front,back"]
    assert main(argv) == 0
    front = ScriptedProvider([ToolCall("h1", "transfer_to_back", {"reason": "billing"})])
    back = ScriptedProvider(["Back here: done."])
    result = await _run_scaffold(tmp_path, "crew", "a bill", front=front, back=back)
    assert result.answer == "Back here: done."
    assert [s.type for s in result.steps if s.type == "handoff"] == ["handoff"]
