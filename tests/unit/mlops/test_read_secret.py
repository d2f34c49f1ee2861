import uuid

import pytest

from mlops.errors import ConfigError
from mlops.local.dbutils import LocalDbutils
from mlops.observability.redaction import redact_text
from mlops.platform.secrets import read_secret

NAMES = ("storage_secret_scope", "storage_secret_key")
PLANTED = "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=cGxhbnRlZC1rZXktZm9yLXRlc3RzLW9ubHk=;"


def test_secret_scope_wins_and_is_registered_for_redaction(monkeypatch):
    # No pattern recognises this value: only its registration can redact it.
    planted = f"plain-scope-value-{uuid.uuid4().hex}"
    assert redact_text(f"connecting with {planted}") == f"connecting with {planted}"
    monkeypatch.setenv("MLOPS_SECRET_KV_DEV_STORAGE", planted)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "unused-value")
    value = read_secret(LocalDbutils(None, {}), "kv-dev", "storage", "AZURE_STORAGE_CONNECTION_STRING", NAMES)
    assert value == planted
    assert redact_text(f"connecting with {value}") == "connecting with ***"


def test_an_environment_secret_is_registered_when_read(monkeypatch):
    planted = f"plain-env-value-{uuid.uuid4().hex}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", planted)
    assert planted in redact_text(planted)
    read_secret(LocalDbutils(None, {}), "", "", "AZURE_STORAGE_CONNECTION_STRING", NAMES)
    assert planted not in redact_text(planted)


def test_environment_variable_when_no_scope(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", PLANTED)
    assert read_secret(LocalDbutils(None, {}), "", "", "AZURE_STORAGE_CONNECTION_STRING", NAMES) == PLANTED


def test_nothing_configured_is_none(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    assert read_secret(LocalDbutils(None, {}), "", "", "AZURE_STORAGE_CONNECTION_STRING", NAMES) is None


def test_scope_without_key_names_both_parameters():
    with pytest.raises(ConfigError, match="'storage_secret_scope' and 'storage_secret_key' must be set"):
        read_secret(LocalDbutils(None, {}), "kv-dev", "", "AZURE_STORAGE_CONNECTION_STRING", NAMES)
