"""Secret names, secret-looking values, the registry, and log redaction."""
import io
import logging

import pytest

from mlops.observability import redaction as secrets
from mlops.observability.redaction import (
    REDACTED,
    SecretRedactingFilter,
    install_redaction,
    is_secret_name,
    looks_secret,
    redact_params,
    redact_text,
    register_secret,
)

from .conftest import (
    DATABRICKS_TOKEN,
    SAS_SIGNATURE,
    SAS_TOKEN,
    SAS_URL,
    STORAGE_CONNECTION_STRING,
    STORAGE_KEY,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize("name", [
    "storage_account_key", "AZURE_STORAGE_CONNECTION_STRING", "databricks_token", "password",
    "db_pwd", "client_secret", "sas", "blob_sas_token", "apikey", "api_key", "apiKey",
    "AccountKey", "credential", "azure_credentials", "instrumentation_key", "conn_str",
    "APPLICATIONINSIGHTS_CONNECTION_STRING", "authorization",
])
def test_names_that_hold_secret_values_are_secret(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    # these only name a secret: they hold a scope, a key name, an id or a path
    "secret_scope", "secret_key_name", "appinsights_secret_scope", "appinsights_secret_key_name",
    "storage_key_secret_name", "token_scope", "aws_access_key_id", "private_key_path",
    "storage_secret_key", "appinsights_secret_key", "storage_secret_scope",
    # data keys and ordinary parameters
    "primary_keys", "primary_key", "partition_key", "join_key", "monkey", "tokenizer",
    "training_num_leaves", "taxi_fares_raw_data", "trained_model_version", "registered_model_name",
    "", "   ",
])
def test_names_that_only_name_a_secret_or_hold_data_are_not_secret(name):
    assert not is_secret_name(name)


def test_non_string_names_are_not_secret():
    assert not is_secret_name(None)
    assert not is_secret_name(42)


@pytest.mark.parametrize("value", [
    STORAGE_CONNECTION_STRING,
    "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=r;SharedAccessKey=abcdefgh",
    "BlobEndpoint=https://x.blob.core.windows.net/;SharedAccessSignature=sv=2022&sig=abc",
    "InstrumentationKey=11111111-2222-3333-4444-555555555555;IngestionEndpoint=https://x/",
    SAS_TOKEN, SAS_URL, DATABRICKS_TOKEN, DATABRICKS_TOKEN + "-2", f"Bearer {JWT}", JWT,
    STORAGE_KEY, "https://user:hunter2secret@example.com/repo.git",
])
def test_recognisable_credentials_look_secret(value):
    assert looks_secret(value)


@pytest.mark.parametrize("value", [
    "abfss://container@account.dfs.core.windows.net/raw", "dapi123", "2024-01-01",
    "taxi_fares", "models:/taxi_fares@Champion", "0123456789abcdef0123456789abcdef",
    "a" * 60, None, 42, 3.5, True, "exit code=1",
])
def test_ordinary_values_do_not_look_secret(value):
    assert not looks_secret(value)


def test_redact_params_redacts_by_name_and_by_value_and_keeps_the_rest():
    params = {
        "storage_account_key": "not-base64-but-named-as-key",
        "output_url": SAS_URL,
        "appinsights_secret_scope": "mlops-scope",
        "appinsights_secret_key_name": "appinsights-connection-string",
        "training_num_leaves": 31,
        "execute_feature_engineering": True,
    }
    assert redact_params(params) == {
        "storage_account_key": REDACTED,
        "output_url": REDACTED,
        "appinsights_secret_scope": "mlops-scope",
        "appinsights_secret_key_name": "appinsights-connection-string",
        "training_num_leaves": 31,
        "execute_feature_engineering": True,
    }
    assert params["storage_account_key"] == "not-base64-but-named-as-key", "the input is not modified"


def test_a_secret_key_name_is_kept_in_params_and_not_scrubbed_from_text():
    params = {"storage_secret_scope": "mlops", "storage_secret_key": "storage"}

    assert redact_params(params) == params
    assert redact_text("read key storage of scope mlops") == "read key storage of scope mlops"


def test_values_redacted_by_name_are_remembered_for_free_text():
    redact_params({"databricks_password": "correct-horse-battery"})
    assert redact_text("login with correct-horse-battery failed") == f"login with {REDACTED} failed"


def test_redact_text_keeps_the_structure_around_secrets():
    assert redact_text(STORAGE_CONNECTION_STRING) == (
        f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={REDACTED};"
        "EndpointSuffix=core.windows.net")
    redacted_url = redact_text(SAS_URL)
    assert redacted_url.endswith(f"&sig={REDACTED}")
    assert "sv=2022-11-02" in redacted_url
    assert redact_text(f"token {DATABRICKS_TOKEN} used") == f"token {REDACTED} used"
    assert redact_text(f"Authorization: Bearer {JWT}") == f"Authorization: Bearer {REDACTED}"
    assert redact_text(f"key {STORAGE_KEY}.") == f"key {REDACTED}."
    assert redact_text("InstrumentationKey=11111111-2222-3333-4444-555555555555") == \
        f"InstrumentationKey={REDACTED}"


def test_redact_text_handles_none_and_non_strings():
    assert redact_text(None) is None
    assert redact_text(12) == "12"


def test_registered_secrets_are_redacted_longest_first():
    register_secret("sharedprefix-extended-secret")
    register_secret("sharedprefix")
    assert redact_text("a sharedprefix-extended-secret b sharedprefix") == f"a {REDACTED} b {REDACTED}"


@pytest.mark.parametrize("value", ["", "short", None, 123456789, "     "])
def test_register_secret_ignores_empty_short_and_non_string_values(value):
    before = set(secrets._registered_secrets)
    register_secret(value)
    assert set(secrets._registered_secrets) == before


def _logger_with_stream(name):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretRedactingFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler, stream


def test_filter_redacts_arguments_exceptions_and_stack_before_any_formatter():
    logger, handler, stream = _logger_with_stream("redaction.test.args")
    try:
        logger.info("connecting with %s", STORAGE_CONNECTION_STRING)
        try:
            raise RuntimeError(f"upload to {SAS_URL} failed")
        except RuntimeError:
            logger.exception("publishing with token %s failed", DATABRICKS_TOKEN)
        logger.info("stack", stack_info=True, extra={"custom_dimensions": {"url": SAS_URL}})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "connecting with DefaultEndpointsProtocol=https;AccountName=x;AccountKey=***;" in output
    assert "RuntimeError: upload to" in output and "Traceback" in output
    for planted in (STORAGE_KEY, SAS_SIGNATURE, DATABRICKS_TOKEN):
        assert planted not in output


def test_filter_keeps_a_record_whose_format_string_does_not_match_its_arguments():
    logger, handler, stream = _logger_with_stream("redaction.test.badformat")
    try:
        logger.info("two placeholders %s %s", DATABRICKS_TOKEN)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "two placeholders %s %s (arguments:" in output
    assert DATABRICKS_TOKEN not in output


def test_filter_withholds_a_record_it_cannot_redact_instead_of_raising():
    class Unprintable:
        def __str__(self):
            raise RuntimeError(DATABRICKS_TOKEN)

    logger, handler, stream = _logger_with_stream("redaction.test.unprintable")
    try:
        logger.info("value %s", Unprintable())
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "[log record withheld: redaction failed with RuntimeError]\n"


def test_filter_redacts_secret_named_custom_dimensions():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.custom_dimensions = {"databricks_token": "plain-looking-value", "stage": "train"}
    assert SecretRedactingFilter().filter(record) is True
    assert record.custom_dimensions == {"databricks_token": REDACTED, "stage": "train"}


def test_install_redaction_is_idempotent_and_covers_every_handler():
    logger = logging.getLogger("redaction.test.install")
    first, second = logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())
    logger.addHandler(first)
    logger.addHandler(second)
    try:
        install_redaction(logger)
        install_redaction(logger)
        for handler in (first, second):
            assert sum(isinstance(f, SecretRedactingFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(first)
        logger.removeHandler(second)


def test_install_redaction_defaults_to_the_root_logger():
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        returned = install_redaction()
        assert isinstance(returned, SecretRedactingFilter)
        assert any(isinstance(f, SecretRedactingFilter) for f in handler.filters)
    finally:
        root.removeHandler(handler)
