"""A tiny Llama in GGUF, built locally: random weights and a freshly trained tokenizer.

Tests of the ``llamacpp`` provider need a real GGUF model that the real llama.cpp
server loads, small enough to build and run in a second on two CPU cores and
without downloading anything.  ``build_tiny_gguf`` writes one:

* architecture ``llama`` (2 layers, hidden 64, 4 heads of 16), all tensors F32,
  weights drawn from a seeded ``numpy`` generator, so the same seed gives the same
  file and the same greedy tokens on every machine;
* a byte-level BPE tokenizer (GPT-2 style, ~400 tokens) trained with ``tokenizers``
  on a small built-in text, stored as tokenizer model ``gpt2`` with its merges;
* ChatML control tokens and a ChatML ``tokenizer.chat_template``.

Random weights say nothing useful, but they are shaped so tests can assert exact
things: the output rows of control tokens and of tokens that do not decode to
printable ASCII are zero, so greedy decoding never stops early (a completion is
always exactly ``max_tokens`` long) and never emits half a UTF-8 character (a
stream reassembles to the same text as a whole completion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "TinyLlamaConfig", "build_tiny_gguf"]

# ids 0, 1, 2 in this order: the trainer puts special tokens first.
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# What the model reads in tests (chat turns, tool prompts, JSON arguments): training
# the merges on it keeps prompts short in tokens, which keeps the context small.
_CORPUS = """\
<|im_start|>system
You are a helpful assistant. You can call functions with the following arguments.
To call a function, respond with functions.<function_name>: followed by the arguments.
Available functions: calculator, get_weather, datetime_now.
<|im_end|>
<|im_start|>user
What is 2 + 3? Please use the calculator tool and tell me the result.<|im_end|>
<|im_start|>assistant
functions.calculator:
{"expression": "2 + 3"}<|im_end|>
<|im_start|>tool
5<|im_end|>
<|im_start|>assistant
The answer is 5. The weather in Paris is sunny and the time is 12:00 UTC.<|im_end|>
{"type": "object", "properties": {"expression": {"type": "string", "description":
"The expression, e.g. (2 + 3) * 4"}}, "required": ["expression"]}
The quick brown fox jumps over the lazy dog. Hello world! Agents, models, tools,
messages, memory and answers: one turn at a time, end to end, on a local server.
0 1 2 3 4 5 6 7 8 9 10 42 100 2026 + - * / = ( ) [ ] { } : ; , . ? ! ' "
"""


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Shape of the tiny model; the defaults are what the tests use."""

    vocab_size: int = 400
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    ffn: int = 128
    # Large enough for a tool-calling prompt in a ~400-token vocabulary.
    context_length: int = 2048
    init_std: float = 0.02


def build_tiny_gguf(path: Path, seed: int = 0, config: TinyLlamaConfig | None = None) -> Path:
    """Write a tiny random-weight Llama GGUF to ``path`` and return ``path``.

    Deterministic: the same ``seed`` and ``config`` give a byte-identical file.
    """
    cfg = config or TinyLlamaConfig()
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden ({cfg.hidden}) must be a multiple of heads ({cfg.heads})")
    tokens, merges = _train_tokenizer(cfg.vocab_size)
    types = [
        gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens
    ]
    rng = np.random.default_rng(seed)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"astromesh-tiny-llama-seed{seed}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.hidden)
    writer.add_block_count(cfg.layers)
    writer.add_feed_forward_length(cfg.ffn)
    writer.add_head_count(cfg.heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.hidden // cfg.heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)

    writer.add_tokenizer_model("gpt2")
    # Our pre-tokenizer is tokenizers' ByteLevel regex, which is GPT-2's.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    # ChatML prompts carry their own markers; a BOS would only shift token counts.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, tensor in _weights(cfg, len(tokens), _silent_rows(tokens), rng):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _train_tokenizer(vocab_size: int) -> tuple[list[str], list[str]]:
    """Train a byte-level BPE; return tokens in id order and merges as ``"a b"``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes: llama.cpp's gpt2 tokenizer needs a token for any byte it meets.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    # Special tokens live in "added_tokens", not always in the model's vocab.
    for index, special in tokenizer.get_added_tokens_decoder().items():
        vocab.setdefault(special.content, index)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise RuntimeError("trained vocabulary has gaps in its ids")
    # Older tokenizers versions store merges as "a b", newer ones as ["a", "b"].
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def _silent_rows(tokens: list[str]) -> list[int]:
    """Ids the model must never emit: control tokens and non-printable-ASCII bytes."""
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    silent = []
    for index, token in enumerate(tokens):
        if token in SPECIAL_TOKENS:
            silent.append(index)
            continue
        raw = bytes(to_byte[ch] for ch in token)
        if not all(32 <= b < 127 or b == 10 for b in raw):
            silent.append(index)
    return silent


def _weights(
    cfg: TinyLlamaConfig, vocab: int, silent: list[int], rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """Tensors in llama.cpp's names; numpy shapes are (out, in) as in PyTorch."""
    head_dim = cfg.hidden // cfg.heads

    def dense(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, cfg.init_std, size=(rows, cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    output = dense(vocab, cfg.hidden)
    # A zero row scores logit 0, below the best of ~300 random logits: never greedy.
    output[silent] = 0.0
    tensors = [("token_embd.weight", dense(vocab, cfg.hidden))]
    for i in range(cfg.layers):
        tensors += [
            (f"blk.{i}.attn_norm.weight", ones(cfg.hidden)),
            (f"blk.{i}.attn_q.weight", dense(cfg.heads * head_dim, cfg.hidden)),
            (f"blk.{i}.attn_k.weight", dense(cfg.kv_heads * head_dim, cfg.hidden)),
            (f"blk.{i}.attn_v.weight", dense(cfg.kv_heads * head_dim, cfg.hidden)),
            (f"blk.{i}.attn_output.weight", dense(cfg.hidden, cfg.heads * head_dim)),
            (f"blk.{i}.ffn_norm.weight", ones(cfg.hidden)),
            (f"blk.{i}.ffn_gate.weight", dense(cfg.ffn, cfg.hidden)),
            (f"blk.{i}.ffn_up.weight", dense(cfg.ffn, cfg.hidden)),
            (f"blk.{i}.ffn_down.weight", dense(cfg.hidden, cfg.ffn)),
        ]
    tensors += [("output_norm.weight", ones(cfg.hidden)), ("output.weight", output)]
    return tensors


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE tokens are spelt in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
