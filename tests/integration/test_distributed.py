"""The scoring job on a standalone cluster and under Spark Connect gives local mode's predictions,
and the table store's Delta operations work on both engines."""
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from support.spark_cluster import (SCORING_JOB, connect_server, new_scoring_home,  # noqa: F401
                                   run_job_process, standalone_cluster, worker_environment)

pytestmark = pytest.mark.slow

START, END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 2)
PREDICTION_COLUMNS = ["request_id", "trip_id", "timestamp", "pickup_zip", "dropoff_zip", "label",
                      "prediction", "model_version"]


@pytest.fixture(scope="module")
def scoring_home(spark, tmp_path_factory):
    return new_scoring_home(spark, tmp_path_factory, "distributed_home", 2500, START, END,
                            "taxi_fares_distributed")


def score_with(scoring_home, engine_name, engine_env):
    """Run the whole scoring job on one engine; its predictions table, sorted by trip id."""
    home, parameters = scoring_home
    location = f"dbfs:/tables/{engine_name}"
    completed = run_job_process(SCORING_JOB, home, {**parameters, "table_location": location,
                                                    "publish_results": "false"}, engine_env)
    assert completed.returncode == 0, \
        f"{engine_name}:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    log = home / "dbfs" / "tables" / engine_name / "taxi_fares_predictions"
    table = DeltaTable(str(log)).to_pyarrow_table()
    return table.select(PREDICTION_COLUMNS).to_pandas().sort_values("trip_id", kind="stable") \
        .reset_index(drop=True)


ROUNDTRIP = Path(__file__).resolve().parents[1] / "support" / "delta_roundtrip.py"
ROUNDTRIP_RESULT = {
    "operations": ["MERGE", "MERGE", "CREATE TABLE AS SELECT"], "labelled": True,
    "rows": [["r0", 0.0, None], ["r1", 10.0, 3.5], ["r2", 2.0, None], ["r3", 3.0, None], ["r4", 4.0, 4.5],
             ["r5", 5.0, None]],
    "first_version_rows": 6, "label_changes": [["r1", 3.5], ["r4", 4.5]]}


def delta_roundtrip(scoring_home, engine_name, engine_env) -> dict:
    """Write, merge, label, DESCRIBE HISTORY, time travel and the change feed, on one engine."""
    home, _ = scoring_home
    environment = dict(os.environ, **worker_environment(), MLOPS_HOME=str(home), **engine_env)
    completed = subprocess.run([sys.executable, str(ROUNDTRIP), f"dbfs:/roundtrip/{engine_name}"],
                               env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{engine_name}:\n{completed.stderr[-6000:]}"
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "Apache-Spark/4.1" in result.pop("engine")
    return result


@pytest.fixture(scope="module")
def local_predictions(scoring_home):
    return score_with(scoring_home, "local", {"MLOPS_SPARK_MASTER": "local[2]"})


def assert_same_predictions(actual, expected):
    assert len(actual) == len(expected) > 2000
    assert actual["trip_id"].tolist() == expected["trip_id"].tolist()
    for column in ("request_id", "timestamp", "pickup_zip", "dropoff_zip", "model_version"):
        assert actual[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(actual["label"], expected["label"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(actual["prediction"], expected["prediction"], rtol=0, atol=1e-9)


def test_standalone_cluster_gives_local_predictions(scoring_home, local_predictions,
                                                    standalone_cluster):  # noqa: F811
    cluster = {"MLOPS_SPARK_MASTER": standalone_cluster.master_url, "MLOPS_DRIVER_MEMORY": "1g"}
    on_cluster = score_with(scoring_home, "cluster", cluster)
    assert_same_predictions(on_cluster, local_predictions)
    assert delta_roundtrip(scoring_home, "cluster", cluster) == ROUNDTRIP_RESULT
    assert "mlops-local" in standalone_cluster.application_names()


def test_spark_connect_gives_local_predictions(scoring_home, local_predictions, connect_server):  # noqa: F811
    remote = {"SPARK_REMOTE": connect_server.remote}
    under_connect = score_with(scoring_home, "connect", remote)
    assert_same_predictions(under_connect, local_predictions)
    assert delta_roundtrip(scoring_home, "connect", remote) == ROUNDTRIP_RESULT
