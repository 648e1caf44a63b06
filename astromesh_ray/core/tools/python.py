"""Python functions as tools: ``@tool`` registers a function, its JSON Schema comes
from the type hints and the docstring, and arguments are validated before the call.

    @tool
    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        '''Current weather for a city.

        Args:
            city: City name, e.g. "Paris".
            unit: Temperature unit.
        '''

A parameter annotated ``ToolContext`` is not shown to the model: the call's context
(run id, agent, session, caller, deadline) is passed in it.  Sync functions run in a
worker thread so a slow one never blocks the event loop; ``@tool(inline=True)``
marks one that is quick and never blocks, which then runs on the loop (a thread
hand-off costs ~0.1 ms).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_type_hints, overload

import pydantic

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.errors import ConfigError, ToolError

_REGISTRY: dict[str, PythonTool] = {}


class PythonTool:
    """A Python callable (sync or async) exposed as a ``Tool``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        inline: bool = False,
    ) -> None:
        self.fn = fn
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self._context_arg = _context_parameter(fn)
        self._model = _arguments_model(fn, arg_docs, skip=self._context_arg)
        self._fields = tuple(self._model.model_fields)
        parameters = _clean_schema(self._model.model_json_schema())
        self._schema = ToolSchema(
            name=name or fn.__name__,
            description=description or summary or fn.__name__,
            parameters=parameters,
        )
        self._is_async = inspect.iscoroutinefunction(fn)
        self.inline = inline and not self._is_async

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    @property
    def context_arg(self) -> str | None:
        """The parameter that gets the call's ``ToolContext``, if any."""
        return self._context_arg

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments checked and coerced by the function's signature."""
        try:
            parsed = self._model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ToolError(
                f"invalid arguments for tool {self._schema.name!r}: {_describe(exc)}",
                hint="call the tool again with arguments matching its schema",
                tool=self._schema.name,
            ) from None
        values = parsed.__dict__
        return {f: values[f] for f in self._fields}

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Call the function with validated ``arguments``.  Whatever it raises is the
        tool failing (a ``ToolError`` the model reads), not the runtime."""
        kwargs = arguments
        if self._context_arg is not None:
            kwargs = {**arguments, self._context_arg: ctx}
        try:
            if self._is_async:
                value = await self.fn(**kwargs)
            elif self.inline:
                value = self.fn(**kwargs)
            else:
                # Sync tools may block (file or network I/O): keep the event loop free.
                value = await asyncio.to_thread(self.fn, **kwargs)
        except ToolError:
            raise
        except Exception as exc:  # the user's function: its failure is the tool's
            raise ToolError(
                f"tool {self._schema.name!r} raised {type(exc).__name__}: {exc}",
                tool=self._schema.name,
            ) from exc
        return ToolResult(content=to_text(value), data=value)


@overload
def tool(fn: Callable[..., Any], /) -> Callable[..., Any]: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, inline: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    inline: bool = False,
) -> Any:
    """Register ``fn`` as a tool that agent YAML can name (``type: internal``).

    The function is returned unchanged, so it stays callable and testable as is.
    Two different functions registered under one name are refused (``ConfigError``);
    registering the same function again (a module reloaded) replaces it.
    """

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = PythonTool(f, name=name, description=description, inline=inline)
        tool_name = wrapped.schema.name
        existing = _REGISTRY.get(tool_name)
        if existing is not None and _qualified(existing.fn) != _qualified(f):
            raise ConfigError(
                f"two functions are registered as tool {tool_name!r}: "
                f"{_qualified(existing.fn)} and {_qualified(f)}",
                hint="give one of them another name: @tool(name=...)",
            )
        _REGISTRY[tool_name] = wrapped
        f.__astromesh_tool__ = wrapped  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def registered_tools() -> dict[str, PythonTool]:
    """Every tool registered with ``@tool`` so far, by name."""
    _load_builtins()
    return dict(_REGISTRY)


def resolve_python_tool(name: str, function: str | None) -> PythonTool:
    """The tool for a YAML ``type: internal`` entry.

    ``function: "package.module:attr"`` imports that callable (decorated or not);
    without it, ``name`` must be a registered tool (the built-ins or a module the
    runtime config imports).  A miss lists what is available.
    """
    if function:
        module_name, _, attr = function.partition(":")
        if not attr:
            raise ConfigError(
                f"tool {name!r}: function {function!r} must look like 'package.module:function'"
            )
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"tool {name!r}: cannot import {function!r}: {exc}",
                hint="make the module importable (installed, or on PYTHONPATH)",
            ) from None
        existing = getattr(target, "__astromesh_tool__", None)
        if isinstance(existing, PythonTool):
            return (
                existing
                if existing.schema.name == name
                else PythonTool(target, name=name, inline=existing.inline)
            )
        if not callable(target):
            raise ConfigError(f"tool {name!r}: {function!r} is not callable")
        return PythonTool(target, name=name)
    tools = registered_tools()
    if name not in tools:
        raise ConfigError(
            f"internal tool {name!r} is not registered",
            hint="registered tools: "
            + (", ".join(sorted(tools)) or "(none)")
            + "; or set `function: package.module:callable`",
        )
    return tools[name]


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _context_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of the parameter annotated ``ToolContext``, if any."""
    hints = get_type_hints(fn)
    found = [name for name, hint in hints.items() if hint is ToolContext and name != "return"]
    if len(found) > 1:
        raise ConfigError(f"tool {fn.__name__!r}: more than one ToolContext parameter")
    return found[0] if found else None


def _load_builtins() -> None:
    importlib.import_module("astromesh_ray.core.tools.builtins.basic")


def _arguments_model(
    fn: Callable[..., Any], arg_docs: dict[str, str], *, skip: str | None = None
) -> type[pydantic.BaseModel]:
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.name == skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(
                f"tool {fn.__name__!r}: *args/**kwargs cannot be described to a model"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=arg_docs.get(param.name)),
        )
    return pydantic.create_model(
        f"{fn.__name__}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` keys: they cost prompt tokens and tell the model nothing."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    cleaned: dict[str, Any] = strip(schema)
    cleaned.setdefault("properties", {})
    return cleaned


_SECTION = re.compile(r"^(Args|Arguments|Parameters):$")
_OTHER_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:$")
_ARG = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")
_SPHINX = re.compile(r"^:param\s+(?:[\w\[\], ]+\s+)?(\w+):\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph and per-argument descriptions (Google or Sphinx style)."""
    summary: list[str] = []
    args: dict[str, str] = {}
    in_args = False
    summary_done = False
    current: str | None = None
    arg_indent: int | None = None
    for raw in doc.splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        sphinx = _SPHINX.match(stripped)
        if sphinx:
            current = sphinx.group(1)
            args[current] = sphinx.group(2).strip()
            summary_done = True
            continue
        if _SECTION.match(stripped) and indent == 0:
            in_args, current, arg_indent, summary_done = True, None, None, True
            continue
        if in_args:
            if not stripped:
                continue
            if indent == 0:
                in_args, current = False, None
                continue
            match = _ARG.match(stripped)
            if match and (arg_indent is None or indent == arg_indent):
                arg_indent, current = indent, match.group(1)
                args[current] = match.group(2).strip()
            elif current:
                args[current] = f"{args[current]} {stripped}".strip()
            continue
        if _OTHER_SECTION.match(stripped) and indent == 0:
            summary_done = True
        if summary_done:
            continue
        if stripped:
            summary.append(stripped)
        elif summary:
            summary_done = True
    return " ".join(summary), args


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)
