"""Guardrails: checks on an agent's input and output (PII, topics, content, length)
and its budgets (tokens and money), configured under ``spec.guardrails``.

- ``base``: ``Guardrail``, ``Finding``, ``Verdict``;
- ``pii``: Presidio's analyzer, offline, with recognizers of our own (secrets);
- ``topic``, ``content``: topic and content filters (embedder, moderation, judge);
- ``budget``: cost caps per turn, session and agent period, over a ``Ledger``;
- ``vault``: session-consistent redaction placeholders;
- ``stream``: the look-ahead that keeps streamed tokens clean;
- ``stages``: the input prepare stage and the output transformer.
"""
