"""``astromesh run``: one turn of an agent, its answer streamed to the terminal.

In this process (``LocalAgents``, no Ray: the agent and every agent it reaches are
built here, after the checks ``serve`` makes) or, with ``--url``, on a running
server over SSE.  Both give the same event dicts to one ``RunPrinter``: answer
tokens on stdout as they arrive, tool calls on stderr (on a terminal, or with
``--verbose``).  ``--json`` prints the whole result instead, once the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from astromesh_ray.cli_output import RunPrinter

if TYPE_CHECKING:
    from astromesh_ray.core.build import LocalAgents
    from astromesh_ray.core.context import RunRequest
    from astromesh_ray.spec.agent import AgentSpec

__all__ = ["LocalEngine", "check_target", "json_context", "report_paused", "run_command"]


def json_context(text: str) -> dict[str, Any]:
    """``--context``: a JSON object of prompt variables."""
    from astromesh_ray.errors import InvalidRequest

    try:
        context: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--context is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise InvalidRequest("--context must be a JSON object")
    return context


class LocalEngine:
    """The agents of a configuration in this process, for ``run`` and ``chat``."""

    def __init__(self, config: str | None, agents_dir: str | None, agent: str) -> None:
        from astromesh_ray.core.build import LocalAgents, check_buildable, reachable
        from astromesh_ray.core.memory.factory import memory_factory
        from astromesh_ray.errors import AgentNotFound
        from astromesh_ray.spec import load_from_environment

        loaded = load_from_environment(config, agents_dir)
        if agent not in loaded.agents:
            raise AgentNotFound(
                f"no agent named {agent!r}",
                hint="loaded agents: " + (", ".join(sorted(loaded.agents)) or "(none)"),
            )
        # The agent and every agent it can reach as a tool are checked as serve checks them.
        check_buildable(
            reachable(agent, loaded.agents),
            loaded.providers,
            known=loaded.agents,
            rag=loaded.rag_pipelines,
        )
        self.name = agent
        self.spec: AgentSpec = loaded.agents[agent]
        # Every agent of the configuration, built on first use: the one asked for,
        # and the ones it calls as tools.  Routing defaults come from providers.yaml.
        self.agents: LocalAgents = LocalAgents(
            loaded.agents,
            loaded.providers,
            routing=loaded.routing,
            memory=memory_factory(loaded),
            rag=loaded.rag_pipelines,
        )

    @property
    def remembers(self) -> bool:
        """Whether the agent keeps conversational memory (a session replays its turns)."""
        memory = self.spec.spec.memory
        return memory is not None and memory.conversational is not None

    async def events(self, request: RunRequest) -> AsyncIterator[dict[str, Any]]:
        """One turn's events as dicts; the stream is closed however the reader stops."""
        from astromesh_ray.core.events import event_to_dict
        from astromesh_ray.core.streams import closing_stream

        runtime = await self.agents.runtime(self.name)
        async with closing_stream(runtime.stream(request)) as events:
            async for event in events:
                yield event_to_dict(event)

    async def aclose(self) -> None:
        await self.agents.aclose()


async def consume(events: AsyncIterator[dict[str, Any]], printer: RunPrinter) -> dict[str, Any]:
    """Feed ``events`` to ``printer``; the run's result (the last event's)."""
    async for event in events:
        printer.event(event)
    if printer.result is None:
        raise AssertionError("a run ends with run_finished or raises")
    printer.finish(printer.result)
    return printer.result


def report_paused(result: dict[str, Any]) -> bool:
    """Say so on stderr when the run paused (client tools, approvals): ``True``."""
    if result.get("status") != "requires_action":
        return False
    waits = ", ".join(f"{p['name']} ({p['kind']})" for p in result.get("pending") or [])
    print(f"error: the run paused: it waits on {waits}", file=sys.stderr)
    print(
        "hint: client tools and approvals are answered over HTTP (astromesh serve, "
        "POST /v1/agents/{name}/runs/{run_id}/...)",
        file=sys.stderr,
    )
    return True


def verbose_of(args: argparse.Namespace) -> bool:
    """Tool activity is shown with ``--verbose``, or when stderr is a terminal."""
    return bool(args.verbose) or sys.stderr.isatty()


def check_target(args: argparse.Namespace) -> None:
    """``--url`` runs the agent on a server, with that server's configuration:
    ``--config``/``--agents`` would be ignored, so they are refused with it."""
    from astromesh_ray.errors import ConfigError

    if args.url and (args.config or args.agents):
        raise ConfigError(
            "give --url (run on that server) or --config/--agents (run here), not both"
        )


def run_command(args: argparse.Namespace) -> int:
    check_target(args)
    context = json_context(args.context)
    if args.url:
        body = {"query": args.query, "session_id": args.session_id, "context": context}
        if args.session_id is None:
            del body["session_id"]
        return _finish(args, _run_remote(args, body))
    from astromesh_ray.core.context import RunRequest

    engine = LocalEngine(args.config, args.agents, args.agent)
    request = RunRequest(query=args.query, session_id=args.session_id, context=context)

    async def once() -> dict[str, Any]:
        try:
            return await consume(engine.events(request), _printer(args))
        finally:
            await engine.aclose()

    return _finish(args, asyncio.run(once()))


def _printer(args: argparse.Namespace) -> RunPrinter:
    if args.json:  # the whole result at the end, nothing before it
        return _Silent()
    return RunPrinter(sys.stdout, sys.stderr, verbose=verbose_of(args))


class _Silent(RunPrinter):
    """Keeps the result, writes nothing (``--json``)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout, sys.stderr, verbose=False)

    def event(self, event: Any) -> None:
        if event.get("type") == "run_finished":
            self.result = dict(event["result"])

    def finish(self, result: Any) -> None:
        pass


def _run_remote(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    from astromesh_ray.cli_remote import stream_run

    return asyncio.run(consume(stream_run(args.url, args.agent, body), _printer(args)))


def _finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    return 1 if report_paused(result) else 0
