"""A local MLflow store written by a newer MLflow is refused with a way out, not an Alembic error."""
import shutil
import sqlite3

import pytest

from mlops.config import TrainingConfig
from mlops.errors import ConfigError
from mlops.lifecycle import tracking


def test_a_store_from_a_newer_mlflow_says_how_to_get_past_it(tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = TrainingConfig(experiment_name="/Shared/store_check")
    tracking.configure(config)
    with sqlite3.connect(store) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    # A new path: MLflow keeps the store it already opened for a URI.
    newer = tmp_path / "newer.db"
    shutil.copy(store, newer)
    uri = f"sqlite:///{newer}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError) as caught:
        tracking.configure(config)
    message = str(caught.value)
    assert message.startswith(f"the MLflow store {uri} was written by a newer MLflow than this environment's")
    assert "set MLOPS_HOME (or MLFLOW_TRACKING_URI) to a new folder" in message
