"""``ClientToolset``: tools the caller runs (``type: client``, as in the original
Astromesh).  The model is offered them like any tool; a call to one pauses the run
(``status: requires_action``) until the caller posts its result
(``POST /v1/agents/{name}/runs/{run_id}/tool_results``).  The toolset itself never
runs anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.tools import ClientToolSpec, ToolSpecBase

_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


class ClientToolset:
    """The agent's client tools."""

    name = "client"

    def __init__(self, specs: Sequence[ClientToolSpec]) -> None:
        self._defs: list[ToolDef] = []
        for spec in specs:
            parameters = spec.json_schema() or _NO_ARGUMENTS
            self._defs.append(
                ToolDef(
                    schema=ToolSchema(
                        name=spec.name,
                        description=spec.description or spec.name,
                        parameters=parameters,
                    ),
                    validate=compile_validator(spec.name, parameters),
                    max_result_chars=spec.max_result_chars,
                    side_effects=bool(spec.side_effects),
                    client=True,
                )
            )

    async def list_tools(self) -> Sequence[ToolDef]:
        return list(self._defs)

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        # The tool step pauses the run on a client tool instead of calling it.
        raise AssertionError(f"client tool {name!r} is run by the caller, not the runtime")

    async def aclose(self) -> None:
        return None


def build_client_toolsets(specs: Sequence[ToolSpecBase], env: ToolEnv) -> list[Toolset]:
    """``type: client`` tools as one toolset."""
    client = [s for s in specs if isinstance(s, ClientToolSpec)]
    for spec in client:
        if spec.rate_limit is not None:
            raise ConfigError(
                f"tool {spec.name!r}: a client tool runs in the caller, which the runtime "
                "cannot rate-limit",
                hint="limit it in the client, or remove rate_limit",
            )
    return [ClientToolset(client)] if client else []
