"""The second backend, for teams that ingest through opencensus-ext-azure as the Azure sample does.

Only the package's public API is used: the log and event handlers' ``emit``, ``flush`` and
``close``, their ``log_record_to_envelope`` hook, the trace exporter's synchronous ``emit``,
and ``add_telemetry_processor``. Spans still come from OpenTelemetry's SDK (the same tracer as
the default backend); an OpenTelemetry span exporter hands them to OpenCensus as span data.
"""
import datetime
import logging

from opencensus.ext.azure.common.protocol import Data, DataPoint, MetricData
from opencensus.ext.azure.log_exporter import AzureEventHandler, AzureLogHandler
from opencensus.ext.azure.trace_exporter import AzureExporter
from opencensus.trace import status as span_status
from opencensus.trace.span import SpanKind as CensusKind
from opencensus.trace.span_context import SpanContext
from opencensus.trace.span_data import SpanData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from mlops.observability import jsonl_exporters
from mlops.observability.otel_backend import quiet_sdk, resource
from mlops.observability.redaction import REDACTED, is_secret_name, redact_text

EXPORT_PROBLEM_LOGGERS = (
    "opencensus.ext.azure.common.transport",
    "opencensus.ext.azure.common.processor",
    "opencensus.ext.azure.log_exporter",
    "opencensus.ext.azure.trace_exporter",
)
# OpenTelemetry's HTTP attribute names, as OpenCensus' exporter reads them.
_CENSUS_NAMES = {jsonl_exporters.STATUS_CODE: "http.status_code", "http.request.method": "http.method",
                 "url.full": "http.url"}


def _census_time(nanoseconds) -> str:
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def span_data(span) -> SpanData:
    """OpenCensus' span data for an OpenTelemetry span (HTTP attributes in OpenCensus' names)."""
    attributes = {_CENSUS_NAMES.get(key, key): value for key, value in (span.attributes or {}).items()
                  if not key.startswith(jsonl_exporters.SAMPLER_ATTRIBUTE_PREFIX)}
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    failed = span.status.status_code == StatusCode.ERROR
    return SpanData(
        name=span.name, context=SpanContext(trace_id=trace_id, span_id=span_id), span_id=span_id,
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent else None, attributes=attributes,
        start_time=_census_time(span.start_time), end_time=_census_time(span.end_time),
        child_span_count=0, stack_trace=None, annotations=[], message_events=[], links=[],
        status=span_status.Status(code=2 if failed else 0, message="failed" if failed else None),
        same_process_as_parent_span=None,
        span_kind=CensusKind.SERVER if span.kind == SpanKind.SERVER else CensusKind.CLIENT)


class CensusSpanExporter(SpanExporter):
    """Sends OpenTelemetry spans through OpenCensus' Azure exporter, synchronously."""

    def __init__(self, exporter: AzureExporter):
        self._exporter = exporter

    def export(self, spans):
        self._exporter.emit([span_data(span) for span in spans])
        return SpanExportResult.SUCCESS


class MeasurementHandler(AzureEventHandler):
    """``customEvents`` from log records, and ``customMetrics`` from records with a ``metric_value``."""

    def log_record_to_envelope(self, record):
        envelope = super().log_record_to_envelope(record)
        value = getattr(record, "metric_value", None)
        if value is not None:
            envelope.name = "Microsoft.ApplicationInsights.Metric"
            point = DataPoint(ns="", name=record.getMessage(), kind=0, value=float(value), count=1)
            data = MetricData(metrics=[point], properties=envelope.data.baseData.properties)
            envelope.data = Data(baseData=data, baseType="MetricData")
        return envelope


def redact_tree(value):
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        for key in list(value):
            if isinstance(key, str) and is_secret_name(key) and isinstance(value[key], str):
                value[key] = REDACTED
            else:
                value[key] = redact_tree(value[key])
        return value
    if isinstance(value, list):
        return [redact_tree(element) for element in value]
    return value


class OpenCensusBackend:
    """Logs, events and metrics through OpenCensus' handlers; spans through its trace exporter."""

    def __init__(self, settings, connection_string, sampler):
        quiet_sdk()
        self._role_name = settings.role_name
        options = dict(connection_string=connection_string, export_interval=settings.export_interval,
                       enable_local_storage=False, grace_period=settings.flush_timeout,
                       timeout=settings.flush_timeout)
        self._log_handler = AzureLogHandler(**options)
        self._measurement_handler = MeasurementHandler(**options)
        span_exporter = AzureExporter(**options)
        for exporter in (self._log_handler, self._measurement_handler, span_exporter):
            exporter.add_telemetry_processor(self._process_envelope)
        self._tracer_provider = TracerProvider(resource=resource(settings), sampler=sampler)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(
            CensusSpanExporter(span_exporter), schedule_delay_millis=settings.export_interval * 1000))
        self.tracer = self._tracer_provider.get_tracer("mlops")

    def emit_log(self, record, span, event_name=None) -> None:
        context = span.get_span_context()
        record.traceId, record.spanId = f"{context.trace_id:032x}", f"{context.span_id:016x}"
        if event_name is not None:
            record.msg, record.args = "%s", (event_name,)
            self._measurement_handler.emit(record)
        else:
            self._log_handler.emit(record)

    def record_metric(self, name, value, dimensions) -> None:
        record = logging.LogRecord("mlops.observability.telemetry", logging.INFO, "", 0, "%s", (name,), None)
        record.custom_dimensions, record.metric_value = dimensions, value
        self._measurement_handler.emit(record)

    def flush(self, timeout: float) -> bool:
        spans = self._tracer_provider.force_flush(max(int(timeout * 1000), 1))
        for handler in (self._log_handler, self._measurement_handler):
            handler.flush(timeout)
        return spans

    def close(self, timeout: float) -> None:
        self._tracer_provider.shutdown()
        for handler in (self._log_handler, self._measurement_handler):
            handler.close(timeout)

    def _process_envelope(self, envelope):
        """Role and operation names as the default backend sends them, and redaction."""
        tags = envelope.tags
        tags["ai.cloud.role"] = self._role_name
        tags["ai.operation.name"] = self._role_name
        parent = tags.get("ai.operation.parentId")
        # Log envelopes use the legacy "|<trace>.<span>." form; spans use the bare span id.
        if parent and parent.startswith("|"):
            tags["ai.operation.parentId"] = parent.strip("|.").rpartition(".")[2]
        data = envelope.data
        if data.baseType == "RemoteDependencyData":
            data.baseData.type = "InProc"
        elif data.baseType == "RequestData":
            tags.pop("ai.operation.parentId", None)
            data.baseData.name = data.baseData.name.strip() or self._role_name
        envelope.tags = redact_tree(dict(tags))
        data.baseData = redact_tree(data.baseData)
        return True
