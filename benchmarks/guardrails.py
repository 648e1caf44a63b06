"""PII benchmark: how well and how fast ``PiiDetector`` finds personal data and secrets.

The default detector (``pii_detector()``: every structured kind, no NER model) runs
over every line of the labelled corpus ``tests/data/pii_corpus.jsonl`` (written by
``tests/data/make_pii_corpus.py``: positives of each kind and look-alikes that must
be left alone).  It prints, per entity type, the labelled count, true and false
positives, misses, precision, recall and F1; then the time ``find()`` and
``redact()`` take per kB of text (median over rounds of the whole corpus, after a
warm-up round).  The baseline, in the same run: stock Presidio (its
``AnalyzerEngine`` with the same offline ``NoOpNlpEngine`` and its own predefined
recognizers, none of ours: no ``SECRET``, its own SSN recognizer) on the same
corpus and the same types, scored by the same rule, and its ``find`` time; the
ratio of ours to it is printed.  The figures are recorded too, and the unit test
``tests/unit/core/test_pii_detector.py`` fails when one drops.

A finding is a true positive when it has the label's type and covers the labelled
span, reaching past it on either side by nothing but non-whitespace characters
glued to it (``10.0.0.1/32`` for the label ``10.0.0.1``: Presidio keeps an IP's
prefix length in the span), each label matched by at most one finding.  A finding
that covers only part of a value leaves the rest of it in the redacted text, so it
counts as a false positive and the label as missed.  A type with nothing labelled
and nothing found scores 1.0.

``--record`` writes the per-type precision and recall (rounded down to 4 decimals)
to ``tests/data/pii_figures.json``, the floor the unit test holds the detector to.
Everything is offline: an audit hook fails the run if anything opens a connection
or looks up a host.

    .venv/bin/python benchmarks/guardrails.py
    .venv/bin/python benchmarks/guardrails.py --record   # after an improvement

The scoring (``load_corpus``, ``score_corpus``) is imported by the unit test, so both
count the same way; this module imports nothing from ``benchmarks`` at import time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from astromesh_ray.core.guardrails.base import Finding
from astromesh_ray.core.guardrails.pii import LANGUAGE, PiiDetector, pii_detector, resolve

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"
FIGURES = ROOT / "tests" / "data" / "pii_figures.json"
ROUNDS = 5
RULE = (
    "a finding is a true positive when it has the label's type and covers the labelled "
    "span, reaching past it only by non-whitespace characters glued to it; one finding "
    "per label"
)
SHOWN_ERRORS = 20


@dataclass(frozen=True, slots=True)
class Label:
    type: str
    start: int
    end: int
    value: str


@dataclass(frozen=True, slots=True)
class CorpusLine:
    text: str
    labels: tuple[Label, ...]


@dataclass(slots=True)
class Score:
    """One entity type's counts over the corpus."""

    labelled: int = 0
    found: int = 0
    true_positives: int = 0
    exact: int = 0  # true positives with the label's very offsets

    @property
    def false_positives(self) -> int:
        return self.found - self.true_positives

    @property
    def missed(self) -> int:
        return self.labelled - self.true_positives

    @property
    def precision(self) -> float:
        return self.true_positives / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.labelled if self.labelled else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(frozen=True, slots=True)
class Error:
    what: str  # "false positive" or "missed"
    type: str
    value: str
    text: str


def load_corpus(path: Path = CORPUS) -> list[CorpusLine]:
    lines: list[CorpusLine] = []
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if not raw.strip():
                continue
            record = json.loads(raw)
            labels = tuple(
                Label(e["type"], e["start"], e["end"], e["value"]) for e in record["entities"]
            )
            lines.append(CorpusLine(record["text"], labels))
    return lines


def matches(text: str, finding: Finding, label: Label) -> bool:
    """Whether ``finding`` counts as finding ``label`` (the rule in ``RULE``)."""
    if finding.kind != label.type or finding.start > label.start or finding.end < label.end:
        return False
    overhang = text[finding.start : label.start] + text[label.end : finding.end]
    return not any(c.isspace() for c in overhang)


def score_line(
    line: CorpusLine, findings: Sequence[Finding], scores: dict[str, Score], errors: list[Error]
) -> None:
    unmatched = list(line.labels)
    for label in line.labels:
        scores.setdefault(label.type, Score()).labelled += 1
    for finding in findings:
        score = scores.setdefault(finding.kind, Score())
        score.found += 1
        match = next((lb for lb in unmatched if matches(line.text, finding, lb)), None)
        if match is None:
            value = line.text[finding.start : finding.end]
            errors.append(Error("false positive", finding.kind, value, line.text))
            continue
        unmatched.remove(match)
        score.true_positives += 1
        score.exact += (finding.start, finding.end) == (match.start, match.end)
    errors.extend(Error("missed", lb.type, lb.value, line.text) for lb in unmatched)


class Finder(Protocol):
    entities: tuple[str, ...]

    def find(self, text: str) -> list[Finding]: ...


class StockPresidio:
    """The baseline: Presidio's analyzer as it comes (offline, no NER model), asked
    for the types it knows of ``entities``."""

    def __init__(self, entities: Sequence[str], score_threshold: float = 0.5) -> None:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers.generic import email_recognizer

        from astromesh_ray.core.guardrails.recognizers import OFFLINE_TLDS

        # Stock, its email recognizer downloads the public-suffix list on first use:
        # given the same bundled snapshot ours uses, so the run stays offline.
        email_recognizer.tldextract.extract = OFFLINE_TLDS  # type: ignore[attr-defined]

        self._engine = AnalyzerEngine(
            nlp_engine=NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}]),
            supported_languages=[LANGUAGE],
        )
        known = set(self._engine.get_supported_entities(language=LANGUAGE))
        self.entities = tuple(e for e in entities if e in known)
        self.score_threshold = score_threshold

    def find(self, text: str) -> list[Finding]:
        results = self._engine.analyze(
            text,
            language=LANGUAGE,
            entities=list(self.entities),
            score_threshold=self.score_threshold,
        )
        return resolve(results)


def score_corpus(
    detector: Finder, lines: Sequence[CorpusLine]
) -> tuple[dict[str, Score], list[Error]]:
    """Per entity type (every kind the detector looks for, labelled or found), the
    counts over ``lines``; and every false positive and miss."""
    scores = {kind: Score() for kind in detector.entities}
    errors: list[Error] = []
    for line in lines:
        score_line(line, detector.find(line.text), scores, errors)
    return dict(sorted(scores.items())), errors


def floor4(x: float) -> float:
    """``x`` rounded down to 4 decimals (a recorded floor never above the figure)."""
    return math.floor(x * 10_000) / 10_000


def figures(scores: dict[str, Score], lines: int) -> dict[str, Any]:
    return {
        "corpus": str(CORPUS.relative_to(ROOT)),
        "lines": lines,
        "rule": RULE,
        "figures": {
            kind: {"precision": floor4(s.precision), "recall": floor4(s.recall)}
            for kind, s in scores.items()
        },
    }


# -- latency ---------------------------------------------------------------------------


def ms_per_kb(seconds: float, kilobytes: float) -> float:
    return seconds * 1000 / kilobytes


def time_find(detector: Finder, texts: Sequence[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        detector.find(text)
    return time.perf_counter() - start


def time_redact(
    detector: PiiDetector, texts: Sequence[str], found: Sequence[Sequence[Finding]]
) -> float:
    placeholders = [[f"[{f.kind}_{i}]" for i, f in enumerate(fs)] for fs in found]
    start = time.perf_counter()
    for text, fs, names in zip(texts, found, placeholders, strict=True):
        detector.redact(text, fs, names)
    return time.perf_counter() - start


# -- no network ------------------------------------------------------------------------

network_attempts: list[str] = []


def _refuse_network(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        network_attempts.append(f"{event} {args!r}")
        raise RuntimeError(f"the PII benchmark must stay offline ({event})")


# -- report ----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--record", action="store_true", help=f"write {FIGURES.name}")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds")
    args = parser.parse_args(argv)
    sys.addaudithook(_refuse_network)

    import harness  # a sibling script module: only when run as a script

    for line in harness.machine():
        print(line)
    started = time.perf_counter()
    detector = pii_detector()
    detector.find("warm up: jane@example.com")
    print(
        f"detector: {', '.join(detector.entities)}; built in {time.perf_counter() - started:.2f} s"
    )

    lines = load_corpus()
    texts = [line.text for line in lines]
    kilobytes = sum(len(t.encode("utf-8")) for t in texts) / 1000
    positive = sum(1 for line in lines if line.labels)
    print(
        f"corpus: {CORPUS.relative_to(ROOT)}, {len(lines)} lines ({positive} with entities, "
        f"{len(lines) - positive} without), {sum(len(line.labels) for line in lines)} "
        f"labelled entities, {kilobytes:.1f} kB"
    )
    print(f"rule: {RULE}")
    print()

    scores, errors = score_corpus(detector, lines)
    print(
        f"{'type':<16}{'labelled':>9}{'found':>7}{'TP':>6}{'FP':>5}{'missed':>8}"
        f"{'exact':>7}{'precision':>11}{'recall':>8}{'F1':>8}"
    )
    for kind, s in scores.items():
        print(
            f"{kind:<16}{s.labelled:>9}{s.found:>7}{s.true_positives:>6}"
            f"{s.false_positives:>5}{s.missed:>8}{s.exact:>7}"
            f"{s.precision:>11.4f}{s.recall:>8.4f}{s.f1:>8.4f}"
        )
    total = Score(
        labelled=sum(s.labelled for s in scores.values()),
        found=sum(s.found for s in scores.values()),
        true_positives=sum(s.true_positives for s in scores.values()),
        exact=sum(s.exact for s in scores.values()),
    )
    print(
        f"{'all (micro)':<16}{total.labelled:>9}{total.found:>7}{total.true_positives:>6}"
        f"{total.false_positives:>5}{total.missed:>8}{total.exact:>7}"
        f"{total.precision:>11.4f}{total.recall:>8.4f}{total.f1:>8.4f}"
    )
    if errors:
        print(f"\n{len(errors)} errors (first {min(len(errors), SHOWN_ERRORS)}):")
        for error in errors[:SHOWN_ERRORS]:
            print(f"  {error.what} {error.type}: {error.value!r} in {error.text!r}")
    print()

    stock = StockPresidio(detector.entities)
    stock.find("warm up: jane@example.com")
    stock_scores, _ = score_corpus(stock, lines)
    print(f"baseline, stock Presidio ({', '.join(stock.entities)}; the rest it lacks):")
    print(f"{'type':<16}{'precision':>11}{'recall':>8}{'F1':>8}   ours: precision recall")
    for kind, s in stock_scores.items():
        ours = scores[kind]
        print(
            f"{kind:<16}{s.precision:>11.4f}{s.recall:>8.4f}{s.f1:>8.4f}"
            f"   {ours.precision:>15.4f}{ours.recall:>7.4f}"
        )
    print()

    found = [detector.find(t) for t in texts]  # warm-up round, and redact()'s input
    time_redact(detector, texts, found)
    find_ms = [ms_per_kb(time_find(detector, texts), kilobytes) for _ in range(args.rounds)]
    redact_ms = [
        ms_per_kb(time_redact(detector, texts, found), kilobytes) for _ in range(args.rounds)
    ]
    stock_ms = [ms_per_kb(time_find(stock, texts), kilobytes) for _ in range(args.rounds)]
    for name, ms in (("find()", find_ms), ("redact()", redact_ms), ("stock find", stock_ms)):
        print(
            f"{name:<10} {statistics.median(ms):7.3f} ms per kB (median of {args.rounds} "
            f"rounds of {kilobytes:.1f} kB; min {min(ms):.3f}, max {max(ms):.3f})"
        )
    ratio = statistics.median(find_ms) / statistics.median(stock_ms)
    print(f"find() / stock Presidio's: {ratio:.2f}x (ours checks {len(detector.entities)} types)")

    if network_attempts:
        print(f"FAILED: network used: {network_attempts}")
        return 1
    if args.record:
        FIGURES.write_text(json.dumps(figures(scores, len(lines)), indent=2) + "\n")
        print(f"\nrecorded {FIGURES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
