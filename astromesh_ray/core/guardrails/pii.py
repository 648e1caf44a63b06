"""``PiiDetector``: personal data and secrets in a text, with Presidio, offline.

Presidio's ``AnalyzerEngine`` runs under its ``NoOpNlpEngine`` (no spaCy model: the
default install has none, and none can be downloaded), over recognizers chosen
here (``recognizers.py``): Presidio's for emails, cards, IBANs, SSNs and IP
addresses (tuned), ours for phone numbers (libphonenumber, many regions) and
secrets (key formats and high-entropy tokens), and any other pattern recognizer
Presidio has (``UK_NHS``, ``ES_NIF``, ...) when its entity is named.  With
``ner_model`` (an installed spaCy pipeline) Presidio's spaCy engine adds PERSON and
LOCATION.

Nothing here touches the network: emails are checked against the public-suffix
snapshot bundled with tldextract (``OFFLINE_TLDS``), never the list its default
extractor fetches; a missing spaCy model is an error, never a download.

``find`` returns non-overlapping findings; where recognizers disagree on a span
the higher score wins, then the longer span (an IBAN over the card number Luhn
happens to accept inside it).  ``score_threshold`` is Presidio's: a finding is
kept when its score is at least the threshold (the scale is in
``recognizers.py``).  Building an engine takes a while (importing Presidio and
spaCy is most of it), so ``pii_detector`` keeps one per configuration for every
agent in the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from functools import cached_property, lru_cache
from pathlib import Path

from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpEngine, NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import IbanRecognizer, SpacyRecognizer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as Span

from astromesh_ray.core.guardrails.base import Finding
from astromesh_ray.core.guardrails.recognizers import (
    EMAIL_MAX_CHARS,
    PHONE_MAX_CHARS,
    CardRecognizer,
    IpAddressRecognizer,
    OfflineEmailRecognizer,
    PhoneNumberRecognizer,
    SecretRecognizer,
    SsnRecognizer,
    national_recognizers,
)
from astromesh_ray.spec.guardrails import NER_ENTITIES, PII_ENTITIES

__all__ = ["MAX_SPAN", "PiiDetector", "pii_detector"]

LANGUAGE = "en"
"""Patterns do not depend on the language; every recognizer is registered as "en"."""

MAX_SPAN: dict[str, int] = {
    "EMAIL_ADDRESS": EMAIL_MAX_CHARS,  # 254: SMTP's limit
    "PHONE_NUMBER": PHONE_MAX_CHARS,  # 30: the candidate pattern's bound
    "CREDIT_CARD": 23,  # 19 digits and 4 separators
    "IBAN_CODE": 42,  # 34 characters in groups of 4
    "US_SSN": 11,  # 123-45-6789
    "IP_ADDRESS": 50,  # an IPv6 with an embedded IPv4 (45), a /128 and a zone
    # github_pat_ tokens (93) are the longest bounded key format.  JWTs, PEM keys
    # and random tokens have no bound, but every prefix of one past its first 40
    # characters is itself a SECRET finding (JWT and token patterns take any
    # length from 20; a PEM key matches to the end of the text while its END line
    # is missing), so a window this long always sees one begin.
    "SECRET": 96,
    "PERSON": 64,
    "LOCATION": 64,
}
"""The longest text span of a finding of each kind, in characters."""

DEFAULT_MAX_SPAN = 64
"""For other national ids (the longest, ``IT_FISCAL_CODE`` or an ``IN_GSTIN``, is
under 20) and URLs (cut at 64 for streaming: the rest of a long URL may pass)."""

_OURS: dict[str, type[EntityRecognizer]] = {
    "EMAIL_ADDRESS": OfflineEmailRecognizer,
    "PHONE_NUMBER": PhoneNumberRecognizer,
    "CREDIT_CARD": CardRecognizer,
    "IBAN_CODE": IbanRecognizer,
    "US_SSN": SsnRecognizer,
    "IP_ADDRESS": IpAddressRecognizer,
    "SECRET": SecretRecognizer,
}

# spaCy labels (OntoNotes, WikiNER) mapped to ours; every other label is ignored.
_NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"}
_NER_LABELS |= {"FAC": "LOCATION", "LOCATION": "LOCATION"}
_NER_IGNORED = [
    "CARDINAL",
    "DATE",
    "EVENT",
    "LANGUAGE",
    "LAW",
    "MISC",
    "MONEY",
    "NORP",
    "ORDINAL",
    "ORG",
    "ORGANIZATION",
    "PERCENT",
    "PRODUCT",
    "QUANTITY",
    "TIME",
    "WORK_OF_ART",
]
NER_MODEL_HINT = "python -m spacy download en_core_web_sm"


class PiiDetector:
    """Finds and redacts personal data and secrets (one engine, many texts).

    ``entities``: the kinds to find (default every kind of ``PII_ENTITIES``, and
    ``NER_ENTITIES`` with ``ner_model``); an unknown kind is a ``ValueError`` naming
    the supported ones (and the closest, for a misspelt one).  ``ner_model``: an
    installed spaCy pipeline (name or path) for PERSON and LOCATION.
    """

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        *,
        score_threshold: float = 0.5,
        ner_model: str | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], not {score_threshold}")
        if entities is None:
            entities = PII_ENTITIES + (NER_ENTITIES if ner_model else ())
        self.entities = tuple(dict.fromkeys(entities))
        self.score_threshold = score_threshold
        self.ner_model = ner_model
        supported = supported_entities(ner=ner_model is not None)
        unknown = [kind for kind in self.entities if kind not in supported]
        if unknown:
            hint = ""
            if not ner_model and any(kind in NER_ENTITIES for kind in unknown):
                hint = f" ({', '.join(NER_ENTITIES)} need ner_model)"
            guesses = [g for k in unknown for g in get_close_matches(k, supported, n=1)]
            if guesses:
                hint += f" (did you mean {', '.join(guesses)}?)"
            raise ValueError(
                f"unknown PII entit{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(unknown)}{hint}; supported: {', '.join(supported)}"
            )
        if not self.entities:
            raise ValueError("give at least one entity type")
        self._engine = _analyzer(self.entities, ner_model)
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]

    @cached_property
    def lookahead(self) -> int:
        """How far past a position a streamer must see before letting it out: the
        longest span a finding of the configured kinds can have (``MAX_SPAN``;
        254 for the default kinds, set by email addresses), plus one character to
        see where it ends."""
        return max(MAX_SPAN.get(kind, DEFAULT_MAX_SPAN) for kind in self.entities) + 1

    def find(self, text: str) -> list[Finding]:
        """What ``text`` holds: ``Finding(kind, start, end, score)``, sorted by
        start, never overlapping."""
        if not text:
            return []
        results = self._engine.analyze(
            text,
            language=LANGUAGE,
            entities=list(self.entities),
            score_threshold=self.score_threshold,
        )
        return resolve(results)

    def redact(self, text: str, findings: Sequence[Finding], placeholders: Sequence[str]) -> str:
        """``text`` with ``findings[i]`` replaced by ``placeholders[i]`` (by
        Presidio's anonymizer; a finding overlapping an earlier one is left out,
        as ``base.apply_spans`` does)."""
        if len(findings) != len(placeholders):
            raise ValueError(f"{len(findings)} findings but {len(placeholders)} placeholders")
        spans: list[Span] = []
        operators: dict[str, OperatorConfig] = {}
        at = 0
        for index in sorted(
            range(len(findings)), key=lambda i: (findings[i].start, findings[i].end)
        ):
            finding = findings[index]
            if finding.start < at or finding.whole:
                continue
            # One entity type per finding, so each gets its own value and the
            # anonymizer merges none of them with a neighbour of the same kind.
            kind = f"finding_{index}"
            spans.append(Span(kind, finding.start, finding.end, finding.score))
            operators[kind] = OperatorConfig("replace", {"new_value": placeholders[index]})
            at = finding.end
        if not spans:
            return text
        result = self._anonymizer.anonymize(
            text, spans, operators, merge_entities_with_spaces=False
        )
        redacted: str = result.text
        return redacted


def resolve(results: Sequence[RecognizerResult]) -> list[Finding]:
    """Non-overlapping findings from Presidio's results: by score, then length, then
    position, each kept unless it overlaps one kept already; sorted by start."""
    ranked = sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start))
    kept: list[RecognizerResult] = []
    for result in ranked:
        if all(result.end <= k.start or result.start >= k.end for k in kept):
            kept.append(result)
    kept.sort(key=lambda r: r.start)
    return [Finding(r.entity_type, r.start, r.end, round(r.score, 4)) for r in kept]


def supported_entities(ner: bool = False) -> list[str]:
    """Every kind a detector can be asked for (NER kinds only with a model)."""
    kinds = list(PII_ENTITIES) + (list(NER_ENTITIES) if ner else [])
    return kinds + sorted(k for k in national_recognizers() if k not in kinds)


def pii_detector(
    entities: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    ner_model: str | None = None,
) -> PiiDetector:
    """The process's ``PiiDetector`` for these arguments (built once: the engine
    is slow to build, and agents share it).  Entity order does not matter."""
    key = None if entities is None else tuple(sorted(set(entities)))
    with _lock:
        return _cached_detector(key, float(score_threshold), ner_model)


_lock = threading.Lock()


@lru_cache(maxsize=32)
def _cached_detector(
    entities: tuple[str, ...] | None, score_threshold: float, ner_model: str | None
) -> PiiDetector:
    return PiiDetector(entities, score_threshold=score_threshold, ner_model=ner_model)


def _analyzer(entities: Sequence[str], ner_model: str | None) -> AnalyzerEngine:
    recognizers: list[EntityRecognizer] = []
    classes = {**national_recognizers(), **_OURS}
    for cls in dict.fromkeys(classes[k] for k in entities if k in classes):
        # Presidio's recognizers default their entities (``EntityRecognizer``'s
        # own signature, which mypy sees, requires them).
        make: Callable[..., EntityRecognizer] = cls
        recognizers.append(make() if cls in _OURS.values() else make(supported_language=LANGUAGE))
    nlp_engine: NlpEngine
    if ner_model is None:
        nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    else:
        nlp_engine = _spacy_engine(ner_model)
        ner = [k for k in entities if k in NER_ENTITIES]
        if ner:
            recognizers.append(SpacyRecognizer(supported_language=LANGUAGE, supported_entities=ner))
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


def _spacy_engine(model: str) -> NlpEngine:
    import spacy.util
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # Presidio downloads a model it cannot find: refuse first.
    if not (spacy.util.is_package(model) or Path(model).exists()):
        raise ValueError(
            f"spaCy model {model!r} is not installed (PERSON and LOCATION need one): "
            f"install it, e.g. `{NER_MODEL_HINT}`, or give the path of a saved pipeline"
        )
    config = NerModelConfiguration(
        model_to_presidio_entity_mapping=_NER_LABELS, labels_to_ignore=_NER_IGNORED
    )
    engine = SpacyNlpEngine(
        models=[{"lang_code": LANGUAGE, "model_name": model}], ner_model_configuration=config
    )
    try:
        engine.load()
    except OSError as exc:  # a path that is not a pipeline, a broken package
        raise ValueError(f"spaCy model {model!r} could not be loaded: {exc}") from exc
    return engine
