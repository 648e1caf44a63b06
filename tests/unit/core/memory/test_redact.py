"""``redact``: secret keys, secret shapes in strings, exact secrets, non-JSON values
and caps; and a realistic run record that comes out with no secret left in it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from astromesh_ray.core.memory.redact import MASK, redact, secret_values

OPENAI_KEY = "sk-proj-Zq3xT9vLmN2pQ8rS4uV6wY1aB5cD7eF0"
GITHUB_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "API_KEY",
        "apikey",
        "api-key",
        "apiKey",
        "APIKey",
        "x-api-key",
        "X-Api-Key",
        "XApiKey",
        "token",
        "access_token",
        "accessToken",
        "refresh_token",
        "secret",
        "client_secret",
        "password",
        "Password",
        "passwd",
        "authorization",
        "Authorization",
        "proxy-authorization",
        "cookie",
        "Set-Cookie",
        "private_key",
        "credentials",
        "openai_api_key",
        "GITHUB_TOKEN",
        "db_password",
        "aws_secret_access_key",
        "aws_access_key_id",
        "Ocp-Apim-Subscription-Key",
        "PGPASSWORD",
        "SLACK_BOT_TOKEN",
    ],
)
def test_values_under_secret_keys_are_redacted(key: str) -> None:
    value = {key: "opaque-value-1", "nested": [{key: {"deep": "opaque-value-2"}}]}
    assert redact(value) == {key: MASK, "nested": [{key: MASK}]}


@pytest.mark.parametrize(
    "key", ["max_tokens", "input_tokens", "tokens", "key", "cache_key", "author", "passage"]
)
def test_other_keys_are_kept(key: str) -> None:
    assert redact({key: "kept as is"}) == {key: "kept as is"}


def test_nothing_under_a_secret_key_stays_nothing() -> None:
    assert redact({"api_key": None, "token": "", "password": 0}) == {
        "api_key": None,
        "token": "",
        "password": MASK,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_456~789", "Authorization: Bearer [redacted]"),
        ("bearer abcdefghijklmnop", "bearer [redacted]"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [redacted]"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic [redacted]"),
        ("Basic authentication failed", "Basic authentication failed"),
        (f"key={OPENAI_KEY};", "key=sk-[redacted];"),
        ("use sk-ant-api03-abcdefghijklmnopqrstuv now", "use sk-[redacted] now"),
        ("task-abcdefghijklmnopqrstuvwxyz", "task-abcdefghijklmnopqrstuvwxyz"),
        (f"id {AWS_KEY_ID} here", "id AKIA[redacted] here"),
        ("ASIAY34FZKBOKMUTVV7A", "ASIA[redacted]"),
        (f"token {GITHUB_TOKEN}.", "token ghp_[redacted]."),
        ("github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz", "github_pat_[redacted]"),
        (f"jwt={JWT}", "jwt=[redacted]"),
        (f"header {JWT} end", "header [redacted] end"),
        ("postgresql://app:s3cr%2Ft@db:5432/prod", "postgresql://app:[redacted]@db:5432/prod"),
        ("redis://:hunter22@localhost:6379/0", "redis://:[redacted]@localhost:6379/0"),
        ("see https://host:8080/path@v2 for docs", "see https://host:8080/path@v2 for docs"),
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ("host=db password=hunter22 dbname=x", "host=db password=[redacted] dbname=x"),
        ("host=db password='two words' port=5", "host=db password=[redacted] port=5"),
        ("GET /v1?api_key=abc123&page=2", "GET /v1?api_key=[redacted]&page=2"),
        ("client_secret = xyz789", "client_secret = [redacted]"),
        ('{"password": "p\\"w", "user": "bob"}', '{"password": "[redacted]", "user": "bob"}'),
        ('{"openai_api_key":"abc"}', '{"openai_api_key":"[redacted]"}'),
        ("max_tokens=5 tokens=3", "max_tokens=5 tokens=3"),
        ("nothing secret here", "nothing secret here"),
        # A secret word at the end of a longer name, and multi-segment prefixes.
        ("PGPASSWORD=hunter2hunter2 psql -h db", "PGPASSWORD=[redacted] psql -h db"),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY aws s3 ls",
            "AWS_SECRET_ACCESS_KEY=[redacted] aws s3 ls",
        ),
        ("export MY_APP_API_KEY=abc123def456", "export MY_APP_API_KEY=[redacted]"),
        ("SLACK_BOT_TOKEN=xoxb-1234-5678-abcdefghij", "SLACK_BOT_TOKEN=[redacted]"),
        ("SLACK_BOT_TOKEN: plain-value-123", "SLACK_BOT_TOKEN: [redacted]"),
        ("aws_access_key_id = ABCDEFGHIJ", "aws_access_key_id = [redacted]"),
        ("Ocp-Apim-Subscription-Key: 0123456789abcdef", "Ocp-Apim-Subscription-Key: [redacted]"),
        ("SECRET_KEY=django-insecure-x", "SECRET_KEY=[redacted]"),
        # URL passwords holding "/", "+", "=" and "@": up to the last "@".
        ("postgresql://app:ab/cd+ef==@db/x", "postgresql://app:[redacted]@db/x"),
        ("postgresql://app:p@ssw0rd@db", "postgresql://app:[redacted]@db"),
        ("see https://host:8080?q=a@b", "see https://host:8080?q=a@b"),
        # YAML / header style, a Python repr, escaped JSON inside a JSON string.
        ("password: hunter2hunter2\nuser: bob", "password: [redacted]\nuser: bob"),
        ("{'password': 'hunter2', 'user': 'bob'}", "{'password': '[redacted]', 'user': 'bob'}"),
        ("{'token': \"it's\"}", "{'token': \"[redacted]\"}"),
        (
            '{"body": "{\\"password\\":\\"hun\\\\\\"ter2\\", \\"user\\":\\"bob\\"}"}',
            '{"body": "{\\"password\\":\\"[redacted]\\", \\"user\\":\\"bob\\"}"}',
        ),
        ('{"password": 123456, "n": 1}', '{"password": "[redacted]", "n": 1}'),
        ('{"Authorization": "Token abc"}', '{"Authorization": "[redacted]"}'),
        # Token shapes.
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_[redacted]"),
        ("key rk_live_51H8abcdefghijklmnop.", "key rk_live_[redacted]."),
        ("key=AIzaSyA1234567890abcdefghijklmnopqrstuv", "key=AIza[redacted]"),
        ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "hf_[redacted]"),
        ("use glpat-Ab1Cd2Ef3Gh4Ij5Kl6Mn now", "use glpat-[redacted] now"),
        (
            "Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",
            "Authorization: Token [redacted]",
        ),
        ("Authorization: Basic abcdefghijkl", "Authorization: Basic [redacted]"),
        ("authorization=opaque-credential", "authorization=[redacted]"),
        # Header pairs as JSON text.
        (
            '[["X-Api-Key", "v"], ["Accept", "json"]]',
            '[["X-Api-Key", "[redacted]"], ["Accept", "json"]]',
        ),
        (
            '[{"name": "Authorization", "value": "v"}, {"name": "Accept", "value": "*"}]',
            '[{"name": "Authorization", "value": "[redacted]"}, {"name": "Accept", "value": "*"}]',
        ),
    ],
)
def test_secret_shapes_in_strings_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_pem_private_keys_are_masked_even_when_cut() -> None:
    pem = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234\nabcd\n-----END RSA PRIVATE KEY-----"
    )
    assert redact(f"key:\n{pem}\nafter") == "key:\n[redacted private key]\nafter"
    assert redact("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B") == (
        "[redacted private key]"
    )


def test_json_inside_a_json_string_is_masked() -> None:
    inner = json.dumps({"password": 'hun"ter\\2', "api_key": "k", "user": "bob"})
    out = redact(json.dumps({"body": inner}))
    assert "hun" not in out and "ter" not in out
    assert json.loads(json.loads(out)["body"]) == {"password": MASK, "api_key": MASK, "user": "bob"}


def test_header_pairs_hide_their_values() -> None:
    value = {
        "request_headers": [["X-Api-Key", "v"], ("Cookie", "sid=1"), ["Accept", "json"]],
        "har": [{"name": "Authorization", "value": "v"}, {"name": "Accept", "value": "json"}],
        "env": [{"name": "DB_PASSWORD", "value": "v"}, {"key": "api_key", "value": "v"}],
        "empty": [["token", ""], {"name": "token", "value": None}],
        "words": ["password", "token"],  # a pair to the letter: errs towards hiding
        "unhashable": [[1], {"name": ["x"], "value": "kept"}],
    }
    assert redact(value) == {
        "request_headers": [["X-Api-Key", MASK], ["Cookie", MASK], ["Accept", "json"]],
        "har": [{"name": "Authorization", "value": MASK}, {"name": "Accept", "value": "json"}],
        "env": [{"name": "DB_PASSWORD", "value": MASK}, {"key": "api_key", "value": MASK}],
        "empty": [["token", ""], {"name": "token", "value": None}],
        "words": ["password", MASK],
        "unhashable": [[1], {"name": ["x"], "value": "kept"}],
    }


@pytest.mark.parametrize(
    "text",
    [
        "a" * 20_000,
        "a-" * 10_000,
        "a." * 10_000,
        "x://a:b" * 3000,
        '"password' * 2000,
        '"password": "' + "\\x" * 10_000,
        '\\"password\\":\\"' + "\\\\" * 10_000,
        '["token", "' * 2000,
        '{"name": "token", "value": ' * 1000,
        "Authorization: " * 1500,
        "PGPASSWORD=" * 2000,
        "token" * 4000,
    ],
)
@pytest.mark.timeout(60)  # a hang guard: a pattern that backtracks takes hours here
def test_pathological_texts_do_not_hang_the_patterns(text: str) -> None:
    out = redact(text, max_chars=30_000)
    assert isinstance(out, str) and out  # it answered (masked or not)


def test_keys_are_masked_too() -> None:
    assert redact({f"Bearer {OPENAI_KEY}": 1}) == {"Bearer [redacted]": 1}


def test_exact_secrets_are_replaced_wherever_they_appear() -> None:
    secret = "plain-looking-value-42"  # no known shape: only the list finds it
    value = {
        "text": f"the key is {secret}!",
        "list": [secret, f"x{secret}y"],
        secret: "as a key",
        "url": "https://api.example.com/?k=plain-looking-value-42",
        "quoted": "https://x.test/?q=a%2Fb%3Dc%2Bdefgh",
    }
    out = redact(value, secrets=[secret, "a/b=c+defgh", "short"])
    assert out == {
        "text": "the key is [redacted]!",
        "list": [MASK, f"x{MASK}y"],
        MASK: "as a key",
        "url": "https://api.example.com/?k=[redacted]",
        "quoted": "https://x.test/?q=[redacted]",  # the URL-encoded form too
    }
    # Shorter than 8 characters: ignored (replacing it everywhere would mangle text).
    assert redact("a short secret", secrets=["short"]) == "a short secret"
    # A secret containing another is replaced whole.
    assert redact("abcdefgh-ijklmnop", secrets=["abcdefgh", "abcdefgh-ijklmnop"]) == MASK
    # One secret given as a string is that secret, not its characters.
    assert redact("value: plain-looking-value-42", secrets=secret) == f"value: {MASK}"


def test_result_is_a_json_able_deep_copy() -> None:
    class Thing:
        def __repr__(self) -> str:
            return f"Thing(token={OPENAI_KEY})"

    original: dict[Any, Any] = {
        "tuple": (1, "two", None),
        "set": {3},
        "bytes": b"\x00raw",
        "nan": float("nan"),
        "inf": float("-inf"),
        "float": 1.5,
        "bool": True,
        1: "int key",
        "thing": Thing(),
        "inner": {"list": [1, 2]},
    }
    out = redact(original)
    assert out == {
        "tuple": [1, "two", None],
        "set": "{3}",
        "bytes": "b'\\x00raw'",
        "nan": "nan",
        "inf": "-inf",
        "float": 1.5,
        "bool": True,
        "1": "int key",
        "thing": "Thing(token=[redacted]",  # the pair rule takes all to the next space
        "inner": {"list": [1, 2]},
    }
    json.dumps(out, allow_nan=False)
    out["inner"]["list"].append(3)
    assert original["inner"]["list"] == [1, 2]


def test_long_strings_are_capped_with_a_marker() -> None:
    assert redact("x" * 50, max_chars=10) == "x" * 10 + "…[40 more chars]"
    assert redact("x" * 10, max_chars=10) == "x" * 10
    assert redact({"list": ["y" * 5000]})["list"][0] == "y" * 4000 + "…[1000 more chars]"


@pytest.mark.parametrize("size", [100, 100_000])
def test_a_secret_across_the_cut_leaves_no_part_of_itself(size: int) -> None:
    secret = "Zq3xT9vLmN2pQ8rS4uV6"
    text = "a" * 95 + secret + "b" * size
    out = redact(text, secrets=[secret], max_chars=100)
    assert out.startswith("a" * 95 + MASK[:5])
    for i in range(len(secret) - 3):
        assert secret[i : i + 4] not in out
    # And with a known shape instead of the list.
    out = redact("a" * 95 + OPENAI_KEY + "b" * size, max_chars=100)
    assert OPENAI_KEY[3:10] not in out


def test_deep_and_circular_structures_are_cut() -> None:
    deep: Any = "bottom"
    for _ in range(100):
        deep = [deep]
    out = redact(deep)
    for _ in range(64):
        out = out[0]
    assert out == "[nested too deep]"
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    assert redact(loop) == {"name": "loop", "self": "[circular]"}
    shared = ["same"]
    assert redact([shared, shared]) == [["same"], ["same"]]  # shared, not circular


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        redact("x", max_chars=0)


def test_secret_values_reads_the_variables_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTROMESH_TEST_KEY_A", "value-of-a-123")
    monkeypatch.setenv("ASTROMESH_TEST_KEY_B", "")
    monkeypatch.setenv("ASTROMESH_TEST_KEY_C", "value-of-a-123")
    monkeypatch.delenv("ASTROMESH_TEST_KEY_D", raising=False)
    names = ["ASTROMESH_TEST_KEY_A", "ASTROMESH_TEST_KEY_B", "ASTROMESH_TEST_KEY_C"]
    assert secret_values([*names, "ASTROMESH_TEST_KEY_D"]) == ["value-of-a-123"]


def test_a_realistic_run_record_keeps_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env_key = "k3y-from-the-environment-0042"  # OPENAI_API_KEY's value: no known shape
    monkeypatch.setenv("ASTROMESH_TEST_OPENAI_KEY", env_key)
    db_password = "Tr0ub4dor-and-3"
    bearer = "opaque.bearer.token-0123456789abcdef"
    record = {
        "request": {
            "query": f"Connect with my key {OPENAI_KEY} please",
            "context": {
                "user": "alice",
                "api_key": "ctx-api-key-value-9876",
                "prefs": {"apiKey": "camel-api-key-value-5432"},
            },
        },
        "tool_call": {
            "tool": "fetch_rows",
            "arguments": {
                "dsn": f"postgresql://reporter:{db_password}@db.internal:5432/sales",
                "url": f"https://api.example.com/rows?access_token={bearer}&limit=10",
                "headers": {"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
            },
            "request_headers": [["Authorization", f"Bearer {bearer}"], ["X-Trace", "t-1"]],
            "result": (
                f"error: could not connect (password={db_password}); "
                f"sent key {env_key} and cookie session={JWT}"
            ),
            "error": ValueError(f"bad token {GITHUB_TOKEN} for {AWS_KEY_ID}"),
        },
        "model_call": {"provider": "openai", "tokens": {"input_tokens": 120, "output_tokens": 8}},
    }
    out = redact(record, secrets=secret_values(["ASTROMESH_TEST_OPENAI_KEY"]))
    text = json.dumps(out, allow_nan=False)
    for secret in (
        OPENAI_KEY,
        "ctx-api-key-value-9876",
        "camel-api-key-value-5432",
        db_password,
        bearer,
        env_key,
        JWT,
        GITHUB_TOKEN,
        AWS_KEY_ID,
    ):
        # Not the secret, nor any long piece of it.
        assert secret not in text
        for i in range(len(secret) - 11):
            assert secret[i : i + 12] not in text, (secret, text)
    # What is not secret survives, so the record stays useful.
    assert out["request"]["context"]["user"] == "alice"
    assert "db.internal:5432/sales" in out["tool_call"]["arguments"]["dsn"]
    assert out["tool_call"]["arguments"]["headers"]["Accept"] == "application/json"
    assert out["tool_call"]["request_headers"][1] == ["X-Trace", "t-1"]
    assert out["model_call"]["tokens"] == {"input_tokens": 120, "output_tokens": 8}
