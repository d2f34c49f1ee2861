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
    labels = run.tables.read(config.labels_table, missing_hint=LABELS_HINT)
    missing = [name for name in (engine.REQUEST_ID, LABEL_COLUMN) if name not in labels.columns]
    if missing:
        raise DataError(f"the labels source {run.tables.uri(config.labels_table)} lacks column(s) "
                        f"{', '.join(missing)}; it needs {engine.REQUEST_ID} and {LABEL_COLUMN}, "
                        f"found {', '.join(labels.columns)}")
    updates = labels.select(engine.REQUEST_ID, F.col(LABEL_COLUMN).cast("double").alias(engine.LABEL))
    _require_one_label_per_request(updates, run.tables.uri(config.labels_table))
    log = run.tables.read(config.predictions_table, missing_hint="run the score task first")
    before = _labelled_rows(log)
    changed = run.tables.fill_column(config.predictions_table, updates, engine.REQUEST_ID, engine.LABEL)
    after = _labelled_rows(run.tables.read(config.predictions_table)) if changed else before
    counts = {"rows_labelled_before": before, "rows_labelled_after": after,
              "rows_labelled_now": after - before}
    mlflow.log_metrics({name: float(value) for name, value in counts.items()})
    run.set_task_value("rows_labelled", after)
    logger.info("labels from %s: %d rows of %s had a label before, %d after", config.labels_table,
                before, config.predictions_table, after)
    return counts


def _require_one_label_per_request(updates, source: str):
    repeated = updates.groupBy(engine.REQUEST_ID).count().where(F.col("count") > 1)
    examples = [row[engine.REQUEST_ID] for row in repeated.limit(DUPLICATES_SHOWN).collect()]
    if examples:
        raise DataError(f"the labels source {source} has more than one row for request_id "
                        f"{', '.join(examples)}; keep one label per request")


def _labelled_rows(log) -> int:
    return log.where(F.col(engine.LABEL).isNotNull()).count()
