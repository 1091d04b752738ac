"""OpenTelemetry traces: the request span and its phases (in-process, SDK in-memory exporter, a real
llama.cpp replica), and one trace across two real `sluice serve` processes (a front whose `remote`
replica is a second sluice), both exporting OTLP/HTTP to a collector on loopback."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server_proc import MODEL, start_server
from tests.requirements import model_missing, otel_missing, requires

pytestmark = [pytest.mark.e2e, requires("otel", otel_missing()), requires("model", model_missing())]

PHASES = {"route", "queue", "prefill", "decode"}


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def traced_app() -> Iterator[tuple[object, object]]:
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serve.config import ModelConfig, ReplicaSpec, ServerConfig
    from serve.server import build_app
    from serve.telemetry import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    spec = ReplicaSpec(backend="llamacpp", model=MODEL, options={"n_parallel": 1, "n_threads": 1})
    config = ServerConfig(models=(ModelConfig(name="smol", replicas=(spec,)),))
    try:
        with TestClient(build_app(config)) as client:
            yield client, exporter
    finally:
        tracing.install(None)


def _request_span(exporter, trace_id: str):
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    roots = [s for s in spans if s.name.startswith(("chat ", "text_completion "))]
    assert len(roots) == 1, [s.name for s in spans]
    return roots[0], [s for s in spans if s.parent is not None and s.parent.span_id == roots[0].context.span_id]


def test_chat_span_has_genai_attributes_and_phases(traced_app) -> None:
    client, exporter = traced_app
    header, trace_id, parent_id = _traceparent()
    r = client.post("/v1/chat/completions", headers={"traceparent": header},
                    json={"model": "smol", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5,
                          "temperature": 0.5, "top_p": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    span, children = _request_span(exporter, trace_id)
    assert span.name == "chat smol"
    assert f"{span.parent.span_id:016x}" == parent_id and span.parent.is_remote
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "smol"
    assert a["gen_ai.request.max_tokens"] == 5
    assert a["gen_ai.request.temperature"] == pytest.approx(0.5) and a["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert a["gen_ai.response.id"] == body["id"]
    assert a["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert list(a["gen_ai.response.finish_reasons"]) == [body["choices"][0]["finish_reason"]]
    assert a["sluice.replica"] == "smol/0:llamacpp" and a["sluice.backend"] == "llamacpp"
    assert a["sluice.ttft_s"] > 0 and "sluice.cached_tokens" in a and a["http.response.status_code"] == 200
    by_name = {c.name: c for c in children}
    assert set(by_name) == PHASES
    # the phases lie end to end inside the request span
    q, p, d = by_name["queue"], by_name["prefill"], by_name["decode"]
    assert span.start_time <= by_name["route"].start_time <= q.start_time <= q.end_time <= p.start_time
    assert p.end_time == d.start_time <= d.end_time <= span.end_time


def test_streamed_completion_span_and_no_traceparent(traced_app) -> None:
    client, exporter = traced_app
    exporter.clear()
    with client.stream("POST", "/v1/completions", json={"model": "smol", "prompt": "Hello", "max_tokens": 4,
                                                         "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    roots = [s for s in exporter.get_finished_spans() if s.name == "text_completion smol"]
    assert len(roots) == 1 and roots[0].parent is None  # a fresh trace when the client sends none
    assert roots[0].attributes["gen_ai.usage.output_tokens"] >= 1
    assert roots[0].attributes["sluice.stream"] is True


def test_errors_are_traced_too(traced_app) -> None:
    client, exporter = traced_app
    exporter.clear()
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "chat"]
    assert span.attributes["http.response.status_code"] == 404


def test_one_trace_across_two_sluice_processes(tmp_path: Path) -> None:
    from tests.e2e.otlp_collector import Collector

    with Collector() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        back = start_server(["--backend", "llamacpp", "-o", "n_parallel=1", "-o", "n_threads=1"], tmp_path,
                            env={**env, "OTEL_SERVICE_NAME": "sluice-back"})
        cfg = tmp_path / "front.toml"
        cfg.write_text(f'[[models]]\nname = "smol"\n[[models.replicas]]\nbackend = "remote"\n'
                       f'url = "{back.base_url}/v1"\nmodel = "{MODEL}"\n')
        front = start_server(["--config", str(cfg)], tmp_path, env={**env, "OTEL_SERVICE_NAME": "sluice-front"})
        try:
            header, trace_id, client_span = _traceparent()
            body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
            with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body,
                              headers={"traceparent": header}, timeout=60) as r:
                frames = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            assert frames[-1] == "data: [DONE]" and "error" not in json.loads(frames[0][6:])

            def both(spans) -> bool:
                names = {(s.service, s.name) for s in spans if s.trace_id == trace_id}
                return {("sluice-front", "chat smol"), ("sluice-back", f"chat {MODEL}")} <= names

            spans = [s for s in collector.wait_for(both) if s.trace_id == trace_id]
        finally:
            front.stop()
            back.stop()
    front_root = next(s for s in spans if s.service == "sluice-front" and s.name == "chat smol")
    back_root = next(s for s in spans if s.service == "sluice-back" and s.name == f"chat {MODEL}")
    assert front_root.parent_span_id == client_span
    front_ids = {s.span_id for s in spans if s.service == "sluice-front"}
    assert back_root.parent_span_id in front_ids  # the back's request span is a child of the front's
    assert front_root.attributes["sluice.backend"] == "remote" and back_root.attributes["sluice.backend"] == "llamacpp"
    assert {s.name for s in spans if s.service == "sluice-back"} >= PHASES | {f"chat {MODEL}"}
