"""PSI from exact per-bin counts in Spark agrees with a NumPy computation on the same rows."""
import numpy as np
import pandas as pd

from mlops.monitoring import monitor
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.statistics import bin_of

from .conftest import FEATURES, FIRST_DAY, LOG_TABLE, MODEL_NAME, log_rows, reference_profile


def numpy_psi(values: np.ndarray, edges, reference_shares, reference_rows: int) -> float:
    """PSI of ``values`` against the reference, written out independently of the monitor's code."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(np.asarray(edges), present, side="left"), minlength=len(edges) + 1)
    current = (counts + 0.5) / (counts + 0.5).sum()
    expected = (np.asarray(reference_shares) * reference_rows + 0.5)
    expected = expected / expected.sum()
    return float(np.sum((current - expected) * np.log(current / expected)))


def test_a_value_s_bin_is_the_number_of_edges_below_it():
    edges = np.array([1.0, 2.0, 2.0000001, 5.0])
    values = np.array([0.5, 1.0, 1.5, 2.0, 2.00000005, 3.0, 5.0, 7.0])
    assert bin_of(values, edges).tolist() == [0, 0, 1, 1, 2, 3, 3, 4]


def test_psi_from_exact_bin_counts_matches_numpy_to_1e_9(tables, write_log, capsys):
    days = [log_rows(FIRST_DAY + pd.Timedelta(days=offset), rows, seed=offset)
            for offset, rows in enumerate((60, 400, 3000, 4000, 100) * 2)]
    for frame in days:
        # Integers with many ties at the bin edges, and a missing value now and then.
        frame["hour"] = np.floor(frame["hour"] / 3) * 3
        frame.loc[frame.index[::17], "duration"] = np.nan
    write_log(days)
    reference = reference_profile()
    monitor.write_baseline(tables, LOG_TABLE, reference)

    result = monitor.monitor_range(tables, LOG_TABLE, MODEL_NAME, FEATURES, MonitoringSettings(min_rows=50),
                                   FIRST_DAY, FIRST_DAY + pd.Timedelta(days=2))

    worst = 0.0
    for frame, window in zip(days, sorted({row.window.start for row in result.drift_rows})):
        for name in (*FEATURES, "prediction"):
            column = reference.column(name)
            expected = numpy_psi(frame[name].to_numpy(dtype=float), column.edges, column.bin_shares(),
                                 column.count)
            [row] = [row for row in result.drift_rows
                     if row.window.start == window and row.column_name == name]
            worst = max(worst, abs(row.population_stability_index - expected))
    with capsys.disabled():  # the figure belongs in every run's output
        print(f"\nPSI agreement with NumPy over {len(days)} windows x {len(FEATURES) + 1} columns: "
              f"largest difference {worst:.3g}")
    assert worst <= 1e-9
