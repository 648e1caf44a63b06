"""Agents and runtimes for the engine's unit tests (no Ray, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.patterns import ReActPattern
from astromesh_ray.core.prompts import PromptSet, PromptStage
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.core.stages import EventTransformer, FinishStage, PrepareStage, Stages
from astromesh_ray.core.tools import FunctionToolset, Tool
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.spec import AgentSpec, load_agent


def runtime(
    provider: Provider,
    *,
    tools: list[Tool] | None = None,
    system: str = "",
    prepare: tuple[PrepareStage, ...] = (),
    transformers: tuple[EventTransformer, ...] = (),
    finish: tuple[FinishStage, ...] = (),
    max_iterations: int = 5,
    timeout_s: float = 10.0,
    allowed_tools: list[str] | None = None,
    name: str = "t",
) -> AgentRuntime:
    """A ReAct runtime over ``provider`` with the calculator (or ``tools``)."""
    toolset = FunctionToolset(
        tools if tools is not None else [resolve_python_tool("calculator", None)]
    )
    return AgentRuntime(
        name=name,
        models={"reasoner": provider},
        pattern=ReActPattern(),
        stages=Stages(
            prepare=(*prepare, PromptStage(PromptSet(system, origin="t"))),
            transformers=transformers,
            finish=finish,
        ),
        toolsets=[toolset],
        allowed_tools=allowed_tools,
        max_iterations=max_iterations,
        timeout_s=timeout_s,
    )


def agent_yaml(name: str, **spec: Any) -> dict[str, Any]:
    """An Agent document with an ollama model (never called: tests pass a provider)."""
    body: dict[str, Any] = {"model": {"primary": {"provider": "ollama", "model": "m"}}}
    body.update(spec)
    return {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": body}


def load_agents(tmp_path: Path, *documents: dict[str, Any]) -> dict[str, AgentSpec]:
    """Write each document to ``<name>.agent.yaml`` and load it."""
    agents = {}
    for doc in documents:
        path = tmp_path / f"{doc['metadata']['name']}.agent.yaml"
        path.write_text(yaml.safe_dump(doc))
        agents[doc["metadata"]["name"]] = load_agent(path)
    return agents


def local_agents(agents: dict[str, AgentSpec], providers: dict[str, Provider]) -> LocalAgents:
    """``LocalAgents`` whose agent ``name`` talks to ``providers[name]``."""
    return LocalAgents(agents, scripted=providers)
