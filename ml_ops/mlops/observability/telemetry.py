"""Telemetry to Azure Monitor (Application Insights), or to a JSON-lines file.

One :class:`Telemetry` per task run sends three kinds of items:

* ``traces``: log records at INFO and above from the configured loggers;
* ``dependencies``: one item per stage, from :meth:`Telemetry.span`, plus one ``requests``
  item for the task itself (the root of the operation);
* ``exceptions``: from :meth:`Telemetry.record_exception`, from a stage that raises, and
  from ``logger.exception``;
* ``customMetrics`` and ``customEvents``: from :meth:`Telemetry.track_metric` and
  :meth:`Telemetry.track_event` (monitoring sends each metric and each violation).

Every item carries the cloud role name (``<job>/<task>``), one operation id per task run,
a parent id, and customDimensions (the settings' dimensions, :meth:`Telemetry.set_dimensions`,
and ``stage`` inside a span). All text passes through :func:`mlops.observability.redaction.redact_text`.

Without a valid connection string, the same envelopes are written as JSON lines to
``settings.jsonl_path``: both sinks share the envelope-building code and the processor, and
differ only in the final transmit step.

This module and :mod:`mlops.observability.exporters` are the only ones that import OpenCensus
(opencensus-ext-azure). The OpenCensus SDK was retired upstream in September 2024. Keep every
OpenCensus detail inside them, so that moving to OpenTelemetry (azure-monitor-opentelemetry)
changes these two files only; the public API (:class:`TelemetrySettings`, :class:`Telemetry`)
names no OpenCensus type.

Telemetry never breaks the job: export failures, an unreachable endpoint or a malformed
connection string are logged once at WARNING on the ``mlops.observability.telemetry`` logger (which the
telemetry handler itself ignores) and otherwise ignored. SDK usage statistics ("statsbeat"),
which would be sent to Microsoft hosts, are never started, and nothing is written to local
retry storage.
"""
import contextlib
import logging
import threading
import time
import traceback
import uuid

from opencensus.trace import status as span_status
from opencensus.trace.samplers import AlwaysOnSampler
from opencensus.trace.span import Span, SpanKind
from opencensus.trace.span_context import SpanContext
from opencensus.trace.tracer import Tracer

from mlops.errors import exception_chain
from mlops.observability.log_filters import AddContext, ExportProblemsOnce, SelectLoggers
from mlops.observability.exporters import (OFFLINE_CONNECTION_STRING, DiscardSink, JsonlSink, LogExporter,
                                           MeasurementExporter, SpanExporter, redact_tree, sync_queue)
from mlops.observability.redaction import (
    REDACTED,
    SecretRedactingFilter,
    install_redaction,
    is_secret_name,
    redact_text,
)
from mlops.observability.settings import (  # noqa: F401 (the public vocabulary of telemetry)
    DEFAULT_LOGGER_NAMES,
    SINK_APPINSIGHTS,
    SINK_DISABLED,
    SINK_JSONL,
    TelemetrySettings,
    check_connection_string,
)

INTERNAL_LOGGER_NAME = __name__

internal_logger = logging.getLogger(INTERNAL_LOGGER_NAME)

# Records from these loggers never become telemetry: they report on telemetry itself.
_IGNORED_LOGGER_PREFIXES = (INTERNAL_LOGGER_NAME, "opencensus", "urllib3", "requests")
_OPENCENSUS_LOGGER_NAMES = (
    "opencensus.common.schedule",
    "opencensus.ext.azure.common.processor",
    "opencensus.ext.azure.common.transport",
    "opencensus.ext.azure.log_exporter",
    "opencensus.ext.azure.trace_exporter",
)
_RECORDED_MARK = "_mlops_telemetry_recorded"
_HANDLER_MARK = "_mlops_telemetry_owner"

_active_lock = threading.Lock()
_active = None


class _StageFrame:
    def __init__(self, name, span, dimensions):
        self.name = name
        self.span = span
        self.dimensions = dimensions


class StageSpan:
    """What :meth:`Telemetry.span` yields: the stage's name and id, and extra dimensions."""

    def __init__(self, frame):
        self._frame = frame

    @property
    def name(self):
        return self._frame.name

    @property
    def span_id(self):
        return self._frame.span.span_id

    def set_dimensions(self, **dimensions):
        """Add dimensions to this stage's dependency item and to later logs inside it."""
        _merge_dimensions(self._frame.dimensions, dimensions)


def _merge_dimensions(target, updates):
    for key, value in updates.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _as_dimensions(values):
    """customDimensions are strings; secret names and values are redacted."""
    return {
        str(key): REDACTED if is_secret_name(str(key)) else redact_text(value)
        for key, value in values.items() if value is not None
    }


class Telemetry:
    """One task run's telemetry; create it with :meth:`Telemetry.start`.

    Use it as a context manager: leaving the block records an escaping exception, marks the
    task failed, flushes and closes. Spans are meant for the stages of a task, run one after
    another (nesting allowed); they are not tracked per thread.
    """

    def __init__(self, settings: TelemetrySettings):
        self.settings = settings
        self._lock = threading.RLock()
        self._dimensions = dict(settings.dimensions)
        self._stack = []
        self._closed = False
        self._warned = False
        self._root_failed = False
        self._raised_levels = {}
        self._log_exporter = None
        self._span_exporter = None
        self._measurement_exporter = None
        self._problem_filter = ExportProblemsOnce(self)
        self.sink = SINK_DISABLED

    @classmethod
    def start(cls, settings: TelemetrySettings) -> "Telemetry":
        """Start telemetry for a task run and attach its handler to the root logger.

        A Telemetry started earlier in this process and still open is closed first, so the
        root logger never carries two telemetry handlers. The root logger's other handlers
        get a :class:`~mlops.observability.redaction.SecretRedactingFilter` too.
        """
        global _active
        telemetry = cls(settings)
        with _active_lock:
            previous, _active = _active, telemetry
        if previous is not None:
            previous.close()
        telemetry._open()
        return telemetry

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self):
        for name in _OPENCENSUS_LOGGER_NAMES:
            logging.getLogger(name).addFilter(self._problem_filter)
        self._build_exporters()
        self._tracer = Tracer(span_context=SpanContext(), sampler=AlwaysOnSampler(),
                              exporter=self._span_exporter)
        self.operation_id = self._tracer.span_context.trace_id
        self._root = Span(self.settings.role_name, context_tracer=self._tracer.tracer,
                          span_kind=SpanKind.SERVER)
        self._root.start()
        self._attach_log_handler()

    def _build_exporters(self):
        settings = self.settings
        connection_string = None
        if settings.connection_string is not None:
            connection_string, problem = check_connection_string(settings.connection_string)
            if problem:
                fallback = (f"writing telemetry to {settings.jsonl_path}" if settings.jsonl_path
                            else "telemetry is disabled")
                self._warn_once("The Application Insights connection string is malformed (%s); %s.",
                                problem, fallback)
        if connection_string is not None:
            try:
                self._create_exporters(None, connection_string)
                self.sink = SINK_APPINSIGHTS
                return
            except Exception as exc:
                self._close_exporters(0.1)
                self._warn_once("Cannot start the Application Insights exporter (%s); falling back.",
                                type(exc).__name__)
        if settings.jsonl_path is not None:
            self._create_exporters(JsonlSink(settings.jsonl_path, self._warn_once),
                                   OFFLINE_CONNECTION_STRING)
            self.sink = SINK_JSONL
        else:
            self._create_exporters(DiscardSink(), OFFLINE_CONNECTION_STRING)
            self.sink = SINK_DISABLED

    def _create_exporters(self, sink, connection_string):
        options = dict(
            connection_string=connection_string,
            export_interval=self.settings.export_interval,
            enable_local_storage=False,
            grace_period=self.settings.flush_timeout,
            timeout=self.settings.flush_timeout,
        )
        self._log_exporter = LogExporter(sink, **options)
        self._span_exporter = SpanExporter(sink, **options)
        self._measurement_exporter = MeasurementExporter(sink, **options)
        for exporter in self._exporters():
            exporter.add_telemetry_processor(self._process_envelope)

    def _exporters(self):
        return [exporter for exporter in (self._log_exporter, self._span_exporter, self._measurement_exporter)
                if exporter is not None]

    def _attach_log_handler(self):
        handler = self._log_exporter
        handler.setLevel(logging.INFO)
        selected = SelectLoggers(self.settings.logger_names, _IGNORED_LOGGER_PREFIXES)
        for log_filter in (selected, SecretRedactingFilter(), AddContext(self)):
            handler.addFilter(log_filter)
        setattr(handler, _HANDLER_MARK, self)
        root = logging.getLogger()
        for existing in list(root.handlers):
            if getattr(existing, _HANDLER_MARK, None) is not None:
                root.removeHandler(existing)
        root.addHandler(handler)
        install_redaction(root)
        # Loggers that stay at the default WARNING level would never pass INFO records on.
        for name in self.settings.logger_names:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                self._raised_levels[name] = logger.level
                logger.setLevel(logging.INFO)

    def flush(self) -> bool:
        """Push everything recorded so far through the sink, waiting at most ``flush_timeout``.

        Returns False when the time ran out. A failed delivery is logged (once), not raised.
        """
        deadline = time.monotonic() + self.settings.flush_timeout
        delivered = True
        for exporter in self._exporters():
            try:
                delivered = sync_queue(exporter, deadline - time.monotonic()) and delivered
            except Exception as exc:
                delivered = False
                self._warn_once("Telemetry flush failed: %s", type(exc).__name__)
        return delivered

    def close(self) -> None:
        """End the task's root span, flush, detach the log handler and stop the exporters."""
        global _active
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._finish_span(self._root, self._root_dimensions(), failed=self._root_failed)
        except Exception as exc:
            self._warn_once("Cannot end the telemetry root span: %s", type(exc).__name__)
        root = logging.getLogger()
        if self._log_exporter in root.handlers:
            root.removeHandler(self._log_exporter)
        for name, level in self._raised_levels.items():
            logging.getLogger(name).setLevel(level)
        started = time.monotonic()
        self.flush()
        self._close_exporters(max(self.settings.flush_timeout - (time.monotonic() - started), 0.1))
        for name in _OPENCENSUS_LOGGER_NAMES:
            logging.getLogger(name).removeFilter(self._problem_filter)
        with _active_lock:
            if _active is self:
                _active = None

    def _close_exporters(self, timeout):
        try:
            for handler in (self._log_exporter, self._measurement_exporter):
                if handler is not None:
                    handler.close(timeout=timeout)
            if self._span_exporter is not None:
                self._span_exporter._stop(timeout)
        except Exception as exc:
            self._warn_once("Cannot stop the telemetry exporters: %s", type(exc).__name__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and not _is_clean_exit(exc):
            self._root_failed = True
            self.record_exception(exc)
        self.close()
        return False

    # -- dimensions --------------------------------------------------------------------------

    def set_dimensions(self, **dimensions) -> None:
        """Add or replace customDimensions on every later item; a None value removes the key."""
        with self._lock:
            _merge_dimensions(self._dimensions, dimensions)

    def _root_dimensions(self):
        with self._lock:
            return _as_dimensions(self._dimensions)

    def _current_dimensions(self, extra=None):
        with self._lock:
            merged = dict(self._dimensions)
            for frame in self._stack:
                merged.update(frame.dimensions)
                merged["stage"] = frame.name
        merged.update(extra or {})
        return _as_dimensions(merged)

    def _current_span_id(self):
        with self._lock:
            return self._stack[-1].span.span_id if self._stack else self._root.span_id

    # -- spans -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, **dimensions):
        """Time one stage: one ``dependency`` item named ``name``, child of the task's span.

        Logs inside carry ``stage=<name>``. An exception that escapes marks the item failed,
        is recorded as an ``exceptions`` item, and is re-raised unchanged.
        """
        with self._lock:
            parent = self._stack[-1].span if self._stack else self._root
            frame = _StageFrame(str(name), Span(str(name), parent_span=parent,
                                                context_tracer=self._tracer.tracer,
                                                span_kind=SpanKind.CLIENT), dict(dimensions))
            frame.span.start()
            self._stack.append(frame)
        failed = False
        try:
            yield StageSpan(frame)
        except BaseException as exc:
            failed = not _is_clean_exit(exc)
            if failed:
                self.record_exception(exc)
            raise
        finally:
            with self._lock:
                dims = self._current_dimensions()
                if frame in self._stack:
                    self._stack.remove(frame)
            try:
                self._finish_span(frame.span, dims, failed=failed)
            except Exception as exc:
                self._warn_once("Cannot record the telemetry span %s: %s", frame.name,
                                type(exc).__name__)

    def _finish_span(self, span, dimensions, failed):
        span.finish()
        for key, value in dimensions.items():
            span.add_attribute(key, value)
        if failed:
            span.set_status(span_status.Status(code=2, message="failed"))
        self._span_exporter.export(self._tracer.tracer.get_span_datas(span))

    # -- exceptions and logs -----------------------------------------------------------------

    def record_exception(self, exc: BaseException, **dimensions) -> None:
        """Send an ``exceptions`` item with ``exc``'s stack and the current dimensions.

        One failure gives one item: an exception already recorded (by the span it escaped
        from), or raised ``from`` one, is not sent again. Called outside any stage, the
        exception is taken as the task's failure and the task's request item is marked failed.
        """
        try:
            with self._lock:
                if not self._stack:
                    self._root_failed = True
            if _already_recorded(exc):
                return
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, _RECORDED_MARK, True)
            frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
            last = frames[-1] if frames else None
            record = logging.LogRecord(
                name=INTERNAL_LOGGER_NAME, level=logging.ERROR,
                pathname=last.filename if last else "", lineno=last.lineno if last else 0,
                msg="%s: %s", args=(type(exc).__name__, exc),
                exc_info=(type(exc), exc, exc.__traceback__), func=last.name if last else None,
            )
            record.custom_dimensions = dict(dimensions)
            SecretRedactingFilter().filter(record)
            self._annotate(record)
            self._log_exporter.emit(record)
        except Exception as failure:
            self._warn_once("Cannot record an exception in telemetry: %s", type(failure).__name__)

    def track_metric(self, name: str, value: float, **dimensions) -> None:
        """One ``customMetrics`` item: ``name`` = ``value``, with the current dimensions."""
        self._measure(name, dimensions, metric_value=float(value))

    def track_event(self, name: str, **dimensions) -> None:
        """One ``customEvents`` item named ``name``, with the current dimensions."""
        self._measure(name, dimensions)

    def track_request(self, name: str, seconds: float, code: int, url: str, sample_rate: float = 1.0,
                      **dimensions) -> None:
        """One ``requests`` item for a served HTTP request, sampled at ``sample_rate``."""
        request = {"id": uuid.uuid4().hex[:16], "seconds": seconds, "code": code, "url": url,
                   "sample_rate": sample_rate}
        self._measure(name, dimensions, request=request)

    def _measure(self, name, dimensions, **attributes):
        if self._closed:
            # A server thread still answering after close: its exporter no longer sends anything.
            return
        try:
            record = logging.LogRecord(INTERNAL_LOGGER_NAME, logging.INFO, "", 0, "%s", (str(name),), None)
            record.custom_dimensions = dict(dimensions)
            record.__dict__.update(attributes)
            self._annotate(record)
            self._measurement_exporter.emit(record)
        except Exception as failure:
            self._warn_once("Cannot record a measurement in telemetry: %s", type(failure).__name__)

    def _annotate(self, record):
        extra = getattr(record, "custom_dimensions", None)
        record.custom_dimensions = self._current_dimensions(extra if isinstance(extra, dict) else None)
        record.traceId = self.operation_id
        record.spanId = self._current_span_id()

    # -- envelopes ---------------------------------------------------------------------------

    def _process_envelope(self, envelope):
        """The one processor both sinks share: role, operation, parent ids, redaction."""
        tags = envelope.tags
        tags["ai.cloud.role"] = self.settings.role_name
        tags["ai.operation.name"] = self.settings.role_name
        parent = tags.get("ai.operation.parentId")
        # Log envelopes use the legacy "|<trace>.<span>." form; spans use the bare span id.
        if parent and parent.startswith("|"):
            tags["ai.operation.parentId"] = parent.strip("|.").rpartition(".")[2]
        data = envelope.data
        if data.baseType == "RemoteDependencyData":
            data.baseData.type = "InProc"
        elif data.baseType == "RequestData":
            data.baseData.name = self.settings.role_name
            tags.pop("ai.operation.parentId", None)
        envelope.tags = redact_tree(dict(tags))
        data.baseData = redact_tree(data.baseData)
        return True

    # -- failures ----------------------------------------------------------------------------

    def _claim_warning(self):
        with self._lock:
            first, self._warned = not self._warned, True
        return first

    def _warn_once(self, message, *args):
        if self._claim_warning():
            internal_logger.warning(message, *(redact_text(arg) for arg in args))


def _already_recorded(exc):
    return any(getattr(link, _RECORDED_MARK, False) for link in exception_chain(exc))


def _is_clean_exit(exc):
    return isinstance(exc, SystemExit) and exc.code in (0, None)
