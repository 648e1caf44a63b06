"""``PiiDetector`` (``core/guardrails/pii.py``) on the labelled corpus and on the
look-alikes it must leave alone, offline (the unit tests' sockets refuse to connect).

The corpus check scores the default detector the way ``benchmarks/guardrails.py``
does (its ``score_corpus``, imported here so both count alike: pytest's rootdir is on
``sys.path`` because ``tests`` is a package, and ``benchmarks`` imports as a namespace
package) and holds every type to the figures recorded in ``tests/data/pii_figures.json``
by ``benchmarks/guardrails.py --record``: any drop fails.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from astromesh_ray.core.guardrails import recognizers
from astromesh_ray.core.guardrails.base import Finding
from astromesh_ray.core.guardrails.pii import MAX_SPAN, PiiDetector, pii_detector
from astromesh_ray.core.guardrails.vault import LocalVault
from astromesh_ray.spec.guardrails import PII_ENTITIES
from benchmarks.guardrails import CORPUS, FIGURES, CorpusLine, load_corpus, score_corpus

GOAL = 0.95
"""The precision and recall every structured type must reach on the corpus."""
EPSILON = 1e-9

LINES = load_corpus()


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return pii_detector()


def kinds(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in detector.find(text)]


# -- the corpus ------------------------------------------------------------------------


def test_corpus_labels_are_the_text() -> None:
    assert len(LINES) >= 500
    positives = [line for line in LINES if line.labels]
    assert len(positives) >= 300
    assert len(LINES) - len(positives) >= 100  # lines with nothing to find
    for line in LINES:
        for label in line.labels:
            assert line.text[label.start : label.end] == label.value, line.text
        spans = sorted((lb.start, lb.end) for lb in line.labels)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), line.text
    labelled = {kind: 0 for kind in PII_ENTITIES}
    for line in LINES:
        for label in line.labels:
            labelled[label.type] += 1
    assert all(n >= 30 for n in labelled.values()), labelled


def test_corpus_is_the_generators_output(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_pii_corpus", CORPUS.with_name("make_pii_corpus.py")
    )
    assert spec is not None and spec.loader is not None
    generator: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.OUT = tmp_path / "corpus.jsonl"
    generator.main()
    assert generator.OUT.read_bytes() == CORPUS.read_bytes()


def recorded() -> dict[str, Any]:
    figures: dict[str, Any] = json.loads(FIGURES.read_text(encoding="utf-8"))
    return figures


def test_recorded_figures_meet_the_goal() -> None:
    figures = recorded()
    assert figures["lines"] == len(LINES), "corpus changed: run benchmarks/guardrails.py --record"
    for kind in PII_ENTITIES:
        assert figures["figures"][kind]["precision"] >= GOAL, kind
        assert figures["figures"][kind]["recall"] >= GOAL, kind


def test_corpus_figures_do_not_drop(detector: PiiDetector) -> None:
    scores, errors = score_corpus(detector, LINES)
    floor = recorded()["figures"]
    shown = "\n".join(f"{e.what} {e.type}: {e.value!r} in {e.text!r}" for e in errors[:20])
    dropped = []
    for kind, figure in floor.items():
        score = scores[kind]
        if score.precision < figure["precision"] - EPSILON:
            dropped.append(f"{kind} precision {score.precision:.4f} < {figure['precision']}")
        if score.recall < figure["recall"] - EPSILON:
            dropped.append(f"{kind} recall {score.recall:.4f} < {figure['recall']}")
    assert not dropped, "\n".join(dropped) + "\n" + shown
    assert set(PII_ENTITIES) <= set(floor)


def test_lookahead_covers_every_corpus_entity(detector: PiiDetector) -> None:
    """Every bounded kind's longest value fits the look-ahead.  Longer values (PEM
    keys) have no bound: the streamer must then see one begin in every window it
    cuts, i.e. the text up to ``lookahead`` past the value's start already holds a
    finding from that start past the cut (``MAX_SPAN["SECRET"]``)."""
    longest = max(lb.end - lb.start for line in LINES for lb in line.labels)
    bounded = max(lb.end - lb.start for line in LINES for lb in line.labels if lb.type != "SECRET")
    assert detector.lookahead > bounded
    assert detector.lookahead >= max(MAX_SPAN[k] for k in PII_ENTITIES) + 1
    long_values = [
        (line, lb)
        for line in LINES
        for lb in line.labels
        if lb.end - lb.start >= detector.lookahead
    ]
    assert longest < detector.lookahead or long_values
    for line, label in long_values:
        assert_streamable(detector, line, label.start, label.end)


def assert_streamable(detector: PiiDetector, line: CorpusLine, start: int, end: int) -> None:
    look = detector.lookahead
    for upto in range(start + look, min(len(line.text), end + look) + 1, 7):
        cut = min(upto - look, end)
        found = detector.find(line.text[:upto])
        assert any(f.start <= start and f.end >= cut for f in found), (upto, line.text)


# -- look-alikes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "This card number 4111 1111 1111 1112 fails the Luhn check.",
        "card 4242424242424241",
        "Reject DE88 3704 0044 0532 0130 00: the check digits are wrong.",
        "IBAN GB83WEST12345698765432",
        "Request id 550e8400-e29b-41d4-a716-446655440000 failed.",
        "digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        "Fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b (3f78685).",
        "Upgrade to v2.14.3-rc2 (was 1.10.2.1234); see 6.30.65.",
        "on 2024-03-15, 15/03/2024, 03.15.2024 and 2024-03-15T12:30:00Z at 12:30:45",
        "Your order ORD-2024-118273 (#12345678, PO-2023-000001) and INV-2021-55123.",
        "build 20240315.3 passed; 1,250,000 assertions; ISBN 978-3-16-148410-0.",
        "The getUserAccountSettingsV2 handler in HttpRequestRetryHandlerFactory2024.",
    ],
)
def test_look_alikes_are_not_found(detector: PiiDetector, text: str) -> None:
    assert detector.find(text) == []


def test_valid_twins_of_the_look_alikes_are_found(detector: PiiDetector) -> None:
    assert kinds(detector, "card 4242424242424242") == [("CREDIT_CARD", "4242424242424242")]
    text = "IBAN DE89 3704 0044 0532 0130 00."
    assert kinds(detector, text) == [("IBAN_CODE", "DE89 3704 0044 0532 0130 00")]
    assert kinds(detector, "IBAN GB82WEST12345698765432") == [
        ("IBAN_CODE", "GB82WEST12345698765432")
    ]


# -- redaction -------------------------------------------------------------------------


async def test_redact_gives_typed_placeholders(detector: PiiDetector) -> None:
    text = (
        "Mail jane.doe@example.com or jane.doe@example.com, call +44 20 7946 0958, "
        "card 4242 4242 4242 4242, IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-8419, "
        "from 10.1.2.3, key AKIAIOSFODNN7EXAMPLE."
    )
    findings = detector.find(text)
    vault = LocalVault()
    placeholders = await vault.assign("s", [(f.kind, text[f.start : f.end]) for f in findings])
    assert detector.redact(text, findings, placeholders) == (
        "Mail [EMAIL_1] or [EMAIL_1], call [PHONE_1], card [CARD_1], IBAN [IBAN_1], "
        "SSN [SSN_1], from [IP_1], key [SECRET_1]."
    )


def test_redact_skips_overlaps_and_checks_its_arguments(detector: PiiDetector) -> None:
    text = "abcdef"
    findings = [Finding("A", 0, 3), Finding("B", 2, 5), Finding("C", 5, 6)]
    assert detector.redact(text, findings, ["[A]", "[B]", "[C]"]) == "[A]de[C]"
    assert detector.redact(text, [], []) == text
    with pytest.raises(ValueError, match="2 findings but 1 placeholders"):
        detector.redact(text, findings[:2], ["[A]"])


# -- configuration ---------------------------------------------------------------------


def test_score_threshold_raises_and_lowers_what_is_found() -> None:
    bare_ssn = "x 536-22-8419 y"  # Presidio's medium pattern: 0.5
    with_context = "SSN 536-22-8419"  # 0.85
    bare_number = "number 02079460958 here"  # a national number without separators: 0.4
    default = pii_detector()
    assert kinds(default, bare_ssn) == [("US_SSN", "536-22-8419")]
    assert kinds(default, bare_number) == []
    strict = pii_detector(score_threshold=0.6)
    assert kinds(strict, bare_ssn) == []
    assert kinds(strict, with_context) == [("US_SSN", "536-22-8419")]
    loose = pii_detector(score_threshold=0.3)
    assert kinds(loose, bare_number) == [("PHONE_NUMBER", "02079460958")]
    assert all(f.score >= 0.3 for f in loose.find(bare_number + " " + bare_ssn))
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\]"):
        PiiDetector(score_threshold=1.5)


def test_entities_choose_what_is_found() -> None:
    text = "jane@example.com, NHS number 943 476 5919, +44 20 7946 0958"
    assert kinds(pii_detector(["EMAIL_ADDRESS"]), text) == [("EMAIL_ADDRESS", "jane@example.com")]
    assert kinds(pii_detector(["UK_NHS"]), text) == [("UK_NHS", "943 476 5919")]
    assert pii_detector(["US_SSN", "EMAIL_ADDRESS"]) is pii_detector(["EMAIL_ADDRESS", "US_SSN"])
    assert pii_detector() is pii_detector()


def test_unknown_entity_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown PII entity EMAIL; supported: EMAIL_ADDRESS"):
        PiiDetector(["EMAIL"])
    with pytest.raises(ValueError, match=r"EMAIL_ADRESS \(did you mean EMAIL_ADDRESS\?\)"):
        PiiDetector(["EMAIL_ADRESS"])
    with pytest.raises(ValueError, match="unknown PII entities FOO, BAR; supported"):
        PiiDetector(["EMAIL_ADDRESS", "FOO", "BAR"])
    with pytest.raises(ValueError, match=r"PERSON \(PERSON, LOCATION need ner_model\)"):
        PiiDetector(["PERSON"])
    with pytest.raises(ValueError, match="at least one entity"):
        PiiDetector([])


def test_ner_model_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"spaCy model 'xx_no_such_model_sm' is not installed"):
        PiiDetector(ner_model="xx_no_such_model_sm")
    with pytest.raises(ValueError, match="python -m spacy download en_core_web_sm"):
        PiiDetector(["PERSON"], ner_model="xx_no_such_model_sm")
    # A directory that is not a saved pipeline: loading fails, nothing is fetched.
    with pytest.raises(ValueError, match="could not be loaded"):
        PiiDetector(ner_model=str(tmp_path))


# -- offline ---------------------------------------------------------------------------


def test_email_domains_are_checked_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The public-suffix list comes from tldextract's bundled snapshot: loading it
    afresh fetches nothing (HTTP refused here, sockets refused for every unit test)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tldextract tried to fetch the suffix list")

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(requests.Session, "send", refuse)
    assert recognizers.OFFLINE_TLDS.suffix_list_urls == ()
    monkeypatch.setattr(recognizers.OFFLINE_TLDS, "_extractor", None)  # load it again
    detector = pii_detector(["EMAIL_ADDRESS"])
    text = "write to ana@correo.example.es, not ana@example.invalidtld"
    assert kinds(detector, text) == [("EMAIL_ADDRESS", "ana@correo.example.es")]
