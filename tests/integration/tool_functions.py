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


def quote(part: str, quantity: int = 1) -> str:
    """Quote a part.

    Args:
        part: The part id.
        quantity: How many.
    """
    return f"{part} x{quantity}: {42.0 * quantity:.2f}"


def where_am_i() -> str:
    """Where this call ran: its process id and, inside a Ray task, the task id."""
    import os

    task = "-"
    try:
        import ray

        if ray.is_initialized():
            task = ray.get_runtime_context().get_task_id() or "-"
    except Exception:  # outside Ray
        task = "-"
    return f"pid={os.getpid()} task={task}"
