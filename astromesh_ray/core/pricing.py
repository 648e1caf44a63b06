"""What model calls cost: a built-in price table, overridable per model in YAML.

Prices are USD per million tokens.  Models served locally (Ollama, vLLM, llama.cpp,
TGI, ONNX Runtime) cost nothing by default: you already pay for the hardware; give
``pricing:`` in the model block to account for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from astromesh_ray.core.messages import Usage


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


# Public list prices (USD / 1M tokens) of common hosted models, 2026-11.
PRICE_TABLE: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3-mini": Price(1.10, 4.40),
}

LOCAL_PROVIDERS = frozenset({"ollama", "vllm", "llamacpp", "hf_tgi", "onnx"})
FREE = Price(0.0, 0.0)


def price_for(provider: str, model: str, override: Price | None = None) -> Price | None:
    """The price of ``model``: the YAML override, else the table, else free for local
    providers; ``None`` when unknown (a hosted model missing from the table)."""
    if override is not None:
        return override
    if model in PRICE_TABLE:
        return PRICE_TABLE[model]
    if provider in LOCAL_PROVIDERS:
        return FREE
    return None
