"""What the ``astromesh`` command writes: colours, aligned tables and a run's events
as they arrive.

Colour is for people: it is used only when the stream written to is a terminal
and ``NO_COLOR`` is unset (https://no-color.org), so pipes, logs and tests get
plain text.  The answer goes to stdout, everything else about a run (tool calls,
handoffs, the session line of ``chat``) to stderr, so ``astromesh run ... > file``
keeps only the answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["RunPrinter", "Style", "table"]

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


class Style:
    """ANSI styles for ``stream``, or none: a terminal and no ``NO_COLOR``."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = (
            _isatty(stream) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a terminal
        return False


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style | None = None) -> str:
    """``rows`` under ``headers``, each column padded to its widest cell (widths are
    measured on the plain text, so colouring the header does not shift columns)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    head = line(headers)
    lines = [style(head, "bold") if style else head]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def _clip(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RunPrinter:
    """Writes one run's events (``event_to_dict`` dicts, in-process or from a
    server's SSE stream) as they arrive: answer tokens to ``out`` at once, and, when
    ``verbose``, one line on ``err`` per tool call, tool result, delegation and
    handoff.  ``finish`` ends the answer: the result's answer is printed there when
    no token was streamed (a provider that does not stream, a structured answer)."""

    def __init__(self, out: TextIO, err: TextIO, *, verbose: bool) -> None:
        self.out = out
        self.err = err
        self.verbose = verbose
        self.style = Style(err)
        self.streamed = False  # some answer text was written
        self.result: dict[str, Any] | None = None
        self._line_open = False  # the last text written did not end a line
        self._speaker: tuple[Any, ...] | None = None

    def event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "token":
            if event.get("channel") == "answer" and event.get("text"):
                self._token(event)
        elif kind == "run_finished":
            self.result = dict(event["result"])
        elif self.verbose:
            note = self._note(event)
            if note is not None:
                self._end_line()
                self.err.write(note + "\n")
                self.err.flush()

    def _token(self, event: Mapping[str, Any]) -> None:
        # Text of another model call (a new iteration, another swarm member) starts
        # on its own line rather than running into the previous one's.
        speaker = (event.get("iteration"), event.get("role"), event.get("task"))
        if self._speaker is not None and speaker != self._speaker:
            self._end_line()
        self._speaker = speaker
        text = str(event["text"])
        self.out.write(text)
        self.out.flush()
        self.streamed = True
        self._line_open = not text.endswith("\n")

    def _note(self, event: Mapping[str, Any]) -> str | None:
        s, kind = self.style, event.get("type")
        if kind == "tool_call":
            args = json.dumps(event.get("arguments") or {}, ensure_ascii=False)
            return s(f"→ {event.get('name')}({_clip(args, 100)})", "cyan")
        if kind == "tool_result":
            if event.get("is_error"):
                return s(f"✗ {event.get('name')}: {_clip(str(event.get('content', '')))}", "red")
            return s(f"← {event.get('name')}: {_clip(str(event.get('content', '')))}", "dim")
        if kind == "delegate":
            return s(f"→ asks {event.get('peer')}: {_clip(str(event.get('query', '')))}", "cyan")
        if kind == "handoff":
            reason = f": {event['reason']}" if event.get("reason") else ""
            return s(f"⇢ {event.get('from_agent')} hands off to {event.get('to_agent')}{reason}")
        if kind == "guardrail":
            return s(f"! guardrail {event.get('guardrail')} {event.get('action')}", "yellow")
        return None

    def _end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    def finish(self, result: Mapping[str, Any]) -> None:
        """The run ended with ``result``: end the answer's line."""
        answer = str(result.get("answer") or "")
        if not self.streamed and answer:
            self.out.write(answer)
            self._line_open = not answer.endswith("\n")
        self._end_line()
        self.out.flush()
