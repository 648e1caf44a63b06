"""A small corpus of real documents for the RAG tests: markdown with headings, an
HTML page, a PDF (written here, byte by byte, as a PDF 1.4 file with real text
objects), and a plain text file."""

from __future__ import annotations

import textwrap
from pathlib import Path

GUIDE_MD = """\
# Orbital Widget Guide

The Orbital Widget is a desk lamp that tracks the sun.

## Installation

### Linux

Install the driver with `sudo apt install orbital-driver`, then plug the lamp into
a USB port and run `orbital pair`.

### Windows

Download OrbitalSetup.exe from the vendor site and run it as administrator.

## Troubleshooting

If the lamp blinks red three times, its battery is empty: charge it for two hours.
"""

FAQ_HTML = """\
<!doctype html>
<html>
<head><title>FAQ</title><style>body { color: red; }</style>
<script>var secret = "do not index this script";</script></head>
<body>
<h1>Frequently asked questions</h1>
<h2>Warranty</h2>
<p>Every Orbital Widget has a <b>five year warranty</b> covering the motor and the
light.</p>
<h2>Shipping</h2>
<p>Orders ship from Rotterdam within three business days.</p>
<script>document.write("tracking pixel");</script>
</body>
</html>
"""

NOTES_TXT = """\
Support hours: the help desk answers calls from 9:00 to 17:00 Central European
Time, Monday to Friday. Outside those hours, write to help@orbital.example.
"""

MANUAL_PAGES = [
    "Safety manual. Never look straight into the lamp at full brightness.",
    "Cleaning. Wipe the lens with a dry microfiber cloth; never use alcohol.",
]


def make_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one page per text (Helvetica, wrapped at 80 characters)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the pages object number is known
    pages_obj = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids = []
    for text in pages:
        lines = textwrap.wrap(text, 80) or [""]
        ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops += [f"({escaped}) Tj", "T*"]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
                b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                % (pages_obj, font, content)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    refs = b" ".join(b"%d 0 R" % k for k in kids)
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)


def write_corpus(root: Path) -> Path:
    """The four documents under ``root/docs`` (the PDF in a subdirectory); returns
    the docs directory."""
    docs = root / "docs"
    (docs / "manuals").mkdir(parents=True, exist_ok=True)
    (docs / "guide.md").write_text(GUIDE_MD, encoding="utf-8")
    (docs / "faq.html").write_text(FAQ_HTML, encoding="utf-8")
    (docs / "notes.txt").write_text(NOTES_TXT, encoding="utf-8")
    (docs / "manuals" / "safety.pdf").write_bytes(make_pdf(MANUAL_PAGES))
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n not a document")
    return docs
