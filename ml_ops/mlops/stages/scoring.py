"""Batch scoring job stages: resolve the model, check the publish target, score, publish, summarise.

Everything that can be checked without Spark is checked first (model version, blob
container, prefix, endpoint and key), so bad input fails in seconds and publishes nothing.
"""
import contextlib
import dataclasses
import datetime
import logging
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
from pyspark.sql import functions as F
from taxi_fares.features import filter_date_range

from mlops import platform
from mlops.config import ScoringConfig
from mlops.errors import ConfigError, DataError, RegistryError, ValidationFailed
from mlops.inference import engine
from mlops.lifecycle.registry import PASSED, VALIDATION_STATUS_TAG, ModelRef, RegistryClient
from mlops.observability import plots
from mlops.publishing import make_publisher, validate_prefix
from mlops.stages.feature_tables import REBUILD_HINT, SCORING, build_feature_tables, load_feature_set
from mlops.stages.run import TaskRun


logger = logging.getLogger(__name__)

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
# Lakehouse Monitoring reads the change data feed of an inference table.
INFERENCE_LOG_PROPERTIES = {"delta.enableChangeDataFeed": "true"}
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class ResolvedModel:
    """The one model version this run scores with, and the LightGBM text shipped to executors."""

    ref: ModelRef
    resolved_from: str
    scoring_model: engine.ScoringModel


@dataclass
class PublishTarget:
    """The checked publisher (None when publishing is off); closes its connections on exit."""

    publisher: object = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.publisher is not None:
            self.publisher.close()


@dataclass(frozen=True)
class ScoredPredictions:
    """What the score stage wrote: the predictions table and how it was produced."""

    table: str
    rows: int
    model: ModelRef
    scoring_run_id: str
    scored_at: datetime.datetime
    has_actuals: bool
    mlflow_run_id: str = ""
    scoring_range: tuple = ()


def resolve_model(run: TaskRun[ScoringConfig]) -> ResolvedModel:
    """Pin the model version once (trained_model_version, else the alias) and fetch its file.

    A promotion later in the run cannot change the version: every later stage uses this one.
    """
    config = run.config
    registry = RegistryClient.from_config(config)
    if not registry.exists():
        raise RegistryError(
            f"model '{config.registered_model_name}' does not exist in the registry yet: run the training "
            "job first (locally: mlops job run taxi_fares_training --target dev)")
    if config.trained_model_version:
        if not config.trained_model_version.isdigit():
            raise ConfigError(f"parameter 'trained_model_version' must be a version number such as 3, "
                              f"got {config.trained_model_version!r}; use 'model_alias' for an alias")
        resolved_from, version = "trained_model_version", config.trained_model_version
    else:
        resolved_from, version = f"alias {config.model_alias}", registry.alias_version(config.model_alias)
        if version is None:
            raise RegistryError(
                f"model '{config.registered_model_name}' has no version with alias '{config.model_alias}' "
                "and trained_model_version is empty: promote a version to that alias (training job, "
                "deploy task) or set trained_model_version")
    ref = registry.resolve(version)
    _require_validated(registry, ref, resolved_from, config.allow_unvalidated_model)
    scoring_model = engine.load_scoring_model(ref.uri, download_dir=run.temp_dir / "model")
    mlflow.set_tags({"scoring.model_name": ref.name, "scoring.model_version": ref.version,
                     "scoring.model_resolved_from": resolved_from})
    mlflow.log_param("resolved_model_version", ref.version)
    run.annotate(model_version=ref.version)
    for key, value in ref.task_values().items():
        run.set_task_value(key, value)
    logger.info("scoring with model %s version %s (from %s)", ref.name, ref.version, resolved_from)
    return ResolvedModel(ref=ref, resolved_from=resolved_from, scoring_model=scoring_model)


def _require_validated(registry: RegistryClient, ref: ModelRef, resolved_from: str, allowed: bool):
    """Refuse a version not tagged PASSED, unless ``allow_unvalidated_model`` says otherwise."""
    status = registry.validation_status(ref.version)
    if status == PASSED:
        return
    if not allowed:
        raise ValidationFailed(
            f"refusing to score with model '{ref.name}' version {ref.version} ({resolved_from}): its "
            f"{VALIDATION_STATUS_TAG} is {status or 'not set'}, not {PASSED}. Roll back with `mlops model "
            f"rollback {ref.name} <version> --reason ...`, promote a PASSED version with `mlops model "
            f"promote`, re-run validation, or set allow_unvalidated_model=true to score anyway")
    logger.warning("scoring with model %s version %s whose %s is %s, because allow_unvalidated_model is true",
                   ref.name, ref.version, VALIDATION_STATUS_TAG, status or "not set")
    mlflow.set_tag("scoring.unvalidated_model", f"version {ref.version} is {status or 'not set'}")


def storage_connection_string(host, config, dbutils) -> str | None:
    """The secret scope's value when configured, else AZURE_STORAGE_CONNECTION_STRING; never logged."""
    return host.read_secret(dbutils, config.storage_secret_scope, config.storage_secret_key,
                            CONNECTION_STRING_ENV, ("storage_secret_scope", "storage_secret_key"))


def open_publish_target(run: TaskRun[ScoringConfig]) -> PublishTarget:
    """Validate container and prefix and reach the endpoint with the key, before any Spark work."""
    config = run.config
    if not config.publish_results:
        logger.info("publish_results is false: results stay in table %s", config.predictions_table)
        return PublishTarget()
    validate_prefix(config.blob_prefix)
    secret = storage_connection_string(run.host, config, run.dbutils)
    publisher = make_publisher(secret, config.blob_container, platform.driver_path(config.publish_folder))
    try:
        publisher.check_access()
    except BaseException:
        publisher.close()
        raise
    return PublishTarget(publisher)


def engineer_features(run: TaskRun[ScoringConfig]):
    """Clean raw trips in the scoring range and write the scoring feature tables."""
    config = run.config
    return build_feature_tables(run, config.taxi_fares_raw_data, config.scoring_data_start_date,
                                config.scoring_data_end_date, SCORING, "scoring_data",
                                config.online_store_path)


def score_and_write(run: TaskRun[ScoringConfig], model: ResolvedModel) -> ScoredPredictions:
    """Score the scoring range's feature set on the executors; append the rows to the inference log."""
    config = run.config
    features = load_feature_set(run.tables, config.scoring_data_start_date, config.scoring_data_end_date,
                                SCORING)
    if _no_trips_in_range(run):
        raise DataError(f"no trips to score between {config.scoring_data_start_date} and "
                        f"{config.scoring_data_end_date} in table {SCORING.trips}; check "
                        "scoring_data_start_date, scoring_data_end_date and execute_feature_engineering")
    provenance = engine.Provenance(
        model_name=model.ref.name, model_version=model.ref.version, job_run_id=run.job.job_run_id,
        mlflow_run_id=run.mlflow_run_id or "", scored_at=datetime.datetime.now(datetime.timezone.utc),
        model_alias=config.model_alias if model.resolved_from.startswith("alias") else "")
    write_predictions(run.tables, config.predictions_table, features, model, provenance)
    scored = ScoredPredictions(table=config.predictions_table, rows=0, model=model.ref,
                               scoring_run_id=provenance.job_run_id, scored_at=provenance.scored_at,
                               has_actuals=engine.LABEL_COLUMN in features.columns,
                               mlflow_run_id=provenance.mlflow_run_id, scoring_range=_date_range(config))
    rows = rows_of_this_run(run, scored).count()
    scored = dataclasses.replace(scored, rows=rows)
    logger.info("scored %d trips with %s version %s into the inference log %s", rows, model.ref.name,
                model.ref.version, config.predictions_table)
    run.set_task_value("predictions_table", run.tables.uri(config.predictions_table))
    run.set_task_value("rows_scored", rows)
    return scored


def write_predictions(tables, table: str, features, model: ResolvedModel, provenance: engine.Provenance):
    """Score ``features`` on the executors and append them to the inference log ``table``, in one commit.

    Keyed by request id and model version: a trip scored again by the same version replaces its
    row, a trip scored by another version gets a row of its own.
    """
    predictions = engine.score_features(features, model.scoring_model, provenance)
    with engine.session_settings(features.sparkSession,
                                 engine.log_write_settings(model.scoring_model.feature_names)):
        tables.upsert(predictions, table, engine.LOG_KEYS, engine.PARTITION_COLUMNS,
                      properties=INFERENCE_LOG_PROPERTIES, added_columns=engine.ADDED_LOG_COLUMNS)


def rows_of_this_run(run: TaskRun[ScoringConfig], scored: ScoredPredictions):
    """The inference log rows this scoring run wrote (its date range's partitions only)."""
    start, end = scored.scoring_range
    log = run.tables.read(scored.table)
    return log.where(F.col(engine.PICKUP_DATE).between(F.lit(start), F.lit(end))
                     & (F.col(engine.JOB_RUN_ID) == scored.scoring_run_id)
                     & (F.col(engine.MLFLOW_RUN_ID) == scored.mlflow_run_id)
                     & (F.col(engine.MODEL_VERSION) == scored.model.version))


def _date_range(config) -> tuple:
    return (config.scoring_data_start_date, config.scoring_data_end_date)


def _no_trips_in_range(run: TaskRun[ScoringConfig]) -> bool:
    """A cheap emptiness check on the trip table (the feature set has one row per trip)."""
    config = run.config
    trips = run.tables.read(SCORING.trips, missing_hint=REBUILD_HINT)
    return filter_date_range(trips, config.scoring_data_start_date, config.scoring_data_end_date).isEmpty()


def scoring_range(config) -> str:
    return f"{config.scoring_data_start_date}_{config.scoring_data_end_date}"


def publish_prefix(config) -> str:
    """The blob prefix of one scoring range: ``<blob_prefix>/<start>_<end>``; run ids go below it."""
    return f"{config.blob_prefix}/{scoring_range(config)}"


def prediction_files(folder: Path) -> list[tuple[Path, str, int]]:
    """(local path, publish name, rows) of the part files in ``folder``; rows from Parquet footers.

    Part files of different partitions share names, so the publish name carries the partition
    folder: ``pickup_date=2016-02-01_part-....parquet``.
    """
    import pyarrow.parquet as pq

    files = []
    for path in sorted(folder.rglob("*.parquet")):
        partition = path.parent.name if "=" in path.parent.name else ""
        name = f"{partition}_{path.name}" if partition else path.name
        files.append((path, name, pq.ParquetFile(path).metadata.num_rows))
    return files


@contextlib.contextmanager
def staged_rows_of_this_run(run: TaskRun[ScoringConfig], scored: ScoredPredictions):
    """This run's rows written once by Spark under ``<publish_folder>/_staging/``; removed afterwards.

    The folder is one that the driver and the executors both reach (a volume or DBFS on Databricks).
    """
    uri = f"{run.config.publish_folder.rstrip('/')}/_staging/{scored.scoring_run_id}-{uuid.uuid4().hex[:8]}"
    try:
        rows_of_this_run(run, scored).write.mode("overwrite").partitionBy(*engine.PARTITION_COLUMNS) \
            .parquet(platform.spark_path(uri))
        yield platform.driver_path(uri)
    finally:
        shutil.rmtree(platform.driver_path(uri), ignore_errors=True)


def publish_predictions(run: TaskRun[ScoringConfig], scored: ScoredPredictions, target: PublishTarget):
    """Publish the part files under <prefix>/<scoring range>/<run id>/, manifest last."""
    if target.publisher is None:
        return None
    with staged_rows_of_this_run(run, scored) as folder:
        return _publish_files(run, scored, target, prediction_files(folder))


def _publish_files(run: TaskRun[ScoringConfig], scored: ScoredPredictions, target: PublishTarget, files):
    config = run.config
    total = sum(rows for _, _, rows in files)
    if total != scored.rows:
        # Checked before anything is uploaded: a manifest always matches the rows it describes.
        raise DataError(f"the part files of this run's rows of table {scored.table} hold {total} rows but "
                        f"the run scored {scored.rows}; nothing was published")
    staging = run.temp_dir / "publish"
    staging.mkdir(parents=True, exist_ok=True)
    named = []
    for path, name, rows in files:
        # Links give each file its publish name without copying data.
        link = staging / name
        link.unlink(missing_ok=True)
        link.symlink_to(path)
        named.append((link, rows))
    manifest = {
        "model": {"name": scored.model.name, "version": scored.model.version, "uri": scored.model.uri,
                  "training_run_id": scored.model.run_id},
        "scoring_run_id": scored.scoring_run_id,
        "mlflow_run_id": run.mlflow_run_id,
        "scored_at": scored.scored_at.isoformat(),
        "scoring_range": {"start": str(config.scoring_data_start_date),
                          "end": str(config.scoring_data_end_date)},
        "partition_columns": list(engine.PARTITION_COLUMNS),
        "file_partitions": {name: name.split("_", 1)[0] for _, name, _ in files if "=" in name},
        "format": "parquet",
        "parameters": config.as_params(),
    }
    result = target.publisher.publish(named, prefix=publish_prefix(config),
                                      run_id=scored.scoring_run_id, manifest=manifest)
    mlflow.set_tags({"scoring.blob_url": result.url, "scoring.manifest_url": result.manifest_url})
    run.set_task_value("blob_url", result.url)
    logger.info("published %d files (%d rows) to %s", len(result.files), total, result.url)
    return result


def prediction_summary(run: TaskRun[ScoringConfig], scored: ScoredPredictions) -> dict:
    """Row count and prediction statistics (and errors against actual fares), from Spark aggregates."""
    table = rows_of_this_run(run, scored)
    prediction = F.col(engine.PREDICTION)
    aggregates = [F.count(F.lit(1)).alias("rows_scored"), F.mean(prediction).alias("prediction_mean"),
                  F.stddev(prediction).alias("prediction_stddev"), F.min(prediction).alias("prediction_min"),
                  F.max(prediction).alias("prediction_max"),
                  F.percentile_approx(prediction, [0.5, 0.95]).alias("prediction_quantiles")]
    if scored.has_actuals:
        actual = F.col(engine.LABEL)
        error = prediction - actual
        aggregates += [F.count(actual).alias("rows_with_actuals"), F.mean(actual).alias("actual_mean"),
                       F.sqrt(F.mean(error * error)).alias("rmse"), F.mean(F.abs(error)).alias("mae")]
    row = table.agg(*aggregates).first().asDict()
    median, p95 = row.pop("prediction_quantiles") or (None, None)
    row.update(prediction_median=median, prediction_p95=p95)
    return {name: value for name, value in row.items() if value is not None}


def histograms(run: TaskRun[ScoringConfig], scored: ScoredPredictions, bins: int = HISTOGRAM_BINS):
    """Bin edges and per-bin counts of predictions (and actual fares), counted by Spark; None with no rows."""
    table = rows_of_this_run(run, scored)
    columns = [engine.PREDICTION] + ([engine.LABEL] if scored.has_actuals else [])
    # Clip at the 0.5th and 99.5th percentiles so a few extreme fares do not flatten the plot.
    bounds = table.select(F.explode(F.array(*columns)).alias("value")).agg(
        F.percentile_approx("value", [0.005, 0.995]).alias("bounds")).first()["bounds"]
    if bounds is None:
        return None
    low, high = bounds
    width = (high - low) / bins if high > low else 1.0
    counts = {}
    for column in columns:
        index = F.least(F.greatest(F.floor((F.col(column) - low) / width), F.lit(0)), F.lit(bins - 1))
        binned = table.filter(F.col(column).isNotNull()).groupBy(index.cast("int").alias("bin")).count()
        rows = binned.collect()  # at most `bins` rows
        per_bin = [0] * bins
        for item in rows:
            per_bin[item["bin"]] = item["count"]
        counts[column] = per_bin
    edges = [low + width * position for position in range(bins + 1)]
    return edges, counts


def _histogram_figure(edges, counts_by_label):
    """Overlaid step histograms of already-counted bins (the data never leaves Spark)."""
    figure, axes = plots.plt.subplots(figsize=(8, 4.5))
    for label, counts in counts_by_label.items():
        axes.stairs(counts, edges, label=label, linewidth=1.5)
    axes.set_title("Predicted vs actual fares")
    axes.set_xlabel("fare amount")
    axes.set_ylabel("trips")
    axes.legend()
    figure.tight_layout()
    return figure


def _log_histogram(scored: ScoredPredictions, edges, counts) -> None:
    labels = {engine.PREDICTION: f"predicted fare (v{scored.model.version})",
              engine.LABEL: "actual fare"}
    figure = _histogram_figure(edges, {labels[name]: values for name, values in counts.items()})
    mlflow.log_figure(figure, "prediction_histogram.png")
    plots.close(figure)


def log_summary(run: TaskRun[ScoringConfig], scored: ScoredPredictions, published=None) -> dict:
    """Log row counts, prediction statistics, the histogram plot and the blob URL to the MLflow run."""
    summary = prediction_summary(run, scored)
    mlflow.log_metrics({name: float(value) for name, value in summary.items()
                        if isinstance(value, (int, float)) and math.isfinite(value)})
    binned = histograms(run, scored)
    if binned is None:
        # A concurrent run over the same dates merged after this one and now owns every row.
        logger.warning("no inference log rows of this run remain: a later run over %s replaced them",
                       "..".join(map(str, scored.scoring_range)))
    else:
        _log_histogram(scored, *binned)
    if published is not None:
        summary["blob_url"] = published.url
        summary["files_published"] = len(published.files)
    mlflow.log_dict(summary, "scoring_summary.json")
    logger.info("scoring summary: %s", summary)
    return summary
