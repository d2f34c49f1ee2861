"""The OpenCensus exporters behind :class:`~mlops.observability.telemetry.Telemetry`.

Envelopes go to Application Insights over HTTP, or through a sink: a JSON-lines file, or
nowhere. Together with :mod:`mlops.observability.telemetry`, this is the only code that
imports OpenCensus, so a move to OpenTelemetry stays inside this package.
"""
import json
import re
import threading
import time
from pathlib import Path

from opencensus.common.schedule import QueueEvent
from opencensus.ext.azure.common.transport import TransportStatusCode
from opencensus.ext.azure.common.protocol import Data, DataPoint, MetricData, Request
from opencensus.ext.azure.log_exporter import AzureEventHandler, AzureLogHandler
from opencensus.ext.azure.trace_exporter import AzureExporter

from mlops.observability.redaction import REDACTED, is_secret_name, redact_text

_ITEM_TYPES = {
    "MessageData": "trace",
    "RemoteDependencyData": "dependency",
    "RequestData": "request",
    "ExceptionData": "exception",
    "EventData": "customEvent",
    "MetricData": "customMetric",
}
# The JSONL sink still builds real envelopes; they need a syntactically valid key.
OFFLINE_CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9"
)


def _duration_ms(duration):
    """Milliseconds from an Application Insights duration "d.hh:mm:ss.fff"."""
    match = re.match(r"^(\d+)\.(\d+):(\d+):(\d+)\.(\d+)$", duration or "")
    if not match:
        return None
    days, hours, minutes, seconds = (int(part) for part in match.groups()[:4])
    fraction = float("0." + match.group(5))
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds + fraction) * 1000


def _duration(seconds: float) -> str:
    """Application Insights' "d.hh:mm:ss.ffffff" for ``seconds``."""
    whole, micros = divmod(int(round(seconds * 1_000_000)), 1_000_000)
    minutes, second = divmod(whole, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days}.{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}"


def envelope_to_item(envelope) -> dict:
    """Flatten an Application Insights envelope into the JSONL item written offline."""
    data = envelope.get("data") or {}
    base = data.get("baseData") or {}
    tags = envelope.get("tags") or {}
    item_type = _ITEM_TYPES.get(data.get("baseType"), data.get("baseType"))
    exceptions = base.get("exceptions") or []
    first = exceptions[0] if exceptions else {}
    name = base.get("name")
    message = base.get("message")
    if item_type == "exception":
        name = first.get("typeName")
        message = first.get("message")
    metric = (base.get("metrics") or [{}])[0]
    if item_type == "customMetric":
        name = metric.get("name")
    return {
        "itemType": item_type,
        "time": envelope.get("time"),
        "name": name,
        "message": message,
        "severityLevel": base.get("severityLevel"),
        "id": base.get("id"),
        "duration_ms": _duration_ms(base.get("duration")),
        "success": base.get("success") if item_type in ("dependency", "request") else None,
        "resultCode": base.get("resultCode", base.get("responseCode")),
        "operation_id": tags.get("ai.operation.id"),
        "parent_id": tags.get("ai.operation.parentId"),
        "operation_name": tags.get("ai.operation.name"),
        "role": tags.get("ai.cloud.role"),
        "role_instance": tags.get("ai.cloud.roleInstance"),
        "value": metric.get("value") if item_type == "customMetric" else None,
        "customDimensions": dict(base.get("properties") or {}),
        "stack": [dict(frame) for frame in first.get("parsedStack", [])] if first else None,
    }


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


class JsonlSink:
    """Appends flattened envelopes to a file, one JSON object per line."""

    def __init__(self, path, on_error):
        self.path = Path(path)
        self._on_error = on_error
        self._lock = threading.Lock()

    def write(self, envelopes):
        try:
            lines = "".join(json.dumps(envelope_to_item(envelope), default=str) + "\n"
                            for envelope in envelopes)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(lines)
            return TransportStatusCode.SUCCESS
        except Exception as exc:
            self._on_error("cannot write telemetry to %s: %s", self.path, exc)
            return TransportStatusCode.DROP


class DiscardSink:
    @staticmethod
    def write(envelopes):
        return TransportStatusCode.SUCCESS


class _SinkMixin:
    """Sends envelopes to ``_sink`` when set, else over HTTP; never starts statsbeat."""

    _sink = None

    def _check_stats_collection(self):
        return False

    def _transmit(self, envelopes):
        if self._sink is not None:
            return self._sink.write(envelopes)
        return super()._transmit(envelopes)


class LogExporter(_SinkMixin, AzureLogHandler):
    def __init__(self, sink, **options):
        self._sink = sink
        super().__init__(**options)


class MeasurementExporter(_SinkMixin, AzureEventHandler):
    """``customEvents`` from log records, and ``customMetrics`` from records with a ``metric_value``."""

    def __init__(self, sink, **options):
        self._sink = sink
        super().__init__(**options)

    def log_record_to_envelope(self, record):
        envelope = super().log_record_to_envelope(record)
        value = getattr(record, "metric_value", None)
        request = getattr(record, "request", None)
        if request is not None:
            # A served HTTP request: one ``requests`` item, scaled by the rate it was sampled at.
            envelope.name = "Microsoft.ApplicationInsights.Request"
            envelope.sampleRate = request["sample_rate"] * 100
            data = Request(id=request["id"], name=record.getMessage(), duration=_duration(request["seconds"]),
                           responseCode=str(request["code"]), success=request["code"] < 500,
                           url=request["url"], properties=envelope.data.baseData.properties)
            envelope.data = Data(baseData=data, baseType="RequestData")
        elif value is not None:
            envelope.name = "Microsoft.ApplicationInsights.Metric"
            point = DataPoint(ns="", name=record.getMessage(), kind=0, value=float(value), count=1)
            data = MetricData(metrics=[point], properties=envelope.data.baseData.properties)
            envelope.data = Data(baseData=data, baseType="MetricData")
        return envelope


class SpanExporter(_SinkMixin, AzureExporter):
    def __init__(self, sink, **options):
        self._sink = sink
        super().__init__(**options)


def sync_queue(exporter, timeout):
    """Wait until everything queued before now has gone through the sink; False on timeout.

    OpenCensus' own ``flush`` returns at once when the worker has already taken the items
    off the queue but not sent them yet; an explicit marker event waits for the send.
    """
    worker = getattr(exporter, "_worker", None)
    if worker is None or not worker.is_alive() or timeout <= 0:
        return False
    started = time.monotonic()
    marker = QueueEvent("mlops-flush")
    try:
        exporter._queue._queue.put(marker, block=True, timeout=timeout)
    except Exception:
        return False
    return marker.wait(max(timeout - (time.monotonic() - started), 0.0))
