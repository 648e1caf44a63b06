"""The loaders read each format into sections: headings of markdown and HTML kept as
paths, scripts and styles dropped, PDF text by page; unreadable input is refused."""

from __future__ import annotations

import pytest

from astromesh_ray.core.rag.loaders import Section, format_of, load_document
from astromesh_ray.errors import InvalidRequest
from tests.unit.core.rag.corpus import FAQ_HTML, GUIDE_MD, MANUAL_PAGES, make_pdf


def test_markdown_sections_carry_their_heading_path() -> None:
    sections = load_document("guide.md", GUIDE_MD, "markdown")
    assert [s.heading for s in sections] == [
        ("Orbital Widget Guide",),
        ("Orbital Widget Guide", "Installation", "Linux"),
        ("Orbital Widget Guide", "Installation", "Windows"),
        ("Orbital Widget Guide", "Troubleshooting"),
    ]
    assert sections[1].text.startswith("Install the driver with `sudo apt install")
    assert "blinks red three times" in sections[3].text


def test_markdown_code_fences_and_setext_headings() -> None:
    text = "Title\n=====\nintro\n\n```\n# a comment, not a heading\n```\nSub\n---\nbody\n"
    sections = load_document("x.md", text, "markdown")
    assert sections == [
        Section("intro\n\n```\n# a comment, not a heading\n```", ("Title",)),
        Section("body", ("Title", "Sub")),
    ]


def test_html_keeps_visible_text_under_headings_and_drops_scripts() -> None:
    sections = load_document("faq.html", FAQ_HTML.encode(), "html")
    assert sections == [
        Section(
            "Every Orbital Widget has a five year warranty covering the motor and the light.",
            ("Frequently asked questions", "Warranty"),
        ),
        Section(
            "Orders ship from Rotterdam within three business days.",
            ("Frequently asked questions", "Shipping"),
        ),
    ]
    text = " ".join(s.text for s in sections)
    assert "secret" not in text and "tracking pixel" not in text and "color" not in text


def test_pdf_text_by_page() -> None:
    sections = load_document("m.pdf", make_pdf(MANUAL_PAGES), "pdf")
    assert [(s.page, s.text) for s in sections] == [(1, MANUAL_PAGES[0]), (2, MANUAL_PAGES[1])]


def test_plain_text_is_one_tidied_section() -> None:
    assert load_document("a.txt", b"\xef\xbb\xbfone  \r\n\r\n\r\n\r\ntwo\n", "text") == [
        Section("one\n\ntwo")
    ]
    assert load_document("empty.txt", "  \n ", "text") == []


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("bad.txt", b"caf\xe9", "text", "'bad.txt' is not UTF-8 text"),
        ("bad.pdf", b"%PDF-1.4 garbage", "pdf", "'bad.pdf' is not a readable PDF"),
        ("text.pdf", "a PDF as text", "pdf", "a PDF must be sent as bytes"),
    ],
)
def test_unreadable_documents_are_refused(
    name: str, content: bytes | str, fmt: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_document(name, content, fmt)  # type: ignore[arg-type]
    assert message in info.value.message
    assert info.value.details["field"] == "content"


def test_format_by_extension_or_content_type() -> None:
    assert format_of("docs/Guide.MD") == "markdown"
    assert format_of("page.htm") == "html"
    assert format_of("notes", "text/plain; charset=utf-8") == "text"
    assert format_of("x.txt", "application/pdf") == "pdf"
    with pytest.raises(InvalidRequest, match=r"no loader reads \.png"):
        format_of("image.png")
    with pytest.raises(InvalidRequest, match="unknown content_type 'image/png'"):
        format_of("x", "image/png")
    with pytest.raises(InvalidRequest, match="is pdf, which this pipeline does not read"):
        format_of("a.pdf", accepted=["text", "markdown"])
