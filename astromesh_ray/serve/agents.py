"""Each agent YAML as its own Serve application: ``AgentDeployment`` wires a core
``AgentRuntime`` to its providers (a pooled client in the replica, or a provider
deployment by handle) and to peer agents by handle.

The application is an HTTP ingress too, at route prefix ``/v1/agents/<name>``
(``builders.plan``): it answers the agent's own routes (``agent_routes.py``) with
its own ``AgentRuntime``, in process, behind the same gate, limits and error handlers
as the gateway (``app.py``'s ``agent_api``), so a turn is proxy -> agent replica,
with no gateway hop.  The methods others call by handle stay: ``run``, ``stream``,
``resume``, ``resume_stream``, ``paused``, ``health``, ``memory`` (the gateway's
protocols and memory routes), ``task`` (the agent's own pattern tasks,
``ServeTaskRunner``), peers' sub-runs (``ServePeer``), and ``recent_trace`` (the
gateway's ``GET /v1/traces/{id}``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import PurePath
from typing import Any

from ray import serve

from astromesh_ray.core.breaker import BreakerStore
from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import Caller, RunRequest
from astromesh_ray.core.events import event_to_dict
from astromesh_ray.core.memory.api import memory_op
from astromesh_ray.core.memory.factory import MemoryDefaults, default_memory_factory
from astromesh_ray.core.runs import PausedRun, ToolDecision
from astromesh_ray.core.runs.pausing import Answer
from astromesh_ray.core.runs.resume import decisions_for, paused_view
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.tasks import TaskRequest
from astromesh_ray.serve.agent_link import LocalLink
from astromesh_ray.serve.agent_routes import AgentRoutes
from astromesh_ray.serve.app import agent_api
from astromesh_ray.serve.breaker import ServeBreakerStore, agent_probes
from astromesh_ray.serve.handles import agent_app_name
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.memory import ServeMemoryFactory
from astromesh_ray.serve.outcome import failure, ok
from astromesh_ray.serve.peers import ServePeer
from astromesh_ray.serve.providers import replica_provider
from astromesh_ray.serve.router_config import SHORT_BACKOFF
from astromesh_ray.serve.tasks import ServeTaskRunner
from astromesh_ray.serve.tools import serve_tool_services
from astromesh_ray.spec import AgentSpec, ProviderEntrySpec, ProviderRoutingSpec, RAGPipelineSpec
from astromesh_ray.spec.auth import AuthSpec
from astromesh_ray.spec.config import TelemetrySpec

__all__ = ["AgentDeployment", "agent_app_name", "describe_agent"]


def describe_agent(agent: AgentSpec) -> dict[str, Any]:
    """What ``GET /v1/agents/{name}`` shows about an agent."""
    body = agent.spec
    identity = body.identity
    allowed = body.permissions.allowed_actions if body.permissions else None
    return {
        "name": agent.name,
        "version": agent.metadata.version,
        "namespace": agent.metadata.namespace,
        "labels": dict(agent.metadata.labels),
        "display_name": identity.display_name if identity else None,
        "description": identity.description if identity else None,
        "pattern": body.orchestration.pattern,
        "max_iterations": body.orchestration.max_iterations,
        "timeout_seconds": body.orchestration.timeout_s,
        # Only the tools the agent can call (the model is never offered the others).
        "tools": [t.name for t in body.tools if allowed is None or t.name in allowed],
        # Which memory it keeps (backends and strategy; never connection URLs).
        "memory": _memory_summary(agent),
        # The file name only: the server's directory layout is not the client's business.
        "source": PurePath(agent.source).name if agent.source else None,
    }


def _memory_summary(agent: AgentSpec) -> dict[str, Any]:
    memory = agent.spec.memory
    found: dict[str, Any] = {}
    if memory is None:
        return found
    if memory.conversational is not None:
        c = memory.conversational
        found["conversational"] = {"backend": c.backend, "strategy": c.strategy, "ttl": c.ttl}
    if memory.semantic is not None:
        found["semantic"] = {"backend": memory.semantic.backend, "scope": memory.semantic.scope}
    if memory.episodic is not None:
        found["episodic"] = {"backend": memory.episodic.backend}
    return found


# An ongoing request is one turn, which spends nearly all its time awaiting its model
# and tools (coroutines, no thread each); its own CPU work (prompts, guardrails, JSON)
# is about a millisecond.  So a replica holds a hundred turns at once; Serve's default
# of 5 would queue turns in front of an idle replica.  How many replicas run is
# autoscaling_config's business (target_ongoing_requests), not this cap's.  num_cpus 0:
# a replica reserves no CPU (YAML can), so a 2-CPU machine runs every agent.  HTTP
# requests to its own routes and handle calls share the cap (each is one ongoing
# request).  Its app (`agent_api`) is not the gateway's: `serve.ingress` rewrites the
# app it is given (app.py).
@serve.deployment(
    name="agent",
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
    request_router_config=SHORT_BACKOFF,  # callers retry a full replica every 25 ms
)
@serve.ingress(agent_api)
class AgentDeployment(AgentRoutes):
    """Runs turns of one agent, asked over HTTP (its own routes) or by handle; its
    model calls go to its providers, its sub-runs to peer agents' applications, and
    its pattern's tasks (plan steps, fan-out branches) to any replica of this same
    application."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None = None,
        memory: MemoryDefaults | None = None,
        rag: Mapping[str, RAGPipelineSpec] | None = None,
        *,
        auth: AuthSpec | None = None,
        telemetry: TelemetrySpec | None = None,
    ) -> None:
        # Its routes: the same keys, limits and telemetry as the gateway's (runtime.yaml's
        # spec.auth and spec.telemetry); its description and namespace are the agent's
        # own (`describe_agent`, as the gateway lists it).  First: a bad telemetry
        # setting fails the replica before its tool servers start.
        super().__init__(
            {agent.name: describe_agent(agent)},
            {agent.name: agent_app_name(agent.name)},
            LocalLink(self, agent.name),
            telemetry=telemetry,
            auth=auth,
        )
        self._breakers = breakers = await self.make_breakers(agent, providers, routing)
        # The replica owns its memory backends (pools, embedders): closed on shutdown.
        self._memory = ServeMemoryFactory(memory or default_memory_factory().defaults)
        self._runtime = build_runtime(
            agent,
            providers,
            make_provider=replica_provider,
            make_peer=ServePeer,
            where=replica_location(),
            routing=routing,
            breakers=breakers,
            health_checks=False,
            memory=self._memory,
            rag=rag,
            tools=serve_tool_services(agent.name),
            make_tasks=ServeTaskRunner,
        )
        # The replica owns the toolsets' lifecycle: listed now, closed on shutdown.
        await self._runtime.start()

    async def make_breakers(
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None,
    ) -> BreakerStore:
        """The breaker store of this replica: state cached here, fed by the
        cluster-wide actor, which (not each replica) probes the agent's providers.
        (``benchmarks/serve_path.py`` overrides it to compare other stores.)"""
        store = ServeBreakerStore(probes=agent_probes(agent, providers, routing))
        await store.start()  # subscribe now, not on the first model call
        return store

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        # The edge of the replica: every error leaves as a value (a bug as a RunError,
        # logged with its traceback by `failure`).
        try:
            result = await self._runtime.run(RunRequest.from_dict(request))
        except Exception as exc:
            return failure(exc)
        return ok(result.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        # Closed when this stream is (a caller that stops early, in process or by
        # handle): the run is abandoned now, not when the collector finds it.
        try:
            async with closing_stream(self._runtime.stream(RunRequest.from_dict(request))) as run:
                async for event in run:
                    yield ok(event_to_dict(event))
        except Exception as exc:
            yield failure(exc)

    async def task(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one task of a pattern (``core/tasks.py``) for a run on any replica of
        this application (this one included); the task's failure is in its result."""
        try:
            result = await self._runtime.task(TaskRequest.from_dict(request))
        except Exception as exc:
            return failure(exc)
        return ok(result.to_dict())

    async def paused(self, run_id: str, caller: dict[str, Any] | None) -> dict[str, Any]:
        """What paused run ``run_id`` waits on (``GET .../runs/{run_id}``)."""
        try:
            run = await self._runtime.paused_run(run_id, Caller.from_dict(caller))
        except Exception as exc:
            return failure(exc)
        return ok(paused_view(run))

    @staticmethod
    def _resume_args(answer: dict[str, Any]) -> tuple[str, Caller, Answer]:
        """The run id, the caller, and how to make the decisions from the paused run
        (read once, when the runtime takes it)."""

        def decide(run: PausedRun) -> list[ToolDecision]:
            return decisions_for(
                run,
                str(answer["action"]),
                results=[tuple(r) for r in answer.get("results") or []],
                call_ids=answer.get("call_ids"),
                reason=answer.get("reason"),
                each=[tuple(e) for e in answer.get("each") or []],
            )

        return str(answer["run_id"]), Caller.from_dict(answer.get("caller")), decide

    async def resume(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Go on with paused run ``answer["run_id"]`` once its caller answered
        (``action`` result / approve / reject, ``results``, ``call_ids``, ``reason``,
        ``caller``).  Any replica can: the paused run is in the store, not here."""
        try:
            run_id, caller, decisions = self._resume_args(answer)
            result = await self._runtime.resume(
                run_id, decisions, caller, trace_parent=answer.get("trace_parent")
            )
        except Exception as exc:
            return failure(exc)
        return ok(result.to_dict())

    async def resume_stream(self, answer: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            run_id, caller, decisions = self._resume_args(answer)
            events = self._runtime.resume_stream(
                run_id, decisions, caller, trace_parent=answer.get("trace_parent")
            )
            async with closing_stream(events):
                async for event in events:
                    yield ok(event_to_dict(event))
        except Exception as exc:
            yield failure(exc)

    def health(self) -> dict[str, Any]:
        """The agent's toolsets' health (MCP servers up or down)."""
        return self._runtime.health()

    async def memory(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A memory API operation on this agent's memory (``core/memory/api.py``)."""
        try:
            result = await memory_op(self._runtime.memory, self._runtime.name, op, args)
        except Exception as exc:
            return failure(exc)
        return ok(result)

    def recent_trace(self, trace_id: str, owner: str | None) -> list[dict[str, Any]] | None:
        """This replica's spans of trace ``trace_id`` (of the runs its own routes
        answered), if the trace is ``owner``'s (None: anyone's): the gateway's
        ``GET /v1/traces/{id}`` asks each agent's application."""
        spans = self._telemetry.recent.get(trace_id, owner)
        return None if spans is None else [dict(span) for span in spans]

    async def __del__(self) -> None:
        # Serve calls this on shutdown; a replica whose constructor failed has less
        # to close.
        await self._close_telemetry()
        runtime = getattr(self, "_runtime", None)
        if runtime is not None:
            await runtime.aclose()
        memory = getattr(self, "_memory", None)
        if memory is not None:
            await memory.aclose()
        breakers = getattr(self, "_breakers", None)
        if isinstance(breakers, ServeBreakerStore):
            await breakers.aclose()  # ends the long poll
