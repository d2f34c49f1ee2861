"""Table locations: folders, or Unity Catalog schemas whose tables are catalog.schema.table."""
import pytest

from mlops import platform
from mlops.config import TrainingConfig
from mlops.data.tables import TableStore
from mlops.errors import ConfigError
from mlops.platform import catalog


@pytest.mark.parametrize("location", ["taxi fares", "dev.taxi.tables", "dev.", ".taxi", "1dev.taxi", "dev"])
def test_a_location_that_is_neither_a_folder_nor_a_schema_is_refused(location):
    with pytest.raises(ConfigError, match=r"parameter 'table_location' must be a folder \(dbfs:/\.\.\., "
                                          r"/Volumes/\.\.\., abfss://\.\.\.\) or a Unity Catalog schema "
                                          r"written catalog\.schema"):
        TrainingConfig.from_params({"table_location": location})


@pytest.mark.parametrize("name, role, part", [("dev.taxi.bad-name", "table", "bad-name"),
                                              ("dev.9taxi.trips", "schema", "9taxi"),
                                              ("d v.taxi.trips", "catalog", "d v")])
def test_a_three_level_name_with_an_invalid_part_names_that_part(name, role, part):
    with pytest.raises(ConfigError, match=f"the {role} part '{part}' is not a valid Unity Catalog name"):
        catalog.split_name(name)


def test_a_name_without_three_parts_is_refused():
    with pytest.raises(ConfigError, match="must have three parts, catalog.schema.table"):
        catalog.split_name("dev.trips")


def test_on_databricks_a_schema_location_names_managed_tables(monkeypatch):
    monkeypatch.setenv(platform.RUNTIME_VERSION_ENV, "18.0")
    target = platform.table_target("prod.taxi_fares", "taxi_fares_predictions")
    assert (target.identifier, target.path) == ("prod.taxi_fares.taxi_fares_predictions", None)
    folder = platform.table_target("/Volumes/prod/taxi_fares/tables/", "trips")
    assert (folder.identifier, folder.path) == ("delta.`/Volumes/prod/taxi_fares/tables/trips`",
                                                "/Volumes/prod/taxi_fares/tables/trips")


def test_locally_a_schema_location_is_a_folder_per_catalog_and_schema(spark, mlops_home):
    store = TableStore(spark, "dev.taxi_fares")
    store.write(spark.createDataFrame([(1, "a"), (2, "b")], "id int, label string"), "trips",
                metadata={"source": "test"})
    assert (mlops_home / "tables" / "dev" / "taxi_fares" / "trips").is_dir()
    assert store.exists("trips") and store.read("trips").count() == 2
    assert store.metadata("trips") == {"source": "test"}
    with pytest.raises(Exception, match=r"table 'gone' does not exist at dev\.taxi_fares\.gone \("):
        store.read("gone")
