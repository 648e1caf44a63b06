"""``${ENV_VAR}`` in MCP server blocks (stdio ``env``, remote ``url`` and
``headers``), as in webhooks: replaced by the variable's value where the server is
reached from; a variable that is not set is an error naming the tool and field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from astromesh_ray.errors import AstromeshError, ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(
    text: str,
    environ: Mapping[str, str],
    *,
    tool: str,
    where: str,
    error: type[AstromeshError] = ConfigError,
) -> str:
    """``text`` with each ``${NAME}`` replaced by ``environ[NAME]``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = environ.get(name)
        if found is None:
            raise error(
                f"tool {tool!r}: MCP server {where} uses ${{{name}}}, but {name} is not set",
                hint=f"set the environment variable {name} where the agent runs",
            )
        return found

    return _ENV.sub(value, text)


def expand_all(
    values: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    tool: str,
    where: str,
    error: type[AstromeshError] = ConfigError,
) -> dict[str, str]:
    """Each value of ``values`` expanded (``where`` names the mapping, e.g. ``env``)."""
    return {
        key: expand(value, environ, tool=tool, where=f"{where} {key!r}", error=error)
        for key, value in values.items()
    }
