"""The peer of ``throughput.py``: the same agent built with LangGraph
(``langgraph.prebuilt.create_react_agent``, as ``overhead.py`` builds it, no tools,
the same system prompt), served by uvicorn with a FastAPI route ``POST /run``
(``{"query"}`` -> ``{"answer"}``), in a child process of its own.

Its chat model calls the same model server over HTTP.  LangChain's ``ChatOpenAI``
lives in ``langchain-openai``, which is not installed here; ``LoopbackChatModel``
stands in for it: a ``BaseChatModel`` posting the chat completion with one pooled
``httpx`` client of ``DEFAULT_MAX_CONNECTIONS`` connections, the same as our
provider's, and answering natively async.  (``ChatOpenAI`` would go through the
``openai`` SDK: more work per call than this, not less.)  uvicorn runs as users start
it (one worker, its default event loop and HTTP parser: uvloop and httptools here),
with its access log off, as the Serve proxy writes its own to a file, and idle
connections kept 90 s, as the Serve proxy keeps them (uvicorn's default, 5 s, closes
the clients' pooled connections between blocks)."""

# No `from __future__ import annotations`: FastAPI must see the route's real
# annotation objects (its body model is local to ``app``).
import functools
import importlib.metadata
import json
import os
import socket
import threading
import warnings
from multiprocessing.connection import Connection
from typing import Any

from serve_load import MODEL, Child

from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS

PACKAGES = ("langgraph", "langchain-core", "fastapi", "uvicorn")


def available() -> str | None:
    """Why the peer cannot run (a package missing), or None."""
    try:
        import fastapi  # noqa: F401
        import langchain_core  # noqa: F401
        import langgraph  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"not installed ({exc}); `.venv/bin/pip install -e '.[bench]'`"
    return None


def versions() -> str:
    return ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)


def chat_model(base_url: str) -> Any:
    """A ``BaseChatModel`` over the OpenAI-compatible server at ``base_url``."""
    import httpx
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, convert_to_openai_messages
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.utils.function_calling import convert_to_openai_tool

    url = f"{base_url}/chat/completions"
    clients: list[httpx.AsyncClient] = []  # one, made in the server's event loop

    def client() -> httpx.AsyncClient:
        if not clients:
            pool = httpx.Limits(
                max_connections=DEFAULT_MAX_CONNECTIONS,
                max_keepalive_connections=DEFAULT_MAX_CONNECTIONS,
            )
            clients.append(httpx.AsyncClient(timeout=60.0, limits=pool))
        return clients[0]

    class LoopbackChatModel(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "loopback-openai"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:  # fmt: skip
            raise NotImplementedError("async only")

        async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> ChatResult:  # fmt: skip
            body = {"model": MODEL, "messages": convert_to_openai_messages(messages), **kwargs}
            reply = await client().post(url, json=body)
            reply.raise_for_status()
            message = reply.json()["choices"][0]["message"]
            calls = [
                {
                    "name": call["function"]["name"],
                    "args": json.loads(call["function"]["arguments"] or "{}"),
                    "id": call.get("id"),
                    "type": "tool_call",
                }
                for call in message.get("tool_calls") or []
            ]
            answer = AIMessage(content=message.get("content") or "", tool_calls=calls)
            return ChatResult(generations=[ChatGeneration(message=answer)])

        def bind_tools(self, tools: Any, *, tool_choice: Any = None,
                       **kwargs: Any) -> Any:  # fmt: skip
            formatted = [convert_to_openai_tool(t) for t in tools]
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
            return self.bind(tools=formatted, **kwargs)

    return LoopbackChatModel()


def app(base_url: str, system: str) -> Any:
    """The FastAPI application: ``POST /run`` runs one turn, ``GET /health``."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    with warnings.catch_warnings():
        # create_react_agent is deprecated in favour of langchain.agents.create_agent;
        # it is still LangGraph's own prebuilt agent (overhead.py measures both).
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

        graph = create_react_agent(chat_model(base_url), [], prompt=system)

    class RunBody(BaseModel):
        query: str

    api = FastAPI()

    @api.post("/run")
    async def run(body: RunBody) -> dict[str, str]:
        result = await graph.ainvoke({"messages": [{"role": "user", "content": body.query}]})
        return {"answer": str(result["messages"][-1].content)}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


def _serve(conn: Connection, base_url: str, system: str) -> None:
    """The child: uvicorn in the main thread; a thread waits for ``("stop",)``."""
    os.environ["LANGSMITH_TRACING"] = "false"
    os.environ["LANGCHAIN_TRACING_V2"] = "false"
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app(base_url, system),
        log_level="warning",
        access_log=False,
        lifespan="off",
        # Serve's proxy keeps idle connections 90 s, uvicorn 5 s by default: the
        # clients' pooled connections, idle between blocks, would be closed under them.
        timeout_keep_alive=90,
    )
    server = uvicorn.Server(config)

    def wait_for_stop() -> None:
        conn.recv()
        server.should_exit = True

    threading.Thread(target=wait_for_stop, daemon=True).start()
    conn.send((os.getpid(), f"http://127.0.0.1:{port}"))
    server.run(sockets=[sock])
    conn.send(None)


def start(base_url: str, system: str) -> Child:
    """The LangGraph server in a child process; ``recv()`` gives (pid, its URL)."""
    return Child(functools.partial(_serve, base_url=base_url, system=system))
