"""``astromesh chat``'s bookkeeping: the conversation sent as history, and the
slash commands.  (Sessions driven through a terminal: tests/integration/test_cli_chat.py.)"""

from __future__ import annotations

import pytest

from astromesh_ray.cli_chat import Conversation, _command
from astromesh_ray.cli_output import Style


def test_the_conversation_so_far_as_messages() -> None:
    chat = Conversation("chat-1")
    assert chat.messages() == []
    chat.turns += [("hi", "Hello."), ("and you?", "Fine.")]
    assert chat.messages() == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "and you?"},
        {"role": "assistant", "content": "Fine."},
    ]


def test_slash_commands(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    err = Style(io.StringIO())
    chat = Conversation("chat-1")
    chat.turns.append(("hi", "Hello."))
    assert _command("/new", chat, err) is False
    assert chat.session_id != "chat-1" and chat.session_id.startswith("chat-")
    assert chat.turns == []
    assert f"new conversation, session {chat.session_id}" in capsys.readouterr().err
    assert _command("/help", chat, err) is False
    assert "/exit" in capsys.readouterr().err
    assert _command("/nope", chat, err) is False
    assert "unknown command /nope" in capsys.readouterr().err
    assert _command("/exit", chat, err) is True and _command("/quit", chat, err) is True
