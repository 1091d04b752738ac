"""OpenTelemetry traces: off unless configured by the standard OTEL_* variables."""
