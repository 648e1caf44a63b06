"""Loading and running a causal LM exported to ONNX, for ``OnnxProvider``.

A model is a folder in the layout Hugging Face repositories use: an ONNX decoder
graph (the Optimum / transformers.js export: inputs ``input_ids``,
``attention_mask``, optional ``position_ids`` and ``past_key_values.N.key/value``;
outputs ``logits`` and ``present.N.key/value``), ``tokenizer.json``,
``config.json``, and optionally ``generation_config.json`` and
``tokenizer_config.json`` / ``chat_template.jinja`` with the chat template.
``fetch_model`` gets such a folder from the Hugging Face Hub by repo id (cached).

Everything here is synchronous and CPU/GPU-bound: the provider calls it in a worker
thread.  ``onnxruntime`` ships no type information, so it is imported as ``Any`` and
used only inside this module.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from astromesh_ray.core.providers.chat_format import DEFAULT_STOP, ChatFormat
from astromesh_ray.errors import ConfigError, ProviderError

__all__ = [
    "IncrementalDecoder",
    "OnnxModel",
    "Sampling",
    "check_model_ref",
    "fetch_model",
    "find_graph",
    "is_repo_id",
    "token_env",
]

# Where exports put the decoder, most common first (Optimum at the root,
# transformers.js / onnx-community under onnx/).
GRAPH_CANDIDATES = (
    "model.onnx",
    "onnx/model.onnx",
    "decoder_model_merged.onnx",
    "onnx/decoder_model_merged.onnx",
)
# The small files a model needs besides the graph (fetched from the Hub).
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
# A Hub repo id: "owner/name", or a bare legacy name like "gpt2".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_NP_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def _error(
    name: str, message: str, hint: str | None = None, *, retryable: bool = False
) -> ProviderError:
    return ProviderError(
        f"{name}: {message}", hint=hint, provider=name, status=None, retryable=retryable
    )


def find_graph(folder: Path, file: str | None) -> Path:
    """The ONNX graph in ``folder``: ``file`` when given, else the usual export names."""
    if file is not None:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{file} not found in {folder}")
        return path
    for candidate in GRAPH_CANDIDATES:
        if (folder / candidate).is_file():
            return folder / candidate
    found = sorted(str(p.relative_to(folder)) for p in folder.glob("**/*.onnx"))
    if len(found) == 1:
        return folder / found[0]
    listed = ", ".join(found) or "no .onnx file at all"
    raise FileNotFoundError(f"no ONNX decoder graph in {folder} (found: {listed})")


def fetch_model(
    name: str,
    model: str,
    *,
    graph_file: str | None,
    revision: str | None,
    cache_dir: str | None,
    token: str | None,
) -> Path:
    """The local folder holding ``model``: the folder itself, or a Hub snapshot.

    A Hub repo is fetched once (only the graph, its external weights and the small
    metadata files) into the Hugging Face cache; later calls, even offline, reuse it.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    check_model_ref(name, model)
    if not is_repo_id(model):
        raise ConfigError(
            f"{name}: model folder {model!r} does not exist or is not a folder",
            hint="give a folder holding model.onnx, tokenizer.json and config.json",
        )
    graphs = [graph_file] if graph_file else list(GRAPH_CANDIDATES[:2])
    # External weights sit beside the graph as <file>_data or <file>.data (sometimes split).
    patterns = [*METADATA_FILES, *(p for g in graphs for p in (g, f"{g}_data*", f"{g}.data"))]
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise ConfigError(
            f"{name}: model {model!r} is a Hub repo id, and huggingface_hub is not installed",
            hint="pip install 'astromesh-ray[onnx]', or give a local folder",
        ) from None
    try:
        folder = snapshot_download(
            model, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=patterns
        )
    except Exception as exc:
        missing = isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError)
        raise _error(
            name,
            f"could not fetch model {model!r} from the Hugging Face Hub "
            f"(and there is no local folder of that name) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "check the repo id, the network and the token (api_key_env), or download the "
            "model once and set model: to the local folder (ONNX graph + tokenizer.json "
            "+ config.json)",
            retryable=not missing,
        ) from None
    return Path(folder)


def is_repo_id(model: str) -> bool:
    """Whether ``model`` reads as a Hugging Face Hub repo id rather than a path."""
    return not model.startswith((".", "/", "~")) and bool(_REPO_ID.match(model))


def check_model_ref(name: str, model: str) -> None:
    """Refuse a ``model`` that can be neither a folder nor a Hub repo id.

    A path need not exist yet where the provider is built (it may exist only on the
    node that runs it); existence is checked when the model loads.
    """
    path_like = model.startswith((".", "/", "~")) or os.sep in model.strip("/")
    if not model.strip() or not (path_like or is_repo_id(model)):
        raise ConfigError(
            f"{name}: model {model!r} is neither a folder path nor a Hugging Face Hub repo id",
            hint="give a folder holding model.onnx, tokenizer.json and config.json, "
            "or a Hub id like 'owner/name'",
        )


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def chooser(self) -> Callable[[np.ndarray[Any, Any]], int]:
        """A function from last-position logits to a token id (one per generation,
        so a seeded generation is reproducible)."""
        if self.temperature <= 0:
            return lambda logits: int(np.argmax(logits))  # the first of equal maxima, as torch
        rng = np.random.default_rng(self.seed)

        def pick(logits: np.ndarray[Any, Any]) -> int:
            scores = logits.astype(np.float64) / self.temperature
            if 0 < self.top_k < scores.size:
                kth = np.partition(scores, -self.top_k)[-self.top_k]
                scores = np.where(scores < kth, -np.inf, scores)
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            if self.top_p < 1.0:
                order = np.argsort(-probs, kind="stable")
                cumulative = np.cumsum(probs[order])
                # Keep the smallest head whose mass reaches top_p (at least one token).
                keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
                mask = np.zeros_like(probs)
                mask[keep] = probs[keep]
                probs = mask / mask.sum()
            return int(rng.choice(probs.size, p=probs))

        return pick


@dataclass
class OnnxModel:
    """A loaded model: ONNX Runtime session, tokenizer, chat format and stop tokens."""

    name: str
    folder: Path
    session: Any
    tokenizer: Tokenizer
    chat_format: ChatFormat
    eos_ids: frozenset[int]
    max_context: int
    layers: list[int] = field(default_factory=list)
    _past_shape: tuple[int, int] = (0, 0)  # (kv heads, head dim)
    _past_dtype: Any = np.float32
    _ids_dtype: Any = np.int64
    _inputs: frozenset[str] = frozenset()

    @staticmethod
    def load(
        name: str,
        folder: Path,
        *,
        graph_file: str | None,
        execution_provider: str,
        threads: int | None,
        chat_template: str | None,
        max_context: int | None,
    ) -> OnnxModel:
        """Open the graph in ONNX Runtime and read the tokenizer and configs."""
        try:
            graph = find_graph(folder, graph_file)
        except FileNotFoundError as exc:
            raise _error(name, str(exc), "set the file option to the .onnx graph to use") from None
        for required in ("tokenizer.json", "config.json"):
            if not (folder / required).is_file():
                raise _error(name, f"{required} missing in {folder}", "export it with the model")
        try:
            config = _json(folder / "config.json")
            tokenizer_config = _json(folder / "tokenizer_config.json")
            generation_config = _json(folder / "generation_config.json")
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise _error(name, f"cannot read the model files in {folder}: {exc}") from None
        template = chat_template or _model_template(folder, tokenizer_config)
        chat_format = ChatFormat(template, stop=DEFAULT_STOP)
        eos = _eos_ids(tokenizer, config, generation_config, tokenizer_config, chat_format)
        session = _session(name, graph, execution_provider, threads)
        model = OnnxModel(
            name=name,
            folder=folder,
            session=session,
            tokenizer=tokenizer,
            chat_format=chat_format,
            eos_ids=eos,
            max_context=int(max_context or config.get("max_position_embeddings") or 4096),
        )
        model._read_signature(config)
        return model

    def _read_signature(self, config: dict[str, Any]) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._inputs = frozenset(inputs)
        past = sorted({int(m.group(1)) for n in inputs if (m := _PAST.match(n))})
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids", "use_cache_branch"}
        unknown -= {f"past_key_values.{i}.{kv}" for i in past for kv in ("key", "value")}
        if "input_ids" not in inputs or not past or unknown:
            raise _error(
                self.name,
                "the ONNX graph is not a decoder with a KV cache: inputs are "
                + ", ".join(sorted(inputs)),
                "export it with past key values (optimum-cli export onnx --task "
                "text-generation-with-past)",
            )
        self.layers = past
        first = inputs[f"past_key_values.{past[0]}.key"]
        heads, head_dim = first.shape[1], first.shape[3]
        # Exports usually fix heads and head dim; fall back to config.json otherwise.
        if not isinstance(heads, int):
            heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        if not isinstance(head_dim, int):
            head_dim = int(
                config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            )
        self._past_shape = (heads, head_dim)
        self._past_dtype = _NP_DTYPES.get(first.type, np.float32)
        self._ids_dtype = _NP_DTYPES.get(inputs["input_ids"].type, np.int64)

    # -- text --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (with the tokenizer's own special tokens)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids; special tokens (control markers) are left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------

    def generate(
        self, prompt_ids: Sequence[int], max_tokens: int, sampling: Sampling
    ) -> Generator[int, None, None]:
        """Yield generated token ids one by one: a prefill over the prompt, then one
        token per step with the KV cache; an eos id is yielded, then generation ends."""
        if not prompt_ids:
            raise _error(self.name, "the prompt is empty")
        room = self.max_context - len(prompt_ids)
        if room <= 0:
            raise _error(
                self.name,
                f"the prompt has {len(prompt_ids)} tokens, the context holds {self.max_context}",
                "shorten the conversation or raise the max_context option",
            )
        choose = sampling.chooser()
        heads, head_dim = self._past_shape
        past = {
            f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, head_dim), self._past_dtype)
            for i in self.layers
            for kv in ("key", "value")
        }
        feed_ids = list(prompt_ids)
        seen = 0
        for _ in range(min(max_tokens, room)):
            logits, past = self._forward(feed_ids, seen, past)
            seen += len(feed_ids)
            token = choose(logits)
            yield token
            if token in self.eos_ids:
                return
            feed_ids = [token]

    def _forward(
        self, ids: list[int], seen: int, past: dict[str, Any]
    ) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        feed: dict[str, Any] = {
            "input_ids": np.asarray([ids], dtype=self._ids_dtype),
            **past,
        }
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = np.ones((1, seen + len(ids)), dtype=np.int64)
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(seen, seen + len(ids), dtype=np.int64)[None, :]
        if "use_cache_branch" in self._inputs:  # Optimum's merged decoder
            feed["use_cache_branch"] = np.asarray([seen > 0])
        names = ["logits", *(f"present.{i}.{kv}" for i in self.layers for kv in ("key", "value"))]
        try:
            outputs = self.session.run(names, feed)
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise _error(self.name, f"ONNX Runtime failed: {exc}", retryable=False) from None
        presents = {
            f"past_key_values.{i}.{kv}": outputs[1 + 2 * n + k]
            for n, i in enumerate(self.layers)
            for k, kv in enumerate(("key", "value"))
        }
        logits: np.ndarray[Any, Any] = outputs[0][0, -1]
        return logits, presents


class IncrementalDecoder:
    """Turns token ids into text deltas without splitting multi-byte characters.

    Decodes a short window of recent tokens twice (without and with the newest) and
    emits the difference; a delta ending in U+FFFD is held back until the bytes that
    complete the character arrive.  The window also keeps tokenizers that drop a
    leading space on the first token of a string (SentencePiece) exact.
    """

    def __init__(self, model: OnnxModel) -> None:
        self._decode = model.decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (maybe empty)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character decodes as U+FFFD)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _model_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    # Newer repos keep the template in its own file; older ones in tokenizer_config.json,
    # sometimes as a list of named templates.
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") or named.get("default")
    return template if isinstance(template, str) else None


def _eos_ids(
    tokenizer: Tokenizer,
    config: dict[str, Any],
    generation_config: dict[str, Any],
    tokenizer_config: dict[str, Any],
    chat_format: ChatFormat,
) -> frozenset[int]:
    ids: set[int] = set()
    for source in (generation_config.get("eos_token_id"), config.get("eos_token_id")):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(i for i in source if isinstance(i, int))
    eos = tokenizer_config.get("eos_token")
    if isinstance(eos, dict):  # {"content": "<|im_end|>", ...} in older files
        eos = eos.get("content")
    # The chat format's end-of-turn markers end generation when they are single tokens
    # (ChatML models often list only <|endoftext|> as eos).
    for text in (eos, *chat_format.stop):
        token = tokenizer.token_to_id(text) if isinstance(text, str) else None
        if token is not None:
            ids.add(token)
    return frozenset(ids)


def _session(name: str, graph: Path, execution_provider: str, threads: int | None) -> Any:
    try:
        ort: Any = importlib.import_module("onnxruntime")
    except ImportError:
        raise ConfigError(
            f"{name}: provider 'onnx' needs onnxruntime, which is not installed",
            hint="pip install 'astromesh-ray[onnx]' (onnxruntime-gpu instead for CUDA)",
        ) from None
    available = list(ort.get_available_providers())
    wanted = "CUDAExecutionProvider" if execution_provider == "cuda" else "CPUExecutionProvider"
    if wanted not in available:
        raise _error(
            name,
            f"execution_provider {execution_provider!r}: CUDA is not available in this "
            f"onnxruntime build (it offers {', '.join(available)})",
            "install onnxruntime-gpu on a machine with an NVIDIA GPU and CUDA, "
            "or use execution_provider: cpu",
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(graph), sess_options=options, providers=providers)
    except Exception as exc:
        raise _error(name, f"ONNX Runtime cannot load {graph}: {exc}") from None
    # ONNX Runtime silently falls back to CPU when the CUDA libraries fail to load.
    if wanted not in session.get_providers():
        raise _error(
            name,
            f"ONNX Runtime could not start {wanted} (CUDA libraries missing?); "
            f"session runs on {', '.join(session.get_providers())}",
            "check the CUDA and cuDNN versions onnxruntime-gpu needs",
        )
    return session


def token_env(api_key_env: str | None) -> str | None:
    """The Hugging Face token from ``api_key_env`` (None: huggingface_hub's defaults)."""
    return os.environ.get(api_key_env) if api_key_env else None
