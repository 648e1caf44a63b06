"""RAG pipelines (``kind: RAGPipeline``): documents loaded, chunked, embedded into a
vector collection, and searched by agents as a tool.

``loaders.py`` reads text, markdown, HTML and PDF; ``chunking.py`` cuts by size or
by heading; ``pipeline.py`` ingests (replacing a re-ingested document's chunks) and
searches; ``tool.py`` is the ``type: rag`` toolset.
"""
