"""OpenTelemetry tracing: one trace per request, from the ingress through retrieval, every LLM call and every
agent tool, across deployments.

Ray Serve does the plumbing: with tracing on (the Serve config's ``tracing_config``, or Serve's
``RAY_SERVE_TRACING_*`` environment variables) every replica installs a tracer provider with the span
processors returned by ``tracing_config.exporter_import_path`` and propagates the current context through
every handle call. The app adds its own spans with the OpenTelemetry API (``span`` below), which nest under
whatever is current, and the ingress returns the trace id in ``X-Trace-Id``. Off by default: without a
tracer provider the API hands out non-recording spans and nothing is exported.

Exporters (``exporter_import_path``; Serve calls them without arguments in every Serve process):
- ``otlp_exporter``: OTLP over HTTP; endpoint, headers and protocol from OpenTelemetry's standard environment
  variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...), which the
  application's ``runtime_env.env_vars`` pass to the replicas.
- ``jsonl_exporter``: one JSON object per span, one file per process (``spans-<pid>.jsonl``), in
  ``$SERVE_APP_TRACE_DIR`` (tests, debugging).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

TRACE_HEADER = "x-trace-id"


def tracer() -> trace.Tracer:
    return trace.get_tracer("serve_app")


@contextmanager
def span(name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL, **attributes: Any) -> Iterator[trace.Span]:
    """A span that is current inside the block (so handle calls made in it carry it). Only for blocks
    without a generator ``yield`` inside: the context is attached and detached around the block."""
    with tracer().start_as_current_span(name, kind=kind,
                                        attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s


def trace_id(s: trace.Span | None = None) -> str | None:
    """The current (or given) span's trace id as 32 hex digits; None when tracing is off."""
    ctx = (s or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def otlp_exporter() -> list:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter())]


def jsonl_exporter() -> list:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    directory = os.environ.get("SERVE_APP_TRACE_DIR")
    if not directory:
        raise RuntimeError("jsonl_exporter needs SERVE_APP_TRACE_DIR (the folder for the span files)")
    os.makedirs(directory, exist_ok=True)
    out = open(os.path.join(directory, f"spans-{os.getpid()}.jsonl"), "a", buffering=1)

    def one_line(s) -> str:
        return json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n"

    return [SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=one_line))]
