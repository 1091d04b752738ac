"""The one switch for tracing, and the W3C `traceparent` plumbing.

Off by default: without OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) nothing is installed and
every helper here returns at once, so a server without the `otel` extra pays one boolean test per
request. On: spans go to an OTLP/HTTP exporter that reads the rest of its settings (headers,
timeout, OTEL_SERVICE_NAME, OTEL_BSP_*) from the environment itself, as the SDK documents.

We hold our own tracer rather than the global provider's, so a test can install an in-memory
exporter after another test installed a different one (the global provider is set-once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("sluice.telemetry")

_tracer: Any = None  # opentelemetry.trace.Tracer once tracing is on
_configured = False
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Any:
    return _tracer


def wanted() -> bool:
    """Whether the environment asks for traces (an endpoint set, the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(os.environ.get(v) for v in _ENDPOINT_VARS)


def configure_from_env() -> bool:
    """Install the OTLP exporter once per process when the environment asks for it. A missing SDK
    with an endpoint set is logged, not fatal: tracing is an aid, never a reason to refuse traffic."""
    global _configured
    if _configured or not wanted():
        return enabled()
    _configured = True
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'sluice[otel]'): %s; tracing stays off", e)
        return False
    # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; "sluice" when neither is set.
    base = Resource.create({"service.name": "sluice"})
    resource = base.merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    log.info("tracing on: OTLP/HTTP to %s", next(os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)))
    return True


def install(provider: Any) -> None:
    """Trace through `provider` (an SDK TracerProvider); None turns tracing off again."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("sluice")


def headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) for the current span, to send to an upstream; {} when off."""
    if _tracer is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: dict[str, str]) -> Any:
    """The remote parent context a `traceparent` carrier names (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    return propagate.extract(carrier)


@contextmanager
def span(name: str, carrier: dict[str, str] | None = None, **attributes: Any) -> Iterator[Any]:
    """A span around a block, child of the current span or of `carrier`'s remote parent; yields
    None when tracing is off."""
    if _tracer is None:
        yield None
        return
    ctx = extract(carrier) if carrier else None
    with _tracer.start_as_current_span(name, context=ctx, attributes=_clean(attributes)) as s:
        yield s


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTel attributes may not be None; drop those rather than send a placeholder."""
    return {k: v for k, v in attributes.items() if v is not None}
