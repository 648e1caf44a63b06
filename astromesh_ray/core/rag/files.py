"""Files and directories as documents to ingest (``astromesh ingest``), and the
progress bar the command draws on stderr.

A directory contributes every file under it (recursively, in name order) whose
extension one of the pipeline's loaders reads; a file named explicitly must have
one.  A document is named by its path relative to the working directory when it is
under it (so ``docs/guide.md`` stays ``docs/guide.md`` whoever runs the command from
the project root), else by its absolute path: ingesting the same file again then
replaces its chunks.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TextIO

from astromesh_ray.core.rag.pipeline import DocumentReport, IngestReport, SourceDocument
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.spec.rag import LOADER_EXTENSIONS

__all__ = ["ProgressBar", "collect_files", "read_documents", "source_name", "summary"]


def collect_files(paths: Sequence[Path], loaders: Collection[str]) -> list[Path]:
    """The files to ingest for ``paths``, each once; ``InvalidRequest`` for a path
    that does not exist."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if LOADER_EXTENSIONS.get(file.suffix.lower()) in loaders:
                    found.setdefault(file.resolve(), None)
        elif path.exists():
            found.setdefault(path.resolve(), None)
        else:
            raise InvalidRequest(f"{path}: no such file or directory", field="paths")
    return list(found)


def source_name(path: Path) -> str:
    """The document name of ``path`` (see the module docstring)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def read_documents(files: Sequence[Path]) -> list[SourceDocument]:
    """Each file's bytes as a document; ``InvalidRequest`` naming a file that cannot
    be read."""
    documents = []
    for file in files:
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise InvalidRequest(
                f"{source_name(file)}: cannot read: {exc.strerror or exc}", field="paths"
            ) from None
        documents.append(SourceDocument(source_name(file), content))
    return documents


class ProgressBar:
    """``ingest NAME [#####.....] 3/10 docs/guide.md: added (4 chunks)``, redrawn in
    place on a terminal, one line per document otherwise (logs, pipes)."""

    WIDTH = 24

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.live = stream.isatty() and os.environ.get("TERM") != "dumb"
        self._drawn = 0

    def __call__(self, done: int, total: int, report: DocumentReport) -> None:
        filled = self.WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = (
            f"ingest {self.label} [{bar}] {done}/{total} {report.source}: "
            f"{report.status} ({report.chunks} chunks)"
        )
        if self.live:
            self.stream.write("\r" + text.ljust(self._drawn))
            self._drawn = len(text)
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def summary(report: IngestReport) -> str:
    """One line saying what an ingest did."""
    return (
        f"{report.pipeline}: {len(report.documents)} document(s): "
        f"{report.count('added')} added, {report.count('replaced')} replaced, "
        f"{report.count('unchanged')} unchanged, {report.count('empty')} empty; "
        f"{report.chunks_written} chunk(s) written to collection {report.collection}"
    )
