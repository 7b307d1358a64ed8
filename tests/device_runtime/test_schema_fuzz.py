"""Schemathesis against the served /openapi.json of a real service with the digits model (issue 14).

Every operation of the document gets its examples, coverage cases and a bounded, seeded number of
generated requests (MAX_EXAMPLES, derandomized), positive and negative. Pass: no 5xx, and every answer
is documented (status code, content type, headers, body schema). The document's per-model example makes the fuzzer
reach the model itself, not only the 404 and 400 paths; the last test checks that it did.
"""
from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from support.digits_store import serving_store
from support.service import start_service, write_config

MAX_EXAMPLES = 50
SEED = 14
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
CONFIG = {"seed": SEED,
          "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
          "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                     "stateful": {"enabled": False}}}

#: "METHOD /path/{template}" -> Counter of status codes seen, for the whole module.
TRAFFIC: "collections.defaultdict[str, collections.Counter]" = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("device")
    serving_store(root, digits)
    write_config(root, max_queue=64)
    proc, base = start_service(root)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_schema(base_url):
    return schemathesis.openapi.from_url(base_url + "/openapi.json", config=schemathesis.Config.from_dict(CONFIG))


schema = schemathesis.pytest.from_fixture("served_schema")


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request):
    """Schemathesis 4.32's from_fixture reads ``node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_served_schema_holds_under_fuzzing(case, base_url):
    response = case.call(base_url=base_url, timeout=30)
    TRAFFIC[case.operation.label][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def test_fuzzing_reached_the_model(base_url):
    """Run after the fuzzing test (file order): its traffic reached the model, and the service is still up."""
    infer = collections.Counter()
    for label, statuses in TRAFFIC.items():
        if label.endswith("/infer"):
            infer.update(statuses)
    if not TRAFFIC:
        pytest.skip("the fuzzing test was not selected")
    total = sum(sum(c.values()) for c in TRAFFIC.values())
    print("\nschemathesis: %d requests over %d operations; infer %s" % (total, len(TRAFFIC), dict(infer)))
    assert not [s for c in TRAFFIC.values() for s in c if s >= 500]
    # The two document examples give one 200 each; the rest come from bodies generated from the model's schema.
    assert infer[200] >= 10, "generated bodies did not reach the model: %s" % dict(infer)
    assert infer[400] >= 100, "few malformed infer bodies were tried: %s" % dict(infer)
    assert httpx.get(base_url + "/v2/health/ready", timeout=5).status_code == 200
