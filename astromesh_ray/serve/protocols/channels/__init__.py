"""Messaging channels: a platform's webhook on the gateway, each user's message
answered by the channel's agent (``kind: Channel``, ``<config>/channels/*.yaml``).

GET  /v1/channels/{channel}/webhook   the subscription handshake: the challenge as
                                      text when the verify token matches, else 403
POST /v1/channels/{channel}/webhook   a delivery: 401 unless it is signed by the
                                      platform; then 200 at once, answered later

A delivery is answered before the agent runs: Meta retries a webhook that is slow
to answer (and keeps retrying one that fails), so waiting for a model would bring
the same message back while its first run is still going.  So, in order:

1. the channel is looked up (404 for a name the configuration does not declare)
   and the delivery authenticated on its raw body (401, nothing run); a secret
   whose environment variable is not set is a 503, which the platform retries;
2. its messages are parsed (``ChannelAdapter.parse``) and each message id is
   claimed in the dedupe store shared by every gateway replica (``dedupe.py``):
   a redelivered message is not claimed again, and is not run;
3. the answer is ``{received, accepted, duplicates, ignored}`` with 200;
4. in the background, on this replica, each claimed message runs the agent
   (``GatewayCore.call``) with session ``<channel>:<sender>`` (the conversation
   continues across messages, in the agent's own memory) and template context
   ``channel`` and ``contact_name`` (the sender's profile name, or ""); the answer
   is sent back (``ChannelAdapter.send``).  A sender's messages run one after the
   other on a replica, in the order they came; different senders run at once.
   A message that is not text gets the channel's ``unsupported_reply``; a run that
   fails (or waits on client tools or approvals, which a chat cannot give) gets
   its ``error_reply``; either may be null (nothing sent).

The background runs belong to the replica that took the delivery: if it stops
(redeploy, downscale) before they finish, their answers are not sent, and, the
messages being claimed, not retried.  Failures are logged without the users'
texts or numbers.
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import PlainTextResponse

from astromesh_ray.errors import AstromeshError, InvalidRequest
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.protocols.channels.base import (
    ChannelAdapter,
    ChannelNotFound,
    ChannelUnavailable,
    ChannelVerificationFailed,
    InboundMessage,
    adapter_for,
)
from astromesh_ray.serve.protocols.channels.dedupe import (
    ActorDedupeStore,
    DedupeStore,
    MemoryDedupeStore,
)

__all__ = ["ChannelRoutes"]

logger = logging.getLogger(__name__)


class SenderLocks:
    """One lock per conversation, held while its messages run (so a user's second
    message sees the first one's answer in the session); a lock is dropped when no
    message holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class _ChannelState:
    """This replica's channel state: adapters (made on first use), the stores,
    the background runs in flight and the conversations' locks."""

    def __init__(self) -> None:
        self.adapters: dict[str, ChannelAdapter] = {}
        self.shared: DedupeStore = ActorDedupeStore()
        self.local = MemoryDedupeStore()
        self.tasks: set[asyncio.Task[None]] = set()
        self.senders = SenderLocks()


def _log_failure(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a channel's background run failed", exc_info=task.exception())


class ChannelRoutes(GatewayCore):
    """The channels' webhooks (the module docstring has the flow)."""

    def _channel_state(self) -> _ChannelState:
        state: _ChannelState | None = getattr(self, "_channel_runtime", None)
        if state is None:
            state = self._channel_runtime = _ChannelState()
        return state

    def _channel(self, name: str) -> ChannelAdapter:
        """The adapter of channel ``name``; 404 for names not configured."""
        adapters = self._channel_state().adapters
        adapter = adapters.get(name)
        if adapter is None:
            spec = self._channels.get(name)
            if spec is None:
                known = ", ".join(sorted(self._channels)) or "(none)"
                raise ChannelNotFound(
                    f"no channel named {name!r}",
                    hint=f"configured channels: {known} (<config>/channels/*.yaml)",
                )
            adapter = adapters[name] = adapter_for(spec)
        return adapter

    @api.get("/v1/channels/{channel}/webhook", response_class=PlainTextResponse)
    async def channel_verify(self, channel: str, request: Request) -> PlainTextResponse:
        """The platform's subscription handshake (WhatsApp: ``hub.mode``,
        ``hub.verify_token``, ``hub.challenge``)."""
        adapter = self._channel(channel)
        challenge = adapter.verify(dict(request.query_params))
        if challenge is None:
            raise ChannelVerificationFailed(
                f"the subscription handshake of channel {channel!r} failed",
                hint="hub.mode must be subscribe and hub.verify_token the channel's "
                "verify token (its verify_token_env)",
                channel=channel,
            )
        return PlainTextResponse(challenge)

    @api.post("/v1/channels/{channel}/webhook")
    async def channel_webhook(self, channel: str, request: Request) -> dict[str, Any]:
        """One delivery: authenticated, deduplicated, acknowledged; answered in the
        background."""
        adapter = self._channel(channel)
        body = await request.body()
        adapter.authenticate(body, request.headers)
        try:
            payload = json.loads(body)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise InvalidRequest(
                f"the delivery to channel {channel!r} is not JSON: {exc}",
                hint="the platform sends a JSON object",
            ) from None
        delivery = adapter.parse(payload)
        fresh = await self._channel_claim(adapter, delivery.messages)
        if fresh:
            self._channel_spawn(self._channel_answer_all(adapter, fresh))
        return {
            "received": len(delivery.messages),
            "accepted": len(fresh),
            "duplicates": len(delivery.messages) - len(fresh),
            "ignored": delivery.ignored,
        }

    async def _channel_claim(
        self, adapter: ChannelAdapter, messages: list[InboundMessage]
    ) -> list[InboundMessage]:
        """The messages not delivered before (claimed now)."""
        if not messages:
            return []
        state = self._channel_state()
        keys = [f"{adapter.name}:{m.message_id}" for m in messages]
        try:
            claimed = await state.shared.claim(keys, adapter.dedupe_ttl_s)
        except ChannelUnavailable as exc:
            # Fail open: answered once per replica rather than not at all.
            logger.warning("channel %s: deduplicating on this replica only: %s", adapter.name, exc)
            claimed = await state.local.claim(keys, adapter.dedupe_ttl_s)
        return [m for m, new in zip(messages, claimed, strict=True) if new]

    def _channel_spawn(self, work: Coroutine[Any, Any, None]) -> None:
        tasks = self._channel_state().tasks
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)

    async def _channel_answer_all(
        self, adapter: ChannelAdapter, messages: list[InboundMessage]
    ) -> None:
        by_sender: dict[str, list[InboundMessage]] = {}
        for message in messages:
            by_sender.setdefault(message.sender, []).append(message)
        await asyncio.gather(
            *(self._channel_answer_sender(adapter, ms) for ms in by_sender.values())
        )

    async def _channel_answer_sender(
        self, adapter: ChannelAdapter, messages: list[InboundMessage]
    ) -> None:
        senders = self._channel_state().senders
        async with senders.hold(adapter.session_id(messages[0].sender)):
            for message in messages:
                await self._channel_answer(adapter, message)

    async def _channel_answer(self, adapter: ChannelAdapter, message: InboundMessage) -> None:
        """Run the agent on one message and send its answer (or the channel's reply
        for what cannot be answered)."""
        if message.text is None:
            logger.info(
                "channel %s: message %s is %s, not text",
                adapter.name,
                message.message_id,
                message.kind,
            )
            if adapter.unsupported_reply:
                await self._channel_reply(adapter, message, adapter.unsupported_reply)
            return
        body = {
            "query": message.text,
            "session_id": adapter.session_id(message.sender),
            "context": {"channel": adapter.name, "contact_name": message.contact_name},
        }
        try:
            result = await self.call(adapter.agent, body, None)
        except AstromeshError as exc:
            logger.warning(
                "channel %s: agent %s failed on message %s: %s: %s",
                adapter.name,
                adapter.agent,
                message.message_id,
                exc.code,
                exc.message,
            )
            answer = ""
        else:
            answer = str(result.get("answer") or "").strip()
            if result.get("status") == "requires_action":
                logger.warning(
                    "channel %s: run %s of agent %s waits on client tools or approvals, "
                    "which a chat cannot give",
                    adapter.name,
                    result.get("run_id"),
                    adapter.agent,
                )
                answer = ""
            elif not answer:
                logger.warning(
                    "channel %s: run %s of agent %s gave no answer",
                    adapter.name,
                    result.get("run_id"),
                    adapter.agent,
                )
        reply = answer or adapter.error_reply
        if reply:
            await self._channel_reply(adapter, message, reply)

    async def _channel_reply(
        self, adapter: ChannelAdapter, message: InboundMessage, text: str
    ) -> None:
        try:
            await adapter.send(message.sender, text)
        except AstromeshError as exc:
            logger.warning(
                "channel %s: the reply to message %s was not delivered: %s",
                adapter.name,
                message.message_id,
                exc.message,
            )
