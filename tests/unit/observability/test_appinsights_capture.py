"""The loopback ingestion endpoint itself: decoding, answers, and what it refuses."""
import gzip
import json

import pytest
import requests

from support.appinsights import AppInsightsCapture, decode_envelopes
from support.appinsights import appinsights  # noqa: F401


def _envelope(base_type, **base_data):
    return {"name": base_type, "tags": {}, "data": {"baseType": base_type, "baseData": base_data}}


def test_json_array_is_stored_and_acknowledged(appinsights):  # noqa: F811
    batch = [_envelope("MessageData", message="m"), _envelope("RemoteDependencyData", name="d")]
    response = requests.post(f"http://127.0.0.1:{appinsights.port}/v2.1/track", json=batch, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"itemsReceived": 2, "itemsAccepted": 2, "errors": []}
    assert [e["data"]["baseData"]["message"] for e in appinsights.items("traces")] == ["m"]
    assert len(appinsights.items("dependencies")) == 1 and appinsights.items("requests") == []


def test_gzip_and_newline_delimited_json_on_the_v2_path(appinsights):  # noqa: F811
    body = "\n".join(json.dumps(_envelope("ExceptionData", exceptions=[])) for _ in range(3))
    response = requests.post(f"http://127.0.0.1:{appinsights.port}/v2/track",
                             data=gzip.compress(body.encode()),
                             headers={"Content-Encoding": "gzip"}, timeout=5)
    assert response.json()["itemsAccepted"] == 3
    assert len(appinsights.items("exceptions")) == 3


def test_the_doubled_slash_the_exporter_sends_is_accepted(appinsights):  # noqa: F811
    response = requests.post(f"http://127.0.0.1:{appinsights.port}//v2.1/track",
                             json=[_envelope("RequestData", name="r")], timeout=5)
    assert response.status_code == 200 and len(appinsights.items("requests")) == 1


def test_unknown_paths_and_bad_bodies_are_refused(appinsights):  # noqa: F811
    base = f"http://127.0.0.1:{appinsights.port}"
    assert requests.post(f"{base}/QuickPulseService.svc/post", json=[], timeout=5).status_code == 404
    assert requests.get(f"{base}/v2.1/track", timeout=5).status_code == 404
    bad = requests.post(f"{base}/v2.1/track", data=b"{not json", timeout=5)
    assert bad.status_code == 400 and bad.json()["errors"][0]["statusCode"] == 400
    assert appinsights.envelopes == []
    assert ("POST", "/QuickPulseService.svc/post") in appinsights.requests


def test_a_configured_failure_status_stores_nothing(appinsights):  # noqa: F811
    appinsights.status_code = 500
    response = requests.post(f"http://127.0.0.1:{appinsights.port}/v2.1/track",
                             json=[_envelope("MessageData", message="m")], timeout=5)
    assert response.status_code == 500 and response.json()["itemsAccepted"] == 0
    assert appinsights.envelopes == []


def test_items_rejects_unknown_kinds(appinsights):  # noqa: F811
    with pytest.raises(ValueError, match=r"unknown item kind 'trace'; use one of \['customEvents', "):
        appinsights.items("trace")


def test_wait_for_returns_the_predicate_result_or_fails_with_what_arrived(appinsights):  # noqa: F811
    assert appinsights.wait_for(lambda capture: capture.port, timeout=0.1) == appinsights.port
    with pytest.raises(AssertionError, match=r"condition not met within 0.05s; received \{'traces': 0"):
        appinsights.wait_for(lambda capture: capture.items("traces"), timeout=0.05)


def test_connection_string_points_at_the_loopback_port():
    with AppInsightsCapture() as capture:
        assert capture.connection_string == (
            "InstrumentationKey=11111111-2222-3333-4444-555555555555;"
            f"IngestionEndpoint=http://127.0.0.1:{capture.port}/")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"http://127.0.0.1:{capture.port}/v2.1/track", json=[], timeout=2)


def test_port_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="AppInsightsCapture is not started"):
        AppInsightsCapture().port


def test_decode_envelopes_accepts_a_single_object_and_empty_bodies():
    assert decode_envelopes(b'{"name": "x"}') == [{"name": "x"}]
    assert decode_envelopes(b"  ") == []
