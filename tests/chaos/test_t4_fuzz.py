"""T4, generated: property-based fuzzing of every public route from the app's own OpenAPI schema
(schemathesis), with data that fits the schema and data that does not. Pass: no 5xx; every error is an
OpenAI error body whose string code stands for the HTTP status; the app is healthy afterwards and its LLM replica was
never restarted.

`make test` runs a short, derandomized pass (FUZZ_EXAMPLES per route and mode, default 6); `make fuzz`
runs the long one (FUZZ_EXAMPLES=500: over 10 000 requests), random each time, with fewer valid cases for
the routes that run the model (POSITIVE_CAP).

Generation is bounded where the point is validation, not generation: a request that asks for generated
tokens gets at most 4 (and at most 2 choices, 2 agent steps); values that are invalid stay as generated.
The admin routes are fuzzed without the admin key (a generated release must never be deployed).
"""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serve_app.errors import status_of
from tests.names import LLM
from tests.polling import wait_healthy

pytestmark = pytest.mark.chaos

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
LONG = "FUZZ_EXAMPLES" in os.environ
# Routes whose answer is not an API object: probes and the metrics exposition.
SKIP = {"/metrics"}
# Valid requests to these routes run the model (an agent run of 2 steps takes seconds to tens of seconds on
# 2 cores): in the long run their valid cases are capped so that the run stays within an hour here; every
# other route, and the invalid cases of these, get FUZZ_EXAMPLES.
POSITIVE_CAP = {"/v1/agent": 20, "/v1/rag": 150, "/v1/chat/completions": 300, "/v1/completions": 300,
                "/v1/responses": 300}


def _small(value, bound):
    return min(value, bound) if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else value


def bounded(path: str, body):
    """Clamp what makes a valid request slow (tokens to generate, choices, agent steps)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if path in ("/v1/chat/completions", "/v1/completions", "/v1/rag"):
        for key in ("max_tokens", "max_completion_tokens"):
            if key in body:
                body[key] = _small(body[key], 4)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 4
        for key in ("n", "best_of"):
            if key in body:
                body[key] = _small(body[key], 2)
        if "min_tokens" in body:
            body["min_tokens"] = _small(body["min_tokens"], 4)
    if path == "/v1/responses":
        body["max_output_tokens"] = _small(body.get("max_output_tokens", 4), 4)
    if path == "/v1/agent":
        body["max_steps"] = _small(body.get("max_steps", 2), 2)
    return body


def is_error_body(response) -> bool:
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err) and isinstance(err["code"], str)
            and status_of(err) == response.status_code)


def _fuzzer(op, mode, examples: int, app_url: str, statuses: Counter, bad: list[str], failures: Path):
    """The property test of one operation (one function per operation, bound to it): ``examples`` generated
    cases sent to the app, each status counted; a 5xx, or a 4xx without an OpenAI error body, added to ``bad``
    and written whole to ``failures``."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=not LONG, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        if isinstance(case.body, dict):
            case.body = bounded(op.path, case.body)
        response = case.call(base_url=app_url, timeout=120)
        statuses[response.status_code] += 1
        if response.status_code >= 500 or (response.status_code >= 400 and not is_error_body(response)):
            rid = response.headers.get("x-request-id")
            sent = json.dumps(case.body, default=repr) if case.body is not None else ""
            # Whole, for replaying; the request id finds the cause in the replicas' logs.
            with open(failures, "a") as fh:
                fh.write(json.dumps({"route": op.label, "status": response.status_code, "request_id": rid,
                                     "answer": response.text[:2000], "body": sent, "query": case.query,
                                     "path": case.path_parameters}, default=repr) + "\n")
            bad.append(f"{op.label} -> {response.status_code} (request id {rid}) {response.text[:300]!r} for "
                       f"{sent[:1000]} query={case.query} path={case.path_parameters}")

    return run


@pytest.fixture(scope="module")
def schema(app_url):
    return schemathesis.openapi.from_url(f"{app_url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_t4_fuzzed_requests_get_no_5xx_and_openai_error_bodies(schema, app_url, http, mode, reliability,
                                                               serve_logs_dir):
    llm_before = wait_healthy(http)["components"][LLM]
    statuses: Counter = Counter()
    bad: list[str] = []
    failures = serve_logs_dir / f"fuzz-failures-{mode.value}.jsonl"
    operations = [op.ok() for op in schema.get_all_operations()]
    operations = [op for op in operations if op.path not in SKIP]
    assert len(operations) >= 10, [op.label for op in operations]

    for op in operations:
        examples = min(EXAMPLES, POSITIVE_CAP.get(op.path, EXAMPLES)) if mode == GenerationMode.POSITIVE else EXAMPLES
        run = _fuzzer(op, mode, examples, app_url, statuses, bad, failures)
        try:
            run()
        except Unsatisfiable:
            # Nothing in this route can be made invalid (no parameters, no body): no negative case exists.
            assert mode == GenerationMode.NEGATIVE, op.label

    llm_after = wait_healthy(http)["components"][LLM]
    reliability.record("T4", f"fuzzed ({mode.value}, {EXAMPLES} per route)", requests=sum(statuses.values()),
                       routes=len(operations), statuses={str(k): v for k, v in sorted(statuses.items())},
                       server_errors=sum(v for k, v in statuses.items() if k >= 500), bad_answers=len(bad),
                       llm_restarted=llm_after["started_at"] != llm_before["started_at"])
    assert not bad, f"{len(bad)} bad answers, all of them in {failures}:\n" + "\n".join(bad[:10])
    assert llm_after["started_at"] == llm_before["started_at"], "the LLM replica was restarted"
