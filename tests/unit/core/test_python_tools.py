from __future__ import annotations

import asyncio
import threading
from typing import Literal

import pytest

from astromesh_ray.core.context import ANONYMOUS
from astromesh_ray.core.tools import (
    FunctionToolset,
    PythonTool,
    ToolContext,
    ToolResult,
    registered_tools,
    tool,
)
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.errors import ConfigError, ToolError


def ctx() -> ToolContext:
    return ToolContext(
        run_id="r1",
        agent="a",
        session_id="s1",
        caller=ANONYMOUS,
        deadline=asyncio.get_running_loop().time() + 10,
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        lineage=("a",),
    )


async def call(t: PythonTool, arguments: dict[str, object]) -> ToolResult:
    """What the tool step does: validate, then call."""
    return await t.call(t.validate(arguments), ctx())


def weather(city: str, unit: Literal["C", "F"] = "C", days: int = 1) -> str:
    """Forecast for a city.

    Longer explanation that is not part of the summary.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit.
        days: How many days,
            counted from today.

    Returns:
        A sentence.
    """
    return f"{city}:{unit}:{days}:{threading.current_thread().name}"


def test_schema_comes_from_hints_and_docstring() -> None:
    schema = PythonTool(weather).schema
    assert schema.name == "weather"
    assert schema.description == "Forecast for a city."
    params = schema.parameters
    assert params["type"] == "object"
    assert params["required"] == ["city"]
    assert params["properties"]["city"] == {
        "type": "string",
        "description": 'City name, e.g. "Paris".',
    }
    assert params["properties"]["unit"]["enum"] == ["C", "F"]
    assert params["properties"]["unit"]["default"] == "C"
    assert params["properties"]["days"]["description"] == "How many days, counted from today."
    assert params["additionalProperties"] is False
    assert "title" not in params


def test_sphinx_docstring() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers.

        :param a: first
        :param int b: second
        """
        return a + b

    props = PythonTool(add).schema.parameters["properties"]
    assert props["a"]["description"] == "first"
    assert props["b"]["description"] == "second"


async def test_sync_tools_run_off_the_event_loop() -> None:
    result = await call(PythonTool(weather), {"city": "Oslo", "days": 3})
    assert result.content.startswith("Oslo:C:3:")
    assert not result.content.endswith(threading.current_thread().name)


async def test_async_tool_and_structured_result() -> None:
    async def lookup(key: str) -> dict[str, int]:
        """Look a key up."""
        await asyncio.sleep(0)
        return {key: len(key)}

    result = await call(PythonTool(lookup), {"key": "abcd"})
    assert result.content == '{"abcd": 4}'
    assert result.data == {"abcd": 4}


async def test_arguments_are_validated_before_the_call() -> None:
    calls: list[str] = []

    def record(n: int) -> str:
        """Record."""
        calls.append("called")
        return str(n)

    t = PythonTool(record)
    with pytest.raises(ToolError, match="n: Input should be a valid integer"):
        await call(t, {"n": "many"})
    with pytest.raises(ToolError, match="extra: Extra inputs are not permitted"):
        await call(t, {"n": 1, "extra": True})
    assert calls == []
    assert t.validate({"n": "7"}) == {"n": 7}  # coerced to the function's types


async def test_a_function_raising_is_a_tool_error_not_a_crash() -> None:
    def boom(x: int) -> str:
        """Always fails."""
        raise ValueError("kaput")

    with pytest.raises(ToolError, match="tool 'boom' raised ValueError: kaput"):
        await call(PythonTool(boom), {"x": 1})


async def test_tool_context_is_injected_and_hidden_from_the_model() -> None:
    def whoami(greeting: str, context: ToolContext) -> str:
        """Say who calls."""
        return f"{greeting} {context.agent}/{context.session_id}/{context.run_id}"

    t = PythonTool(whoami)
    assert set(t.schema.parameters["properties"]) == {"greeting"}
    assert (await call(t, {"greeting": "hi"})).content == "hi a/s1/r1"


async def test_inline_sync_tools_run_on_the_event_loop() -> None:
    inline = PythonTool(weather, inline=True)
    result = await call(inline, {"city": "Oslo"})
    assert result.content.endswith(threading.current_thread().name)


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="two tools are named 'weather'"):
        FunctionToolset([PythonTool(weather), PythonTool(weather)])


def test_two_functions_registered_under_one_name_are_refused() -> None:
    def first() -> str:
        """One."""
        return "1"

    def second() -> str:
        """Two."""
        return "2"

    tool(name="dup_test_tool")(first)
    tool(name="dup_test_tool")(first)  # the same function again: a reload, fine
    with pytest.raises(ConfigError, match="two functions are registered as tool 'dup_test_tool'"):
        tool(name="dup_test_tool")(second)
    assert registered_tools()["dup_test_tool"].fn is first


def test_decorator_registers_and_returns_the_function() -> None:
    @tool(name="shout_test_tool")
    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    assert shout("a") == "A"
    assert "shout_test_tool" in registered_tools()
    assert resolve_python_tool("shout_test_tool", None).schema.description == "Upper-case text."


def test_resolve_by_import_path_and_misses() -> None:
    t = resolve_python_tool("forecast", "tests.unit.core.test_python_tools:weather")
    assert t.schema.name == "forecast"
    with pytest.raises(ConfigError, match=r"registered tools: .*calculator.*datetime_now"):
        resolve_python_tool("web_search", None)
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_python_tool("x", "no_such_module_xyz:fn")
    with pytest.raises(ConfigError, match="must look like"):
        resolve_python_tool("x", "just_a_module")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("(2 + 3) * 4", "20"), ("7 / 2", "3.5"), ("-2 ** 2", "-4"), ("17 % 5", "2")],
)
async def test_calculator(expression: str, expected: str) -> None:
    result = await call(resolve_python_tool("calculator", None), {"expression": expression})
    assert result.content == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "2 ** 99999",
        "1/0",
        "((10**100)**1000)**1000",
        "(9**999)*(9**999)*(9**999)*(9**999)*(9**999)",
        "2.5 ** 100000",
    ],
)
async def test_calculator_refuses_hostile_input(hostile: str) -> None:
    with pytest.raises(ToolError):
        await call(resolve_python_tool("calculator", None), {"expression": hostile})


async def test_datetime_now() -> None:
    t = resolve_python_tool("datetime_now", None)
    assert (await call(t, {"timezone": "UTC"})).content.endswith("+00:00")
    with pytest.raises(ToolError, match="unknown timezone"):
        await call(t, {"timezone": "Mars/Olympus"})
