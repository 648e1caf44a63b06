"""A tiny Llama built locally for tests: random weights, a freshly trained tokenizer,
the Hugging Face files and an ONNX decoder with a KV cache.

Tests of the ``onnx`` provider need a real model that both ``transformers`` and ONNX
Runtime run, small enough to build in seconds on two CPU cores and without
downloading anything.  ``build_tiny_llama`` writes a folder in the layout Hugging
Face repositories use:

* ``config.json``, ``generation_config.json``, ``model.safetensors``: a
  ``LlamaForCausalLM`` (2 layers, hidden 64, 4 heads of 16) with weights drawn from
  a seeded ``torch`` generator, so one seed gives one model on every machine;
* ``tokenizer.json``: a byte-level BPE tokenizer (~400 tokens) trained with
  ``tokenizers`` on a small built-in text, with ChatML control tokens;
* ``tokenizer_config.json``: the ChatML chat template (with Hermes-style tools) and
  the eos token;
* ``model.onnx``: the decoder exported in the Optimum layout (inputs ``input_ids``,
  ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``; outputs
  ``logits``, ``present.N.key/value``), so the provider's KV-cache decoding is
  checked against ``transformers`` on the very same weights.

Needs ``torch``, ``transformers`` and ``onnx`` (test dependencies, not runtime ones).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from astromesh_ray.core.providers.chat_format import CHATML_TOOLS_TEMPLATE

__all__ = ["EOS_TOKEN", "SPECIAL_TOKENS", "build_tiny_llama"]

# Ids 0, 1, 2 in this order: the BPE trainer puts special tokens first.
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"

# What the model reads in tests (chat turns, tool prompts, JSON): merges trained on it
# keep prompts short.  A few non-ASCII words put multi-byte characters into the
# vocabulary as partial byte tokens, which exercises incremental UTF-8 decoding.
_CORPUS = """\
<|im_start|>system
You are a helpful assistant. You can call functions. Their signatures, as JSON Schema,
are within <tools></tools>: {"name": "get_weather", "description": "Weather in a city",
"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
To call one, answer with a JSON object inside <tool_call></tool_call> tags.<|im_end|>
<|im_start|>user
What is the weather in Paris? Please use the tool and tell me the result.<|im_end|>
<|im_start|>assistant
<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>
<|im_start|>user
<tool_response>
sunny, 21 degrees
</tool_response><|im_end|>
<|im_start|>assistant
It is sunny in Paris. Café, naïve, Zürich, 東京, → ✓ 😀<|im_end|>
The quick brown fox jumps over the lazy dog. Hello world! Agents, models, tools,
messages, memory and answers: one turn at a time, end to end, on a local model.
0 1 2 3 4 5 6 7 8 9 10 42 100 2026 + - * / = ( ) [ ] { } : ; , . ? ! ' "
"""

_BUILT: dict[tuple[Path, int], Path] = {}


def build_tiny_llama(dest: Path, seed: int = 0) -> Path:
    """Write the tiny model into ``dest`` (created if needed) and return ``dest``.

    Built once per process for a given ``(dest, seed)``: later calls return the folder
    without rebuilding, so session- and module-scoped fixtures can share it.
    """
    dest = Path(dest).resolve()
    if (dest, seed) in _BUILT:
        return _BUILT[(dest, seed)]
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.save(str(dest / "tokenizer.json"))
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None  # the trainer adds every special token
        ids[token] = token_id
    (dest / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHATML_TOOLS_TEMPLATE,
                "eos_token": EOS_TOKEN,
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "model_max_length": 1024,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=2,
        )
    )
    model = _llama(tokenizer.get_vocab_size(), ids, seed)
    model.save_pretrained(dest)  # config.json, generation_config.json, model.safetensors
    _export_onnx(model, dest / "model.onnx")
    _BUILT[(dest, seed)] = dest
    return dest


def _train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is a token, so any text encodes (no unknown tokens).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS], trainer)
    return tokenizer


def _llama(vocab_size: int, ids: dict[str, int], seed: int) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as most current models use
        head_dim=16,
        max_position_embeddings=1024,  # a ReAct follow-up with tools is ~400 tokens
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)  # Any: transformers' methods are partly untyped
    model.eval()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids[EOS_TOKEN], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    return model


def _export_onnx(model: Any, path: Path) -> None:
    import torch
    from transformers import DynamicCache

    # Eager attention traces into plain matmuls; the saved config keeps the default
    # (SDPA), so tests compare the export with a different attention kernel.
    model.set_attn_implementation("eager")
    config = model.config
    layers = int(config.num_hidden_layers)
    kv_heads = int(config.num_key_value_heads)
    head_dim = int(config.head_dim)

    class Decoder(torch.nn.Module):
        """Flat tensors in and out, as ONNX needs: the cache is rebuilt inside."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)],
                config=config,
            )
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            presents: list[torch.Tensor] = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    # Trace with a non-empty past so every shape in the graph stays symbolic.
    batch, seq, past_len = 1, 3, 2
    past = [torch.zeros(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    example = (
        torch.ones(batch, seq, dtype=torch.long),
        torch.ones(batch, past_len + seq, dtype=torch.long),
        torch.arange(past_len, past_len + seq, dtype=torch.long).unsqueeze(0),
        *past,
    )
    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    dynamic.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
    dynamic.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names})
    # The tracer warns that shape checks in transformers' cache and mask code become
    # constants: they hold for any past length >= 1 and for the empty past at prefill.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Decoder().eval(),
            example,
            str(path),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=dynamic,
            opset_version=17,
            # The TorchScript exporter: the dynamo one needs onnxscript and is slower.
            dynamo=False,
        )
