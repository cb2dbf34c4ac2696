"""schemathesis against the API's own OpenAPI description (``/docs/openapi.json``).

Every ``/v1`` and ``/v2`` operation the description lists is called with generated valid and
invalid parameters and bodies, with the admin key (so requests get past auth and reach the
handlers) and without one. No answer may be a 5xx. Jobs routes are left to their own suite.
The inference routes are not in the description (they are served ahead of Litestar); the
malformed-tensor corpus in ``test_bad_inputs`` covers them.

``INFERBOX_CHAOS_FUZZ_EXAMPLES`` sets the examples per operation (CI: 25; ``scripts/chaos``
more).
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.reliability.report import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("INFERBOX_CHAOS_FUZZ_EXAMPLES", "25"))


def _operations(chaos_stack) -> list:
    schema = schemathesis.openapi.from_url(f"{chaos_stack.api_url}/docs/openapi.json")
    schema = schema.include(path_regex=r"^/v[12](/|$)")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_operation_answers_5xx(chaos_stack):
    operations = _operations(chaos_stack)
    assert len(operations) >= 20, [op.label for op in operations]
    calls = 0
    failures: list[str] = []
    with requests.Session() as session:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case) -> None:
                nonlocal calls
                # With the admin key the request reaches the handler; without, the gate.
                for headers in (chaos_stack.headers, {}):
                    response = case.call(
                        base_url=chaos_stack.api_url, session=session, headers=headers, timeout=30
                    )
                    calls += 1
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.method} {case.formatted_path} -> {response.status_code}: "
                            f"{response.text[:300]}\n{case.as_curl_command()}"
                        )

            fuzz()
    record(
        "bad_inputs",
        {
            "corpus": "schemathesis",
            "operations": len(operations),
            "calls": calls,
            "5xx": len(failures),
        },
    )
    assert not failures, "\n".join(failures[:10])
