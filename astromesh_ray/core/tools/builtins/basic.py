"""Built-in tools that agent YAML can name with ``type: internal`` and no ``function``."""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astromesh_ray.core.tools.python import tool
from astromesh_ray.errors import ToolError


@tool(inline=True)  # quick, never blocks: no thread hand-off
def datetime_now(timezone: str = "UTC") -> str:
    """The current date and time in a timezone, ISO 8601.

    Args:
        timezone: IANA timezone name, e.g. "Europe/Madrid" or "UTC".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(
            f"unknown timezone {timezone!r}", hint="use an IANA name such as 'UTC'"
        ) from None
    return datetime.now(zone).isoformat(timespec="seconds")


_OPS: dict[type[Any], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@tool(inline=True)  # bounded (see _MAX_BITS): no thread hand-off
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses).

    Args:
        expression: The expression, e.g. "(2 + 3) * 4".
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    return repr(_eval(tree.body))


# Big integers are computed holding the GIL: a nested power would freeze the whole
# replica, so every intermediate result is bounded (before computing, for powers).
_MAX_BITS = 4096


def _pow_bits(base: float | int, exponent: float | int) -> float:
    if abs(base) <= 1 or exponent <= 0:
        return 0.0
    return float(exponent) * math.log2(abs(base))


def _bounded(value: float | int) -> float | int:
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise ToolError("result too large")
    return value


def _eval(node: ast.AST) -> float | int:
    # A whitelist walk instead of eval(): a model's input is untrusted.
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and _pow_bits(left, right) > _MAX_BITS:
            raise ToolError("result too large")
        try:
            result: float | int = _OPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        return _bounded(result)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        value: float | int = _OPS[type(node.op)](_eval(node.operand))
        return value
    raise ToolError("only numbers and + - * / // % ** ( ) are allowed")
