"""The OpenAI error envelope, the exception -> status mapping, and the request-body limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve.api.chat_template import ChatTemplateError
from serve.api.errors import APIError, invalid
from serve.api.metrics import Metrics
from serve.api.state import AppState, read_json, to_api_error
from serve.backends.base import BackendError, BackendUnavailable, Unsupported
from serve.config import ServerConfig
from serve.router.router import Overloaded, Router
from serve.sampling_params import ParamError


def test_envelope_shape() -> None:
    e = APIError(400, "bad top_p", param="top_p", code="invalid_value")
    assert e.body() == {"error": {"message": "bad top_p", "type": "invalid_request_error", "param": "top_p",
                                  "code": "invalid_value"}}
    r = e.response()
    assert r.status_code == 400 and json.loads(r.body) == e.body()


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
    (413, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
    (503, "service_unavailable"), (418, "server_error"),
])
def test_type_follows_status(status: int, kind: str) -> None:
    assert APIError(status, "x").body()["error"]["type"] == kind


def test_explicit_kind_and_headers_win() -> None:
    e = APIError(499, "gone", kind="client_closed_request", headers={"Retry-After": "3"})
    assert e.body()["error"]["type"] == "client_closed_request"
    assert e.response().headers["retry-after"] == "3"


def test_sse_error_event() -> None:
    e = invalid("nope", "stop")
    assert e.sse() == "data: " + json.dumps(e.body()) + "\n\n"
    assert e.status == 400 and e.param == "stop"


def test_overloaded_is_503_with_retry_after() -> None:
    e = to_api_error(Overloaded("model 'm' has 4 requests in flight"))
    assert e.status == 503 and e.headers.get("Retry-After") == "1"
    assert e.body()["error"]["type"] == "service_unavailable" and e.code == "overloaded"
    assert "in flight" in e.message


def test_backend_error_keeps_status_param_code_kind() -> None:
    e = to_api_error(BackendError("upstream said no", status=422, kind="invalid_request_error",
                                  param="seed", code="bad_seed"))
    assert (e.status, e.param, e.code, e.kind, e.message) == (422, "seed", "bad_seed", "invalid_request_error",
                                                             "upstream said no")
    assert "Retry-After" not in e.headers


def test_backend_unavailable_is_503_with_retry_after() -> None:
    e = to_api_error(BackendUnavailable("replica down"))
    assert e.status == 503 and e.headers == {"Retry-After": "1"}


def test_unsupported_names_the_parameter() -> None:
    e = to_api_error(Unsupported("min_p", "remote"))
    assert e.status == 400 and e.param == "min_p" and "remote" in e.message


def test_template_and_param_errors_are_400() -> None:
    t = to_api_error(ChatTemplateError("first message must be system"))
    assert (t.status, t.param) == (400, "messages")
    p = to_api_error(ParamError("top_k", "top_k must be ..."))
    assert (p.status, p.param) == (400, "top_k")


def test_api_error_passes_through_unchanged() -> None:
    e = APIError(404, "unknown model", param="model")
    assert to_api_error(e) is e


def test_unknown_exception_is_500_without_leaking() -> None:
    e = to_api_error(KeyError("/home/user/.secret token=abc123"))
    assert e.status == 500 and e.kind == "server_error"
    assert "secret" not in e.message and "abc123" not in e.message and "Traceback" not in e.message


def test_errors_are_counted_by_model_and_type() -> None:
    state = make_state(1024)
    to_api_error(Overloaded("full"), state, "m")
    to_api_error(Overloaded("full"), state, "m")
    value = state.metrics.registry.get_sample_value("sluice:request_errors_total",
                                                    {"model": "m", "type": "service_unavailable"})
    assert value == 2.0


# --- read_json through a tiny app: the real Request stream, no server process ---

def make_state(limit: int) -> AppState:
    return AppState(config=ServerConfig(max_body_bytes=limit), router=Router([]), metrics=Metrics())


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    state = make_state(64)

    @app.post("/echo")
    async def echo(request: Request) -> object:
        try:
            return await read_json(request, state)
        except APIError as e:
            return e.response()

    with TestClient(app) as c:
        yield c


def test_valid_json_object_is_returned(client: TestClient) -> None:
    r = client.post("/echo", json={"a": 1})
    assert r.status_code == 200 and r.json() == {"a": 1}


def test_body_over_limit_by_content_length_is_413(client: TestClient) -> None:
    r = client.post("/echo", content=b'{"a": "' + b"x" * 100 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error" and "64" in r.json()["error"]["message"]


def test_chunked_body_over_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the limit must hold while streaming
        for _ in range(10):
            yield b"x" * 16

    r = client.post("/echo", content=chunks())
    assert r.status_code == 413


def test_body_at_limit_is_accepted(client: TestClient) -> None:
    body = json.dumps({"k": "v" * 55}).encode()
    assert len(body) == 64
    assert client.post("/echo", content=body).status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
def test_invalid_json_is_400(client: TestClient, body: bytes) -> None:
    r = client.post("/echo", content=body)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3"])
def test_non_object_json_is_400(client: TestClient, body: bytes) -> None:
    r = client.post("/echo", content=body)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
