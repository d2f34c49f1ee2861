"""Fixtures for the telemetry tests: started Telemetry objects are always closed."""
import base64
import logging

import pytest

from mlops.observability.telemetry import Telemetry, TelemetrySettings

# Planted credentials: fake, but shaped exactly like the real ones.
STORAGE_KEY = base64.b64encode(bytes(range(64))).decode()  # 88 characters ending with "=="
STORAGE_CONNECTION_STRING = (
    f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={STORAGE_KEY};"
    "EndpointSuffix=core.windows.net"
)
SAS_SIGNATURE = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg%3D%3D"
SAS_TOKEN = (
    "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2030-01-01T00:00:00Z&st=2024-01-01T00:00:00Z"
    f"&spr=https&sig={SAS_SIGNATURE}"
)
SAS_URL = f"https://x.blob.core.windows.net/out/part-0.parquet?{SAS_TOKEN}"
DATABRICKS_TOKEN = "dapi" + "0123456789abcdef" * 2
PLANTED_VALUES = (STORAGE_KEY, SAS_SIGNATURE, DATABRICKS_TOKEN)


@pytest.fixture
def start_telemetry(monkeypatch):
    """``start_telemetry(**settings)`` -> a started Telemetry, closed at teardown."""
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    started = []

    def start(connection_string=None, role_name="taxi_fares_training/train", **options):
        telemetry = Telemetry.start(TelemetrySettings(connection_string=connection_string,
                                                      role_name=role_name, **options))
        started.append(telemetry)
        return telemetry

    yield start
    for telemetry in started:
        telemetry.close()


@pytest.fixture(params=["opentelemetry", "opencensus"])
def backend(request):
    """Each Application Insights backend in turn."""
    return request.param


@pytest.fixture
def mlops_logger():
    return logging.getLogger("mlops.stages.test")


def run_reference_task(telemetry, logger):
    """Two stages, the second of which fails, with logs before, inside and after them."""
    telemetry.set_dimensions(mlflow_run_id="run-1", mlflow_experiment_id="7", model_version=None)
    logger.info("task started")
    with telemetry.span("feature_engineering", rows=100) as stage:
        logger.info("features built")
        stage.set_dimensions(feature_table="trip_features")
    try:
        with telemetry.span("train"):
            logger.info("training")
            raise ValueError("training_num_leaves must be > 1")
    except ValueError:
        pass
    else:
        raise AssertionError("the span must re-raise")
    logger.info("task finished")
