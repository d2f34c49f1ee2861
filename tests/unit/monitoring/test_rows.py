"""The typed metric rows, the table schemas derived from them, and the drift measure registry."""
import dataclasses
import datetime

import numpy as np
import pytest
from pyspark.sql import types as T

from mlops.monitoring import drift_methods
from mlops.monitoring.reference import QUANTILE_LEVELS, ColumnReference
from mlops.monitoring.rows import (DRIFT_SCHEMA, PROFILE_SCHEMA, DriftRow, KsTest, ProfileRow, Status, Window,
                                   to_record)
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.statistics import binned_quantiles

START = datetime.datetime(2016, 3, 1)
KEY = dict(window=Window(START, START + datetime.timedelta(days=1)), granularity="1 day",
           model_id="models:/fares/1", model_version="1", column_name="distance")


def test_the_table_schemas_are_the_row_fields_with_the_window_start_as_the_merge_key():
    for schema, row_type in ((PROFILE_SCHEMA, ProfileRow), (DRIFT_SCHEMA, DriftRow)):
        names = [field.name for field in dataclasses.fields(row_type)]
        assert schema.fieldNames() == [names[0], "window_start", *names[1:]]
    assert PROFILE_SCHEMA["quality_status"].dataType == T.StringType()
    assert PROFILE_SCHEMA["quantiles"].dataType == T.ArrayType(T.DoubleType())
    assert PROFILE_SCHEMA["count"].dataType == T.LongType()
    assert DRIFT_SCHEMA["ks_test"].dataType == T.StructType([T.StructField("statistic", T.DoubleType()),
                                                            T.StructField("pvalue", T.DoubleType())])
    assert DRIFT_SCHEMA["window"].dataType.fieldNames() == ["start", "end"]


def test_a_row_is_written_with_its_status_as_text_and_its_window_start_as_a_column():
    row = DriftRow(**KEY, count=500, ks_test=KsTest(0.2, 1e-4), status=Status.VIOLATION)
    record = to_record(row)

    assert record["status"] == "violation" and type(record["status"]) is str
    assert record["window_start"] == START and record["ks_test"] == {"statistic": 0.2, "pvalue": 1e-4}
    assert set(record) == set(DRIFT_SCHEMA.fieldNames())
    assert (row.verdict, row.window_start_text) == (Status.VIOLATION, "2016-03-01T00:00:00")
    assert not row.is_table
    assert ProfileRow(**{**KEY, "column_name": ":table"}, quality_status=Status.OK).verdict == Status.OK


def test_every_registered_drift_measure_fills_drift_row_fields():
    edges = [float(edge) for edge in range(1, 10)]
    expected = ColumnReference("distance", 1000, 0.0, 5.0, 2.5, 0.0, 10.0, edges,
                               [edge / 10 for edge in range(1, 10)], [])
    counts = np.array([100] * 10)
    quantiles = binned_quantiles(np.cumsum(counts)[:-1] / counts.sum(), edges, 0.0, 10.0, QUANTILE_LEVELS)
    window = drift_methods.ColumnWindow(counts, quantiles, expected, 1.0, MonitoringSettings())

    fields = {field.name for field in dataclasses.fields(DriftRow)}
    filled = {}
    for name, measure in drift_methods.DRIFT_METHODS.items():
        measured = measure(window)
        assert set(measured) <= fields, name
        filled.update(measured)

    assert list(drift_methods.DRIFT_METHODS) == ["population_stability_index", "ks_test",
                                                 "wasserstein_distance"]
    # The window has the reference's own shares: nothing drifted.
    assert filled["population_stability_index"] == pytest.approx(0.0, abs=1e-9)
    assert filled["ks_test"].statistic == pytest.approx(0.0, abs=1e-9) and filled["ks_test"].pvalue == 1.0
    assert filled["wasserstein_distance_normalized"] < 0.05
