"""Telemetry settings: where telemetry goes and what every item carries."""
import dataclasses
import re
from pathlib import Path
from typing import Optional

from mlops.errors import ConfigError
from mlops.observability.redaction import REDACTED, parse_connection_string

DEFAULT_LOGGER_NAMES = ("mlops", "taxi_fares", "__main__")
SINK_APPINSIGHTS = "appinsights"
SINK_JSONL = "jsonl"
SINK_DISABLED = "disabled"
BACKEND_OPENTELEMETRY = "opentelemetry"
BACKEND_OPENCENSUS = "opencensus"
BACKENDS = (BACKEND_OPENTELEMETRY, BACKEND_OPENCENSUS)

_GUID = re.compile(r"^[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$", re.IGNORECASE)


@dataclasses.dataclass(repr=False)
class TelemetrySettings:
    """Where telemetry goes and what every item carries.

    ``connection_string`` is a secret: ``repr`` hides it and it is never logged.
    ``jsonl_path`` is used when there is no valid connection string; with neither,
    telemetry is disabled. ``role_name`` becomes ``cloud_RoleName`` ("<job name>/<task>").
    ``logger_names`` selects the loggers (and their children) whose records become traces;
    ``""`` selects every logger. ``backend`` picks the Application Insights exporter
    (OpenTelemetry, or OpenCensus for teams that ingest through it); ``sample_rate`` is the share
    of served requests sent.
    """

    connection_string: Optional[str]
    role_name: str
    jsonl_path: Optional[Path] = None
    dimensions: dict = dataclasses.field(default_factory=dict)
    export_interval: float = 2.0
    logger_names: tuple = DEFAULT_LOGGER_NAMES
    flush_timeout: float = 5.0
    backend: str = BACKEND_OPENTELEMETRY
    sample_rate: float = 1.0

    def __post_init__(self):
        if not isinstance(self.role_name, str) or not self.role_name.strip():
            raise ConfigError(f"role_name must be a non-empty string like '<job>/<task>', "
                              f"got {self.role_name!r}")
        if self.connection_string is not None and not isinstance(self.connection_string, str):
            raise ConfigError("connection_string must be a string or None, "
                              f"got {type(self.connection_string).__name__}")
        if self.jsonl_path is not None:
            self.jsonl_path = Path(self.jsonl_path)
        if not isinstance(self.dimensions, dict):
            raise ConfigError(f"dimensions must be a dict, got {type(self.dimensions).__name__}")
        for name in ("export_interval", "flush_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        if isinstance(self.logger_names, str) or not all(
                isinstance(name, str) for name in self.logger_names):
            raise ConfigError("logger_names must be a sequence of logger names, "
                              f"got {self.logger_names!r}")
        self.logger_names = tuple(self.logger_names)
        if self.backend not in BACKENDS:
            raise ConfigError(f"telemetry backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, (int, float)) \
                or not 0 <= self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must be a number between 0 and 1, got {self.sample_rate!r}")

    def __repr__(self):
        hidden = None if self.connection_string is None else REDACTED
        return (f"TelemetrySettings(connection_string={hidden!r}, role_name={self.role_name!r}, "
                f"jsonl_path={self.jsonl_path!r}, dimensions={self.dimensions!r}, "
                f"export_interval={self.export_interval!r}, logger_names={self.logger_names!r}, "
                f"flush_timeout={self.flush_timeout!r}, backend={self.backend!r}, "
                f"sample_rate={self.sample_rate!r})")


def check_connection_string(connection_string):
    """Return ``(normalized, problem)`` for an Application Insights connection string.

    ``normalized`` keeps only the parts the exporter uses, with the instrumentation key in
    lower case and no trailing slash on the endpoint; it is None when the string is unusable,
    and ``problem`` then says why without quoting the string.
    """
    if not connection_string or not connection_string.strip():
        return None, "it is empty"
    try:
        parts = parse_connection_string(connection_string, "the connection string")
    except ConfigError:
        return None, "it is not a list of key=value pairs separated by ';'"
    key = parts.get("instrumentationkey")
    if not key:
        return None, "it has no InstrumentationKey"
    if not _GUID.match(key):
        return None, "its InstrumentationKey is not a GUID"
    if parts.get("authorization", "ikey").lower() != "ikey":
        return None, "only Authorization=ikey is supported"
    normalized = [f"InstrumentationKey={key.lower()}"]
    endpoint = parts.get("ingestionendpoint")
    if endpoint:
        if not re.match(r"^https?://[^/\s]+", endpoint):
            return None, "its IngestionEndpoint is not an http(s) URL"
        normalized.append(f"IngestionEndpoint={endpoint.rstrip('/')}")
    for name, label in (("endpointsuffix", "EndpointSuffix"), ("location", "Location")):
        if parts.get(name):
            normalized.append(f"{label}={parts[name]}")
    return ";".join(normalized), None
