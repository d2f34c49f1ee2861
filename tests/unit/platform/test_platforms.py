"""Both platform objects keep one protocol; the Databricks one runs its SQL against local Delta."""
import json
import re
from pathlib import Path

import pytest

from mlops.data.tables import TableStore
from mlops.errors import ConfigError
from mlops.local.dbutils import LocalDbutils
from mlops.platform import context
from mlops.platform.platforms import DatabricksPlatform, LocalPlatform, Platform

PLATFORMS = [LocalPlatform(), DatabricksPlatform()]
PROTOCOL_METHODS = sorted(name for name in vars(Platform) if not name.startswith("_") and name != "name")


class _NotebookContext:
    """The end of ``dbutils.notebook.entry_point.getDbutils().notebook().getContext()``."""

    def safeToJson(self):
        return json.dumps({"attributes": {"jobId": "7", "jobName": "scoring", "multitaskParentRunId": "99",
                                          "notebook_path": "/Repos/x/score"}})


class _Chain:
    """Each link of the chain hands back the next one, ending in the notebook context."""

    def __getattr__(self, name):
        if name == "entry_point":
            return self
        return lambda: _NotebookContext() if name == "getContext" else self


def databricks_dbutils():
    """The local dbutils stand-in, with the notebook context chain of a Databricks job run."""
    dbutils = LocalDbutils(None, {})
    dbutils.notebook = _Chain()
    return dbutils


@pytest.mark.parametrize("host", PLATFORMS, ids=lambda host: host.name)
def test_each_platform_implements_the_whole_protocol(host):
    assert PROTOCOL_METHODS == ["default_tracking_uri", "file_stream_reader", "locate", "named_lock",
                                "primary_key_statements", "read_secret", "registry_store", "run_context",
                                "serving_client", "table_target", "telemetry_file"]
    assert all(callable(getattr(host, method)) for method in PROTOCOL_METHODS)


@pytest.mark.parametrize("host", PLATFORMS, ids=lambda host: host.name)
def test_a_folder_location_is_a_path_identifier_on_both(host, mlops_home):
    target = host.table_target("dbfs:/mlops/tables/", "trips")
    assert target.path == "dbfs:/mlops/tables/trips" and target.shown == target.path
    spark_path = host.locate(target.path).spark
    assert target.identifier == f"delta.`{spark_path}`"


@pytest.mark.parametrize("host", PLATFORMS, ids=lambda host: host.name)
def test_a_bad_table_name_or_location_is_refused_on_both(host):
    with pytest.raises(ConfigError, match="the table part '1st' is not a valid Unity Catalog name"):
        host.table_target("dev.taxi", "1st")
    with pytest.raises(ConfigError, match="must be a folder .* or a Unity Catalog schema"):
        host.table_target("dev.taxi.x", "trips")


def test_a_schema_location_is_a_unity_catalog_table_or_a_folder_under_mlops_home(mlops_home):
    managed = DatabricksPlatform().table_target("prod.taxi", "log")
    assert (managed.identifier, managed.path) == ("prod.taxi.log", None)
    local = LocalPlatform().table_target("prod.taxi", "log")
    folder = mlops_home / "tables" / "prod" / "taxi" / "log"
    assert (local.identifier, local.path) == (f"delta.`{folder}`", str(folder))


def test_only_unity_catalog_tables_get_primary_key_statements(mlops_home):
    keys = ("pickup_zip", "feature_timestamp")
    databricks = DatabricksPlatform()
    statements = databricks.primary_key_statements(databricks.table_target("prod.fares", "pickup"), keys,
                                                   timeseries="feature_timestamp")
    assert statements == [
        "ALTER TABLE prod.fares.pickup ALTER COLUMN `pickup_zip` SET NOT NULL",
        "ALTER TABLE prod.fares.pickup ALTER COLUMN `feature_timestamp` SET NOT NULL",
        "ALTER TABLE prod.fares.pickup DROP CONSTRAINT IF EXISTS pickup_pk",
        "ALTER TABLE prod.fares.pickup ADD CONSTRAINT pickup_pk "
        "PRIMARY KEY (`pickup_zip`, `feature_timestamp` TIMESERIES)"]
    assert databricks.primary_key_statements(databricks.table_target("/Volumes/a/b/c", "t"), keys, "x") == []
    local = LocalPlatform()
    assert local.primary_key_statements(local.table_target("prod.fares", "pickup"), keys, "x") == []


def test_the_databricks_platform_s_table_sql_runs_on_local_delta(spark, tmp_path):
    store = TableStore(spark, f"file:{tmp_path}/tables", DatabricksPlatform())
    rows = spark.createDataFrame([(1, 2.0), (2, 3.0)], "id int, fare double")
    store.write(rows, "fares", metadata={"source": "databricks-sql"})
    store.upsert(rows.limit(1).withColumn("fare", rows.fare * 10), "fares", ["id"], [])
    assert {row.id: row.fare for row in store.read("fares").collect()} == {1: 20.0, 2: 3.0}
    assert [entry["operation"] for entry in store.history("fares")][0] == "MERGE"
    assert store.metadata("fares") == {"source": "databricks-sql"}
    assert (tmp_path / "tables" / "fares").is_dir()


@pytest.mark.parametrize("host", PLATFORMS, ids=lambda host: host.name)
def test_secrets_come_from_the_scope_through_dbutils_on_both(host, monkeypatch):
    secret = "planted-conformance-secret"
    monkeypatch.setenv("MLOPS_SECRET_KV_STORAGE", secret)
    dbutils = LocalDbutils(None, {})
    assert host.read_secret(dbutils, "kv", "storage", "UNSET_VARIABLE", ("scope", "key")) == secret
    with pytest.raises(ConfigError, match="parameters 'scope' and 'key' must be set together"):
        host.read_secret(dbutils, "kv", "", "UNSET_VARIABLE", ("scope", "key"))


def test_run_contexts_come_from_the_notebook_context_or_the_bound_job(mlops_home):
    databricks = DatabricksPlatform().run_context(databricks_dbutils(), "score")
    assert (databricks.job_name, databricks.job_run_id, databricks.task) == ("scoring", "99", "score")
    with context.bind(context.RunContext(job_name="scoring", job_run_id="local-1")):
        local = LocalPlatform().run_context(None, "score")
    assert (local.job_name, local.job_run_id, local.task) == ("scoring", "local-1", "score")


def test_paths_stores_and_locks_differ_as_the_platforms_do(mlops_home):
    local, databricks = LocalPlatform(), DatabricksPlatform()
    assert local.default_tracking_uri() == f"sqlite:///{mlops_home / 'mlflow.db'}"
    assert databricks.default_tracking_uri() == "databricks"
    assert local.locate("dbfs:/raw").driver == (mlops_home / "dbfs" / "raw").resolve()
    assert databricks.locate("dbfs:/raw").driver == Path("/dbfs/raw")
    assert local.telemetry_file("r1", "score") == mlops_home / "runs" / "r1" / "telemetry-score.jsonl"
    assert re.search(r"mlops-telemetry/r1-score\.jsonl$", str(databricks.telemetry_file("r1", "score")))
    with local.named_lock("champion") as held:
        assert held is True and (mlops_home / "locks" / "champion.lock").is_file()
    with databricks.named_lock("champion") as held:
        assert held is True
    assert not (Path("/dbfs") / "locks").exists()


def test_unity_catalog_models_live_in_the_local_store_and_in_unity_catalog_on_databricks():
    local, databricks = LocalPlatform(), DatabricksPlatform()
    assert local.registry_store("databricks-uc", "sqlite:///m.db") == "sqlite:///m.db"
    assert local.registry_store("", "sqlite:///m.db") == "sqlite:///m.db"
    assert databricks.registry_store("databricks-uc", "databricks") == "databricks-uc"
    assert databricks.registry_store("", "databricks") == "databricks"
