"""``redact``: a JSON-able copy of a value with its secrets masked, for the episodic
log (and anything else written where operators read).

Three rules, applied to every key and value at any depth:

1. A value under a key that names a secret (``api_key``, ``token``, ``password``,
   ``authorization``, ``cookie``, ``aws_access_key_id``,
   ``Ocp-Apim-Subscription-Key``, ... in any case, with ``-``, ``_`` or camelCase
   spelling, and names ending in one, like ``openai_api_key`` or ``PGPASSWORD``)
   becomes ``"[redacted]"``; so does the value of a header pair naming one, given as
   ``[name, value]`` or ``{"name": name, "value": value}`` (or ``"key"``).
2. Inside strings, well-known secret shapes are masked wherever they appear:
   ``Bearer`` / ``Basic`` credentials and whatever follows ``Authorization:``,
   OpenAI-style ``sk-...`` keys, Stripe ``sk_live_...`` / ``rk_live_...`` keys, AWS
   access key ids (``AKIA...``), Google ``AIza...`` keys, GitHub (``ghp_...``,
   ``github_pat_...``), GitLab (``glpat-...``), Hugging Face (``hf_...``) and Slack
   tokens, JWTs, PEM private keys, the password of a URL
   (``postgresql://user:pass@host``, up to the last ``@``), ``password=...`` and
   ``password: ...`` pairs (DSNs, query strings, environment assignments such as
   ``AWS_SECRET_ACCESS_KEY=...``, YAML, headers), and quoted pairs: ``"password":
   "..."`` in JSON text, ``{'password': '...'}`` in a Python repr,
   ``{\\"password\\":\\"...\\"}`` in JSON inside a JSON string, and header
   pairs written as JSON.
3. Every exact string in ``secrets`` (e.g. the values of the API-key variables an
   agent uses, from ``secret_values``) is replaced wherever it appears.

Masking errs towards hiding: prose like "Bearer authentication" loses its second
word.  Values JSON cannot hold become their ``repr`` (then masked); strings longer
than ``max_chars`` are cut, with a marker saying how much was cut.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["MASK", "redact", "secret_values"]

MASK = "[redacted]"
"""What a secret is replaced with."""

MIN_SECRET_CHARS = 8
"""Shorter ``secrets`` are ignored: replacing a short string everywhere mangles
ordinary text, and a secret that short is no secret."""

_DEFAULT_MAX_CHARS = 4000
_MAX_DEPTH = 64
# Strings are masked a little past the cut, so a secret straddling the cut is seen
# whole; this much is dropped from the end of what was masked, in case a secret
# straddles the end of the masked part instead.  Longer than any secret but a PEM
# key, which is masked up to the end of the text when its END line is missing.
_MARGIN = 8192

# Key names (normalised: lower case, "_" between words) whose values are secrets...
_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "x_api_key",
        "api_token",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "bearer_token",
        "session_token",
        "secret",
        "client_secret",
        "secret_key",
        "secret_access_key",
        "access_key",
        "access_key_id",
        "subscription_key",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "authorization",
        "proxy_authorization",
        "x_auth_token",
        "cookie",
        "set_cookie",
        "private_key",
        "credential",
        "credentials",
        "connection_string",
    }
)
# ... and the endings that make a longer name one (openai_api_key, github_token).
_SECRET_SUFFIXES = (
    "_api_key",
    "_apikey",
    "_token",
    "_secret",
    "_secret_key",
    "_access_key",
    "_access_key_id",
    "_subscription_key",
    "_password",
    "_passwd",
    "_private_key",
    "_credentials",
    # Run together with what comes before (PGPASSWORD, SLACKTOKEN).
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
)
# The keys that name the secret of a name/value pair: {"name": "X-Api-Key", "value": ...}.
_NAME_KEYS = ("name", "key", "header")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s\-.]+")

_SECRET_WORDS = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|"
    r"access[_-]?token|refresh[_-]?token|auth[_-]?token|token|private[_-]?key|"
    r"secret[_-]?key|access[_-]?key(?:[_-]?id)?|subscription[_-]?key"
)
# Names whose quoted value is a secret (JSON, a Python repr, header pairs): the words
# above, and the header names that are whole words of their own.
_NAME_WORDS = rf"{_SECRET_WORDS}|authorization|cookie|credentials?"
# What may come before a secret word in a name (PGPASSWORD, AWS_SECRET_ACCESS_KEY,
# MY_APP_API_KEY): letters, digits, "_" and "-".  One flat class, and names are only
# tried from their first character (see _NAME_START), so a long name costs one scan.
_PREFIX = r"[A-Za-z0-9_-]*"
_NAME_START = r"(?<![A-Za-z0-9_-])"
# A quoted string after its opening quote (group name q): escapes included.
_QUOTED_REST = r"(?:(?!(?P=q))[^\\]|\\.)*(?P=q)"
# A JSON string inside a JSON string, after its opening \": the outer text's escapes
# come in pairs (\\ is the inner text's backslash, \" its quote).
_ESCAPED_REST = r'(?:[^\\"]|\\[^\\"]|\\\\(?:\\.|[^\\"]))*\\"'
# Schemes of the Authorization header whose credential follows a space.
_AUTH_SCHEMES = r"bearer|basic|token|digest|negotiate|ntlm|apikey|key|jwt|oauth|bot|sso"

# (pattern, replacement), applied in this order; compiled once.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, to the END line or (cut text) to the end.
    (
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "[redacted private key]",
    ),
    # The password of a URL: scheme://user:password@host.  Passwords may hold "/",
    # "+", "=" and "@" unencoded, so it runs to the last "@" before whitespace; but
    # host:port followed by a path, query or fragment (https://host:8080/p@v2) is
    # not user:password.
    (
        re.compile(
            r"((?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*)"
            r":(?!\d+(?:[/?#]|$))\S*@"
        ),
        rf"\1:{MASK}@",
    ),
    # HTTP credentials.
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{MASK}"),
    (
        # Basic credentials are base64: ask for a digit, "+", "/", "=" or an upper-case
        # letter past the first in them, so "Basic authentication" survives.
        re.compile(
            r"\b([Bb]asic|BASIC)(\s+)"
            r"(?=[A-Za-z0-9+/]*[0-9+/=]|[A-Za-z0-9+/][a-z0-9+/]*[A-Z])[A-Za-z0-9+/]{8,}={0,2}"
        ),
        rf"\1\2{MASK}",
    ),
    # An Authorization header's credential, whatever its scheme and shape
    # (Authorization: Token <x>, Basic <x>, or a bare credential).
    (
        re.compile(
            rf"(?i)\b((?:proxy-)?authorization[ \t]*[:=][ \t]*)"
            rf"((?:{_AUTH_SCHEMES})[ \t]+)?[^\s\"',;]+"
        ),
        rf"\1\2{MASK}",
    ),
    # JWTs: base64url header and payload (both JSON objects, so both "eyJ"), signature.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # OpenAI / Anthropic style keys: sk-..., sk-proj-..., sk-ant-...
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"), f"sk-{MASK}"),
    # Stripe secret and restricted keys: sk_live_..., rk_test_...
    (re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9]{10,}"), rf"\1{MASK}"),
    # AWS access key ids (long-term and temporary).
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), rf"\1{MASK}"),
    # Google API keys: AIza and 35 more.
    (re.compile(r"\b(AIza)[A-Za-z0-9_-]{35}"), rf"\1{MASK}"),
    # GitHub tokens: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained.
    (re.compile(r"\b(gh[pousr]_)[A-Za-z0-9]{20,}"), rf"\1{MASK}"),
    (re.compile(r"\b(github_pat_)[A-Za-z0-9_]{20,}"), rf"\1{MASK}"),
    # GitLab personal access tokens and Hugging Face tokens.
    (re.compile(r"\b(glpat-)[A-Za-z0-9_-]{16,}"), rf"\1{MASK}"),
    (re.compile(r"\b(hf_)[A-Za-z0-9]{16,}"), rf"\1{MASK}"),
    # Slack tokens.
    (re.compile(r"\b(xox[abposr]-)[A-Za-z0-9-]{10,}"), rf"\1{MASK}"),
    # "password": "..." inside JSON text (a tool result, a logged body), and
    # {'password': '...'} in a Python repr; a number there becomes a string.
    (
        re.compile(
            rf"(?is)((?P<k>[\"']){_PREFIX}(?:{_NAME_WORDS})(?P=k)\s*:\s*)"
            rf"(?P<q>[\"']){_QUOTED_REST}"
        ),
        rf"\1\g<q>{MASK}\g<q>",
    ),
    (
        re.compile(rf"(?i)((?P<k>[\"']){_PREFIX}(?:{_NAME_WORDS})(?P=k)\s*:\s*)-?\d[\w.+-]*"),
        rf"\1\g<k>{MASK}\g<k>",
    ),
    # {\"password\":\"...\"}: JSON text inside a JSON string.
    (
        re.compile(rf'(?i)(\\"{_PREFIX}(?:{_NAME_WORDS})\\"\s*:\s*\\"){_ESCAPED_REST}'),
        rf'\1{MASK}\\"',
    ),
    # Header pairs as JSON or repr text: ["X-Api-Key", "..."] and
    # {"name": "Authorization", "value": "..."}.
    (
        re.compile(
            rf"(?is)(\[\s*(?P<k>[\"']){_PREFIX}(?:{_NAME_WORDS})(?P=k)\s*,\s*)"
            rf"(?P<q>[\"']){_QUOTED_REST}"
        ),
        rf"\1\g<q>{MASK}\g<q>",
    ),
    (
        re.compile(
            rf"(?is)((?P<a>[\"'])(?:name|key|header)(?P=a)\s*:\s*"
            rf"(?P<k>[\"']){_PREFIX}(?:{_NAME_WORDS})(?P=k)\s*,\s*"
            rf"(?P<b>[\"'])value(?P=b)\s*:\s*)(?P<q>[\"']){_QUOTED_REST}"
        ),
        rf"\1\g<q>{MASK}\g<q>",
    ),
    # password=... in DSNs, query strings, config lines and environment assignments
    # (PGPASSWORD=..., AWS_SECRET_ACCESS_KEY=...), and password: ... in YAML or a
    # header (X-Api-Key: ...).
    (
        re.compile(
            rf"(?i){_NAME_START}({_PREFIX}(?:{_SECRET_WORDS})(?:\s*=\s*|[ \t]*:[ \t]*))"
            r"(?:'[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)"
        ),
        rf"\1{MASK}",
    ),
)


def redact(value: Any, *, secrets: Iterable[str] = (), max_chars: int = _DEFAULT_MAX_CHARS) -> Any:
    """A JSON-able deep copy of ``value`` with its secrets masked (see the module).

    Mappings become dicts (keys as strings), lists and tuples lists; ``None``,
    booleans, integers and finite floats stay; anything else (bytes, sets, objects,
    NaN) becomes its ``repr``.  A value under a secret key becomes ``"[redacted]"``
    unless it is ``None`` or ``""`` (nothing to hide).  Strings longer than
    ``max_chars`` keep their first ``max_chars`` characters (after masking) and end
    in ``…[N more chars]``, N counted in the original.  Structures nested deeper
    than 64 levels, or containing themselves, are cut with a marker.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, not {max_chars}")
    scrub = _Scrubber(_secrets_pattern(_usable(secrets)), max_chars)
    return scrub.value(value, 0, set())


def secret_values(env_names: Iterable[str]) -> list[str]:
    """The values of the environment variables ``env_names`` that are set and not
    empty, each once, for ``redact(..., secrets=...)``."""
    values = (os.environ.get(name) for name in env_names)
    return list(dict.fromkeys(v for v in values if v))


class _Scrubber:
    def __init__(self, exact: re.Pattern[str] | None, max_chars: int) -> None:
        self.exact = exact
        self.max_chars = max_chars

    def value(self, value: Any, depth: int, path: set[int]) -> Any:
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, Mapping | list | tuple):
            if depth >= _MAX_DEPTH:
                return "[nested too deep]"
            if id(value) in path:
                return "[circular]"
            path.add(id(value))
            try:
                if isinstance(value, Mapping):
                    named = _named_value_key(value)
                    return {
                        self.key(k): MASK
                        if (_is_secret_key(k) or k == named) and _hides(v)
                        else self.value(v, depth + 1, path)
                        for k, v in value.items()
                    }
                if len(value) == 2 and _is_secret_key(value[0]) and _hides(value[1]):
                    return [self.key(value[0]), MASK]  # a header pair: [name, value]
                return [self.value(v, depth + 1, path) for v in value]
            finally:
                path.discard(id(value))
        return self.text(repr(value))

    def key(self, key: Any) -> str:
        return self.text(key if isinstance(key, str) else str(key))

    def text(self, text: str) -> str:
        limit = self.max_chars
        if len(text) <= limit:
            return self.mask(text)
        masked = self.mask(text[: limit + 2 * _MARGIN])
        if len(text) > limit + 2 * _MARGIN:
            # The masked part ends mid-text: its tail may hold the start of a secret
            # that the cut kept from matching.
            masked = masked[: len(masked) - _MARGIN]
        return f"{masked[:limit]}…[{len(text) - limit} more chars]"

    def mask(self, text: str) -> str:
        if self.exact is not None:
            text = self.exact.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def _usable(secrets: Iterable[str]) -> tuple[str, ...]:
    if isinstance(secrets, str):  # one secret, not its characters
        secrets = (secrets,)
    found: set[str] = set()
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_SECRET_CHARS:
            found.add(secret)
            # As it appears in a URL or form body, and inside JSON text, too.
            found.add(quote(secret, safe=""))
            found.add(json.dumps(secret)[1:-1])
    return tuple(sorted(found))


@functools.lru_cache(maxsize=64)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


def _hides(value: Any) -> bool:
    """Whether a value under a secret name is masked: all but nothing (None, "")."""
    return value is not None and not (isinstance(value, str) and not value)


def _named_value_key(mapping: Mapping[Any, Any]) -> str | None:
    """``"value"`` for a name/value pair naming a secret (``{"name": "Authorization",
    "value": ...}``: HAR headers, Kubernetes env entries, Postman's ``key``), else
    ``None``."""
    if "value" not in mapping:
        return None
    for name_key in _NAME_KEYS:
        if _is_secret_key(mapping.get(name_key)):
            return "value"
    return None


def _is_secret_key(key: Any) -> bool:
    # Only strings are names (and only they reach the cache: a list is unhashable).
    return isinstance(key, str) and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    name = _SEPARATORS.sub("_", _CAMEL.sub("_", key.strip())).lower()
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)
