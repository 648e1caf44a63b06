"""``astromesh chat AGENT``: a conversation with an agent, one turn per line.

Every turn of a session carries the same ``session_id`` (made once, printed at the
start; ``/new`` starts another).  An agent with conversational memory remembers the
session itself; for one without, the conversation so far goes with each turn as
the request's ``history``, so the model sees it either way (the memory is not fed
the conversation twice: with memory, no history is sent).  With ``--url`` the
turns go to a running server's OpenAI-compatible route, which applies the same
rule on its side (``cli_remote.stream_chat``).

Lines come from stdin (``input()``, with line editing and history through
``readline`` on a terminal).  ``/exit`` or end of input (Ctrl-D) quits; Ctrl-C
stops the answer being written (the run is cancelled) and the chat goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from astromesh_ray.cli_output import RunPrinter, Style
from astromesh_ray.cli_run import (
    LocalEngine,
    check_target,
    consume,
    json_context,
    report_paused,
    verbose_of,
)
from astromesh_ray.errors import AstromeshError

__all__ = ["chat_command"]

HELP = """\
/new   start a new conversation (a new session id, nothing remembered)
/help  this list
/exit  quit (as does Ctrl-D); Ctrl-C stops an answer"""


def new_session_id() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


class Conversation:
    """One session: its id and, for history, what was said so far."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.turns: list[tuple[str, str]] = []  # (user, assistant)

    def messages(self) -> list[dict[str, Any]]:
        """The turns so far as chat messages (what goes as ``history``)."""
        messages: list[dict[str, Any]] = []
        for user, answer in self.turns:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": answer})
        return messages


class _Turns:
    """How a turn is run: in this process, or on the server at ``url``."""

    def __init__(self, args: argparse.Namespace, context: dict[str, Any]) -> None:
        self.args = args
        self.context = context
        self.engine = None if args.url else LocalEngine(args.config, args.agents, args.agent)

    async def turn(self, chat: Conversation, line: str, printer: RunPrinter) -> dict[str, Any]:
        if self.engine is None:
            from astromesh_ray.cli_remote import stream_chat

            messages = [*chat.messages(), {"role": "user", "content": line}]
            events = stream_chat(
                self.args.url, self.args.agent, messages, chat.session_id, self.context
            )
            return await consume(events, printer)
        from astromesh_ray.core.context import RunRequest
        from astromesh_ray.core.messages import Message

        history = [] if self.engine.remembers else [Message.from_dict(m) for m in chat.messages()]
        request = RunRequest(
            query=line, session_id=chat.session_id, context=self.context, history=history
        )
        return await consume(self.engine.events(request), printer)

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()


def _read(prompt: str) -> str | None:
    """The next line, or ``None`` at end of input."""
    try:
        return input(prompt)
    except EOFError:
        return None


def chat_command(args: argparse.Namespace) -> int:
    check_target(args)
    context = json_context(args.context)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  # line editing and history for input()
    err = Style(sys.stderr)
    turns = _Turns(args, context)
    chat = Conversation(args.session_id or new_session_id())
    where = f" at {args.url}" if args.url else ""
    print(
        err(f"chat with {args.agent}{where}, session {chat.session_id}", "bold")
        + err("  (/help for commands, /exit or Ctrl-D to quit)", "dim"),
        file=sys.stderr,
    )
    prompt = Style(sys.stdout)("you> ", "green") if interactive else ""
    with asyncio.Runner() as runner:
        try:
            while True:
                try:
                    line = _read(prompt)
                except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
                    print(file=sys.stderr)
                    continue
                if line is None:
                    break
                line = line.strip()
                if not line:
                    continue
                if line.startswith("/"):
                    if _command(line, chat, err):
                        break
                    continue
                _turn(runner, turns, chat, line, args)
        finally:
            runner.run(turns.aclose())
    if interactive:
        print(file=sys.stderr)
    return 0


def _command(line: str, chat: Conversation, err: Style) -> bool:
    """Run a ``/command``; ``True`` to quit."""
    word = line.split()[0]
    if word in ("/exit", "/quit"):
        return True
    if word == "/new":
        chat.session_id, chat.turns = new_session_id(), []
        print(err(f"new conversation, session {chat.session_id}", "bold"), file=sys.stderr)
    elif word == "/help":
        print(HELP, file=sys.stderr)
    else:
        print(f"unknown command {word}; /help lists them", file=sys.stderr)
    return False


def _turn(
    runner: asyncio.Runner, turns: _Turns, chat: Conversation, line: str, args: argparse.Namespace
) -> None:
    printer = RunPrinter(sys.stdout, sys.stderr, verbose=verbose_of(args))
    try:
        result = runner.run(turns.turn(chat, line, printer))
    except KeyboardInterrupt:  # the run was cancelled; the conversation goes on without it
        printer.finish({})
        print("(stopped)", file=sys.stderr)
        return
    except AstromeshError as exc:
        printer.finish({})
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return
    if not report_paused(result):
        chat.turns.append((line, str(result.get("answer") or "")))
