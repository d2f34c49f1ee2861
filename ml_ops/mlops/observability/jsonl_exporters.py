"""OpenTelemetry exporters that write Application Insights-shaped items as JSON lines.

A local run has no ingestion endpoint; these exporters write, one JSON object per line, what
the Azure Monitor exporter would have sent: the Kusto table (``itemType``), the name, the
message, the operation and parent ids, the role and the customDimensions.
"""
import datetime
import json
import threading
from pathlib import Path

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

# OpenTelemetry's semantic attribute names that become item fields rather than dimensions.
EVENT_NAME = "microsoft.custom_event.name"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
STATUS_CODE = "http.response.status_code"
# The Application Insights sampler's own attribute (the rate), not a dimension.
SAMPLER_ATTRIBUTE_PREFIX = "_MS."
_FIELD_ATTRIBUTES = {EVENT_NAME, EXCEPTION_TYPE, EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE}
# Python's levels as Application Insights' severityLevel (Verbose .. Critical).
_SEVERITY = ((21, 4), (17, 3), (13, 2), (9, 1), (0, 0))


def _time(nanoseconds) -> str:
    moment = datetime.datetime.fromtimestamp((nanoseconds or 0) / 1e9, tz=datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def _hex(number, width) -> str | None:
    return f"{number:0{width}x}" if number else None


def _part_a(resource) -> dict:
    attributes = resource.attributes if resource is not None else {}
    return {"role": attributes.get("service.name"), "role_instance": attributes.get("service.instance.id")}


def _dimensions(attributes) -> dict:
    return {key: value for key, value in dict(attributes or {}).items()
            if key not in _FIELD_ATTRIBUTES and not key.startswith(SAMPLER_ATTRIBUTE_PREFIX)}


def _item(item_type, **fields) -> dict:
    item = dict.fromkeys(("time", "name", "message", "severityLevel", "id", "duration_ms", "success",
                          "resultCode", "operation_id", "parent_id", "operation_name", "role",
                          "role_instance", "value", "stack"))
    item.update(itemType=item_type, customDimensions=fields.pop("customDimensions", {}), **fields)
    return item


def span_item(span) -> dict:
    """A ``request`` (server span) or ``dependency`` (any other span) item."""
    attributes = dict(span.attributes or {})
    server = span.kind == SpanKind.SERVER
    code = attributes.pop(STATUS_CODE, None)
    return _item("request" if server else "dependency", time=_time(span.start_time), name=span.name,
                 id=_hex(span.context.span_id, 16), duration_ms=(span.end_time - span.start_time) / 1e6,
                 success=span.status.status_code != StatusCode.ERROR,
                 resultCode=str(code if code is not None else 0),
                 operation_id=_hex(span.context.trace_id, 32),
                 parent_id=_hex(span.parent.span_id, 16) if span.parent and not server else None,
                 operation_name=span.name, customDimensions=_dimensions(attributes), **_part_a(span.resource))


def _severity(number) -> int:
    return next(level for floor, level in _SEVERITY if (number or 0) >= floor)


def log_item(readable) -> dict:
    """A ``trace``, ``exception`` or ``customEvent`` item from a log record."""
    record = readable.log_record
    attributes = dict(record.attributes or {})
    common = dict(time=_time(record.timestamp), operation_id=_hex(record.trace_id, 32),
                  parent_id=_hex(record.span_id, 16),
                  customDimensions=_dimensions(attributes), **_part_a(readable.resource))
    if EXCEPTION_TYPE in attributes:
        stack = attributes.get(EXCEPTION_STACKTRACE)
        return _item("exception", name=attributes[EXCEPTION_TYPE], message=str(record.body),
                     severityLevel=_severity(record.severity_number.value if record.severity_number else 0),
                     stack=stack.splitlines() if stack else None, **common)
    if EVENT_NAME in attributes:
        return _item("customEvent", name=attributes[EVENT_NAME], **common)
    return _item("trace", message=str(record.body),
                 severityLevel=_severity(record.severity_number.value if record.severity_number else 0),
                 **common)


def metric_items(metrics_data) -> list:
    """One ``customMetric`` item per data point."""
    items = []
    for resource_metrics in metrics_data.resource_metrics:
        part_a = _part_a(resource_metrics.resource)
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    items.append(_item("customMetric", time=_time(point.time_unix_nano), name=metric.name,
                                       value=point.value, customDimensions=dict(point.attributes or {}),
                                       **part_a))
    return items


class JsonlFile:
    """Appends items to one file; a write that fails is reported, never raised."""

    def __init__(self, path, on_error):
        self.path = Path(path)
        self._on_error = on_error
        self._lock = threading.Lock()

    def append(self, items) -> bool:
        try:
            lines = "".join(json.dumps(item, default=str) + "\n" for item in items)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # One unbuffered write to a file opened for appending: lines from several
                # processes (the server's workers) never interleave.
                with open(self.path, "ab", buffering=0) as handle:
                    handle.write(lines.encode("utf-8"))
            return True
        except Exception as exc:
            self._on_error("cannot write telemetry to %s: %s", self.path, exc)
            return False


class _WritesTo:
    def __init__(self, output: JsonlFile):
        self._output = output

    def _written(self, items, results):
        """``results.SUCCESS`` once ``items`` are in the file, else ``results.FAILURE``."""
        return results.SUCCESS if self._output.append(items) else results.FAILURE


class JsonlSpanExporter(_WritesTo, SpanExporter):
    def export(self, spans):
        return self._written([span_item(span) for span in spans], SpanExportResult)


class JsonlLogExporter(_WritesTo, LogRecordExporter):
    def export(self, batch):
        return self._written([log_item(record) for record in batch], LogRecordExportResult)

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class JsonlMetricExporter(_WritesTo, MetricExporter):
    def __init__(self, output: JsonlFile, preferred_temporality):
        MetricExporter.__init__(self, preferred_temporality=preferred_temporality)
        _WritesTo.__init__(self, output)

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        return self._written(metric_items(metrics_data), MetricExportResult)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass
