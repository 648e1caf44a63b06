"""Every agent over A2A (v1.0, and the v0.3 method names), with the official
``a2a-sdk``: its JSON-RPC dispatcher and request handler, our executor
(``a2a_tasks.py``) and a task store shared by the gateway's replicas
(``a2a_store.py``).

GET  /a2a/{name}/.well-known/agent-card.json   agent ``name``'s card (a2a_card.py)
POST /a2a/{name}                               its JSON-RPC endpoint: SendMessage,
        SendStreamingMessage (SSE), GetTask, ListTasks, CancelTask, SubscribeToTask;
        v0.3: message/send, message/stream, tasks/get, tasks/cancel,
        tasks/resubscribe (v0.3 has no tasks/list)
GET  /.well-known/agent-card.json              the card of the only agent; with
        several agents, 404 naming each agent's card (A2A has no directory format)

Each agent's base URL is ``/a2a/{name}``: an A2A client given that URL fetches the
card below it and posts to the URL the card names.  Requests of the v1.0 methods
carry an ``A2A-Version: 1.0`` header (the SDK's clients send it); without it a
request is taken as v0.3.

A task runs in the replica that received its message, in a task of its own: it
outlives the request (a client may disconnect, then poll ``GetTask``).
``CancelTask`` stops the run, on any replica: here at once, elsewhere at the run's
next event (``a2a_store.py``).  ``SubscribeToTask`` streams a running task only
from the replica running it (elsewhere: unsupported-operation error).
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import warnings
from collections.abc import AsyncGenerator
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types.a2a_pb2 import AgentCard, SubscribeToTaskRequest, TaskState
from a2a.utils.errors import UnsupportedOperationError
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from astromesh_ray.errors import AgentNotFound
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.protocols.a2a_card import agent_card, card_dict, card_path
from astromesh_ray.serve.protocols.a2a_store import ActorTable, TableTaskStore
from astromesh_ray.serve.protocols.a2a_tasks import (
    OpenRun,
    RunExecutor,
    RunStream,
    TurnContextBuilder,
)

# A task parked in input-required is released from replica memory after this long
# idle (the task store keeps it; the next message takes it up again).
PARKED_S = 600.0
_RUNNING = (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)


class RunRequestHandler(DefaultRequestHandlerV2):
    """The SDK's request handler for one agent, over the shared task store; a
    subscription to a task running on another replica is refused, not left waiting
    for events that never come here."""

    def __init__(self, executor: RunExecutor, store: TableTaskStore, card: AgentCard) -> None:
        with warnings.catch_warnings():
            # "VersionedTaskStore without an event_stream: cross-replica streaming is
            # disabled": so it is, on purpose (see on_subscribe_to_task).
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                agent_executor=executor,
                task_store=store,
                agent_card=card,
                request_context_builder=TurnContextBuilder(store),
                interrupted_task_timeout=PARKED_S,
            )
        self.executor = executor
        self.store = store

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        stored = await self.store.get(params.id, context)
        if (
            stored is not None
            and stored.task.status.state in _RUNNING
            and params.id not in self.executor.running
        ):
            raise UnsupportedOperationError(
                message=f"task {params.id} runs on another gateway replica, which alone "
                "streams it: poll GetTask"
            )
        async for event in super().on_subscribe_to_task(params, context):
            yield event


class A2ARoutes(GatewayCore):
    """A2A routes: each agent's card and JSON-RPC endpoint."""

    def _a2a_dispatcher(self, name: str, base_url: str) -> JsonRpcDispatcher:
        """Agent ``name``'s dispatcher in this replica, made on first use."""
        self._app(name)  # 404 for unknown agents
        dispatchers: dict[str, JsonRpcDispatcher] | None = getattr(self, "_a2a", None)
        if dispatchers is None:
            dispatchers = {}
            self._a2a = dispatchers
        dispatcher = dispatchers.get(name)
        if dispatcher is None:
            table: ActorTable | None = getattr(self, "_a2a_table", None)
            if table is None:
                table = self._a2a_table = ActorTable()
            store = TableTaskStore(name, table)
            executor = RunExecutor(name, self._a2a_opener(name))
            card = agent_card(self._agents[name], base_url, bearer=not self._keys.open)
            handler = RunRequestHandler(executor, store, card)
            dispatcher = dispatchers[name] = JsonRpcDispatcher(handler, enable_v0_3_compat=True)
        return dispatcher

    def _a2a_opener(self, name: str) -> OpenRun:
        async def open_run(
            body: dict[str, Any], traceparent: str | None, *, method: str, trace_id: str | None
        ) -> RunStream:
            return await self.open_run(name, body, traceparent, method=method, trace_id=trace_id)

        return open_run

    @api.get("/.well-known/agent-card.json")
    async def a2a_root_card(self, request: Request) -> JSONResponse:
        """The card of the only agent (an A2A client given the gateway's own URL)."""
        names = self._visible_agents()
        if len(names) != 1:
            cards = [card_path(n) for n in names]
            raise AgentNotFound(
                f"{len(names)} agents are served here, each with its own card",
                hint="fetch an agent's card: " + (", ".join(cards) or "(no agents loaded)"),
                cards=cards,
            )
        return await self.a2a_card(names[0], request)

    @api.get("/a2a/{name}/.well-known/agent-card.json")
    async def a2a_card(self, name: str, request: Request) -> JSONResponse:
        self._app(name)  # 404 for unknown agents
        card = agent_card(self._agents[name], str(request.base_url), bearer=not self._keys.open)
        return JSONResponse(card_dict(card))

    @api.post("/a2a/{name}")
    async def a2a_rpc(self, name: str, request: Request) -> Response:
        """One JSON-RPC request; a streaming method is answered with SSE."""
        dispatcher = self._a2a_dispatcher(name, str(request.base_url))
        return await dispatcher.handle_requests(request)
