"""``kind: RAGPipeline``: loaded from <config>/rag/*.yaml, every mistake reported at
its file, line and field; agents' rag tools must name a loaded pipeline."""

from __future__ import annotations

from pathlib import Path

from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import RAGPipelineSpec, json_schema, load_config, load_document

GOOD = """
apiVersion: astromesh/v1
kind: RAGPipeline
metadata:
  name: product-docs
spec:
  description: Product manuals.
  loaders: [markdown, pdf]
  chunking:
    strategy: heading
    size: 600
    overlap: 60
  embedding:
    provider: local
    batch_size: 8
  store:
    backend: pgvector
    connection:
      url: postgresql://postgres@127.0.0.1:5432/docs
    collection: manuals
  top_k: 3
  score_threshold: 0.3
"""


def test_a_good_file_loads_from_the_rag_directory(write: WriteYaml, tmp_path: Path) -> None:
    write("rag/product-docs.rag.yaml", GOOD)
    write("rag/small.yml", "apiVersion: astromesh/v1\nkind: RAGPipeline\nmetadata: {name: small}\n")
    loaded = load_config(tmp_path)
    assert sorted(loaded.rag_pipelines) == ["product-docs", "small"]
    spec = loaded.rag_pipelines["product-docs"]
    assert isinstance(spec, RAGPipelineSpec)
    assert spec.collection == "manuals" and spec.spec.top_k == 3
    assert spec.spec.chunking.strategy == "heading" and spec.spec.chunking.overlap == 60
    assert spec.spec.store.connection is not None
    assert spec.spec.embedding.batch_size == 8 and spec.spec.loaders == ["markdown", "pdf"]
    small = loaded.rag_pipelines["small"].spec
    assert loaded.rag_pipelines["small"].collection == "small"  # default: the name
    assert (small.store.backend, small.chunking.size, small.chunking.overlap) == ("faiss", 800, 100)


def test_the_original_astromesh_keys_are_accepted(write: WriteYaml) -> None:
    path = write(
        "p.yaml",
        """
        apiVersion: astromesh/v1
        kind: RAGPipeline
        metadata: {name: kb, version: "1.0.0"}
        spec:
          chunking: {strategy: fixed, chunk_size: 512, overlap: 50}
          embeddings: {provider: ollama, model: nomic-embed-text, endpoint: "http://localhost:11434"}
          vector_store: {backend: qdrant, collection: product_docs}
        """,
    )
    spec = load_document(path)
    assert isinstance(spec, RAGPipelineSpec)
    assert spec.spec.chunking.size == 512 and spec.spec.embedding.provider == "ollama"
    assert spec.collection == "product_docs" and spec.spec.store.backend == "qdrant"


def test_unknown_field_is_reported_at_its_line(write: WriteYaml) -> None:
    path = write("p.yaml", GOOD.replace("  top_k: 3\n", "  top_k: 3\n  rerank: true\n"))
    issues = issues_of(lambda: load_document(path))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.rerank", 21)]


def test_overlap_not_below_size_is_refused_at_overlap(write: WriteYaml) -> None:
    path = write("p.yaml", GOOD.replace("overlap: 60", "overlap: 600"))
    issues = issues_of(lambda: load_document(path))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.chunking.overlap", 11)]
    assert "overlap (600) must be less than size (600)" in issues[0]["message"]


def test_bad_values_name_their_field(write: WriteYaml) -> None:
    text = (
        GOOD.replace("strategy: heading", "strategy: semantic")
        .replace("[markdown, pdf]", "[markdown, docx]")
        .replace("collection: manuals", "collection: 'bad name'")
    )
    issues = issues_of(lambda: load_document(write("p.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [
        ("spec.loaders[1]", 7),
        ("spec.chunking.strategy", 9),
        ("spec.store.collection", 19),
    ]


def test_a_key_and_its_alias_together_are_refused(write: WriteYaml) -> None:
    text = GOOD.replace("    size: 600\n", "    size: 600\n    chunk_size: 500\n")
    issues = issues_of(lambda: load_document(write("p.yaml", text)))
    assert [i["path"] for i in issues] == ["spec.chunking.chunk_size"]
    assert "give either size or chunk_size" in issues[0]["message"]


def test_duplicate_pipeline_names_are_reported_like_agents(
    write: WriteYaml, tmp_path: Path
) -> None:
    write("rag/a.yaml", GOOD)
    write("rag/b.yaml", GOOD)
    issues = issues_of(lambda: load_config(tmp_path))
    assert len(issues) == 1 and issues[0]["file"].endswith("b.yaml")
    assert issues[0]["path"] == "metadata.name" and issues[0]["line"] == 4
    assert "RAG pipeline 'product-docs' is also defined in" in issues[0]["message"]
    assert issues[0]["message"].endswith("a.yaml:4")


def test_another_kind_in_the_rag_directory_is_refused(write: WriteYaml, tmp_path: Path) -> None:
    write("rag/x.yaml", AGENT.format(name="ab"))
    issues = issues_of(lambda: load_config(tmp_path))
    assert [(i["path"], i["message"]) for i in issues] == [
        ("kind", "expected kind RAGPipeline, found Agent")
    ]


def test_agents_must_name_a_loaded_pipeline(write: WriteYaml, tmp_path: Path) -> None:
    write("rag/a.yaml", GOOD)
    write(
        "agents/ab.agent.yaml",
        AGENT.format(name="ab")
        + "  tools:\n"
        + "    - {name: s, type: rag, rag: {pipeline: product-doc}}\n"
        + "    - name: rag_query\n      type: builtin\n      config: {pipeline: other}\n",
    )
    issues = issues_of(lambda: load_config(tmp_path))
    assert [(i["path"], i["line"], i["message"]) for i in issues] == [
        ("spec.tools[0].rag.pipeline", 12, "unknown RAG pipeline 'product-doc'"),
        ("spec.tools[1].config.pipeline", 15, "unknown RAG pipeline 'other'"),
    ]
    assert "product-docs" in (issues[0]["hint"] or "")


def test_the_kind_has_a_json_schema() -> None:
    schema = json_schema("RAGPipeline")
    body = schema["$defs"]["RagBodySpec"]["properties"]
    assert {"loaders", "chunking", "embedding", "embeddings", "store", "vector_store"} <= set(body)
