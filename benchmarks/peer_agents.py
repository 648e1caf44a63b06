"""The frameworks ``overhead.py`` compares against, each over a scripted model of its
own kind: LangGraph's prebuilt ReAct agent and LangChain's ``create_agent`` over one
fake chat model, and Pydantic AI's ``Agent`` over a ``FunctionModel``.  Imported
lazily: a framework that is not installed is reported as skipped."""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from agent_turns import (
    ASYNC,
    CALL_ID,
    CITY,
    DIRECT_ANSWER,
    LANGCHAIN,
    LANGGRAPH,
    PYDANTIC_AI,
    QUERY,
    SYNC,
    SYSTEM,
    TOOL_ANSWER,
    TOOL_DESCRIPTION,
    TOOL_FUNCTIONS,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_TURN,
    Variant,
    expect,
    variants_of,
)

# -- 2 and 4. LangGraph and LangChain, over one fake chat model ------------------------


def langchain_fake_model() -> Any:
    """A ``BaseChatModel`` answering from a script: a step is a text answer or ``None``
    for the tool call.  It answers natively async (``BaseChatModel``'s default
    ``_agenerate`` would hand ``_generate`` to a thread), and ``bind_tools`` converts
    the tools to OpenAI's format and binds them, as ``ChatOpenAI`` does."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from pydantic import Field

    class ScriptedChatModel(BaseChatModel):
        steps: list[str | None] = Field(default_factory=list)

        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _next(self) -> ChatResult:
            if not self.steps:
                raise AssertionError("ScriptedChatModel: unexpected call")
            step = self.steps.pop(0)
            if step is None:
                call = {"name": TOOL_NAME, "args": {"city": CITY}, "id": CALL_ID}
                message = AIMessage(content="", tool_calls=[{**call, "type": "tool_call"}])
            else:
                message = AIMessage(content=step)
            return ChatResult(generations=[ChatGeneration(message=message)])

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:  # fmt: skip
            return self._next()

        async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> ChatResult:  # fmt: skip
            return self._next()

        def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                       **kwargs: Any) -> Any:  # fmt: skip
            formatted = [convert_to_openai_tool(t) for t in tools]
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
            return self.bind(tools=formatted, **kwargs)

    return ScriptedChatModel()


def langchain_tool(tool: str) -> Any:
    from langchain_core.tools import StructuredTool

    fn = TOOL_FUNCTIONS[tool]
    if tool == ASYNC:
        return StructuredTool.from_function(
            coroutine=fn, name=TOOL_NAME, description=TOOL_DESCRIPTION
        )
    return StructuredTool.from_function(func=fn, name=TOOL_NAME, description=TOOL_DESCRIPTION)


def graph_variants(framework: str, tool: str, model: Any, graph: Any) -> list[Variant]:
    """LangGraph and LangChain agents are both compiled graphs over a message list."""
    from langchain_core.messages import ToolMessage

    def queue(steps: list[str | None]) -> None:
        model.steps.extend(steps)

    async def run() -> Any:
        return await graph.ainvoke({"messages": [{"role": "user", "content": QUERY}]})

    def check(label: str, turn: str, result: Any) -> None:
        expect(label, "the steps left in the script", len(model.steps), 0)
        messages = result["messages"]
        tools = [(m.content, m.status) for m in messages if isinstance(m, ToolMessage)]
        wanted_tools = [(TOOL_RESULT, "success")] if turn == TOOL_TURN else []
        expect(label, "the tool results", tools, wanted_tools)
        wanted = TOOL_ANSWER if turn == TOOL_TURN else DIRECT_ANSWER
        expect(label, "the answer", messages[-1].content, wanted)

    return variants_of(framework, tool, queue, run, check)


def langgraph(tool: str) -> list[Variant]:
    with warnings.catch_warnings():
        # create_react_agent is deprecated in favour of langchain.agents.create_agent
        # (variant 4); it is still LangGraph's own prebuilt agent.
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

        model = langchain_fake_model()
        graph = create_react_agent(model, [langchain_tool(tool)], prompt=SYSTEM)
    return graph_variants(LANGGRAPH, tool, model, graph)


def langchain(tool: str) -> list[Variant]:
    from langchain.agents import create_agent

    model = langchain_fake_model()
    graph = create_agent(model, [langchain_tool(tool)], system_prompt=SYSTEM)
    return graph_variants(LANGCHAIN, tool, model, graph)


# -- 3. Pydantic AI --------------------------------------------------------------------


def pydantic_ai(tool: str) -> list[Variant]:
    from pydantic_ai import Agent, Tool
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    steps: list[str | None] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not steps:
            raise AssertionError("FunctionModel: unexpected call")
        step = steps.pop(0)
        if step is None:
            call = ToolCallPart(tool_name=TOOL_NAME, args={"city": CITY}, tool_call_id=CALL_ID)
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart(step)])

    agent = Agent(
        FunctionModel(model),
        instructions=SYSTEM,
        tools=[Tool(TOOL_FUNCTIONS[tool], name=TOOL_NAME, description=TOOL_DESCRIPTION)],
    )

    async def run() -> Any:
        return await agent.run(QUERY)

    def check(label: str, turn: str, result: Any) -> None:
        expect(label, "the steps left in the script", len(steps), 0)
        returns = [
            part.content
            for message in result.all_messages()
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        expect(label, "the tool results", returns, [TOOL_RESULT] if turn == TOOL_TURN else [])
        wanted = TOOL_ANSWER if turn == TOOL_TURN else DIRECT_ANSWER
        expect(label, "the answer", result.output, wanted)

    return variants_of(PYDANTIC_AI, tool, steps.extend, run, check)


# -- the frameworks, if installed ------------------------------------------------------

FRAMEWORKS: dict[str, tuple[tuple[str, ...], Callable[[str], list[Variant]]]] = {
    LANGGRAPH: (("langgraph", "langchain-core"), langgraph),
    PYDANTIC_AI: (("pydantic-ai-slim",), pydantic_ai),
    LANGCHAIN: (("langchain", "langgraph", "langchain-core"), langchain),
}


def versions(packages: Sequence[str]) -> str:
    return ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def load_frameworks() -> tuple[list[Variant], list[str], list[str]]:
    """The variants of every framework that imports; what was skipped, and why."""
    variants: list[Variant] = []
    found: list[str] = []
    skipped: list[str] = []
    for name, (packages, build) in FRAMEWORKS.items():
        try:
            for tool in (ASYNC, SYNC):
                variants += build(tool)
        except ImportError as exc:
            skipped.append(
                f"{name}: comparison skipped: not installed ({exc}); "
                f"`.venv/bin/pip install -e '.[bench]'`"
            )
            continue
        found.append(f"{name}: {versions(packages)}")
    return variants, found, skipped
