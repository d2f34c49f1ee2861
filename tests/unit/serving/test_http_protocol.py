"""mlops serve at the HTTP level, over raw sockets: malformed framing, slow clients, timeouts, failures."""
import dataclasses
import json
import logging
import socket
import time

import lightgbm
import numpy as np
import pytest

from mlops.errors import ConfigError
from mlops.serving.asgi import INLINE_BODY_BYTES

from .conftest import call
from .test_server import RAW_TRIP

BODY = json.dumps({"dataframe_records": [RAW_TRIP]}).encode()


def connect(server) -> socket.socket:
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    connection = socket.socket(family, socket.SOCK_STREAM)
    connection.settimeout(5)
    connection.connect((server.host, server.port))
    return connection


def exchange(server, raw: bytes, wait: float = 3.0) -> bytes:
    """Everything the server sends back for ``raw`` until it closes or ``wait`` seconds pass quietly."""
    with connect(server) as connection:
        connection.sendall(raw)
        connection.settimeout(wait)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except socket.timeout:
            pass
    return received


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_lines(received: bytes) -> list:
    return [line for line in received.decode(errors="replace").split("\r\n") if line.startswith("HTTP/1.1 ")]


def test_a_negative_or_unfulfilled_content_length_is_answered_instead_of_hanging(serve):
    server = serve(read_timeout=0.5)

    started = time.monotonic()
    negative = exchange(server, post("/invocations", b"{}", "Content-Length: -1"))
    short = exchange(server, post("/invocations", BODY[:10], f"Content-Length: {len(BODY)}"))

    assert status_lines(negative)[0].startswith("HTTP/1.1 400")
    assert status_lines(short) == ["HTTP/1.1 408 Request Timeout"]
    assert b"the body did not arrive within 0.5 s" in short
    assert time.monotonic() - started < 8


def test_a_refused_request_s_body_is_never_answered_as_a_second_request(serve):
    server = serve(token="s3cret-token-value")
    smuggled = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"

    received = exchange(server, post("/invocations", smuggled, f"Content-Length: {len(smuggled)}"))

    assert status_lines(received) == ["HTTP/1.1 401 Unauthorized"]


def test_the_bearer_scheme_is_case_insensitive(serve):
    server = serve(token="s3cret-token-value")
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert call(server, "/health", headers={"Authorization": f"{scheme} s3cret-token-value"})[0] == 200
    assert call(server, "/health", headers={"Authorization": "Basic s3cret-token-value"})[0] == 401


def test_head_and_options_get_405_with_the_allowed_method(serve):
    server = serve()
    head = call(server, "/ping", method="HEAD")
    options = call(server, "/invocations", method="OPTIONS")

    assert (head[0], head[1]["Allow"]) == (405, "GET")
    assert (options[0], options[1]["Allow"]) == (405, "POST")
    assert options[2]["error_code"] == "METHOD_NOT_ALLOWED"


def test_a_chunked_body_is_read(serve):
    server = serve()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:20], BODY[20:])) + b"0\r\n\r\n"

    received = exchange(server, post("/invocations", chunks, "Transfer-Encoding: chunked",
                                     "Connection: close"))

    assert status_lines(received) == ["HTTP/1.1 200 OK"]
    assert len(json.loads(received.split(b"\r\n\r\n", 1)[1])["predictions"]) == 1


def test_a_chunked_body_over_the_limit_is_refused(serve):
    server = serve(max_body_bytes=64)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(BODY[:50]), BODY[:50]) for _ in range(3)) + b"0\r\n\r\n"

    received = exchange(server, post("/invocations", chunks, "Transfer-Encoding: chunked"))

    assert status_lines(received) == ["HTTP/1.1 413 Request Entity Too Large"]
    assert b"the limit is 64" in received


def test_the_server_listens_on_ipv6_loopback(serve):
    server = serve(host="::1")
    assert server.url == f"http://[::1]:{server.port}"
    assert call(server, "/ping")[0] == 200


def test_idle_connections_and_a_client_stalled_mid_body_do_not_delay_a_normal_request(serve):
    server = serve(read_timeout=30)
    idle = [connect(server) for _ in range(300)]
    stalled = connect(server)
    stalled.sendall(post("/invocations", BODY[:10], f"Content-Length: {len(BODY)}"))
    try:
        started = time.monotonic()
        status, _, answer = call(server, "/invocations", raw=BODY, method="POST")
        elapsed = time.monotonic() - started
    finally:
        for connection in idle + [stalled]:
            connection.close()

    assert status == 200 and len(answer["predictions"]) == 1
    assert elapsed < 1.0, f"a normal request took {elapsed:.2f} s behind 300 idle and 1 stalled clients"


def test_an_answer_slower_than_the_request_timeout_is_a_504(serve):
    server = serve(request_timeout=1e-6)
    many = json.dumps({"dataframe_records": [RAW_TRIP] * 500}).encode()
    assert len(many) > INLINE_BODY_BYTES
    status, _, answer = call(server, "/invocations", raw=many, method="POST")
    assert (status, answer["error_code"]) == (504, "REQUEST_TIMEOUT")
    assert answer["message"] == "no answer within 1e-06 s"
    assert 'mlops_serving_errors_total{code="504"} 1.0' in call(server, "/metrics")[2]


def test_a_server_failure_answers_a_generic_body_with_the_request_id_and_logs_the_details(serve, caplog):
    server = serve()
    served = server.app.slot.current
    # A booster trained on two features: scoring the served features fails inside LightGBM.
    wrong = lightgbm.train({"objective": "regression", "verbose": -1},
                           lightgbm.Dataset(np.random.default_rng(0).random((50, 2)), np.arange(50.0)),
                           num_boost_round=2)
    server.app.slot.swap(dataclasses.replace(served, booster=wrong))

    with caplog.at_level(logging.ERROR, logger="mlops.serving.asgi"):
        status, headers, answer = call(server, "/invocations", raw=BODY, method="POST")

    request_id = headers["X-Request-Id"]
    assert (status, answer["error_code"]) == (500, "INTERNAL_ERROR")
    assert answer["message"] == f"the server failed to answer; request id {request_id}"
    assert "LightGBM" not in json.dumps(answer) and "features" not in json.dumps(answer)
    (record,) = [record for record in caplog.records if request_id in record.getMessage()]
    assert "LightGBMError" in record.getMessage()


def test_a_taken_port_is_refused_with_the_address_in_the_message(serve):
    server = serve()
    message = f"cannot listen on 127.0.0.1:{server.port}: Address already in use"
    with pytest.raises(ConfigError, match=message):
        serve(port=server.port)
