"""``astromesh ingest`` as a user runs it (a subprocess): files and directories, the
progress bar on stderr, the summary line, re-runs that replace and never duplicate,
and exit code 1 with a precise message for what it cannot ingest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.rag.conftest import pipeline_doc, runtime_doc, write_yaml

ROOT = Path(__file__).resolve().parents[3]


def astromesh(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "astromesh_ray.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )


@pytest.fixture
def project(tmp_path: Path, corpus: Path) -> Path:
    write_yaml(tmp_path / "config" / "runtime.yaml", runtime_doc(tmp_path / "data"))
    write_yaml(
        tmp_path / "config" / "rag" / "manuals.rag.yaml",
        pipeline_doc("manuals", {"backend": "faiss"}),
    )
    return tmp_path


def test_ingest_files_and_directories_with_progress(project: Path) -> None:
    done = astromesh("ingest", "manuals", "docs", "--config", "config", cwd=project)
    assert done.returncode == 0, done.stderr
    progress = done.stderr.strip().splitlines()
    assert progress == [
        "ingest manuals [######..................] 1/4 docs/faq.html: added (2 chunks)",
        "ingest manuals [############............] 2/4 docs/guide.md: added (4 chunks)",
        "ingest manuals [##################......] 3/4 docs/manuals/safety.pdf: added (2 chunks)",
        "ingest manuals [########################] 4/4 docs/notes.txt: added (1 chunks)",
    ]
    assert done.stdout.strip() == (
        "manuals: 4 document(s): 4 added, 0 replaced, 0 unchanged, 0 empty; "
        "9 chunk(s) written to collection manuals"
    )

    (project / "docs" / "notes.txt").write_text("Support hours changed: 8:00 to 16:00 only.\n")
    again = astromesh(
        "ingest", "manuals", "docs/notes.txt", "docs/guide.md", "--config", "config", cwd=project
    )
    assert again.returncode == 0, again.stderr
    assert "1/2 docs/notes.txt: replaced (1 chunks)" in again.stderr
    assert "2/2 docs/guide.md: unchanged (4 chunks)" in again.stderr
    assert "0 added, 1 replaced, 1 unchanged" in again.stdout

    # The store holds 9 chunks, the new notes and not the old ones.
    check = (
        "import asyncio\n"
        "from astromesh_ray.spec import load_config\n"
        "from astromesh_ray.core.memory.factory import memory_factory\n"
        "from astromesh_ray.core.rag.pipeline import RagPipelines\n"
        "loaded = load_config('config')\n"
        "p = RagPipelines(loaded.rag_pipelines, memory_factory(loaded)).get('manuals')\n"
        "async def main():\n"
        "    hits = await p.search('help desk support hours', top_k=1)\n"
        "    print(await p.count(), hits[0].source, hits[0].text)\n"
        "asyncio.run(main())\n"
    )
    counted = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=project, timeout=120
    )
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.strip() == ("9 docs/notes.txt Support hours changed: 8:00 to 16:00 only.")


def test_unknown_pipeline_and_unreadable_files_exit_1(project: Path) -> None:
    unknown = astromesh("ingest", "manual", "docs", "--config", "config", cwd=project)
    assert unknown.returncode == 1
    assert "error [pipeline_not_found]: no RAG pipeline named 'manual'" in unknown.stderr
    assert "pipelines: manuals" in unknown.stderr

    missing = astromesh("ingest", "manuals", "docs/nope.md", "--config", "config", cwd=project)
    assert missing.returncode == 1
    assert "docs/nope.md: no such file or directory" in missing.stderr

    (project / "docs" / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    bad = astromesh("ingest", "manuals", "docs", "--config", "config", cwd=project)
    assert bad.returncode == 1
    assert "document 'docs/latin1.txt' is not UTF-8 text" in bad.stderr
    assert "ingest manuals [" not in bad.stderr  # refused before anything was stored

    image = astromesh("ingest", "manuals", "docs/image.png", "--config", "config", cwd=project)
    assert image.returncode == 1
    assert "document 'docs/image.png': no loader reads .png" in image.stderr
