"""Text that every backend can store and every model can read: the one cleaning
rule shared by the vector stores and the embedders."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD (a surrogate pair, as
    some JSON decoders leave them, becomes the character it encodes)."""
    if not _UNSTORABLE.search(text):
        return text
    if any("\ud800" <= c <= "\udfff" for c in text):
        # UTF-16 joins the valid pairs and replaces each lone surrogate.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text.replace("\x00", "\ufffd")
