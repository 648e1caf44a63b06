"""Vector stores: the backends of ``VectorStore`` (``core/memory/base.py``).

One module per backend, each imported only when used (``factory.py``'s registry),
so a backend's dependencies need not be installed unless an agent uses it:

- ``faiss``: ``FaissVectorStore``, HNSW indexes in this process, snapshot to a directory;
- ``qdrant``: ``QdrantVectorStore``, a Qdrant server or qdrant-client's local mode;
- ``pgvector``: ``PgVectorStore``, PostgreSQL tables with pgvector, over asyncpg;
- ``chroma``: ``ChromaVectorStore``, ChromaDB (the optional ``chroma`` extra).

``common`` holds what they share: argument checks, and what ``where`` means;
``faiss_collection`` the FAISS store's collections and snapshot files.
Embedded stores (FAISS, Qdrant or Chroma local mode) have one owner; on Ray that
owner is an actor (``serve/vectors.py``).
"""
