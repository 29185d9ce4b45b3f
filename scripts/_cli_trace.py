"""``orchestrate --trace-file run.jsonl``: the run's finished spans as OTLP/JSON lines.

Every line of the file is one OTLP ``ExportTraceServiceRequest`` in its JSON encoding (the format
the OpenTelemetry Collector's ``file`` exporter writes and its ``otlpjsonfile`` receiver reads;
trace and span ids in hex), holding the spans that ended together: the library's own spans and the
SDK's ``anthropic.messages.create`` spans of the run, so one run is one file a trace viewer loads.

It needs the optional extra ``[tracing]`` (``opentelemetry-sdk``), imported only when a trace file
is opened: the command line works without it. The provider it makes is the library's own
(:func:`_tracing.use_tracer_provider`) while the file is open, never the process's global one.

>>> with open_trace_file("run.jsonl") as trace_file:
...     results = invoke_parallel_managed(prompts)
>>> trace_file.spans_written
12
"""

from __future__ import annotations

import json
import logging
import threading
from typing import IO, Any, Mapping, Optional, Sequence

import _tracing
from _cli_common import UsageError

logger = logging.getLogger("orchestration._cli_trace")

__all__ = ["JsonLinesSpanExporter", "TraceFile", "open_trace_file", "otlp_json"]

INSTALL_HINT = "pip install 'orchestrating-agents[tracing]'"


def _sdk() -> Any:
    """The OpenTelemetry SDK modules this needs, or a usage error naming the extra."""
    try:
        from opentelemetry.sdk import resources, trace
        from opentelemetry.sdk.trace import export
    except ImportError as exc:
        raise UsageError(f"--trace-file needs the OpenTelemetry SDK: {INSTALL_HINT} ({exc})") from None

    class Modules:
        Resource = resources.Resource
        TracerProvider = trace.TracerProvider
        SimpleSpanProcessor = export.SimpleSpanProcessor
        SUCCESS = export.SpanExportResult.SUCCESS

    return Modules


# ----------------------------------------------------------------------------- OTLP/JSON
def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a JSON string in OTLP/JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, bytes):
        return {"stringValue": value.hex()}
    return {"stringValue": str(value)}


def _attributes(attributes: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _any_value(value)} for key, value in (attributes or {}).items()]


def _span_json(span: Any) -> dict[str, Any]:
    ctx = span.context
    out: dict[str, Any] = {
        "traceId": format(ctx.trace_id, "032x"),
        "spanId": format(ctx.span_id, "016x"),
        "name": span.name,
        "kind": span.kind.value + 1,  # OTLP numbers UNSPECIFIED as 0, the API's INTERNAL (0) as 1
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
        "events": [
            {"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
            for e in span.events
        ],
        "links": [
            {
                "traceId": format(link.context.trace_id, "032x"),
                "spanId": format(link.context.span_id, "016x"),
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ],
        "status": {"code": span.status.status_code.value},
    }
    if span.parent is not None:
        out["parentSpanId"] = format(span.parent.span_id, "016x")
    if span.status.description:
        out["status"]["message"] = span.status.description
    return out


def otlp_json(spans: Sequence[Any]) -> dict[str, Any]:
    """The OTLP/JSON ``ExportTraceServiceRequest`` of finished SDK spans (grouped by resource and
    instrumentation scope)."""
    resources: dict[int, tuple[Any, dict[tuple, list]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = resources.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope
        key = (getattr(scope, "name", ""), getattr(scope, "version", None))
        scopes.setdefault(key, []).append(_span_json(span))
    resource_spans = []
    for resource, scopes in resources.values():
        scope_spans = []
        for (name, version), items in scopes.items():
            scope_json: dict[str, Any] = {"name": name}
            if version:
                scope_json["version"] = version
            scope_spans.append({"scope": scope_json, "spans": items})
        resource_spans.append(
            {"resource": {"attributes": _attributes(getattr(resource, "attributes", None))}, "scopeSpans": scope_spans}
        )
    return {"resourceSpans": resource_spans}


class JsonLinesSpanExporter:
    """An OpenTelemetry SDK ``SpanExporter`` writing each export as one OTLP/JSON line to ``stream``
    (flushed at once: a killed run keeps every span that had ended). Thread-safe; after
    :meth:`shutdown` it drops what it is given.

    >>> provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(open("t.jsonl", "w"))))
    """

    def __init__(self, stream: IO[str], *, close_stream: bool = False) -> None:
        self._stream = stream
        self._close_stream = close_stream
        self._lock = threading.Lock()
        self._closed = False
        self.spans_written = 0
        self._success = _sdk().SUCCESS

    def export(self, spans: Sequence[Any]) -> Any:
        if not spans:
            return self._success
        line = json.dumps(otlp_json(spans), ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._closed:
                return self._success
            self._stream.write(line + "\n")
            self._stream.flush()
            self.spans_written += len(spans)
        return self._success

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._close_stream:
                self._stream.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if not self._closed:
                self._stream.flush()
        return True


class TraceFile:
    """A trace file being written (:func:`open_trace_file`). As ``with``, its provider is the
    library's while the block runs (the previous one after); :meth:`close` ends the file."""

    def __init__(self, path: str, *, service_name: str = "orchestrate", tracer_provider: Any = None) -> None:
        sdk = _sdk()
        try:
            stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise UsageError(f"--trace-file: cannot write {path}: {exc.strerror or exc}") from None
        self.path = path
        self.exporter = JsonLinesSpanExporter(stream, close_stream=True)
        processor = sdk.SimpleSpanProcessor(self.exporter)
        if tracer_provider is None:
            resource = sdk.Resource.create({"service.name": service_name})
            tracer_provider = sdk.TracerProvider(resource=resource, shutdown_on_exit=False)
        elif not callable(getattr(tracer_provider, "add_span_processor", None)):
            raise TypeError(
                f"tracer_provider must be an opentelemetry-sdk TracerProvider, got {type(tracer_provider).__name__}"
            )
        # Never shut down: a straggler (a timed-out tool's thread) may still end a span; the
        # closed exporter drops it quietly.
        tracer_provider.add_span_processor(processor)
        self.provider = tracer_provider
        self._previous: Any = None
        self._installed = False

    @property
    def spans_written(self) -> int:
        return self.exporter.spans_written

    def close(self) -> None:
        """Write what has ended and close the file (later spans are dropped). Idempotent."""
        try:
            self.provider.force_flush()
        except Exception:  # pragma: no cover - a provider of the application's that fails to flush
            logger.debug("force_flush of the trace file's provider failed", exc_info=True)
        self.exporter.shutdown()

    def __enter__(self) -> TraceFile:
        self._previous = _tracing.tracer_provider()
        _tracing.use_tracer_provider(self.provider)
        self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            self._installed = False
            _tracing.use_tracer_provider(self._previous)
        self.close()


def open_trace_file(path: str, *, service_name: str = "orchestrate", tracer_provider: Any = None) -> TraceFile:
    """Open ``path`` (truncated) for the run's spans: a new SDK ``TracerProvider`` (resource
    ``service.name``) writing to it, or ``tracer_provider`` (an SDK provider of the application's)
    given one more processor. Raises :class:`UsageError` without the extra or when ``path`` cannot
    be written (before any request).

    >>> with open_trace_file(args.trace_file):
    ...     execute(...)
    """
    if not isinstance(path, str) or not path.strip():
        raise UsageError("--trace-file needs a file path")
    return TraceFile(path, service_name=service_name, tracer_provider=tracer_provider)
