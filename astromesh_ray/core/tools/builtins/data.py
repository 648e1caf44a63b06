"""``json_transform`` (reshape JSON with a Jinja2 template, as the original Astromesh
does) and ``cache_store`` (a small key-value store shared between tool calls).

``json_transform`` keeps the original's contract, ``data`` and a ``template`` that
renders JSON, so agents and prompts written for it work unchanged; no query
language (jmespath) is added.  A model's template is untrusted: it renders in a
child process (``render.py``: Jinja's immutable sandbox with every value-building
operation bounded, and a CPU budget), under hard limits on its address space and
CPU time, killed at its deadline, its answer read with a cap.  A template that runs
out of any of them is a ``ToolError`` the model reads; the replica's memory and
worker threads are never at stake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import weakref
from pathlib import Path
from typing import Any, Literal

import jinja2
import markupsafe
import pydantic

from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins import render
from astromesh_ray.core.tools.builtins.schema_tool import (
    SchemaTool,
    ToolConfig,
    json_result,
    parse_config,
)
from astromesh_ray.core.tools.env import ToolCache, ToolEnv
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import BuiltinToolSpec

log = logging.getLogger("astromesh.tools.json_transform")

# ---------------------------------------------------------------- json_transform


class TransformConfig(ToolConfig):
    """``config`` of ``json_transform``."""

    max_output_chars: int = pydantic.Field(
        default=200_000,
        gt=0,
        description="The longest rendering accepted; also the largest string or list "
        "one template operation may build.",
    )
    max_render_seconds: float = pydantic.Field(
        default=2.0, gt=0, description="CPU time budget of one rendering."
    )
    max_memory_mb: int = pydantic.Field(
        default=512,
        ge=128,
        description="Address space of the process a rendering runs in (MB).",
    )


# The child: ``python -I -S`` (no environment variables, site, .pth files or working
# directory on its path), jinja2's and markupsafe's import roots as its path, then
# render.py run as a script: it imports nothing of astromesh (nor its dependencies).
_BOOT = (
    "import os, runpy, sys; "
    "roots = os.environ.get('ASTROMESH_RENDER_PATH', ''); "
    "sys.path[:0] = [p for p in roots.split(os.pathsep) if p]; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)
_IMPORT_ROOTS = os.pathsep.join(
    dict.fromkeys(str(Path(m.__file__ or "").resolve().parent.parent) for m in (jinja2, markupsafe))
)
# Variables the child may need to start at all; none of the replica's secrets.
_CHILD_ENV = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# The child's wall-clock deadline: its CPU budget twice (a busy host shares its cores)
# plus its start (interpreter, jinja2: about 0.1 s idle, seconds on a host whose cores
# are saturated); RLIMIT_CPU bounds the CPU it burns, so this only catches a child
# that waits instead of computing.
_STARTUP_SECONDS = 10.0
# Renderers running at once per event loop (others wait their turn): each may take
# max_memory_mb, and more than the cores would only make all of them late.
_MAX_RENDERS = max(
    2, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
)
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_STDERR_KEPT = 4000
_MAX_DEPTH = 200  # of the rendered JSON (json_result encodes it again, recursively)


class JsonTransformTool(SchemaTool):
    """Render ``template`` with ``data`` (in a child process) and parse the result as
    JSON."""

    def __init__(self, config: TransformConfig) -> None:
        super().__init__(
            "json_transform",
            "Transform JSON data with a Jinja2 template that renders JSON. The input is "
            "the variable `data`; e.g. template "
            '\'{"names": {{ data.rows | map(attribute="name") | list | tojson }}}\'.',
            {
                "type": "object",
                "properties": {
                    "data": {
                        "description": "The input: any JSON value (a string holding JSON "
                        "is parsed first)."
                    },
                    "template": {
                        "type": "string",
                        "description": "Jinja2 template producing valid JSON; use the "
                        "tojson filter to emit values.",
                    },
                },
                "required": ["data", "template"],
                "additionalProperties": False,
            },
        )
        self.config = config

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        data = arguments["data"]
        if isinstance(data, str):
            with contextlib.suppress(ValueError, RecursionError):  # a plain string is data too
                data = json.loads(data)
        rendered = await self._render(arguments["template"], data)
        try:
            parsed = json.loads(rendered)
        except RecursionError:
            raise ToolError(f"the template rendered JSON nested deeper than {_MAX_DEPTH}") from None
        except json.JSONDecodeError as exc:
            shown = rendered if len(rendered) <= 300 else rendered[:300] + "..."
            raise ToolError(
                f"the template did not render valid JSON ({exc.msg} at char {exc.pos}): {shown!r}",
                hint="emit values with the tojson filter, e.g. {{ data.x | tojson }}",
            ) from None
        if _depth(parsed) > _MAX_DEPTH:
            raise ToolError(f"the template rendered JSON nested deeper than {_MAX_DEPTH}")
        return json_result(parsed)

    async def _render(self, template: str, data: Any) -> str:
        loop = asyncio.get_running_loop()
        slots = _slots.get(loop)
        if slots is None:
            slots = _slots[loop] = asyncio.Semaphore(_MAX_RENDERS)
        async with slots:
            return await self._render_in_child(template, data)

    async def _render_in_child(self, template: str, data: Any) -> str:
        """Render in a child process with hard limits; the child's answer, or a
        ``ToolError`` saying which limit the template ran into."""
        config = self.config
        budget = config.max_render_seconds
        limits = {"memory_mb": config.max_memory_mb, "cpu_seconds": math.ceil(budget) + 1}
        request = {
            "template": template,
            "data": data,
            "limit": config.max_output_chars,
            "budget": budget,
        }
        try:
            payload = (json.dumps(limits) + "\n" + json.dumps(request)).encode()
        except (ValueError, RecursionError) as exc:
            raise ToolError(f"data cannot be passed to the template: {exc}") from None
        # An ASCII JSON string takes at most 12 bytes a character (a surrogate pair).
        cap = 12 * config.max_output_chars + 4096
        env = {k: os.environ[k] for k in _CHILD_ENV if k in os.environ}
        env["ASTROMESH_RENDER_PATH"] = _IMPORT_ROOTS
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                _BOOT,
                render.__file__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
            )
        except OSError as exc:
            raise ToolError(f"json_transform could not start its renderer: {exc}") from None
        too_long = ToolError(
            f"the template took longer than {budget:g} s (config max_render_seconds)",
            hint="simplify the template (fewer nested loops, smaller values)",
        )
        try:
            out, err, code = await asyncio.wait_for(
                _exchange(proc, payload, cap), 2 * budget + _STARTUP_SECONDS
            )
        except TimeoutError:
            raise too_long from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # Drain what is left of its pipes (to EOF, the child being gone) and reap
            # it: an interrupted exchange must not leave its transport to the GC.
            with contextlib.suppress(Exception):
                await proc.communicate()
        if out is None:
            raise ToolError(
                f"the template rendered more than {config.max_output_chars} characters "
                "(config max_output_chars)"
            )
        try:
            answer = json.loads(out)
        except (ValueError, RecursionError):
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("rendered"), str):
            return str(answer["rendered"])
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            hint = answer.get("hint")
            raise ToolError(answer["error"], hint=hint if isinstance(hint, str) else None)
        # No answer: killed by a limit, or the renderer itself failed.
        if code == -signal.SIGXCPU:  # RLIMIT_CPU
            raise too_long
        if code == -signal.SIGKILL:  # RLIMIT_CPU's hard limit, or the host's OOM killer
            raise ToolError(
                f"the template took longer than {budget:g} s (config max_render_seconds) "
                f"or used more than {config.max_memory_mb} MB (config max_memory_mb)",
                hint=too_long.hint,
            )
        stderr = err.decode("utf-8", "replace")
        if "MemoryError" in stderr or "Cannot allocate memory" in stderr or code == -signal.SIGSEGV:
            raise ToolError(
                f"the template used more than {config.max_memory_mb} MB of memory "
                "(config max_memory_mb)"
            )
        log.warning("json_transform renderer exited with %s: %s", code, stderr)
        raise ToolError(f"json_transform's renderer failed (exit code {code})")


async def _exchange(
    proc: asyncio.subprocess.Process, payload: bytes, cap: int
) -> tuple[bytes | None, bytes, int]:
    """Write ``payload`` to the child, read its stdout (``None`` past ``cap`` bytes,
    the child then killed) and the start of its stderr, and wait for its exit."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            stdin.write(payload)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child died (a limit); its exit says why
        finally:
            stdin.close()

    async def read_out() -> bytes | None:
        buffer = bytearray()
        while chunk := await stdout.read(65536):
            buffer += chunk
            if len(buffer) > cap:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return None
        return bytes(buffer)

    async def read_err() -> bytes:
        buffer = bytearray()
        while chunk := await stderr.read(65536):
            buffer += chunk[: max(0, _STDERR_KEPT - len(buffer))]
        return bytes(buffer)

    async with asyncio.TaskGroup() as group:
        group.create_task(feed())
        out = group.create_task(read_out())
        err = group.create_task(read_err())
    return out.result(), err.result(), await proc.wait()


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (iteratively; stops past ``_MAX_DEPTH``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > _MAX_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def json_transform(spec: BuiltinToolSpec, env: ToolEnv) -> JsonTransformTool:
    """The ``json_transform`` built-in."""
    return JsonTransformTool(parse_config(spec, TransformConfig))


# ------------------------------------------------------------------- cache_store

Scope = Literal["session", "caller", "agent"]


class CacheConfig(ToolConfig):
    """``config`` of ``cache_store``."""

    scope: Scope = pydantic.Field(
        default="session",
        description="Who shares entries: the session (its run when there is none), the "
        "caller (all its sessions), or the whole agent (every caller).",
    )
    default_ttl_seconds: float | None = pydantic.Field(
        default=None, gt=0, description="TTL of entries set without ttl_seconds (none: kept)."
    )
    max_value_chars: int = pydantic.Field(
        default=100_000, gt=0, description="The largest value (as JSON) accepted."
    )


class CacheStoreTool(SchemaTool):
    """get / set / delete on the agent's ``ToolCache``, keys scoped by ``scope``."""

    side_effects = True  # ``set`` and ``delete`` change what later calls read

    def __init__(self, cache: ToolCache, config: CacheConfig) -> None:
        super().__init__(
            "cache_store",
            "Temporary key-value cache for sharing data between tool calls.",
            {
                "type": "object",
                "properties": {
                    "action": {
                        "type": "string",
                        "enum": ["get", "set", "delete"],
                        "description": "Cache operation.",
                    },
                    "key": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 256,
                        "description": "Cache key.",
                    },
                    "value": {"description": "Value to store (action set): any JSON."},
                    "ttl_seconds": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Seconds the entry lives (action set).",
                    },
                },
                "required": ["action", "key"],
                "additionalProperties": False,
            },
        )
        self.cache = cache
        self.config = config

    def _scoped(self, key: str, ctx: ToolContext) -> str:
        """The cache key: scope, ids and key as one JSON array, so that no ``:`` in a
        caller id, session id or key can make two scopes' keys meet."""
        parts: list[str | None]
        if self.config.scope == "agent":
            parts = ["agent", key]
        elif self.config.scope == "caller":
            parts = ["caller", ctx.caller.id, key]
        elif ctx.session_id:
            parts = ["session", ctx.session_id, ctx.caller.id, key]
        else:
            parts = ["run", ctx.run_id, ctx.caller.id, key]
        return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        action, key = arguments["action"], arguments["key"]
        scoped = self._scoped(key, ctx)
        if action == "get":
            value = await self.cache.get(scoped)
            return json_result({"key": key, "found": value is not None, "value": value})
        if action == "delete":
            deleted = await self.cache.delete(scoped)
            return json_result({"key": key, "deleted": deleted})
        if "value" not in arguments or arguments["value"] is None:
            raise ToolError("action 'set' needs a value", hint="pass value (any JSON but null)")
        value = arguments["value"]
        size = len(json.dumps(value, ensure_ascii=False))
        if size > self.config.max_value_chars:
            raise ToolError(
                f"the value is {size} characters as JSON; cache_store keeps at most "
                f"{self.config.max_value_chars} (config max_value_chars)"
            )
        ttl = arguments.get("ttl_seconds", self.config.default_ttl_seconds)
        await self.cache.set(scoped, value, float(ttl) if ttl is not None else None)
        return json_result({"key": key, "stored": True, "ttl_seconds": ttl})


def cache_store(spec: BuiltinToolSpec, env: ToolEnv) -> CacheStoreTool:
    """The ``cache_store`` built-in, on the agent's cache (``env.services.cache``)."""
    config = parse_config(spec, CacheConfig)
    return CacheStoreTool(env.services.cache(env.agent.name), config)
