"""ScriptedProvider: each call consumes one step; extra calls and leftovers fail loudly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    ToolSchema,
)
from astromesh_ray.core.providers import Provider
from astromesh_ray.errors import ProviderError
from astromesh_ray.testing import ScriptedProvider, track_scripted
from astromesh_ray.testing.scripted import count_words, split_words


def _request(text: str = "what is the weather in Paris") -> CompletionRequest:
    return CompletionRequest(
        messages=[Message(role="system", content="be brief"), Message(role="user", content=text)]
    )


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def test_implements_provider_protocol() -> None:
    assert isinstance(ScriptedProvider([]), Provider)


def test_text_step_gives_assistant_message_and_word_usage() -> None:
    provider = ScriptedProvider(["It is sunny today"], name="fake", model="m1")
    completion = asyncio.run(provider.complete(_request()))
    assert completion.message.role == "assistant"
    assert completion.message.content == "It is sunny today"
    assert completion.message.tool_calls == []
    assert completion.finish_reason == "stop"
    assert (completion.provider, completion.model) == ("fake", "m1")
    # prompt: "be brief" (2) + "what is the weather in Paris" (6); answer: 4 words
    assert completion.usage.input_tokens == 8
    assert completion.usage.output_tokens == 4
    assert completion.usage.calls == 1
    provider.assert_consumed()


def test_tool_call_steps_single_and_list() -> None:
    one = ToolCall(id="c1", name="weather", arguments={"city": "Paris"})
    two = [one, ToolCall(id="c2", name="time", arguments={})]
    provider = ScriptedProvider([one, two])
    first = asyncio.run(provider.complete(_request()))
    second = asyncio.run(provider.complete(_request()))
    assert first.message.tool_calls == [one]
    assert first.message.content is None
    assert first.finish_reason == "tool_calls"
    assert second.message.tool_calls == two
    # 'weather {"city": "Paris"}' is 3 words
    assert first.usage.output_tokens == 3


def test_exception_step_is_raised() -> None:
    error = ProviderError("backend down", provider="x", status=503, retryable=True)
    provider = ScriptedProvider([error, "recovered"])
    with pytest.raises(ProviderError, match="backend down") as info:
        asyncio.run(provider.complete(_request()))
    assert info.value.retryable
    assert asyncio.run(provider.complete(_request())).message.content == "recovered"


def test_callable_step_sees_the_request() -> None:
    seen: list[CompletionRequest] = []

    def check(request: CompletionRequest) -> str:
        seen.append(request)
        assert request.tools[0].name == "weather"
        return f"saw {len(request.messages)} messages"

    provider = ScriptedProvider([check])
    tools = [ToolSchema(name="weather", description="d", parameters={"type": "object"})]
    request = CompletionRequest(messages=[Message(role="user", content="hi")], tools=tools)
    completion = asyncio.run(provider.complete(request))
    assert completion.message.content == "saw 1 messages"
    assert seen == [request]


def test_callable_step_assertion_fails_the_call() -> None:
    def reject(request: CompletionRequest) -> str:
        raise AssertionError("wrong prompt")

    provider = ScriptedProvider([reject])
    with pytest.raises(AssertionError, match="wrong prompt"):
        asyncio.run(provider.complete(_request()))


def test_unexpected_call_names_call_number_and_last_message() -> None:
    provider = ScriptedProvider(["only one"], name="planner")
    asyncio.run(provider.complete(_request()))
    with pytest.raises(AssertionError) as info:
        asyncio.run(provider.complete(_request("and tomorrow?")))
    text = str(info.value)
    assert "ScriptedProvider 'planner': unexpected call #2" in text
    assert "user: 'and tomorrow?'" in text
    assert len(provider.requests) == 2  # the unexpected request is recorded too


def test_assert_consumed_lists_leftover_steps() -> None:
    lookup = ToolCall(id="c", name="lookup", arguments={"q": 1})
    provider = ScriptedProvider(["a", lookup])
    asyncio.run(provider.complete(_request()))
    assert provider.remaining == 1
    with pytest.raises(AssertionError, match=r"(?s)1 of 2 steps not consumed.*lookup"):
        provider.assert_consumed()
    assert provider.discard_remaining() == [lookup]  # left on purpose: this test's point
    provider.assert_consumed()


def test_discard_remaining_then_a_call_is_unexpected() -> None:
    provider = ScriptedProvider(["a", "b"], name="p")
    assert provider.discard_remaining() == ["a", "b"]
    assert provider.remaining == 0
    with pytest.raises(AssertionError, match="unexpected call #1"):
        asyncio.run(provider.complete(_request()))


def test_requests_are_snapshots() -> None:
    provider = ScriptedProvider(["one", "two"])
    messages = [Message(role="user", content="first")]
    tools = [ToolSchema(name="weather", description="d", parameters={"type": "object"})]
    parameters: dict[str, object] = {"temperature": 0.0}
    request = CompletionRequest(messages=messages, tools=tools, parameters=parameters)
    asyncio.run(provider.complete(request))
    # The engine keeps appending to its lists and may adjust parameters between calls.
    messages.append(Message(role="assistant", content="one"))
    tools.clear()
    parameters["max_tokens"] = 5
    asyncio.run(provider.complete(request))
    first, second = provider.requests
    assert [len(r.messages) for r in provider.requests] == [1, 2]
    assert [t.name for t in first.tools] == ["weather"] and second.tools == []
    assert first.parameters == {"temperature": 0.0}
    assert second.parameters == {"temperature": 0.0, "max_tokens": 5}
    assert first.messages[0] is messages[0]  # messages are values: shared, not copied


def test_track_scripted_records_providers_created_inside() -> None:
    before = ScriptedProvider(["outside"])
    with track_scripted() as outer:
        done = ScriptedProvider(["x"], name="done")
        with track_scripted() as inner:
            left = ScriptedProvider(["y", "z"], name="left")
        asyncio.run(done.complete(_request()))
        asyncio.run(left.complete(_request()))
    assert outer.providers == [done, left] and inner.providers == [left]
    assert outer.leftovers() == [left]
    report = outer.leftover_report()
    assert "ScriptedProvider 'left': 1 of 2 steps not consumed after 1 call(s)" in report
    assert "'z'" in report and "'done'" not in report and "discard_remaining()" in report
    with pytest.raises(AssertionError, match="'left'"):
        inner.assert_consumed()
    left.discard_remaining()
    outer.assert_consumed()
    assert outer.leftover_report() == ""
    assert before.discard_remaining() == ["outside"]  # created before: not tracked above


PLUGIN_TESTS = """
import asyncio

import pytest

from astromesh_ray.core.messages import CompletionRequest, Message
from astromesh_ray.testing import ScriptedProvider, track_scripted

REQUEST = CompletionRequest(messages=[Message(role="user", content="hi")])


@pytest.fixture
def planner() -> ScriptedProvider:
    return ScriptedProvider(["plan", "unused plan"], name="planner")


def test_leftover_in_test() -> None:
    provider = ScriptedProvider(["a", "never asked"], name="worker")
    asyncio.run(provider.complete(REQUEST))


def test_leftover_in_fixture(planner: ScriptedProvider) -> None:
    asyncio.run(planner.complete(REQUEST))


def test_all_consumed() -> None:
    provider = ScriptedProvider(["a"])
    asyncio.run(provider.complete(REQUEST))


def test_discarded() -> None:
    provider = ScriptedProvider(["a", "b"])
    asyncio.run(provider.complete(REQUEST))
    assert provider.discard_remaining() == ["b"]


@pytest.mark.allow_unconsumed_steps(reason="shows the opt-out")
def test_marked() -> None:
    ScriptedProvider(["left on purpose"])


@pytest.mark.allow_unconsumed_steps
def test_marked_without_reason() -> None:
    pass


def test_failing_is_reported_once() -> None:
    ScriptedProvider(["x"], name="quiet")
    assert False, "the real failure"
"""


def test_pytest_plugin_fails_tests_that_leave_steps(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["astromesh_ray.testing.pytest_plugin"]')
    pytester.makepyfile(test_plugin=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    # The two leftover tests pass, then error at teardown; the one without a reason
    # errors at setup.
    result.assert_outcomes(passed=5, failed=1, errors=3)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leftover_in_test*",
            "ScriptedProvider 'worker': 1 of 2 steps not consumed after 1 call(s):",
            "  - 'never asked'",
            "*ERROR at teardown of test_leftover_in_fixture*",
            "ScriptedProvider 'planner': 1 of 2 steps not consumed after 1 call(s):",
            "  - 'unused plan'",
            "*ERROR at setup of test_marked_without_reason*",
            "*allow_unconsumed_steps needs a reason*",
        ]
    )
    assert "the real failure" in out and "'quiet'" not in out


def test_stream_text_in_word_chunks_then_final_chunk() -> None:
    provider = ScriptedProvider(["Hello  brave\nworld "])
    chunks = asyncio.run(_collect(provider.stream(_request())))
    assert [c.text for c in chunks[:-1]] == ["Hello  ", "brave\n", "world "]
    final = chunks[-1]
    assert final.text == ""
    assert final.finish_reason == "stop"
    assert final.usage is not None and final.usage.output_tokens == 3
    assert "".join(c.text for c in chunks) == "Hello  brave\nworld "


def test_stream_tool_calls_arrive_whole_in_last_chunk() -> None:
    call = ToolCall(id="c9", name="search", arguments={"q": "ray serve"})
    provider = ScriptedProvider([[call]])
    chunks = asyncio.run(_collect(provider.stream(_request())))
    assert len(chunks) == 1
    assert chunks[0].tool_calls == [call]
    assert chunks[0].finish_reason == "tool_calls"


def test_stream_consumes_step_on_call_and_raises_exception_while_iterating() -> None:
    provider = ScriptedProvider([ProviderError("boom", retryable=False)])
    stream = provider.stream(_request())
    assert provider.remaining == 0
    with pytest.raises(ProviderError, match="boom"):
        asyncio.run(_collect(stream))


def test_bad_step_type_is_a_clear_error() -> None:
    provider = ScriptedProvider([42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="step must be str, ToolCall"):
        asyncio.run(provider.complete(_request()))


def test_health_and_aclose() -> None:
    provider = ScriptedProvider([])
    assert asyncio.run(provider.health()) is True
    asyncio.run(provider.aclose())
    assert provider.closed


@pytest.mark.parametrize(
    ("text", "words"), [("", 0), ("one", 1), ("  a b\tc\n", 3), ('{"k": "v w"}', 3)]
)
def test_count_words(text: str, words: int) -> None:
    assert count_words(text) == words
    assert "".join(split_words(text)) == text


def test_importing_testing_does_not_import_the_http_server_stack() -> None:
    code = (
        "import sys, astromesh_ray.testing as t; "
        "assert t.ScriptedProvider; "
        "print('uvicorn' in sys.modules, 'ray' in sys.modules); "
        "t.ScriptedOpenAIServer; print('uvicorn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "True"]
