"""A Delta table's versions as rows a person reads: version, time, operation, rows written, engine."""
from mlops.data.tables import TableStore

COLUMNS = ["version", "time (UTC)", "operation", "rows written", "engine"]


def history_rows(store: TableStore, name: str) -> list:
    """DESCRIBE HISTORY of table ``name``, newest first, one row per version (see ``COLUMNS``)."""
    return [[entry["version"], entry["timestamp"].strftime("%Y-%m-%d %H:%M:%S"), entry["operation"],
             _rows_written(entry.get("operationMetrics") or {}), entry.get("engineInfo") or "-"]
            for entry in store.history(name)]


def _rows_written(metrics: dict) -> str:
    """The rows a commit wrote, from Delta's operation metrics; '-' for commits that write none."""
    if "numTargetRowsInserted" in metrics:
        return f"{metrics['numTargetRowsInserted']} new, {metrics.get('numTargetRowsUpdated', 0)} updated"
    # Spark's Delta writes say numOutputRows; the online server's delta-rs appends num_added_rows.
    return metrics.get("numOutputRows") or metrics.get("num_added_rows") or "-"
