"""The statistics drift and quality are judged by: PSI, what chance gives, and how far rows cluster.

PSI between two samples of one distribution is about chi-squared with (bins - 1) degrees of
freedom, scaled by 1/n + 1/m, when rows are independent. Rows of one window are not: trips of an
hour share that hour's demand surges, so a window's PSI, KS statistic and mean squared error
vary between windows more than independent rows would make them. The reference rows, cut into
the windows monitoring will use, show by how much: the mean ratio of a window's statistic to its
independent-rows expectation is the dispersion (1 when rows are independent). Chance levels are
widened by it, as a quasi-likelihood test widens a chi-squared test for overdispersed counts.
"""
import math

import numpy as np
from scipy import stats

# Rows added to every bin before shares are taken (Jeffreys smoothing): no empty bins.
SMOOTHING_ROWS = 0.5
# Reference windows with fewer rows say little about dispersion.
MIN_WINDOW_ROWS = 30
QUALITY = ":quality"


def smoothed_shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float) + SMOOTHING_ROWS
    return counts / counts.sum()


def psi(current_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    """Population stability index of two binnings, given as row counts per bin."""
    current, reference = smoothed_shares(current_counts), smoothed_shares(reference_counts)
    return float(np.sum((current - reference) * np.log(current / reference)))


def psi_by_chance(bins: int, rows: int, reference_rows: int, alpha: float, dispersion: float = 1.0) -> float:
    """The PSI two samples of one distribution exceed with probability ``alpha``."""
    return float(stats.chi2.ppf(1 - alpha, max(bins - 1, 1)) * (1 / rows + 1 / reference_rows) * dispersion)


def rmse_ratio_by_chance(rows: float, alpha: float, squared_error_spread: float = 2.0) -> float:
    """The rmse ratio that ``rows`` errors of the reference's spread exceed with probability ``alpha``.

    The larger of the chi-squared level (normal errors) and the normal approximation of the mean
    squared error with the reference's own Var(e^2)/E(e^2)^2 (``squared_error_spread``; 2 when
    normal). ``rows`` may be an effective (fractional) count.
    """
    normal = stats.chi2.ppf(1 - alpha, rows) / rows
    tailed = 1 + stats.norm.ppf(1 - alpha) * math.sqrt(max(squared_error_spread, 0.0) / rows)
    return math.sqrt(max(normal, tailed))


def binned_quantiles(cumulative_share, edges, low: float, high: float, levels) -> np.ndarray:
    """Quantiles at ``levels`` of a distribution known by its share at or below each edge.

    Rows are taken as spread evenly within each bin, the outer bins reaching ``low`` and
    ``high`` (the observed minimum and maximum). Window and reference are read the same way,
    so the Wasserstein distance between them compares like with like.
    """
    edges = np.asarray(edges, dtype=float)
    if not len(edges):
        return np.interp(levels, [0.0, 1.0], [low, high])
    knots = np.concatenate([[min(low, edges[0])], edges, [max(high, edges[-1])]])
    shares = np.maximum.accumulate(np.concatenate([[0.0], np.asarray(cumulative_share, dtype=float), [1.0]]))
    return np.interp(levels, shares, knots)


def bin_of(values: np.ndarray, edges) -> np.ndarray:
    """The reference bin of each value, the number of edges below it: bin i holds (edge[i-1], edge[i]]."""
    return np.searchsorted(np.asarray(edges, dtype=float), values, side="left")


def bin_counts(values: np.ndarray, edges) -> np.ndarray:
    """Rows per reference bin; NaN has no bin."""
    return np.bincount(bin_of(values[~np.isnan(values)], edges), minlength=len(edges) + 1)


def dispersion(values, windows: np.ndarray, reference_for, squared_errors: np.ndarray) -> dict:
    """{column: dispersion of its PSI, QUALITY: dispersion of the mean squared error} over ``windows``.

    ``values`` holds the reference rows' columns, ``windows`` one window id per row, and
    ``reference_for(window)`` the reference slice that window would be judged against (its
    ``columns`` and ``error``, whose rows include the window's own).
    """
    ratios: dict = {name: [] for name in values.columns}
    ratios[QUALITY] = []
    for window in np.unique(windows):
        chosen = windows == window
        rows = int(chosen.sum())
        if rows < MIN_WINDOW_ROWS:
            continue
        reference = reference_for(window)
        for name in values.columns:
            expected = reference.column(name)
            counts = bin_counts(values[name].to_numpy(dtype=float)[chosen], expected.edges)
            present = int(counts.sum())
            independent = (np.count_nonzero(expected.bin_shares()) - 1) * (1 / present - 1 / expected.count) \
                if present >= MIN_WINDOW_ROWS and expected.count > present else 0.0
            if independent > 0:
                ratios[name].append(psi(counts, expected.bin_shares() * expected.count) / independent)
        error = reference.error
        if error.get("rmse") and error.get("rows", 0) > rows:
            ratio = float(np.nanmean(squared_errors[chosen])) / error["rmse"] ** 2
            independent = error.get("squared_error_spread", 2.0) / rows * (1 - rows / error["rows"])
            ratios[QUALITY].append((ratio - 1) ** 2 / independent)
    return {name: max(1.0, float(np.mean(found))) if found else 1.0 for name, found in ratios.items()}
