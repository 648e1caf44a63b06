"""The recognizers behind ``PiiDetector`` (``pii.py``): Presidio's own, tuned, and
ours where Presidio has none or misses.

Scores say how sure a recognizer is, and ``score_threshold`` (default 0.5) keeps
what reaches it:

- 1.0: the value passed a check of its own: Luhn (cards), mod-97 and the country's
  format (IBANs), a known top-level domain (emails), a known key format (secrets);
- 0.85: IP addresses (they parse), SSNs and high-entropy tokens with a context word
  before them (``SSN``, ``api key``, ``token``, ...);
- 0.75 / 0.65: phone numbers valid under libphonenumber, written internationally
  (``+44 ...``, ``0044 ...``) / nationally with separators (``020 7946 0958``);
- 0.6: high-entropy tokens with no context; 0.55: international numbers that are
  possible but not valid (``+1 (555) 123-4567``, a fictional range);
- 0.5: SSNs written ``123-45-6789`` with no context (Presidio's medium pattern);
- below 0.5 (dropped by default): bare digit strings that could be a phone number
  or an SSN but have no context word saying so.

Context is looked for in the text itself (the words just before a value): under
the ``NoOpNlpEngine`` there are no tokens, so Presidio's own context enhancer sees
nothing.
"""

from __future__ import annotations

import inspect
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache

import phonenumbers
import tldextract
from phonenumbers import Leniency, PhoneNumberMatcher
from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, RecognizerResult
from presidio_analyzer import predefined_recognizers as presidio_recognizers
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IpRecognizer,
    UsSsnRecognizer,
)

from astromesh_ray.core.memory import redact

__all__ = [
    "CardRecognizer",
    "IpAddressRecognizer",
    "OfflineEmailRecognizer",
    "PhoneNumberRecognizer",
    "SecretRecognizer",
    "SsnRecognizer",
    "national_recognizers",
]

CONTEXT_WINDOW = 40
"""Characters before a value searched for its context words."""


def has_context(text: str, start: int, words: re.Pattern[str]) -> bool:
    """Whether one of ``words`` ends in the ``CONTEXT_WINDOW`` characters before
    ``start``."""
    return words.search(text, max(0, start - CONTEXT_WINDOW), start) is not None


def _result(
    recognizer: EntityRecognizer, kind: str, start: int, end: int, score: float
) -> RecognizerResult:
    return RecognizerResult(
        entity_type=kind,
        start=start,
        end=end,
        score=score,
        recognition_metadata={
            # Presidio assigns ``name`` in an ``if``/``else`` mypy cannot type.
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,  # type: ignore[has-type]
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


# -- emails ----------------------------------------------------------------------------

OFFLINE_TLDS = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
"""Public suffixes from the snapshot that ships inside tldextract: no fetch of the
list over HTTP (the default extractor's first use), no cache directory written."""

EMAIL_MAX_CHARS = 254
"""The longest address SMTP carries (RFC 5321's path limit less its brackets)."""


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, checking the domain against ``OFFLINE_TLDS``
    instead of ``tldextract.extract`` (which downloads the suffix list)."""

    def validate_result(self, pattern_text: str) -> bool:
        if len(pattern_text) > EMAIL_MAX_CHARS:
            return False
        return bool(OFFLINE_TLDS(pattern_text).fqdn)


# -- phone numbers ---------------------------------------------------------------------

PHONE_REGIONS = (
    "US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "LU", "ES", "PT", "IT",
    "DK", "SE", "NO", "FI", "PL", "CZ", "GR", "IN", "AU", "NZ", "BR", "MX", "AR", "JP",
    "KR", "CN", "SG", "HK", "ZA", "IL", "AE", "TR",
)  # fmt: skip
"""Regions whose national formats are recognised (any region's number is, written
with its ``+`` country code)."""

PHONE_MAX_CHARS = 30
"""The longest phone candidate: 1 to 24 characters of digits and separators between
an optional ``+``/``00``/``(`` and a final digit."""

# A run of digits and separators that could be a number: not glued to an id
# (ORD-2024-118273, #12345678), a path, a decimal or an address.
_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+#/.@-])(?<!\d:)(?:\+|00)?\(?\d[\d \t().-]{5,24}\d(?![\w@]|[.-]\d|:\d)"
)
_PHONE_WORDS = re.compile(
    r"(?i)\b(?:phone|tel|telephone|call|mobile|cell|fax|whats ?app|sms|text|dial|ring)\b"
)
# Shapes libphonenumber accepts but that are something else: dotted quads, decimals,
# SSNs, dates, and four groups of four (a card number).
_NOT_A_PHONE = re.compile(
    r"^\d{1,3}(?:\.\d{1,3}){3}$|^\d+\.\d+$|^\d{3}-\d{2}-\d{4}$|^\d{5}-\d{4}$"
    r"|^\d{4}(?:[ -]\d{4}){3}$|(?<![\d.])\d{1,4}([./-])\d{1,2}\1\d{2,4}(?!\d|\1\d)"
)
# Text shaped like an IBAN (a valid one is found as one; a mistyped one is still
# not a phone number).
_IBAN_SHAPED = re.compile(r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b")
NATIONAL_MIN_DIGITS = 7
NATIONAL_MAX_DIGITS = 12
"""Runs written without a country code and outside these bounds are something
else: page ranges and counts below, cards and account numbers above."""
# A number introduced as an id is one: "order 12345678", "ID 8841 2239", "PIN: 4421".
_ID_BEFORE = re.compile(
    r"(?i)\b(?:id|pin|code|passcode|ref|reference|order|invoice|account|acct|serial|no\.?)"
    r"\s*[:#]?\s*$"
)
_INTERNATIONAL = re.compile(r"^(?:\+|00[1-9])")
_SEPARATED = re.compile(r"\d[ ().-]+\d|^\(")


class PhoneNumberRecognizer(LocalRecognizer):
    """Phone numbers, through libphonenumber, in every region's format.

    Presidio's ``PhoneRecognizer`` runs libphonenumber's matcher over the whole text
    once per region (3.8 ms per kB per region here) and scores every match 0.4,
    order numbers and IP addresses included.  This one finds candidate runs first,
    then asks the matcher about each run: international numbers (``+``/``00``)
    under any region, national ones under each of ``regions`` until one accepts
    the number with its grouping (``STRICT_GROUPING``).
    """

    def __init__(self, regions: Sequence[str] = PHONE_REGIONS) -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="PhoneNumberRecognizer")
        self.regions = tuple(regions)

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        ibans = [m.span() for m in _IBAN_SHAPED.finditer(text)]
        for candidate in _PHONE_CANDIDATE.finditer(text):
            at = candidate.start()
            if any(start <= at < end for start, end in ibans):
                continue
            if _ID_BEFORE.search(text, max(0, at - 16), at):
                continue
            for start, end, score in self._numbers(candidate.group(), at):
                if _NOT_A_PHONE.search(text[start:end]):
                    continue
                if score < 0.5 and has_context(text, start, _PHONE_WORDS):
                    score = 0.65
                results.append(_result(self, "PHONE_NUMBER", start, end, score))
        return results

    def _numbers(self, run: str, offset: int) -> Iterator[tuple[int, int, float]]:
        if _INTERNATIONAL.match(run):
            found = False
            for match in PhoneNumberMatcher(run, "DE", leniency=Leniency.VALID):
                found = True
                yield offset + match.start, offset + match.end, 0.75
            if not found and _possible_international(run):
                yield offset, offset + len(run), 0.55
            return
        count = sum(c.isdigit() for c in run)
        if not NATIONAL_MIN_DIGITS <= count <= NATIONAL_MAX_DIGITS or _NOT_A_PHONE.search(run):
            return
        for region in self.regions:
            if count not in _digit_counts(region):
                continue
            matches = list(PhoneNumberMatcher(run, region, leniency=Leniency.STRICT_GROUPING))
            if matches:
                for match in matches:
                    separated = _SEPARATED.search(match.raw_string) is not None
                    yield offset + match.start, offset + match.end, 0.65 if separated else 0.4
                return


@cache
def _digit_counts(region: str) -> frozenset[int]:
    """How many digits a national-format number of ``region`` can have: its
    numbers' lengths, with and without the trunk prefix (``0``, ``1``)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None or meta.general_desc is None or not meta.general_desc.possible_length:
        return frozenset(range(NATIONAL_MIN_DIGITS, NATIONAL_MAX_DIGITS + 1))
    lengths = set(meta.general_desc.possible_length)
    prefix = len(meta.national_prefix or "")
    return frozenset(lengths | {n + prefix for n in lengths})


def _possible_international(run: str) -> bool:
    try:
        number = phonenumbers.parse(run, None)
    except phonenumbers.NumberParseException:
        return False
    groups = [g for g in re.split(r"[ ().-]+", run) if g]
    return bool(phonenumbers.is_possible_number(number)) and len(groups) >= 3


# -- cards, SSNs, IP addresses ---------------------------------------------------------


class CardRecognizer(CreditCardRecognizer):
    """Presidio's card recognizer (Luhn-checked), with Mastercard's 2-series
    (2221-2720), which its pattern leaves out."""

    PATTERNS = [  # noqa: RUF012 (Presidio's class attribute)
        Pattern(
            "All Credit Cards (weak)",
            r"\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(2[2-7]\d{2})|(6\d{3})|(1\d{3})|(3\d{3}))"
            r"[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b",
            0.3,
        )
    ]

    def __init__(self) -> None:
        super().__init__(patterns=self.PATTERNS)


_SSN_SHAPED = re.compile(r"\d{3}([- .]?)\d{2}\1\d{4}")
_SSN_WORDS = re.compile(r"(?i)\b(?:ssn|ss#|social security|social sec\.?|taxpayer id)")


class SsnRecognizer(UsSsnRecognizer):
    """Presidio's SSN recognizer, with context read from the text: ``SSN`` or
    ``social security`` just before a value makes it 0.85, a bare ``123456789``
    included (Presidio's enhancer needs tokens the NoOp engine has not got)."""

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for result in results:
            value = text[result.start : result.end]
            if _SSN_SHAPED.fullmatch(value) and has_context(text, result.start, _SSN_WORDS):
                result.score = max(result.score, 0.85)
        return results


class IpAddressRecognizer(IpRecognizer):
    """Presidio's IPv4/IPv6 recognizer (matches must parse with ``ipaddress``),
    scored 0.85: above a phone number's score, as a dotted quad can be read as one."""

    def __init__(self) -> None:
        patterns = [
            Pattern(p.name, p.regex, 0.85 if p.score >= 0.5 else p.score)
            for p in IpRecognizer.PATTERNS
        ]
        super().__init__(patterns=patterns)


# -- secrets ---------------------------------------------------------------------------

# The key formats of the episodic log's redaction (memory/redact.py): PEM private
# keys, JWTs, OpenAI/Anthropic sk-, Stripe, AWS, Google, GitHub (two), GitLab,
# Hugging Face and Slack.  Picked from its pattern list by what they anchor on, so
# a format added there is found here too.
_KEY_ANCHORS = (
    "PRIVATE KEY",
    "eyJ",
    "sk-",
    "k_(?:live",
    "AKIA",
    "AIza",
    "gh[pousr]_",
    "github_pat_",
    "glpat-",
    "hf_",
    "xox",
)
KEY_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    pattern
    for pattern, _ in redact._PATTERNS
    if any(anchor in pattern.pattern for anchor in _KEY_ANCHORS)
)
"""The known key formats, each a whole-token match."""

# A JWT cut short (streamed, or pasted without its signature): base64url JSON.
_JWT_PREFIX = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{17,}(?:\.[A-Za-z0-9_-]*){0,2}")
# Runs of base64 / base64url characters (padding at the end only), not part of a
# dotted name, an address or a longer run.
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_@.-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/_=@-]|\.\w)")
_WORDS_IN_TOKEN = re.compile(r"[A-Z]?[a-z]{3,}")
_HEX = re.compile(r"[0-9a-fA-F_-]+")
_SECRET_WORDS = re.compile(
    r"(?i)(?:key|token|secret|passw(?:or)?d|pwd|bearer|credential|auth\w*|sid|cookie|"
    r"signature|session)"
)

TOKEN_MIN_CHARS = 20
TOKEN_MAX_WORDINESS = 0.6
"""A token with this share of its characters or more in runs of 3+ lower-case
letters (``Account``, ``user``) is an identifier, not a key: identifiers score
0.8 to 1, random base62 / base64 a median of 0.16 (99.5% under 0.56)."""
TOKEN_MIN_ENTROPY = 3.0
"""Bits per character (Shannon, over the token's own characters); 20 random base62
characters average about 4.0."""


def looks_random(token: str) -> bool:
    """Whether ``token`` (a run of base64 characters) reads as a random credential:
    upper- and lower-case letters, few words, high entropy, and not hexadecimal
    (hashes, UUIDs and git SHAs are hex and are not secrets)."""
    body = token.rstrip("=")
    if len(body) < TOKEN_MIN_CHARS or _HEX.fullmatch(body):
        return False
    if not (any(c.isupper() for c in body) and any(c.islower() for c in body)):
        return False
    wordy = sum(len(m) for m in _WORDS_IN_TOKEN.findall(body))
    if wordy >= TOKEN_MAX_WORDINESS * len(body):
        return False
    counts = Counter(body)
    entropy = -sum(n / len(body) * math.log2(n / len(body)) for n in counts.values())
    return entropy >= TOKEN_MIN_ENTROPY


class SecretRecognizer(LocalRecognizer):
    """Credentials: the key formats of ``KEY_PATTERNS`` (and JWT prefixes) at 1.0 /
    0.9, and high-entropy tokens of no known format (``looks_random``) at 0.6, 0.85
    with a word such as ``key``, ``token`` or ``secret`` just before them."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["SECRET"], name="SecretRecognizer")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for pattern in KEY_PATTERNS:
            for match in pattern.finditer(text):
                # "sk-learn-in-ten-minutes" is prose: a key has digits or capitals.
                if any(c.isdigit() or c.isupper() for c in match.group()[4:]):
                    results.append(_result(self, "SECRET", *match.span(), 1.0))
        for match in _JWT_PREFIX.finditer(text):
            results.append(_result(self, "SECRET", *match.span(), 0.9))
        for match in _TOKEN.finditer(text):
            if looks_random(match.group()):
                score = 0.85 if has_context(text, match.start(), _SECRET_WORDS) else 0.6
                results.append(_result(self, "SECRET", *match.span(), score))
        return results


# -- national ids ----------------------------------------------------------------------


@cache
def national_recognizers() -> dict[str, type[EntityRecognizer]]:
    """Presidio's other pattern recognizers by the entity they find (``UK_NHS``,
    ``ES_NIF``, ``IT_FISCAL_CODE``, ``URL``, ...): its country-specific and generic
    ones, not those needing a model or a service."""
    found: dict[str, type[EntityRecognizer]] = {}
    for name in presidio_recognizers.__all__:
        cls = getattr(presidio_recognizers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, LocalRecognizer)):
            continue
        if not cls.__module__.startswith(
            ("presidio_analyzer.predefined_recognizers.country_specific.",
             "presidio_analyzer.predefined_recognizers.generic.")
        ):  # fmt: skip
            continue
        params = inspect.signature(cls.__init__).parameters
        for key in ("supported_entity", "supported_entities"):
            default = params[key].default if key in params else None
            kinds = [default] if isinstance(default, str) else default or []
            for kind in kinds:
                found.setdefault(kind, cls)
    return found
