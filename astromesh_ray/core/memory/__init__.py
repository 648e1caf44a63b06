"""Agent memory: conversational history, semantic recall and the episodic log.

``base.py`` holds the four interfaces (``ConversationStore``, ``VectorStore``,
``Embedder``, ``EpisodicLog``); one folder per concept holds its backends
(``conversational/``, ``semantic/``, ``embedders/``, ``episodic/``).
``factory.py`` builds an agent's backends from its YAML, ``strategies.py`` decides
what of a history the model sees, ``agent.py`` is one agent's memory (what the
stages and the memory API call) and ``stages.py`` wires it into every turn: loaded
before the pattern runs, saved after it answered, every run logged.
"""
