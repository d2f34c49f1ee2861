"""TelemetrySettings validation and connection string checks."""
import pytest

from mlops.errors import ConfigError
from mlops.observability.settings import DEFAULT_LOGGER_NAMES, TelemetrySettings, check_connection_string

GUID = "11111111-2222-3333-4444-555555555555"


def test_defaults_and_path_coercion(tmp_path):
    settings = TelemetrySettings(connection_string=None, role_name="job/task",
                                 jsonl_path=str(tmp_path / "t.jsonl"))
    assert settings.jsonl_path == tmp_path / "t.jsonl"
    assert settings.logger_names == DEFAULT_LOGGER_NAMES == ("mlops", "taxi_fares", "__main__")
    assert settings.export_interval == 2.0 and settings.dimensions == {}


def test_repr_hides_the_connection_string():
    connection_string = f"InstrumentationKey={GUID};IngestionEndpoint=https://x/"
    text = repr(TelemetrySettings(connection_string=connection_string, role_name="job/task"))
    assert GUID not in text and "connection_string='***'" in text
    assert "connection_string=None" in repr(TelemetrySettings(connection_string=None, role_name="j/t"))


@pytest.mark.parametrize("options, message", [
    (dict(role_name=""), "role_name must be a non-empty string like '<job>/<task>', got ''"),
    (dict(role_name=None), "role_name must be a non-empty string"),
    (dict(connection_string=42), "connection_string must be a string or None, got int"),
    (dict(dimensions=["env"]), "dimensions must be a dict, got list"),
    (dict(export_interval=0), "export_interval must be a number of seconds > 0, got 0"),
    (dict(backend="zipkin"), "telemetry backend must be one of opentelemetry, opencensus, got 'zipkin'"),
    (dict(sample_rate=1.5), "sample_rate must be a number between 0 and 1, got 1.5"),
    (dict(sample_rate=True), "sample_rate must be a number between 0 and 1, got True"),
    (dict(flush_timeout=-1.0), r"flush_timeout must be a number of seconds > 0, got -1.0"),
    (dict(export_interval="2"), "export_interval must be a number of seconds > 0, got '2'"),
    (dict(logger_names="mlops"), "logger_names must be a sequence of logger names, got 'mlops'"),
    (dict(logger_names=("mlops", 3)), "logger_names must be a sequence of logger names"),
])
def test_bad_settings_are_rejected_with_a_message(options, message):
    arguments = dict(connection_string=None, role_name="job/task")
    arguments.update(options)
    with pytest.raises(ConfigError, match=message):
        TelemetrySettings(**arguments)


@pytest.mark.parametrize("connection_string, normalized", [
    (f"InstrumentationKey={GUID}", f"InstrumentationKey={GUID}"),
    (f"InstrumentationKey={GUID.upper()};IngestionEndpoint=https://westeurope-5.in.applicationinsights"
     ".azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=abc",
     f"InstrumentationKey={GUID};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com"),
    (f" instrumentationkey={GUID};ingestionendpoint=http://127.0.0.1:8080/; ",
     f"InstrumentationKey={GUID};IngestionEndpoint=http://127.0.0.1:8080"),
    (f"InstrumentationKey={GUID};Authorization=ikey;EndpointSuffix=applicationinsights.azure.cn",
     f"InstrumentationKey={GUID};EndpointSuffix=applicationinsights.azure.cn"),
])
def test_valid_connection_strings_are_normalized(connection_string, normalized):
    assert check_connection_string(connection_string) == (normalized, None)


@pytest.mark.parametrize("connection_string, problem", [
    ("", "it is empty"),
    (None, "it is empty"),
    ("InstrumentationKey=", "it has no InstrumentationKey"),
    ("InstrumentationKey=1234", "its InstrumentationKey is not a GUID"),
    (f"InstrumentationKey={GUID};IngestionEndpoint=not a url", "its IngestionEndpoint is not an http(s) URL"),
])
def test_unusable_connection_strings_name_the_problem(connection_string, problem):
    assert check_connection_string(connection_string) == (None, problem)
