"""The share of rows at or below each reference edge, read off the window's quantile grid."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from mlops.monitoring.window_stats import GRID, GRID_LEVELS, QUANTILE_ACCURACY, share_at_or_below


@pytest.mark.parametrize("rows", [100, 1_000, 50_000])
def test_the_grid_gives_each_edge_s_share_to_one_grid_step(spark, rows):
    generator = np.random.default_rng(rows)
    frame = pd.DataFrame({"continuous": generator.lognormal(1.0, 0.6, rows),
                          "hours": generator.integers(0, 24, rows).astype(float)})
    grids = [F.percentile_approx(name, list(GRID_LEVELS), QUANTILE_ACCURACY).alias(name) for name in frame]
    sketches = spark.createDataFrame(frame).agg(*grids).first()

    for name in frame:
        edges = np.quantile(frame[name], np.linspace(0.05, 0.95, 19))
        exact = np.array([(frame[name] <= edge).mean() for edge in edges])
        estimated = share_at_or_below(sketches[name], edges)
        assert np.max(np.abs(estimated - exact)) <= 1 / GRID + 1 / QUANTILE_ACCURACY, name
