"""Writes ``pii_corpus.jsonl``: the labelled corpus the PII detector is scored on.

    .venv/bin/python tests/data/make_pii_corpus.py

Deterministic (``random.Random(SEED)``, no other source of randomness), so the
committed corpus is exactly this script's output; change the script, run it, and
commit both.

One JSON object a line::

    {"text": "...", "entities": [{"type": "EMAIL_ADDRESS", "start": 11, "end": 31,
                                  "value": "jane.doe@example.com"}, ...]}

``start``/``end`` are Python string offsets (``text[start:end] == value``); ``value``
is there for reading and is checked by the test.  Every labelled span is the entity
alone: an IP address without its port or brackets, a token without the
``api_key=`` before it, a phone number from its ``+`` (or first digit or opening
parenthesis) to its last digit.

Positives are built to be real: cards pass Luhn, IBANs their mod-97 check and their
country's length, phone numbers are numbers ``phonenumbers`` calls valid (the
generator retries random subscriber numbers until they are), SSNs avoid the areas
the SSA never issues.  Negatives are the look-alikes a detector must leave alone:
order and invoice numbers, dates and times, versions, UUIDs, hashes, Luhn-invalid
card numbers, IBANs with a wrong check, zip codes, prices, ISBNs, MAC addresses,
identifiers and paths.  Lines with nothing to find are labelled ``[]``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers

SEED = 20260412
OUT = Path(__file__).with_name("pii_corpus.jsonl")

rng = random.Random(SEED)
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits


def digits(n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def chars(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# -- emails ----------------------------------------------------------------------------

FIRST = ["jane", "john", "maria", "li", "ahmed", "sofia", "lukas", "emma", "noah", "olivia"]
FIRST += ["yuki", "priya", "carlos", "anna", "omar", "chloe", "mateo", "ines", "ravi", "zoe"]
LAST = ["doe", "smith", "garcia", "chen", "khan", "rossi", "muller", "dubois", "tanaka"]
LAST += ["patel", "silva", "novak", "berg", "okafor", "jensen", "moreau", "kowalski"]
TAGS = ["newsletter", "work", "shop", "github", "2024", "receipts", "travel", "dev"]
DOMAINS = [
    "example.com",
    "example.org",
    "mail.example.co.uk",
    "eu.corp.example.com",
    "acme-industries.de",
    "students.cs.uni-example.edu",
    "shop.example.fr",
    "example.io",
    "startup.ai",
    "gmail.com",
    "outlook.com",
    "proton.me",
    "example.com.au",
    "dev.example.net",
    "correo.example.es",
    "posta.example.it",
    "example.nl",
    "mx1.mail.example-hosting.co.jp",
]


def email() -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [
            f"{f}.{last}",
            f"{f}{last[0]}",
            f"{f[0]}{last}",
            f"{f}.{last}+{rng.choice(TAGS)}",
            f"{f}_{last}{rng.randint(1, 99)}",
            f"{f}-{last}",
            f"{f}+{rng.choice(TAGS)}",
            rng.choice(["support", "billing-team", "no-reply", "ops", "hr.payroll"]),
            f"{f}.{last}.{rng.randint(70, 99)}",
        ]
    )
    address = f"{local}@{rng.choice(DOMAINS)}"
    if rng.random() < 0.1:
        address = address.title()  # Jane.Doe@Example.Com
    return address


# -- phone numbers ---------------------------------------------------------------------

# (region, shapes): "#" is a random digit; "national" shapes are only tried with
# their region.  Shapes follow each country's own grouping.
PHONE_SHAPES: dict[str, list[str]] = {
    "US": [
        "+1 (415) 555-01##",
        "+1 212-555-01##",
        "(646) ###-####",
        "617-###-####",
        "415.###.####",
        "+1.202.###.####",
        "+1 (312) ###-####",
        "1-800-###-####",
        "+1206#######",
    ],
    "GB": [
        "+44 20 7946 0###",
        "+44 (0)20 7946 0###",
        "020 7946 0###",
        "+44 79## ######",
        "079## ######",
        "+4478########",
        "+44 161 496 0###",
        "0044 20 7946 0###",
    ],
    "DE": [
        "+49 30 ########",
        "+49 (0)30 ########",
        "030 ########",
        "+49 151 ########",
        "0151 ########",
        "+49-89-#######",
        "+49 40 ### ###-##",
    ],
    "FR": [
        "+33 1 ## ## ## ##",
        "+33 (0)6 ## ## ## ##",
        "01 ## ## ## ##",
        "06.##.##.##.##",
        "+33 7 ## ## ## ##",
        "0033 1 ## ## ## ##",
    ],
    "ES": ["+34 91# ### ###", "+34 6## ## ## ##", "91# ### ###", "+34 93 ### ## ##"],
    "IT": ["+39 06 #### ####", "+39 347 ### ####", "+39 02 ########"],
    "NL": ["+31 20 ### ####", "+31 6 ########", "020-#######"],
    "IN": ["+91 98### #####", "+91 22 #### ####"],
    "AU": ["+61 2 #### ####", "+61 4## ### ###"],
    "BR": ["+55 11 9####-####", "+55 21 ####-####"],
    "JP": ["+81 3-####-####", "+81 90-####-####"],
    "CH": ["+41 44 ### ## ##", "+41 79 ### ## ##"],
    "IE": ["+353 1 ### ####", "+353 87 ### ####"],
    "MX": ["+52 55 #### ####"],
    "SE": ["+46 8 ### ### ##", "+46 70 ### ## ##"],
    "PL": ["+48 22 ### ## ##", "+48 512 ### ###"],
    "PT": ["+351 21 ### ####", "+351 91# ### ###"],
    "BE": ["+32 2 ### ## ##", "+32 470 ## ## ##"],
    "AT": ["+43 1 #######"],
    "DK": ["+45 32 ## ## ##"],
    "NO": ["+47 22 ## ## ##"],
    "FI": ["+358 9 #######"],
    "SG": ["+65 6### ####"],
    "ZA": ["+27 21 ### ####"],
    "IL": ["+972 3-###-####"],
    "CA": ["+1 (416) ###-####", "604-###-####"],
}


def phone() -> str:
    region = rng.choice(list(PHONE_SHAPES))
    shape = rng.choice(PHONE_SHAPES[region])
    for _ in range(200):
        number = "".join(rng.choice(string.digits) if c == "#" else c for c in shape)
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return number
    raise RuntimeError(f"no valid number for {region} {shape}")


# -- cards -----------------------------------------------------------------------------


def luhn_digit(body: str) -> str:
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d)
        if i % 2 == 0:  # doubled: the check digit will stand right of it
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    body = re.sub(r"\D", "", number)
    return luhn_digit(body[:-1]) == body[-1]


def card_digits() -> tuple[str, str]:
    brand = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover"])
    if brand == "visa":
        body = "4" + digits(14)
    elif brand == "mc":
        body = f"5{rng.randint(1, 5)}" + digits(13)
    elif brand == "mc2":
        body = str(rng.randint(2221, 2720)) + digits(11)
    elif brand == "amex":
        body = rng.choice(["34", "37"]) + digits(12)
    else:
        body = "6011" + digits(11)
    return brand, body + luhn_digit(body)


def format_card(brand: str, number: str) -> str:
    sep = rng.choice(["", " ", "-"])
    if brand == "amex":
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def card() -> str:
    return format_card(*card_digits())


def bad_card() -> str:
    brand, number = card_digits()
    wrong = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return format_card(brand, wrong)


# -- IBANs -----------------------------------------------------------------------------

# Country: BBAN shape ("n" digit, "a" upper-case letter, "c" either).
IBAN_BBAN = {
    "DE": "nnnnnnnnnnnnnnnnnn",
    "GB": "aaaannnnnnnnnnnnnn",
    "FR": "nnnnnnnnnncccccccccccnn",
    "ES": "nnnnnnnnnnnnnnnnnnnn",
    "IT": "annnnnnnnnncccccccccccc",
    "NL": "aaaannnnnnnnnn",
    "BE": "nnnnnnnnnnnn",
    "CH": "nnnnnccccccccccccc",
    "AT": "nnnnnnnnnnnnnnnn",
    "PL": "nnnnnnnnnnnnnnnnnnnnnnnn",
    "PT": "nnnnnnnnnnnnnnnnnnnnn",
    "IE": "aaaannnnnnnnnnnnnn",
    "SE": "nnnnnnnnnnnnnnnnnnnn",
    "DK": "nnnnnnnnnnnnnn",
}


def iban_check(country: str, bban: str) -> str:
    moved = bban + country + "00"
    number = "".join(str(int(c, 36)) for c in moved)
    return f"{98 - int(number) % 97:02d}"


def iban_compact() -> str:
    country = rng.choice(list(IBAN_BBAN))
    pick = {"n": string.digits, "a": string.ascii_uppercase, "c": UPPER_DIGITS}
    bban = "".join(rng.choice(pick[c]) for c in IBAN_BBAN[country])
    return country + iban_check(country, bban) + bban


def group4(code: str) -> str:
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


def iban() -> str:
    code = iban_compact()
    return group4(code) if rng.random() < 0.5 else code


def bad_iban() -> str:
    code = iban_compact()
    wrong = f"{(int(code[2:4]) + rng.randint(1, 96)) % 97 + 2:02d}"[-2:]
    if wrong == code[2:4]:
        wrong = f"{(int(wrong) + 1) % 100:02d}"
    code = code[:2] + wrong + code[4:]
    return group4(code) if rng.random() < 0.5 else code


# -- SSNs ------------------------------------------------------------------------------


def ssn_parts() -> tuple[str, str, str]:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"


def ssn() -> str:
    a, g, s = ssn_parts()
    return rng.choice(["-", "-", "-", " ", "."]).join([a, g, s])


def ssn_bare() -> str:
    return "".join(ssn_parts())


# -- IP addresses ----------------------------------------------------------------------


def ipv4() -> str:
    kind = rng.choice(["private10", "private192", "private172", "public", "doc"])
    if kind == "private10":
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "private192":
        return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "private172":
        return f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "doc":
        return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"
    return ".".join(str(rng.randint(1, 223)) for _ in range(4))


def hexgroup() -> str:
    return f"{rng.randint(0, 0xFFFF):x}"


def ipv6() -> str:
    kind = rng.choice(["full", "compressed", "linklocal", "loopback", "doc", "padded"])
    if kind == "full":
        return ":".join(hexgroup() for _ in range(8))
    if kind == "padded":
        return ":".join(f"{rng.randint(0, 0xFFFF):04x}" for _ in range(8))
    if kind == "compressed":
        return f"2001:db8:{hexgroup()}::{hexgroup()}"
    if kind == "linklocal":
        return f"fe80::{hexgroup()}:{hexgroup()}:{hexgroup()}:{hexgroup()}"
    if kind == "loopback":
        return "::1"
    return f"2001:db8::{hexgroup()}"


# -- secrets ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt() -> str:
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
    claims = {"sub": digits(8), "name": rng.choice(FIRST).title(), "iat": 1700000000}
    claims["exp"] = claims["iat"] + rng.randint(600, 86400)  # type: ignore[operator]
    payload = b64url(json.dumps(claims).encode())
    signature = b64url(bytes(rng.randrange(256) for _ in range(32)))
    return f"{header}.{payload}.{signature}"


def pem() -> str:
    kind = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randint(90, 200))))
    text = body.decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"


def random_token() -> str:
    """A high-entropy credential of no known format (base62, base64 or base64url)."""
    kind = rng.choice(["base62", "base62", "base64", "base64url"])
    n = rng.randint(24, 48)
    if kind == "base62":
        return chars(ALNUM, n)
    if kind == "base64":
        return base64.b64encode(bytes(rng.randrange(256) for _ in range(n))).decode()
    return b64url(bytes(rng.randrange(256) for _ in range(n)))


SECRET_MAKERS: list[Callable[[], str]] = [
    lambda: "sk-" + chars(ALNUM, 48),
    lambda: "sk-proj-" + chars(ALNUM + "_-", rng.randint(40, 64)),
    lambda: "sk-ant-api03-" + chars(ALNUM + "_-", 60),
    lambda: rng.choice(["AKIA", "ASIA"]) + chars(UPPER_DIGITS, 16),
    lambda: rng.choice(["ghp_", "gho_", "ghs_"]) + chars(ALNUM, 36),
    lambda: "github_pat_" + chars(ALNUM, 22) + "_" + chars(ALNUM, 59),
    lambda: "glpat-" + chars(ALNUM + "_-", 20),
    lambda: rng.choice(["xoxb-", "xoxp-"]) + f"{digits(11)}-{digits(12)}-" + chars(ALNUM, 24),
    lambda: "AIza" + chars(ALNUM + "_-", 35),
    lambda: rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + chars(ALNUM, 24),
    lambda: "hf_" + chars(string.ascii_letters, 34),
    jwt,
    pem,
    random_token,
    random_token,
    random_token,
]


def secret() -> str:
    return rng.choice(SECRET_MAKERS)()


# -- negatives (never labelled) --------------------------------------------------------


def sha1() -> str:
    return f"{rng.getrandbits(160):040x}"


def sha256() -> str:
    return f"{rng.getrandbits(256):064x}"


def isbn13() -> str:
    body = "978" + digits(9)
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    code = body + str((10 - total % 10) % 10)
    return f"{code[:3]}-{code[3]}-{code[4:6]}-{code[6:12]}-{code[12]}"


def isbn10() -> str:
    body = digits(9)
    check = sum((10 - i) * int(d) for i, d in enumerate(body)) % 11
    last = str((11 - check) % 11).replace("10", "X")
    return f"{body[0]}-{body[1:4]}-{body[4:9]}-{last}"


NEGATIVES: dict[str, Callable[[], str]] = {
    "order": lambda: (
        rng.choice(["ORD-", "#", "PO-", "SO"]) + f"{rng.randint(2019, 2025)}-{digits(6)}"
    ),
    "order_plain": lambda: "#" + digits(rng.randint(6, 9)),
    "invoice": lambda: f"INV-{rng.randint(2019, 2025)}-{digits(5)}",
    "ticket": lambda: f"{rng.choice(['JIRA', 'OPS', 'SUP', 'BUG'])}-{rng.randint(10, 99999)}",
    "date": lambda: rng.choice(
        [
            f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
            f"{rng.randint(1, 12):02d}.{rng.randint(1, 28):02d}.{rng.randint(1990, 2030)}",
            f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
        ]
    ),
    "time": lambda: (
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        + rng.choice(["", f":{rng.randint(0, 59):02d}"])
    ),
    "version": lambda: rng.choice(
        [
            f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
            f"v{rng.randint(1, 5)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}-rc{rng.randint(1, 4)}",
            f"{rng.randint(1, 3)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}"
            f".{rng.randint(300, 9999)}",
            f"10.0.{rng.randint(19041, 22631)}.{rng.randint(1000, 4000)}",
        ]
    ),
    "uuid": lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "sha": lambda: rng.choice([sha1(), sha1()[:7], sha1()[:12], sha256(), f"sha256:{sha256()}"]),
    "md5": lambda: f"{rng.getrandbits(128):032x}",
    "bad_card": bad_card,
    "bad_iban": bad_iban,
    "zip": lambda: rng.choice(
        [digits(5), f"{digits(5)}-{digits(4)}", f"{rng.randint(10000, 99999)}"]
    ),
    "price": lambda: rng.choice(
        [
            f"${rng.randint(1, 9)},{digits(3)}.{digits(2)}",
            f"€{rng.randint(10, 999)}.{digits(2)}",
            f"{rng.randint(1, 99)}.{digits(3)},{digits(2)} EUR",
            f"£{rng.randint(1, 999)}",
        ]
    ),
    "isbn": lambda: rng.choice([isbn13(), isbn10(), isbn13().replace("-", "")]),
    "mac": lambda: ":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
    "identifier": lambda: rng.choice(
        [
            "AbstractSingletonProxyFactoryBean",
            "getUserAccountSettingsV2",
            "HttpRequestRetryHandlerFactory2024",
            "internationalization_settings_v3",
            "test_redacts_every_secret_in_nested_payloads",
            "PaymentGatewayTimeoutException",
            "com.example.billing.InvoiceRenderer",
            "MAX_CONCURRENT_CONNECTIONS_PER_HOST",
            "kubernetesClusterAutoscalerConfig",
        ]
    ),
    "path": lambda: rng.choice(
        [
            "/usr/local/lib/python3.11/site-packages",
            "/var/log/nginx/access.log.2024-03-15",
            "src/astromesh_ray/core/guardrails/pii.py",
            "C:\\Users\\Public\\Documents\\Quarterly_Report_Q3_2024.xlsx",
            "~/projects/customer-portal/frontend/node_modules",
            "https://docs.example.com/guides/getting-started-with-webhooks",
        ]
    ),
    "pod": lambda: (
        f"{rng.choice(['api', 'worker', 'billing'])}-server-"
        f"{chars('bcdfghjklmnpqrstvwxz2456789', 10)}-{chars('bcdfghjklmnpqrstvwxz2456789', 5)}"
    ),
    "tracking": lambda: "1Z" + chars(UPPER_DIGITS, 16),
    "count": lambda: f"{rng.randint(1, 999)},{digits(3)},{digits(3)}",
    "coords": lambda: f"{rng.uniform(-80, 80):.4f}, {rng.uniform(-170, 170):.4f}",
    "build": lambda: (
        f"build {rng.randint(2020, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        f".{rng.randint(1, 9)}"
    ),
    "sku": lambda: f"SKU {chars(string.ascii_uppercase, 3)}-{digits(4)}-{chars(UPPER_DIGITS, 2)}",
    "percent": lambda: f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%",
    "port": lambda: f"port {rng.randint(1024, 65535)}",
}

POSITIVES: dict[str, tuple[str, Callable[[], str]]] = {
    "EMAIL": ("EMAIL_ADDRESS", email),
    "PHONE": ("PHONE_NUMBER", phone),
    "CARD": ("CREDIT_CARD", card),
    "IBAN": ("IBAN_CODE", iban),
    "SSN": ("US_SSN", ssn),
    "SSN_BARE": ("US_SSN", ssn_bare),
    "IPV4": ("IP_ADDRESS", ipv4),
    "IPV6": ("IP_ADDRESS", ipv6),
    "SECRET": ("SECRET", secret),
    "TOKEN": ("SECRET", random_token),
    "FICTIONAL": (
        "PHONE_NUMBER",
        lambda: rng.choice(["+1 (555) ", "+1 555-"]) + f"{digits(3)}-{digits(4)}",
    ),
    "EMAIL_UPPER": ("EMAIL_ADDRESS", lambda: email().upper()),
}

# -- templates: {UPPER} is a labelled entity, {lower} an unlabelled look-alike ----------

TEMPLATES: dict[str, list[str]] = {
    "EMAIL": [
        "Please send the signed contract to {EMAIL} by Friday.",
        "Contact: {EMAIL}",
        "From: Jane <{EMAIL}>\nTo: {EMAIL}\nSubject: Re: order {order}",
        "You can reach our billing team at {EMAIL} (reference {invoice}).",
        "mailto:{EMAIL}?subject=Support%20request",
        "cc {EMAIL}, {EMAIL}",
        "My work address is {EMAIL} but use {EMAIL} for anything personal.",
        "Reset link sent to {EMAIL} at {time} on {date}.",
        "The user {EMAIL} signed up with plan v2 on {date}.",
        '{{"user": "{EMAIL}", "plan": "pro", "seats": 12}}',
        "Forwarding all mail for {EMAIL} until {date}.",
        "Is {EMAIL} the right address for the {version} release notes?",
    ],
    "PHONE": [
        "Call me on {PHONE} after {time}.",
        "Our London office: {PHONE}; Berlin: {PHONE}.",
        "Phone: {PHONE}",
        "Reach the on-call engineer at {PHONE} (ticket {ticket}).",
        "You can text {PHONE} or call {PHONE}.",
        "Tel. {PHONE} / Fax {PHONE}",
        "Customer called from {PHONE} about order {order} placed on {date}.",
        "Emergency contact - {PHONE}.",
        "Mobile {PHONE}, available {time}-{time} CET.",
        "Ring reception on {PHONE} and quote invoice {invoice}.",
        "The number {PHONE} keeps calling about my parcel {tracking}.",
        "WhatsApp: {PHONE}",
        "Dial {PHONE}, then press 2 for billing.",
    ],
    "CARD": [
        "Charge it to my card {CARD}, expiry 09/27.",
        "card number: {CARD}",
        "I paid with {CARD} but order {order} still shows unpaid.",
        "Visa ending in 4242 is fine, or use {CARD}.",
        "Please refund {price} to {CARD}.",
        "The customer's card ({CARD}) was declined at {time}.",
        "Test with {CARD}; expect a decline for {bad_card}.",
        "CC: {CARD} exp 11/26 cvv 123",
    ],
    "IBAN": [
        "Please transfer the deposit to {IBAN}.",
        "IBAN: {IBAN} (BIC DEUTDEFFXXX)",
        "Our bank details changed: new account {IBAN}, old {bad_iban}.",
        "Refund of {price} goes to {IBAN} within 5 business days.",
        "Pay invoice {invoice} to {IBAN}, reference {order}.",
        "Beneficiary: ACME GmbH, {IBAN}",
        "My IBAN is {IBAN} and my partner's is {IBAN}.",
    ],
    "SSN": [
        "SSN: {SSN}",
        "My social security number is {SSN}.",
        "Employee {ticket} - SSN {SSN}, start date {date}.",
        "Please verify SSN {SSN} against the W-2 for {zip}.",
        "Applicant SSN: {SSN_BARE}",
        "social security no. {SSN_BARE} on file since {date}",
        "The form lists {SSN} as the SSN and {zip} as the zip code.",
    ],
    "IP": [
        "Connection refused from {IPV4} at {time}.",
        "Server {IPV4}:{portnum} responded in 120 ms.",
        "Allow {IPV4}/32 and {IPV4} in the firewall.",
        "ssh admin@{IPV4} -p 2222",
        "The IPv6 address is {IPV6}.",
        "curl http://[{IPV6}]:8080/healthz",
        "Resolved api.example.com to {IPV4} and {IPV6}.",
        "Failed login for user admin from {IPV4} ({date} {time})",
        "inet6 {IPV6}/64 scope link",
        "Client IP: {IPV4}, upstream {IPV4}, request {uuid}",
        "Peer {IPV6} port 443 closed the stream.",
        "nameserver {IPV4}",
    ],
    "SECRET": [
        "Here is my API key: {SECRET}",
        "export OPENAI_API_KEY={SECRET}",
        "token={SECRET}",
        "Authorization: Bearer {SECRET}",
        "I accidentally committed {SECRET} in {sha}, please rotate it.",
        "Use the credential {SECRET} for the staging deploy of {version}.",
        "config:\n  api_key: {SECRET}\n  region: eu-west-1",
        '{{"client_secret": "{SECRET}", "request_id": "{uuid}"}}',
        "The key below leaked:\n{SECRET}\nRevoke it today.",
        "X-Api-Key: {TOKEN}",
        "password reset token {TOKEN} expires at {time}",
        "webhook signing secret is {TOKEN}",
        "session cookie sid={TOKEN}; Path=/; HttpOnly",
        "Paste {TOKEN} into the CLI when asked.",
    ],
    "NEG": [
        "Your order {order} shipped on {date} and arrives before {time}.",
        "Invoice {invoice} of {price} is due on {date}.",
        "Upgrade to {version} (was {version}); see the changelog.",
        "Request id {uuid} failed at {time}; trace {uuid}.",
        "Fixed in commit {sha} (merged {date}).",
        "Image digest {sha}, build {sha}.",
        "The checksum is {md5}.",
        "This card number {bad_card} fails the Luhn check.",
        "Reject {bad_iban}: the check digits are wrong.",
        "Ship to 1600 Amphitheatre Pkwy, CA {zip}; total {price}.",
        "ISBN {isbn}, {price}, in stock: {count} copies sold.",
        "Device MAC {mac} joined VLAN 42 at {time}.",
        "Rename {identifier} to something shorter in {path}.",
        "Pod {pod} restarted 3 times since {date}.",
        "Tracking number {tracking}, ticket {ticket}.",
        "Meet at {coords} at {time} on {date}.",
        "{build} passed; coverage {percent}, {count} assertions.",
        "Order {order_plain} and {order_plain} were merged into {order}.",
        "Item {sku} costs {price}; reorder at {count} units.",
        "Listening on {port}; version {version}; pid 48213.",
        "Run `pip install presidio-analyzer=={version}` then restart.",
        "Between {date} and {date} we handled {count} requests ({percent} errors).",
        "See section 4.2.1 of the spec, pages 123-145, figure 7.3.",
        "The meeting moved from {time} to {time} on {date}.",
        "Error code 0x80070005 at {time}, retry {ticket}.",
        "Tax rate {percent} applied to subtotal {price} for zip {zip}.",
    ],
    "EDGE": [
        "Tel:{PHONE}",
        "(mobile: {PHONE})",
        "{PHONE} is my number.",
        "Call the demo line {FICTIONAL} any time.",
        "Support hotline {FICTIONAL}; sales {PHONE}.",
        "SSN#{SSN}",
        "IP={IPV4}",
        "Open http://{IPV4}:8080/admin in your browser.",
        "ping6 {IPV6}",
        "https://api.example.com/v1/callback?access_token={TOKEN}&state=ok",
        'api_key: "{SECRET}"',
        "EMAIL: {EMAIL_UPPER}",
        "Send it to <{EMAIL}>; thanks!",
        "Card: {CARD}. IBAN: {IBAN}. Email: {EMAIL}.",
    ],
    "NEG2": [
        "Call 911 or 112 in an emergency; the 3-2-1 backup rule applies.",
        "Flight LH 400 departs at {time} from gate B{portnum}.",
        "Room 1204 on floor 12, building {zip}.",
        "We are ISO 27001 certified; see RFC 5321 and RFC 3986.",
        "Pi is 3.14159 and e is 2.71828, roughly.",
        "Read pages 10-20 and 200-240 before {date}.",
        "A budget of 1,000,000 USD, +5 points, +20% growth.",
        "USPS tracking 9400 1000 0000 0000 0000 00 for order {order}.",
        "Build hash {sha} signed with key id 3AA5C34371567BD2.",
        "Serial number SN-{order_plain}, part {sku}.",
        "The {identifier} class lives in {path}.",
        "Latitude {coords}; altitude 1,250 m; at {time}.",
        "Release {version} fixes CVE-2024-3094 and CVE-2023-44487.",
        "Temperatures ranged from -12.5 to 31.4 degrees on {date}.",
        "Conference call ID 8841 2239, passcode 5512#.",
    ],
    "MIXED": [
        "Hi, I'm Sam ({EMAIL}, {PHONE}). Card {CARD} was charged twice for {order}.",
        "Wire {price} to {IBAN}; questions to {EMAIL} or {PHONE}.",
        "User {EMAIL} from {IPV4} used key {SECRET} at {time}.",
        "SSN {SSN}, phone {PHONE}, email {EMAIL}.",
        "Deploy {version} to {IPV6} with token {SECRET} (commit {sha}).",
        "Refund {CARD} or send to {IBAN}, order {order}, invoice {invoice}.",
    ],
}

# How many lines each template group contributes.
COUNTS = {
    "EMAIL": 60,
    "PHONE": 90,
    "CARD": 50,
    "IBAN": 50,
    "SSN": 40,
    "IP": 60,
    "SECRET": 110,
    "NEG": 110,
    "EDGE": 56,
    "NEG2": 45,
    "MIXED": 40,
}

_SLOT = re.compile(r"\{([A-Za-z_0-9]+)\}")


def render(template: str) -> dict[str, Any]:
    text: list[str] = []
    entities: list[dict[str, Any]] = []
    at = 0
    pos = 0
    for match in _SLOT.finditer(template):
        literal = template[pos : match.start()].replace("{{", "{").replace("}}", "}")
        text.append(literal)
        at += len(literal)
        slot = match.group(1)
        if slot in POSITIVES:
            kind, make = POSITIVES[slot]
            value = make()
            entities.append({"type": kind, "start": at, "end": at + len(value), "value": value})
        elif slot == "portnum":
            value = str(rng.choice([22, 80, 443, 5432, 6379, 8080, 8443]))
        else:
            value = NEGATIVES[slot]()
        text.append(value)
        at += len(value)
        pos = match.end()
    text.append(template[pos:].replace("{{", "{").replace("}}", "}"))
    joined = "".join(text)
    for e in entities:
        assert joined[e["start"] : e["end"]] == e["value"]
    return {"text": joined, "entities": entities}


def main() -> None:
    lines: list[dict[str, Any]] = []
    for group, count in COUNTS.items():
        templates = TEMPLATES[group]
        for i in range(count):
            lines.append(render(templates[i % len(templates)]))
    rng.shuffle(lines)
    with OUT.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    labelled = sum(len(line["entities"]) for line in lines)
    print(f"wrote {len(lines)} lines, {labelled} labelled entities to {OUT}")


if __name__ == "__main__":
    main()
