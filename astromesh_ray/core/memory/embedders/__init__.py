"""Embedders: the backends of ``Embedder`` (``core/memory/base.py``), text to unit
vectors.

- ``openai``: ``OpenAIEmbedder``, any OpenAI-compatible ``/embeddings`` API;
- ``ollama``: ``OllamaEmbedder``, Ollama's native ``/api/embed``;
- ``minilm``: ``MiniLMEmbedder``, all-MiniLM-L6-v2 offline on NumPy (no torch).

``base`` holds what they share (batching, checks, normalisation), ``http`` the one
JSON POST the HTTP embedders make.  Each module is imported only when used.
"""
