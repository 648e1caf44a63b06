"""Fixed chunks stay within size, cut between words, overlap and cover the text;
heading chunks keep their heading path."""

from __future__ import annotations

import itertools

import pytest

from astromesh_ray.core.rag.chunking import Chunk, chunk_sections, split_fixed
from astromesh_ray.core.rag.loaders import Section, load_document
from astromesh_ray.spec.rag import ChunkingSpec
from tests.unit.core.rag.corpus import GUIDE_MD, MANUAL_PAGES, make_pdf

WORDS = " ".join(f"word{i:03d}" for i in range(200))


@pytest.mark.parametrize(("size", "overlap"), [(60, 0), (60, 20), (100, 99), (50, 10)])
def test_fixed_pieces_fit_cut_between_words_overlap_and_cover(size: int, overlap: int) -> None:
    pieces = split_fixed(WORDS, size, overlap)
    assert all(len(p) <= size for p in pieces)
    words = WORDS.split()
    seen: list[str] = []
    for piece in pieces:
        assert all(w in words for w in piece.split())  # no word cut in two
        new = [w for w in piece.split() if w not in seen]
        assert new, "every piece brings a word the previous ones did not have"
        seen += new
    assert seen == words
    if overlap >= len("word000 "):
        for before, after in itertools.pairwise(pieces):
            assert after.split()[0] in before.split()  # starts inside the previous one


def test_a_word_longer_than_size_is_cut_inside() -> None:
    assert split_fixed("a " + "x" * 120 + " b", 50, 5) == ["a", "x" * 50, "x" * 50, "x" * 20 + " b"]


def test_heading_strategy_keeps_the_path_and_cuts_long_sections() -> None:
    sections = [*load_document("g.md", GUIDE_MD, "markdown"), Section("w " * 150, ("Long",))]
    chunks = chunk_sections(sections, ChunkingSpec(strategy="heading", size=120, overlap=10))
    assert [c.heading for c in chunks[:4]] == [
        "Orbital Widget Guide",
        "Orbital Widget Guide > Installation > Linux",
        "Orbital Widget Guide > Installation > Windows",
        "Orbital Widget Guide > Troubleshooting",
    ]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    long = [c for c in chunks if c.heading == "Long"]
    assert len(long) == 3 and all(len(c.text) <= 120 for c in long)
    assert chunks[3].embedded_text().startswith("Orbital Widget Guide > Troubleshooting\n\nIf")


def test_fixed_strategy_keeps_headings_as_lines_of_the_text() -> None:
    sections = load_document("g.md", GUIDE_MD, "markdown")
    [chunk] = chunk_sections(sections, ChunkingSpec(strategy="fixed", size=2000, overlap=100))
    assert chunk.heading == ""
    lines = [line for line in chunk.text.split("\n") if line]
    assert lines[:2] == [
        "Orbital Widget Guide",
        "The Orbital Widget is a desk lamp that tracks the sun.",
    ]
    assert "Installation" in lines and "Linux" in lines and "Troubleshooting" in lines


def test_pdf_pages_are_cut_apart() -> None:
    sections = load_document("m.pdf", make_pdf(MANUAL_PAGES), "pdf")
    chunks = chunk_sections(sections, ChunkingSpec(size=500, overlap=0))
    assert chunks == [Chunk(0, MANUAL_PAGES[0], "", 1), Chunk(1, MANUAL_PAGES[1], "", 2)]
