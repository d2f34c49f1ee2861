"""The OpenTelemetry backend: Azure Monitor's exporters, or JSON lines for local runs.

Stages are spans, the task is a server span (``requests``), logs are log records (``traces``,
or ``exceptions`` when they carry one, or ``customEvents`` when they name an event), and
metrics are gauges (``customMetrics``: each value once, in the interval it was set in).
"""
import logging
import os
import socket
import traceback

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
# The SDK still names its synchronous gauge with an underscore; it is the class it exports.
from opentelemetry.sdk.metrics import _Gauge as Gauge
from opentelemetry.sdk.metrics.export import (AggregationTemporality, MetricExporter,
                                              PeriodicExportingMetricReader)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from mlops.observability import jsonl_exporters
from mlops.observability.redaction import redact_text

# Loggers through which the SDK and the Azure exporter report failed exports.
EXPORT_PROBLEM_LOGGERS = (
    "azure.monitor.opentelemetry.exporter.export._base",
    "azure.monitor.opentelemetry.exporter._storage",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
)
# Each switch stops a sender a task run cannot stop or that reaches Microsoft hosts: SDK usage
# statistics, the customer SDK statistics' own metric thread, the remote configuration poller,
# and a resource metric per span batch. A team can still switch any of them on.
SDK_SWITCHES = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
                "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
                "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
                "APPLICATIONINSIGHTS_OPENTELEMETRY_RESOURCE_METRIC_DISABLED": "true"}
_SEVERITY = ((logging.CRITICAL, SeverityNumber.FATAL), (logging.ERROR, SeverityNumber.ERROR),
             (logging.WARNING, SeverityNumber.WARN), (logging.INFO, SeverityNumber.INFO),
             (0, SeverityNumber.DEBUG))


def quiet_sdk() -> None:
    for name, value in SDK_SWITCHES.items():
        os.environ.setdefault(name, value)


def resource(settings) -> Resource:
    """``service.name`` becomes ``cloud_RoleName``, ``service.instance.id`` ``cloud_RoleInstance``."""
    return Resource({"service.name": settings.role_name, "service.instance.id": socket.gethostname()})


def exception_attributes(exc_info) -> dict:
    kind, error, stack = exc_info
    return {jsonl_exporters.EXCEPTION_TYPE: kind.__name__,
            jsonl_exporters.EXCEPTION_MESSAGE: redact_text(str(error)),
            jsonl_exporters.EXCEPTION_STACKTRACE: redact_text(
                "".join(traceback.format_exception(kind, error, stack)))}


class ReportFailures:
    """An exporter that reports a batch its wrapped exporter did not deliver (the SDK drops it silently)."""

    def __init__(self, exporter, on_error):
        self._exporter = exporter
        self._on_error = on_error

    def export(self, batch, *args, **kwargs):
        result = self._exporter.export(batch, *args, **kwargs)
        if getattr(result, "name", "SUCCESS") != "SUCCESS":
            self._on_error("Application Insights export problem; telemetry may be incomplete (further "
                           "telemetry warnings are suppressed): %s did not deliver a batch (%s).",
                           type(self._exporter).__name__, result.name)
        return result

    def __getattr__(self, name):
        return getattr(self._exporter, name)


# A value is sent in the interval it was set in, once: monitoring's metrics are values, not rates.
DELTA_GAUGES = {Gauge: AggregationTemporality.DELTA}


class DeltaGauges(MetricExporter):
    """Delegates to ``exporter``, asking the SDK for delta gauges."""

    def __init__(self, exporter):
        super().__init__(preferred_temporality=DELTA_GAUGES)
        self._exporter = exporter

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        return self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis)


class OpenTelemetryBackend:
    """Providers of one task run, each with its exporter; nothing is registered globally."""

    def __init__(self, settings, sampler, make_span_exporter, log_exporter, metric_exporter):
        delay = settings.export_interval * 1000
        service = resource(settings)
        self._tracer_provider = TracerProvider(resource=service, sampler=sampler)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(make_span_exporter(self._tracer_provider),
                                                                    schedule_delay_millis=delay))
        self._logger_provider = LoggerProvider(resource=service)
        self._logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(log_exporter, schedule_delay_millis=delay))
        self._meter_provider = MeterProvider(resource=service, metric_readers=[
            PeriodicExportingMetricReader(metric_exporter, export_interval_millis=delay)])
        self._meter = self._meter_provider.get_meter("mlops")
        self._gauges = {}
        self.tracer = self._tracer_provider.get_tracer("mlops")

    @classmethod
    def to_azure_monitor(cls, settings, connection_string, sampler, on_error):
        from azure.monitor.opentelemetry.exporter import (AzureMonitorLogExporter, AzureMonitorMetricExporter,
                                                          AzureMonitorTraceExporter)
        quiet_sdk()
        options = dict(connection_string=connection_string, disable_offline_storage=True,
                       timeout=settings.flush_timeout)
        return cls(settings, sampler,
                   lambda provider: ReportFailures(
                       AzureMonitorTraceExporter(tracer_provider=provider, **options), on_error),
                   ReportFailures(AzureMonitorLogExporter(**options), on_error),
                   DeltaGauges(ReportFailures(AzureMonitorMetricExporter(**options), on_error)))

    @classmethod
    def to_jsonl(cls, settings, sampler, on_error):
        output = jsonl_exporters.JsonlFile(settings.jsonl_path, on_error)
        return cls(settings, sampler, lambda provider: jsonl_exporters.JsonlSpanExporter(output),
                   jsonl_exporters.JsonlLogExporter(output),
                   jsonl_exporters.JsonlMetricExporter(output, DELTA_GAUGES))

    def emit_log(self, record: logging.LogRecord, span, event_name=None) -> None:
        """A trace, an exception (with ``exc_info``) or a custom event, child of ``span``."""
        attributes = dict(record.custom_dimensions)
        if event_name is not None:
            attributes[jsonl_exporters.EVENT_NAME] = event_name
        if record.exc_info and record.exc_info[0] is not None:
            attributes.update(exception_attributes(record.exc_info))
        severity = next(number for floor, number in _SEVERITY if record.levelno >= floor)
        self._logger_provider.get_logger(record.name).emit(LogRecord(
            timestamp=int(record.created * 1e9), context=trace.set_span_in_context(span),
            severity_number=severity, severity_text=record.levelname, body=record.getMessage(),
            attributes=attributes))

    def record_metric(self, name: str, value: float, dimensions: dict) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = self._meter.create_gauge(name)
        gauge.set(value, attributes=dimensions)

    def flush(self, timeout: float) -> bool:
        millis = max(int(timeout * 1000), 1)
        providers = (self._tracer_provider, self._logger_provider, self._meter_provider)
        return all([provider.force_flush(millis) for provider in providers])

    def close(self, timeout: float) -> None:
        self._tracer_provider.shutdown()
        self._logger_provider.shutdown()
        self._meter_provider.shutdown(timeout_millis=max(timeout * 1000, 100))


class NoBackend:
    """Telemetry switched off: spans still have ids, nothing is exported."""

    def __init__(self):
        self._provider = TracerProvider()
        self.tracer = self._provider.get_tracer("mlops")

    def emit_log(self, record, span, event_name=None):
        pass

    def record_metric(self, name, value, dimensions):
        pass

    def flush(self, timeout):
        return True

    def close(self, timeout):
        self._provider.shutdown()
