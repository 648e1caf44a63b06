"""The upstream ``astromesh-copilot`` agent, loaded verbatim and built with
``build_runtime``: its ``read_file`` is confined to ``./config/`` and ``./docs/`` of
the workdir, escape attempts reach the model as tool results, and its
``json_transform`` and ``text_summarize`` work.  A variant with ``write_file`` under
``execution.dry_run`` writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.spec import AgentSpec, load_document
from astromesh_ray.testing import ScriptedProvider

COPILOT = Path(__file__).parent / "data" / "astromesh-copilot.agent.yaml"
LONG = " ".join(f"line{i}" for i in range(150))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    (work / "config" / "agents").mkdir(parents=True)
    (work / "config" / "agents" / "support.agent.yaml").write_text("kind: Agent\n")
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text(LONG)
    (work / "secret.env").write_text("TOKEN=hunter2\n")
    (work / "config" / "leak.txt").symlink_to(work / "secret.env")
    return work


def copilot(path: Path = COPILOT) -> AgentSpec:
    agent = load_document(path)
    assert isinstance(agent, AgentSpec)
    return agent


@pytest.fixture
async def run(tmp_path: Path, workdir: Path) -> AsyncIterator[Callable[..., Any]]:
    runtimes: list[AgentRuntime] = []

    async def go(steps: list[Any], agent: AgentSpec | None = None) -> Any:
        model = ScriptedProvider(steps)
        runtime = build_runtime(
            agent or copilot(),
            provider=model,
            workdir=workdir,
            memory=default_memory_factory(tmp_path / "data"),
        )
        runtimes.append(runtime)
        await runtime.start()
        return await runtime.run(RunRequest(query="help"))

    yield go
    for runtime in runtimes:
        await runtime.aclose()


def results(result: Any) -> list[tuple[str, str, bool]]:
    return [(s.tool, s.result, s.is_error) for s in result.steps if isinstance(s, ToolStep)]


def last_tool_message(request: CompletionRequest) -> str:
    assert request.messages[-1].role == "tool"
    return request.messages[-1].content or ""


async def test_copilot_reads_allowed_files_and_is_refused_escapes(
    run: Callable[..., Any], workdir: Path
) -> None:
    escapes = [
        "../secret.env",
        "config/../secret.env",
        str(workdir / "secret.env"),
        "config/leak.txt",
    ]
    calls = [ToolCall("c0", "read_file", {"path": "config/agents/support.agent.yaml"})]
    calls += [ToolCall(f"c{i + 1}", "read_file", {"path": p}) for i, p in enumerate(escapes)]

    def sees_the_refusals(request: CompletionRequest) -> str:
        tool_messages = [m.content or "" for m in request.messages if m.role == "tool"]
        assert tool_messages[0] == "kind: Agent\n"
        for text in tool_messages[1:]:
            assert "outside spec.permissions.filesystem.read" in text
            assert "hunter2" not in text
        return "done"

    result = await run([calls, sees_the_refusals])
    assert result.answer == "done"
    steps = results(result)
    assert steps[0] == ("read_file", "kind: Agent\n", False)
    assert [is_error for _, _, is_error in steps[1:]] == [True] * len(escapes)


async def test_copilot_transforms_json_and_summarizes(run: Callable[..., Any]) -> None:
    transform = ToolCall(
        "c1",
        "json_transform",
        {
            "data": {"agents": [{"name": "a"}, {"name": "b"}]},
            "template": '{{ data.agents | map(attribute="name") | list | tojson }}',
        },
    )

    def then_summarize(request: CompletionRequest) -> ToolCall:
        assert json.loads(last_tool_message(request)) == ["a", "b"]
        return ToolCall("c2", "text_summarize", {"text": LONG, "max_length": 10})

    def summarizer(request: CompletionRequest) -> str:
        assert request.messages[0].role == "system"
        assert request.messages[1].content == LONG
        return "ten lines"

    def reads_summary(request: CompletionRequest) -> str:
        assert last_tool_message(request) == "ten lines"
        return "all good"

    result = await run([transform, then_summarize, summarizer, reads_summary])
    assert result.answer == "all good"
    # Four model calls: three reasoner turns plus the summarizer's, counted in the run.
    assert result.usage.calls == 4


async def test_copilot_with_write_file_under_dry_run_writes_nothing(
    run: Callable[..., Any], workdir: Path, tmp_path: Path
) -> None:
    document = yaml.safe_load(COPILOT.read_text())
    document["spec"]["tools"].append({"type": "builtin", "name": "write_file"})
    variant = tmp_path / "copilot-writer.agent.yaml"
    variant.write_text(yaml.safe_dump(document))
    agent = copilot(variant)
    assert agent.spec.permissions and agent.spec.permissions.execution
    assert agent.spec.permissions.execution.dry_run is True
    write = ToolCall(
        "c1", "write_file", {"path": "config/agents/new.agent.yaml", "content": "kind: Agent"}
    )

    def reads_dry_run(request: CompletionRequest) -> str:
        assert last_tool_message(request).startswith("dry run: tool 'write_file' was not called")
        return "would write"

    result = await run([write, reads_dry_run], agent)
    assert result.answer == "would write"
    assert not (workdir / "config" / "agents" / "new.agent.yaml").exists()
    assert sorted(p.name for p in (workdir / "config" / "agents").iterdir()) == [
        "support.agent.yaml"
    ]
