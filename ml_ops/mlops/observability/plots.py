"""Figures logged to MLflow. Matplotlib runs headless."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def feature_importance_figure(importance, title="Feature importance (gain)"):
    """A horizontal bar chart of a feature -> importance series."""
    ordered = importance.sort_values()
    figure, axes = plt.subplots(figsize=(8, 0.4 * len(ordered) + 1.5))
    axes.barh(ordered.index, ordered.values, color="#2b6cb0")
    axes.set_title(title)
    axes.set_xlabel("total gain")
    figure.tight_layout()
    return figure


def close(figure):
    plt.close(figure)
