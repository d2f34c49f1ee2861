"""Logging filters of the telemetry handler: which records become traces, and what they carry."""
import logging

from mlops.observability.redaction import SecretRedactingFilter


class SelectLoggers(logging.Filter):
    """Accepts records at or under the given logger names, except those under ``ignored`` ones."""

    def __init__(self, names, ignored):
        super().__init__()
        self._names = tuple(names)
        self._ignored = tuple(ignored)

    def filter(self, record):
        name = record.name
        if any(name == prefix or name.startswith(prefix + ".") for prefix in self._ignored):
            return False
        return any(not wanted or name == wanted or name.startswith(wanted + ".")
                   for wanted in self._names)


class AddContext(logging.Filter):
    """Adds customDimensions, operation id and parent span id to a record."""

    def __init__(self, telemetry):
        super().__init__()
        self._telemetry = telemetry

    def filter(self, record):
        try:
            self._telemetry._annotate(record)
        except Exception as exc:
            self._telemetry._warn_once("cannot annotate a log record: %s", type(exc).__name__)
        return True


class ExportProblemsOnce(logging.Filter):
    """Lets the first exporter warning through (redacted) and drops the rest."""

    _redactor = SecretRedactingFilter()

    def __init__(self, telemetry):
        super().__init__()
        self._telemetry = telemetry

    def filter(self, record):
        if record.levelno < logging.WARNING:
            return True
        if not self._telemetry._claim_warning():
            return False
        self._redactor.filter(record)
        record.msg = ("Application Insights export problem; telemetry may be incomplete "
                      "(further telemetry warnings are suppressed): " + record.msg)
        return True
