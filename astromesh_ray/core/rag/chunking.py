"""Chunking: a document's sections as the chunks that are embedded and searched.

- ``fixed``: the whole document (each PDF page apart) cut into pieces of at most
  ``size`` characters, between words, each starting with the last words of the
  previous piece that fit in ``overlap`` characters.  A single word longer than
  ``size`` (a URL, a hash) is cut inside.
- ``heading``: one chunk per section under a heading (markdown, HTML), with its
  heading path; a section longer than ``size`` is cut as ``fixed`` cuts, each piece
  keeping the path.  Formats without headings are cut as ``fixed``.

Chunks are numbered 0, 1, 2, ... in document order: with the document's source,
that number is the chunk's identity in the store (``core/rag/pipeline.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from astromesh_ray.core.rag.loaders import Section
from astromesh_ray.spec.rag import ChunkingSpec

__all__ = ["HEADING_SEPARATOR", "Chunk", "chunk_sections", "split_fixed"]

HEADING_SEPARATOR = " > "
"""Between the titles of a heading path, as chunks show it (``Install > Linux``)."""

_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document: its place, text, heading path and PDF page."""

    index: int
    text: str
    heading: str = ""
    page: int | None = None

    def embedded_text(self) -> str:
        """What is embedded: the heading path, then the text (a section's heading
        says what its text is about, so it counts in the similarity)."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


def _words(text: str, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each word of ``text``; words longer than ``size`` are cut
    into pieces of ``size`` characters."""
    spans: list[tuple[int, int]] = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        while end - start > size:
            spans.append((start, start + size))
            start += size
        spans.append((start, end))
    return spans


def split_fixed(text: str, size: int, overlap: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters cut between words, each
    repeating the trailing words of the previous piece that fit in ``overlap``
    characters (the original whitespace, line breaks included, is kept inside a
    piece)."""
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be less than size ({size})")
    spans = _words(text, size)
    pieces: list[str] = []
    first = 0
    while first < len(spans):
        start = spans[first][0]
        last = first
        while last + 1 < len(spans) and spans[last + 1][1] - start <= size:
            last += 1
        pieces.append(text[start : spans[last][1]])
        if last + 1 >= len(spans):
            break
        # The next piece starts with the words at the end of this one that fit in the
        # overlap, and still reaches the first new word (so no piece is only a repeat);
        # always at least one word further on, so the cut moves forward.
        end, reach = spans[last][1], spans[last + 1][1]
        nxt = last + 1
        while (
            nxt - 1 > first
            and end - spans[nxt - 1][0] <= overlap
            and reach - spans[nxt - 1][0] <= size
        ):
            nxt -= 1
        first = nxt
    return pieces


def _section_text(section: Section, previous: tuple[str, ...]) -> str:
    """A section as lines of the whole text: the headings it opens (those of its path
    the previous section was not under), then its text."""
    shared = 0
    while shared < min(len(previous), len(section.heading)) and (
        previous[shared] == section.heading[shared]
    ):
        shared += 1
    return "\n\n".join([*section.heading[shared:], section.text])


def chunk_sections(sections: Sequence[Section], spec: ChunkingSpec) -> list[Chunk]:
    """The chunks of a document's ``sections`` by ``spec.strategy``."""
    # Each group is cut on its own: a PDF page, or under `heading` a section.
    groups: list[tuple[str, str, int | None]] = []  # (heading, text, page)
    by_heading = spec.strategy == "heading"
    pending: list[str] = []
    page: int | None = None
    previous: tuple[str, ...] = ()
    for section in sections:
        if by_heading and section.heading:
            groups.append((HEADING_SEPARATOR.join(section.heading), section.text, section.page))
        elif section.page is not None:
            groups.append(("", section.text, section.page))
        elif by_heading:
            groups.append(("", section.text, None))
        else:  # fixed: the document is one text, its headings as lines of it
            pending.append(_section_text(section, previous))
            previous, page = section.heading, section.page
    if pending:
        groups.insert(0, ("", "\n\n".join(pending), page))
    chunks: list[Chunk] = []
    for heading, text, group_page in groups:
        for piece in split_fixed(text, spec.size, spec.overlap):
            chunks.append(Chunk(len(chunks), piece, heading, group_page))
    return chunks
