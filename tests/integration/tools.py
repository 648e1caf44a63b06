"""Python tools that test agents reference with `function:` (imported in replicas)."""

from __future__ import annotations

import asyncio


async def slow_echo(text: str, seconds: float = 5.0) -> str:
    """Echo text after a delay.

    Args:
        text: What to echo.
        seconds: How long to wait first.
    """
    await asyncio.sleep(seconds)
    return text
