"""Ingesting and searching a pipeline on a real FAISS store: re-ingesting an
unchanged document is skipped, a changed one replaces its chunks (never duplicates
them), a shorter one loses its extra chunks, an empty one all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.core.rag.pipeline import DocumentReport, RagPipelines, SourceDocument
from astromesh_ray.errors import InvalidRequest, PipelineNotFound
from tests.unit.core.rag.corpus import FAQ_HTML, GUIDE_MD, MANUAL_PAGES, NOTES_TXT, make_pdf
from tests.unit.core.rag.rag_helpers import make_pipeline, pipeline_spec, words_factory

CORPUS = [
    SourceDocument("guide.md", GUIDE_MD),
    SourceDocument("faq.html", FAQ_HTML.encode()),
    SourceDocument("notes.txt", NOTES_TXT),
    SourceDocument("manuals/safety.pdf", make_pdf(MANUAL_PAGES)),
]


async def test_ingest_then_search_finds_the_right_chunk(tmp_path: Path) -> None:
    pipeline, memory = make_pipeline(tmp_path)
    seen: list[tuple[int, int, DocumentReport]] = []
    report = await pipeline.ingest(CORPUS, progress=lambda *a: seen.append(a))
    assert report.to_dict()["added"] == 4 and report.count("replaced") == 0
    assert [d.chunks for d in report.documents] == [4, 2, 1, 2]
    assert [(done, total) for done, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert await pipeline.count() == 9

    [hit, *_] = await pipeline.search("warranty motor light years", top_k=3)
    assert hit.source == "faq.html"
    assert hit.heading == "Frequently asked questions > Warranty"
    assert "five year warranty" in hit.text
    [page] = await pipeline.search("wipe lens microfiber cloth alcohol", top_k=1)
    assert (page.source, page.page, page.text) == ("manuals/safety.pdf", 2, MANUAL_PAGES[1])
    await memory.aclose()


async def test_reingest_unchanged_skips_and_changed_replaces(tmp_path: Path) -> None:
    pipeline, memory = make_pipeline(tmp_path)
    await pipeline.ingest(CORPUS)
    again = await pipeline.ingest(CORPUS)
    assert [d.status for d in again.documents] == ["unchanged"] * 4
    assert again.chunks_written == 0 and await pipeline.count() == 9

    changed = GUIDE_MD.replace("blinks red three times", "beeps twice").replace(
        "charge it for two hours", "replace the fuse"
    )
    report = await pipeline.ingest([SourceDocument("guide.md", changed)])
    assert report.documents == [DocumentReport("guide.md", "replaced", 4)]
    assert await pipeline.count("guide.md") == 4 and await pipeline.count() == 9
    texts = [h.text for h in await pipeline.search("lamp battery fuse beeps", top_k=20)]
    assert not any("blinks red" in t for t in texts)
    assert any("beeps twice" in t for t in texts)
    await memory.aclose()


async def test_a_shorter_version_loses_its_extra_chunks_and_an_empty_one_all(
    tmp_path: Path,
) -> None:
    pipeline, memory = make_pipeline(tmp_path)
    await pipeline.ingest(CORPUS)
    short = "# Orbital Widget Guide\n\nNow one section only.\n"
    report = await pipeline.ingest([SourceDocument("guide.md", short)])
    assert report.documents == [DocumentReport("guide.md", "replaced", 1)]
    assert await pipeline.count("guide.md") == 1 and await pipeline.count() == 6
    [hit] = await pipeline.search("one section only", top_k=1)
    assert (hit.source, hit.chunk_index, hit.text) == ("guide.md", 0, "Now one section only.")

    report = await pipeline.ingest([SourceDocument("guide.md", "   ")])
    assert report.documents == [DocumentReport("guide.md", "empty", 0)]
    assert await pipeline.count("guide.md") == 0 and await pipeline.count() == 5
    await memory.aclose()


async def test_changing_the_chunking_reingests_the_same_bytes(tmp_path: Path) -> None:
    memory = words_factory(tmp_path)
    pipes = RagPipelines({"docs": pipeline_spec()}, memory)
    await pipes.get("docs").ingest(CORPUS[:1])
    finer = RagPipelines({"docs": pipeline_spec(chunking={"size": 60, "overlap": 0})}, memory)
    report = await finer.get("docs").ingest(CORPUS[:1])
    assert report.documents[0].status == "replaced" and report.documents[0].chunks > 4
    assert await finer.get("docs").count() == report.documents[0].chunks
    await memory.aclose()


async def test_bad_documents_fail_the_call_before_anything_is_stored(tmp_path: Path) -> None:
    pipeline, memory = make_pipeline(tmp_path, loaders=["markdown", "text"])
    cases = [
        ([SourceDocument("a.md", "x"), SourceDocument("b.png", b"png")], "documents[1].name"),
        ([SourceDocument("a.md", "x"), SourceDocument("a.md", "y")], "documents[1].name"),
        ([SourceDocument("m.pdf", make_pdf(["p"]))], "documents[0].name"),
        ([SourceDocument("t.txt", b"\xff\xfe\xfa")], "documents[0].content"),
        ([SourceDocument(" ", "x")], "documents[0].name"),
    ]
    for documents, field in cases:
        with pytest.raises(InvalidRequest) as info:
            await pipeline.ingest(documents)
        assert info.value.details["field"] == field
    assert await pipeline.count() == 0
    with pytest.raises(InvalidRequest, match="non-empty query"):
        await pipeline.search("  ")
    await memory.aclose()


async def test_two_pipelines_sharing_a_collection_keep_their_chunks_apart(
    tmp_path: Path,
) -> None:
    memory = words_factory(tmp_path)
    shared = {"store": {"collection": "shared"}}
    pipes = RagPipelines(
        {"one": pipeline_spec("one", **shared), "two": pipeline_spec("two", **shared)}, memory
    )
    await pipes.get("one").ingest([SourceDocument("a.txt", "apples and pears")])
    await pipes.get("two").ingest([SourceDocument("a.txt", "apples and plums")])
    assert await pipes.get("one").count() == 1 and await pipes.get("two").count() == 1
    [hit] = await pipes.get("one").search("apples", top_k=5)
    assert hit.text == "apples and pears"
    with pytest.raises(PipelineNotFound, match="no RAG pipeline named 'three'"):
        pipes.get("three")
    await memory.aclose()


def test_files_progress_bar_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from astromesh_ray.core.rag.files import ProgressBar, collect_files, read_documents, summary
    from astromesh_ray.core.rag.pipeline import IngestReport
    from tests.unit.core.rag.corpus import write_corpus

    monkeypatch.chdir(tmp_path)
    docs = write_corpus(tmp_path)
    files = collect_files([docs, docs / "guide.md"], ["markdown", "pdf"])
    assert [f.name for f in files] == ["guide.md", "safety.pdf"]  # each once, png skipped
    assert [d.name for d in read_documents(files)] == ["docs/guide.md", "docs/manuals/safety.pdf"]
    with pytest.raises(InvalidRequest, match=r"missing\.md: no such file or directory"):
        collect_files([docs / "missing.md"], ["markdown"])

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    bar = ProgressBar(out, "docs")
    bar(1, 2, DocumentReport("docs/a-long-name.md", "added", 3))
    bar(2, 2, DocumentReport("b.md", "unchanged", 1))
    first = "ingest docs [############............] 1/2 docs/a-long-name.md: added (3 chunks)"
    second = "ingest docs [########################] 2/2 b.md: unchanged (1 chunks)"
    assert out.getvalue() == "\r" + first + "\r" + second.ljust(len(first)) + "\n"
    report = IngestReport("docs", "docs", [DocumentReport("b.md", "unchanged", 1)])
    assert summary(report) == (
        "docs: 1 document(s): 0 added, 0 replaced, 1 unchanged, 0 empty; "
        "0 chunk(s) written to collection docs"
    )
