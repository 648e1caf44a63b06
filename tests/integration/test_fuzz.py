"""Schemathesis against the running gateway's own ``/openapi.json``, with all its checks.

One agent (conversational memory, a scripted model that answers every call) behind
an API key: every phase (examples, coverage, fuzzing, stateful), every check, a
bounded number of deterministic examples per operation, a per-request timeout.

- No 500s, no hangs (a request past its timeout is an error of the run).
- Every status the gateway answers is documented, with its ``Error`` body, and
  every documented header and media type is what comes back (``serve/openapi.py``).
- What the schema calls invalid is refused, and what it calls valid is accepted,
  except where noted in ``CONFIG``; requests without the key get 401.

Nothing is excluded: the RAG, channel and paused-run routes have no pipeline,
channel or paused run here, so they answer 404 (or 401/422) to the fuzzer, as
documented (their own tests drive them further).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from ray import serve
from schemathesis.engine import Status, events, from_schema

from astromesh_ray.core.auth import hash_key
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

AGENT = "fuzz"
TOKEN = "am_fuzz-test-token-not-a-secret"
BODY = """\
  prompts: {system: "You help."}
  memory:
    conversational: {backend: in_memory}
"""

CONFIG = """
seed = 20261204
workers = 1                  # CPython 3.11's ast.parse is not thread-safe (hypothesis uses it)
request-timeout = 20         # no hangs: a request that takes longer is an error
cache.enabled = false

[generation]
max-examples = 10
deterministic = true
database = "none"

[checks.negative_data_rejection]
# 413 refuses a body too (a too-long string of 4-byte characters passes 1 MiB).
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]

[auth.openapi.bearerAuth]
bearer = "@TOKEN@"

# The agent's name in every path, in every phase (the coverage phase's invalid
# bodies then reach validation, not an unknown agent's 404).
[parameters]
"path.name" = "@AGENT@"
"path.model" = "@AGENT@"

# The chat and AG-UI bodies have rules JSON Schema cannot say (the last message is
# the user's, a tool message answers a call of the assistant message before it, a
# message's fields depend on its role): a schema-valid body may be refused with 400
# or 422, so "valid data is accepted" does not hold; every other check does.
[[operations]]
include-path = ["/v1/chat/completions", "/v1/agui/{name}"]
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/v1/chat/completions"
parameters."body.model" = "@AGENT@"

# A fork's new_session_id must differ from the path's session_id, a rule across path
# and body that JSON Schema cannot state (422 for the same id).
[[operations]]
include-path = "/v1/memory/{name}/sessions/{session_id}/fork"
checks.positive_data_acceptance.enabled = false

# JSON-RPC answers a malformed request with an error object in a 200 (A2A over
# HTTP): "invalid data is rejected with 4xx" does not apply to its body.
[[operations]]
include-path = "/a2a/{name}"
include-method = "POST"
checks.negative_data_rejection.enabled = false

# The gate asks a caller without a key for one (401) before a method no route
# serves gets its 405 (serve/auth.py): on /health and the channel webhooks, which
# take no key, schemathesis sends none and expects 405.
[[operations]]
include-path = ["/health", "/v1/channels/{channel}/webhook"]
checks.unsupported_method.enabled = false
""".replace("@TOKEN@", TOKEN).replace("@AGENT@", AGENT)


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    runtime = {
        "apiVersion": "astromesh/v1",
        "kind": "RuntimeConfig",
        "metadata": {"name": "fuzz"},
        "spec": {
            "auth": {"keys": [{"id": "fuzzer", "hash": hash_key(TOKEN), "actions": ["admin"]}]}
        },
    }
    (root / "runtime.yaml").write_text(yaml.safe_dump(runtime))
    (root / "agents").mkdir()
    (root / "agents" / f"{AGENT}.agent.yaml").write_text(agent_yaml(AGENT, llm.url, BODY))
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


def test_schemathesis_finds_nothing(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(*["ok"] * 5000)  # every run the fuzzer starts gets an answer
    config = schemathesis.Config.from_str(CONFIG)
    schema = schemathesis.openapi.from_url(
        f"{api}/openapi.json", config=config, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    cases = 0
    statuses: collections.Counter[int] = collections.Counter()
    tested: set[str] = set()
    failures: list[str] = []
    errors: list[str] = []
    stop = None
    started = time.monotonic()
    phases: dict[str, float] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = round(time.monotonic() - started, 1)
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            tested.add(recorder.label)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        interaction = recorder.interactions.get(case_id)
                        request = interaction.request if interaction else None
                        sent = f"{request.method} {request.uri}" if request else "?"
                        failures.append(
                            f"{recorder.label} [{check.name}] {failure.title}: "
                            f"{failure.message[:500]} ({sent[:200]})"
                        )
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {str(event.value)[:500]}")
        elif isinstance(event, events.FatalError):
            errors.append(f"fatal: {event.exception!r}"[:500])
        elif isinstance(event, events.EngineFinished):
            stop = event.stop_reason
    llm.discard_remaining()
    summary = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
    print(f"schemathesis: {cases} cases over {len(tested)} scenarios; responses {summary}")
    print(f"phases finished at (s): {phases}")

    assert not errors, "\n".join(errors)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
    assert stop is not None and stop.value == "completed"
    operations = {
        f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item
    }
    assert operations <= tested  # every operation was fuzzed
    # It reached the agent (runs answered by the model), the gate and the validation.
    assert llm.requests and statuses[200] > 0
    assert statuses[401] > 0 and statuses[422] > 0 and statuses[404] > 0
    assert not [s for s in statuses if s >= 500]
