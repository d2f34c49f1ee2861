"""Task ``merge_labels``: late labels fill the inference log, by request id.

Fares become known after scoring. A labels source (a table with ``request_id`` and
``fare_amount``) fills the ``label`` of the matching rows of every model version; rows whose
label already equals the source are left alone, so a rerun changes nothing. On Databricks
this is one ``MERGE INTO``; locally the touched partitions are rewritten in one commit.
"""
import logging

import mlflow
from pyspark.sql import functions as F
from taxi_fares.features import LABEL_COLUMN

from mlops.config import ScoringConfig
from mlops.errors import DataError
from mlops.inference import engine
from mlops.stages.run import TaskRun


logger = logging.getLogger(__name__)

LABELS_HINT = "write the known fares there, one row per request_id"
DUPLICATES_SHOWN = 5


def merge_labels(run: TaskRun[ScoringConfig]) -> dict:
    """Fill the inference log's labels from ``labels_table``; returns the counts before and after."""
    config = run.config
    counts = merge_label_table(run.tables, config.labels_table, config.predictions_table)
    mlflow.log_metrics({name: float(value) for name, value in counts.items()})
    run.set_task_value("rows_labelled", counts["rows_labelled_after"])
    return counts


def merge_label_table(tables, labels_table: str, predictions_table: str) -> dict:
    """Labels of ``labels_table`` into the log ``predictions_table``, by request id; the counts."""
    labels = tables.read(labels_table, missing_hint=LABELS_HINT)
    missing = [name for name in (engine.REQUEST_ID, LABEL_COLUMN) if name not in labels.columns]
    if missing:
        raise DataError(f"the labels source {tables.uri(labels_table)} lacks column(s) "
                        f"{', '.join(missing)}; it needs {engine.REQUEST_ID} and {LABEL_COLUMN}, "
                        f"found {', '.join(labels.columns)}")
    updates = labels.select(engine.REQUEST_ID, F.col(LABEL_COLUMN).cast("double").alias(engine.LABEL))
    _require_one_label_per_request(updates, tables.uri(labels_table))
    log = tables.read(predictions_table, missing_hint="run the score task first")
    before = _labelled_rows(log)
    changed = tables.fill_column(predictions_table, updates, engine.REQUEST_ID, engine.LABEL)
    after = _labelled_rows(tables.read(predictions_table)) if changed else before
    logger.info("labels from %s: %d rows of %s had a label before, %d after", labels_table,
                before, predictions_table, after)
    return {"rows_labelled_before": before, "rows_labelled_after": after, "rows_labelled_now": after - before}


def _require_one_label_per_request(updates, source: str):
    repeated = updates.groupBy(engine.REQUEST_ID).count().where(F.col("count") > 1)
    examples = [row[engine.REQUEST_ID] for row in repeated.limit(DUPLICATES_SHOWN).collect()]
    if examples:
        raise DataError(f"the labels source {source} has more than one row for request_id "
                        f"{', '.join(examples)}; keep one label per request")


def _labelled_rows(log) -> int:
    return log.where(F.col(engine.LABEL).isNotNull()).count()
