"""What the command writes: aligned tables, colour only on a terminal without
NO_COLOR, and a run's events as they arrive (answer on stdout, tool activity on
stderr when verbose)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from astromesh_ray.cli_output import RunPrinter, Style, table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_table_aligns_columns_on_their_widest_cell() -> None:
    text = table(["NAME", "TOOLS"], [["a-long-name", "3"], ["b", "12"]])
    assert text.splitlines() == [
        "NAME         TOOLS",
        "a-long-name  3",
        "b            12",
    ]


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style(Terminal())("ok", "green") == "\033[32mok\033[0m"
    assert Style(io.StringIO())("ok", "green") == "ok"  # a pipe, a file
    monkeypatch.setenv("NO_COLOR", "")  # set, even empty: no colour
    assert Style(Terminal())("ok", "green") == "ok"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert Style(Terminal())("ok", "green") == "ok"
    # A coloured header keeps the columns where the plain text puts them.
    monkeypatch.setenv("TERM", "xterm")
    coloured = table(["A", "B"], [["xx", "y"]], Style(Terminal())).splitlines()
    assert coloured[0] == "\033[1mA   B\033[0m" and coloured[1] == "xx  y"


def token(text: str, iteration: int = 1, channel: str = "answer", **extra: Any) -> dict[str, Any]:
    return {
        "type": "token",
        "text": text,
        "channel": channel,
        "iteration": iteration,
        "role": "default",
        **extra,
    }


def test_tokens_are_written_as_they_come_and_tool_calls_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = RunPrinter(out, err, verbose=True)
    printer.event({"type": "run_started", "run_id": "r"})
    printer.event(token("Let me ", 1))
    printer.event(token("check.", 1))
    assert out.getvalue() == "Let me check."  # no newline yet: more may come
    printer.event(token('{"x"', 1, channel="tool_args"))  # not answer text
    printer.event(
        {
            "type": "tool_call",
            "id": "c1",
            "name": "calculator",
            "arguments": {"expression": "2**10"},
        }
    )
    printer.event(
        {
            "type": "tool_result",
            "id": "c1",
            "name": "calculator",
            "content": "1024",
            "is_error": False,
        }
    )
    printer.event(
        {
            "type": "tool_result",
            "id": "c2",
            "name": "web",
            "content": "down\nhard",
            "is_error": True,
        }
    )
    printer.event(token("1024", 2))  # the next model call: its own line
    result = {"answer": "1024", "status": "completed"}
    printer.event({"type": "run_finished", "result": result})
    assert printer.result == result
    printer.finish(result)
    assert out.getvalue() == "Let me check.\n1024\n"
    assert err.getvalue().splitlines() == [
        '→ calculator({"expression": "2**10"})',
        "← calculator: 1024",
        "✗ web: down hard",
    ]


def test_quiet_unless_verbose_and_an_unstreamed_answer_is_printed_at_the_end() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = RunPrinter(out, err, verbose=False)
    printer.event({"type": "tool_call", "id": "c1", "name": "calculator", "arguments": {}})
    printer.event(
        {"type": "handoff", "from_agent": "a", "to_agent": "b", "reason": "r", "iteration": 1}
    )
    printer.finish({"answer": "whole answer"})
    assert out.getvalue() == "whole answer\n" and err.getvalue() == ""
    # Streamed answers are not printed twice; a run with no answer prints nothing.
    out = io.StringIO()
    printer = RunPrinter(out, io.StringIO(), verbose=False)
    printer.event(token("streamed\n"))
    printer.finish({"answer": "streamed"})
    assert out.getvalue() == "streamed\n"
    out = io.StringIO()
    RunPrinter(out, io.StringIO(), verbose=False).finish({"answer": ""})
    assert out.getvalue() == ""


def test_handoffs_and_delegations_are_one_line_each() -> None:
    err = io.StringIO()
    printer = RunPrinter(io.StringIO(), err, verbose=True)
    printer.event(
        {
            "type": "handoff",
            "from_agent": "front",
            "to_agent": "billing",
            "reason": "a bill",
            "iteration": 1,
        }
    )
    printer.event({"type": "delegate", "peer": "analyst", "query": "look\nat this", "iteration": 1})
    assert err.getvalue().splitlines() == [
        "⇢ front hands off to billing: a bill",
        "→ asks analyst: look at this",
    ]
