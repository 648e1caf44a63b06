"""Document loaders: the bytes (or text) of a file as sections of plain text.

One loader per format (``text``, ``markdown``, ``html``, ``pdf``), picked by file
extension or content type (``format_of``).  A loader keeps what the chunkers need:
markdown and HTML documents come back as one ``Section`` per heading, with the
heading path above it (``("Install", "Linux")``); a PDF as one section per page;
plain text as one section.  Loaders never look at the chunking strategy.

Input is untrusted (files a user points at, documents posted over HTTP, text a
model wrote): a document that cannot be read is an ``InvalidRequest`` naming it,
never a crash.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from astromesh_ray.errors import InvalidRequest
from astromesh_ray.spec.rag import LOADER_EXTENSIONS, LoaderName

__all__ = ["CONTENT_TYPES", "Section", "format_of", "load_document"]

CONTENT_TYPES: dict[str, LoaderName] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
"""MIME type -> loader (``content_type`` of a posted document; parameters such as
``; charset=utf-8`` are ignored)."""


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading path (empty: before any heading, or a format
    without headings), on one PDF ``page`` (1-based) when it comes from a PDF."""

    text: str
    heading: tuple[str, ...] = ()
    page: int | None = None


def format_of(
    name: str, content_type: str | None = None, *, accepted: Collection[str] | None = None
) -> LoaderName:
    """The loader for document ``name``: its ``content_type`` when given, else its file
    extension.  ``InvalidRequest`` when neither names a known format, or the format is
    not among ``accepted`` (a pipeline's ``loaders``)."""
    found: LoaderName | None
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        found = CONTENT_TYPES.get(mime)
        if found is None:
            raise InvalidRequest(
                f"document {name!r}: unknown content_type {content_type!r}",
                hint="content types: " + ", ".join(CONTENT_TYPES),
                field="content_type",
            )
    else:
        suffix = PurePath(name).suffix.lower()
        found = LOADER_EXTENSIONS.get(suffix)
        if found is None:
            raise InvalidRequest(
                f"document {name!r}: no loader reads {suffix or 'files without an extension'}",
                hint="extensions: " + ", ".join(LOADER_EXTENSIONS) + " (or give content_type)",
                field="name",
            )
    if accepted is not None and found not in accepted:
        raise InvalidRequest(
            f"document {name!r} is {found}, which this pipeline does not read",
            hint="its loaders: " + ", ".join(accepted),
            field="name",
        )
    return found


def load_document(name: str, content: bytes | str, fmt: LoaderName) -> list[Section]:
    """The sections of document ``name`` read as ``fmt``; sections without text are
    dropped, so a document with no text gives ``[]``."""
    if fmt == "pdf":
        if isinstance(content, str):
            raise InvalidRequest(
                f"document {name!r}: a PDF must be sent as bytes, not text", field="content"
            )
        sections = _pdf(name, content)
    else:
        text = _decode(name, content)
        sections = _TEXT_LOADERS[fmt](text)
    return [s for s in sections if s.text.strip() or s.heading]


def _decode(name: str, content: bytes | str) -> str:
    if isinstance(content, str):
        return content
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"document {name!r} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            hint="convert it to UTF-8",
            field="content",
        ) from None


# --------------------------------------------------------------------------- text


def _text(text: str) -> list[Section]:
    return [Section(_tidy(text))]


def _tidy(text: str) -> str:
    """Line endings unified, trailing spaces and runs of blank lines removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --------------------------------------------------------------------------- markdown

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class _Outline:
    """Sections under a heading stack, as headings of levels 1-6 arrive.  A heading
    with no text of its own (directly followed by a sub-heading) is no section: it
    lives on in its children's paths."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._path: list[tuple[int, str]] = []
        self._lines: list[str] = []

    def heading(self, level: int, title: str) -> None:
        self._flush()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        if title:
            self._path.append((level, title))

    def line(self, text: str) -> None:
        self._lines.append(text)

    def _flush(self) -> None:
        text = _tidy("\n".join(self._lines))
        self._lines = []
        if text:
            self.sections.append(Section(text, tuple(title for _, title in self._path)))

    def done(self) -> list[Section]:
        self._flush()
        return self.sections


def _markdown(text: str) -> list[Section]:
    outline = _Outline()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fence: str | None = None  # the fence of the code block we are in
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if fence is not None:
            outline.line(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        opened = _FENCE.match(line)
        if opened:  # headings inside code blocks are code
            fence = opened.group(1)[:3]
            outline.line(line)
            continue
        atx = _ATX.match(line)
        if atx:
            outline.heading(len(atx.group(1)), (atx.group(2) or "").strip())
            continue
        underline = lines[i] if i < len(lines) else ""
        if line.strip() and not _SETEXT.match(line) and _SETEXT.match(underline):
            outline.heading(1 if underline.strip().startswith("=") else 2, line.strip())
            i += 1  # the underline
            continue
        outline.line(line)
    return outline.done()


# --------------------------------------------------------------------------- html

_SKIPPED = frozenset({"script", "style", "noscript", "template", "head", "svg"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li",
        "main", "nav", "ol", "p", "pre", "section", "summary", "table", "td", "th", "tr",
        "ul",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "wbr"})


class _HtmlText(HTMLParser):
    """The visible text of an HTML page, split at its headings; ``script``,
    ``style`` and the ``head`` are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.outline = _Outline()
        self._skip = 0  # depth inside skipped elements
        self._title: list[str] | None = None  # text of the heading being read
        self._level = 0
        self._buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif self._skip:
            return
        elif tag in _HEADINGS:
            self._line()
            self._title, self._level = [], _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._line()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skip and tag in _BLOCKS:
            self._line()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag in _HEADINGS and self._title is not None:
            title = " ".join("".join(self._title).split())
            self.outline.heading(self._level, title)
            self._title = None
        elif tag in _BLOCKS:
            self._line()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._title is not None:
            self._title.append(data)
        else:
            self._buffer.append(data)

    def _line(self) -> None:
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if text:
            self.outline.line(text)

    def sections(self) -> list[Section]:
        self._line()
        return self.outline.done()


def _html(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.sections()


# --------------------------------------------------------------------------- pdf


def _pdf(name: str, data: bytes) -> list[Section]:
    from pypdf import PdfReader

    # pypdf logs every quirk of a malformed file as a warning: the caller hears
    # about a file that cannot be read, not about each recovered oddity.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidRequest(
                f"document {name!r} is an encrypted PDF", hint="decrypt it first", field="content"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidRequest:
        raise
    except Exception as exc:  # an untrusted file: whatever the parser trips on is the file's
        raise InvalidRequest(
            f"document {name!r} is not a readable PDF: {type(exc).__name__}: {exc}",
            field="content",
        ) from None
    return [Section(_tidy(text), page=number) for number, text in enumerate(pages, 1)]


_TEXT_LOADERS: dict[str, Callable[[str], list[Section]]] = {
    "text": _text,
    "markdown": _markdown,
    "html": _html,
}
