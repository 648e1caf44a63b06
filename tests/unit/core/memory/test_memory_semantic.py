"""Semantic recall in the run path: indexed turns recalled into the prompt, scoped
to the session or the agent."""

from __future__ import annotations

from pathlib import Path

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.memory.factory import MemoryDefaults
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.memory.memory_helpers import (
    WordsFactory,
    agent_with,
    turn,
)


async def test_semantic_recall_is_injected_and_scoped_to_the_session(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {
            "conversational": {"backend": "in_memory", "max_turns": 1},
            "semantic": {
                "backend": "faiss",
                "index_turns": True,
                "similarity_threshold": 0.3,
                "max_results": 1,
            },
        },
        prompts={"system": "Be brief."},
    )
    model = ScriptedProvider(["ok", "ok", "teal", "no idea"])
    agents = LocalAgents(
        {"mem": agent},
        scripted={"mem": model},
        memory=WordsFactory(MemoryDefaults(data_dir=str(tmp_path / "data"))),
    )
    try:
        await turn(agents, "my favourite colour is teal")
        await turn(agents, "I live in Lisbon")
        await turn(agents, "what is my favourite colour")
        await turn(agents, "what is my favourite colour", session="stranger")
    finally:
        await agents.aclose()
    system = model.requests[2].messages[0].content
    assert system is not None and system.startswith("Be brief.\n\nRelevant knowledge:\n- User: ")
    assert "favourite colour is teal" in system
    # The window (max_turns 1) no longer holds the first turn: only recall brought it.
    assert "my favourite colour is teal" not in [m.content for m in model.requests[2].messages]
    # Another session's recall does not see this session's items.
    assert model.requests[3].messages[0].content == "Be brief."


async def test_prompts_that_place_memory_themselves_get_it_as_variables(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {
            "semantic": {"backend": "faiss", "index_turns": True, "scope": "agent",
                         "similarity_threshold": 0.3},
        },
        prompts={"system": "Known: {{ knowledge }} ({{ memory.semantic | length }})"},
    )  # fmt: skip
    model = ScriptedProvider(["ok", "ok"])
    agents = LocalAgents(
        {"mem": agent},
        scripted={"mem": model},
        memory=WordsFactory(MemoryDefaults(data_dir=str(tmp_path / "data"))),
    )
    try:
        await turn(agents, "the launch code is blue", session=None)
        await turn(agents, "what is the launch code", session="any")
    finally:
        await agents.aclose()
    assert model.requests[0].messages[0].content == "Known:  (0)"
    system = model.requests[1].messages[0].content
    assert system is not None and system.startswith("Known: - User: the launch code is blue")
    assert system.endswith("(1)")
