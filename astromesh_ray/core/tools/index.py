"""``ToolIndex``: every tool an agent may call, across its toolsets, by name.

Built once when the runtime starts (each toolset is asked for its tools); the model
is offered exactly ``schemas``.  Tools outside ``spec.permissions.allowed_actions``
are not offered, and a call to one is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolDef, Toolset
from astromesh_ray.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """One callable tool and the toolset that runs it."""

    tool: ToolDef
    toolset: Toolset


class ToolIndex:
    """Tools by name; ``schemas`` is what the model is offered."""

    __slots__ = ("_entries", "_refused", "schemas")

    def __init__(self, entries: dict[str, ToolEntry], refused: Iterable[str] = ()) -> None:
        self._entries = entries
        self._refused = frozenset(refused)
        self.schemas: list[ToolSchema] = [e.tool.schema for e in entries.values()]

    @staticmethod
    async def build(toolsets: Sequence[Toolset], allowed: Iterable[str] | None = None) -> ToolIndex:
        """Ask each toolset for its tools; two tools with one name are a ``ConfigError``
        naming both toolsets."""
        permitted = set(allowed) if allowed is not None else None
        entries: dict[str, ToolEntry] = {}
        refused: list[str] = []
        owner: dict[str, str] = {}
        for toolset in toolsets:
            for tool in await toolset.list_tools():
                if tool.name in owner:
                    raise ConfigError(
                        f"tool {tool.name!r} is offered by both {owner[tool.name]!r} and "
                        f"{toolset.name!r}",
                        hint="tool names must be unique per agent: rename one, or filter "
                        "the toolset's tools",
                    )
                owner[tool.name] = toolset.name
                if permitted is not None and tool.name not in permitted:
                    refused.append(tool.name)
                else:
                    entries[tool.name] = ToolEntry(tool, toolset)
        return ToolIndex(entries, refused)

    def only(self, names: Iterable[str]) -> ToolIndex:
        """The index offering only ``names`` (a plan step naming its tool)."""
        keep = set(names)
        return ToolIndex({k: e for k, e in self._entries.items() if k in keep}, self._refused)

    def with_tools(self, toolset: Toolset, tools: Sequence[ToolDef]) -> ToolIndex:
        """The index plus ``tools`` of ``toolset`` (a swarm member's handoff tools)."""
        entries = dict(self._entries)
        for tool in tools:
            entries[tool.name] = ToolEntry(tool, toolset)
        return ToolIndex(entries, self._refused)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> ToolEntry | None:
        return self._entries.get(name)

    def missing(self, name: str) -> str:
        """What to tell the model about a call to ``name``, which it may not call."""
        if name in self._refused:
            return (
                f"error: tool {name!r} is not permitted for this agent "
                "(spec.permissions.allowed_actions)"
            )
        available = ", ".join(self._entries) or "(none)"
        return f"error: there is no tool named {name!r}; available tools: {available}"
