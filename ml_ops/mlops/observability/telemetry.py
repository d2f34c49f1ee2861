"""Telemetry to Azure Monitor (Application Insights), or to a JSON-lines file.

One :class:`Telemetry` per task run sends these items:

* ``traces``: log records at INFO and above from the configured loggers;
* ``dependencies``: one item per stage, from :meth:`Telemetry.span`, plus one ``requests``
  item for the task itself (the root of the operation);
* ``exceptions``: from :meth:`Telemetry.record_exception`, from a stage that raises, and
  from ``logger.exception``;
* ``customMetrics`` and ``customEvents``: from :meth:`Telemetry.track_metric` and
  :meth:`Telemetry.track_event` (monitoring sends each metric and each violation);
* ``requests`` for served HTTP requests, from :meth:`Telemetry.track_request`, sampled by an
  OpenTelemetry sampler at the settings' ``sample_rate``.

Every item carries the cloud role name (``<job>/<task>``) and customDimensions (the settings'
dimensions, :meth:`Telemetry.set_dimensions`, and ``stage`` inside a span); every span and log
of a task run shares one operation id and names its parent. All text is redacted.

Spans come from OpenTelemetry's SDK. Where they go is the backend's business:
:mod:`mlops.observability.otel_backend` (``azure-monitor-opentelemetry``'s exporters, the
default, or JSON lines without a connection string) or
:mod:`mlops.observability.opencensus_backend` (``telemetry_backend=opencensus``).

Telemetry never breaks the job: export failures, an unreachable endpoint or a malformed
connection string are logged once at WARNING on the ``mlops.observability.telemetry`` logger (which the
telemetry handler itself ignores) and otherwise ignored. SDK usage statistics ("statsbeat")
are off unless switched on, and nothing is written to local retry storage.
"""
import contextlib
import logging
import threading
import time
import traceback

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlops.errors import exception_chain
from mlops.observability import opencensus_backend, otel_backend
from mlops.observability.log_filters import AddContext, ExportProblemsOnce, SelectLoggers
from mlops.observability.stage_spans import StageFrame, StageSpan, as_dimensions, merge_dimensions
from mlops.observability.redaction import SecretRedactingFilter, install_redaction, redact_text
from mlops.observability.settings import (  # noqa: F401 (the public vocabulary of telemetry)
    BACKEND_OPENCENSUS,
    BACKEND_OPENTELEMETRY,
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
_IGNORED_LOGGER_PREFIXES = (INTERNAL_LOGGER_NAME, "opencensus", "opentelemetry", "azure", "urllib3",
                            "requests")
_EXPORT_PROBLEM_LOGGERS = otel_backend.EXPORT_PROBLEM_LOGGERS + opencensus_backend.EXPORT_PROBLEM_LOGGERS
# Where jobs and the server read the Application Insights connection string from.
CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_RECORDED_MARK = "_mlops_telemetry_recorded"
_HANDLER_MARK = "_mlops_telemetry_owner"

_active_lock = threading.Lock()
_active = None


class TelemetryHandler(logging.Handler):
    """The root logger's handler: hands selected, redacted, annotated records to the backend."""

    def __init__(self, telemetry):
        super().__init__(logging.INFO)
        self._telemetry = telemetry

    def emit(self, record):
        self._telemetry._emit(record)


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
        self._backend = None
        self._log_handler = None
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
        for name in _EXPORT_PROBLEM_LOGGERS:
            logging.getLogger(name).addFilter(self._problem_filter)
        self._backend = self._build_backend()
        self._root = self._backend.tracer.start_span(self.settings.role_name, context=Context(),
                                                     kind=SpanKind.SERVER)
        self.operation_id = f"{self._root.get_span_context().trace_id:032x}"
        self._attach_log_handler()

    def _build_backend(self):
        from azure.monitor.opentelemetry.exporter import ApplicationInsightsSampler
        settings = self.settings
        sampler = ApplicationInsightsSampler(settings.sample_rate)
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
                backend = (opencensus_backend.OpenCensusBackend(settings, connection_string, sampler)
                           if settings.backend == BACKEND_OPENCENSUS else
                           otel_backend.OpenTelemetryBackend.to_azure_monitor(
                               settings, connection_string, sampler, self._warn_once))
                self.sink = SINK_APPINSIGHTS
                return backend
            except Exception as exc:
                self._warn_once("Cannot start the Application Insights exporter (%s); falling back.",
                                type(exc).__name__)
        if settings.jsonl_path is not None:
            self.sink = SINK_JSONL
            return otel_backend.OpenTelemetryBackend.to_jsonl(settings, sampler, self._warn_once)
        self.sink = SINK_DISABLED
        return otel_backend.NoBackend()

    def _attach_log_handler(self):
        handler = self._log_handler = TelemetryHandler(self)
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
        """Push everything recorded so far to the exporters, waiting at most ``flush_timeout``.

        Returns False when the time ran out. A failed delivery is logged (once), not raised.
        """
        try:
            return self._backend.flush(self.settings.flush_timeout)
        except Exception as exc:
            self._warn_once("Telemetry flush failed: %s", type(exc).__name__)
            return False

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
        if self._log_handler in root.handlers:
            root.removeHandler(self._log_handler)
        for name, level in self._raised_levels.items():
            logging.getLogger(name).setLevel(level)
        started = time.monotonic()
        self.flush()
        try:
            self._backend.close(max(self.settings.flush_timeout - (time.monotonic() - started), 0.1))
        except Exception as exc:
            self._warn_once("Cannot stop the telemetry exporters: %s", type(exc).__name__)
        for name in _EXPORT_PROBLEM_LOGGERS:
            logging.getLogger(name).removeFilter(self._problem_filter)
        with _active_lock:
            if _active is self:
                _active = None

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
            merge_dimensions(self._dimensions, dimensions)

    def _root_dimensions(self):
        with self._lock:
            return as_dimensions(self._dimensions)

    def _current_dimensions(self, extra=None):
        with self._lock:
            merged = dict(self._dimensions)
            for frame in self._stack:
                merged.update(frame.dimensions)
                merged["stage"] = frame.name
        merged.update(extra or {})
        return as_dimensions(merged)

    def _current_span(self):
        with self._lock:
            return self._stack[-1].span if self._stack else self._root

    # -- spans -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, **dimensions):
        """Time one stage: one ``dependency`` item named ``name``, child of the task's span.

        Logs inside carry ``stage=<name>``. An exception that escapes marks the item failed,
        is recorded as an ``exceptions`` item, and is re-raised unchanged.
        """
        with self._lock:
            parent = self._current_span()
            started = self._backend.tracer.start_span(redact_text(str(name)),
                                                      context=trace.set_span_in_context(parent),
                                                      kind=SpanKind.INTERNAL)
            frame = StageFrame(str(name), started, dict(dimensions))
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

    @staticmethod
    def _finish_span(span, dimensions, failed, end_time=None):
        span.set_attributes(dimensions)
        span.set_status(Status(StatusCode.ERROR, "failed") if failed else Status(StatusCode.OK))
        span.end(end_time=end_time)

    # -- exceptions, logs and measurements ---------------------------------------------------

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
            self._backend.emit_log(record, self._current_span())
        except Exception as failure:
            self._warn_once("Cannot record an exception in telemetry: %s", type(failure).__name__)

    def track_metric(self, name: str, value: float, **dimensions) -> None:
        """A ``customMetrics`` value: ``name`` = ``value``, with the current dimensions."""
        if self._closed:
            return
        try:
            self._backend.record_metric(str(name), float(value), self._current_dimensions(dimensions))
        except Exception as failure:
            self._warn_once("Cannot record a metric in telemetry: %s", type(failure).__name__)

    def track_event(self, name: str, **dimensions) -> None:
        """One ``customEvents`` item named ``name``, with the current dimensions."""
        if self._closed:
            # A server thread still answering after close: its exporter no longer sends anything.
            return
        try:
            record = logging.LogRecord(INTERNAL_LOGGER_NAME, logging.INFO, "", 0, "%s", (str(name),), None)
            record.custom_dimensions = dict(dimensions)
            self._annotate(record)
            self._backend.emit_log(record, self._current_span(), event_name=str(name))
        except Exception as failure:
            self._warn_once("Cannot record an event in telemetry: %s", type(failure).__name__)

    def track_request(self, name: str, seconds: float, code: int, url: str, method: str = "POST",
                      **dimensions) -> None:
        """One ``requests`` item for a served HTTP request; the sampler decides whether it is sent."""
        if self._closed:
            return
        try:
            end = time.time_ns()
            request = self._backend.tracer.start_span(
                f"{method} {name}", context=Context(), kind=SpanKind.SERVER,
                start_time=end - int(seconds * 1e9),
                attributes={"http.request.method": method, "url.full": redact_text(url), "http.route": name,
                            otel_backend.jsonl_exporters.STATUS_CODE: int(code)})
            self._finish_span(request, self._current_dimensions(dimensions), failed=code >= 500, end_time=end)
        except Exception as failure:
            self._warn_once("Cannot record a request in telemetry: %s", type(failure).__name__)

    def _emit(self, record):
        try:
            self._backend.emit_log(record, self._current_span())
        except Exception as failure:
            self._warn_once("Cannot send a log record to telemetry: %s", type(failure).__name__)

    def _annotate(self, record):
        extra = getattr(record, "custom_dimensions", None)
        record.custom_dimensions = self._current_dimensions(extra if isinstance(extra, dict) else None)

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
