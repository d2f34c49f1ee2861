"""Streaming scoring: trips scored as they arrive, each micro-batch applied exactly once.

Each micro-batch (``foreachBatch``) stores its trips, refreshes the zip windows those trips
fall in with the batch feature definitions, scores the trips with the version the alias names
when the batch starts, MERGEs them into the inference log, and publishes the online snapshot.
Every Delta commit of a batch carries the stream's id and the batch id (Delta's idempotent
``txnAppId``/``txnVersion``), so a batch replayed after a crash changes nothing it already wrote.
"""
import datetime
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import mlflow
from pyspark.sql import functions as F
from taxi_fares import features
from taxi_fares.schema import RAW_COLUMNS, TRIP_ID

from mlops import platform
from mlops.config import StreamingConfig
from mlops.data import trip_stream
from mlops.data.tables import TXN_APP_ID, TXN_VERSION, TableStore
from mlops.errors import DataError, MlopsError, RegistryError, ValidationFailed
from mlops.inference import engine
from mlops.lifecycle.registry import PASSED, VALIDATION_STATUS_TAG, RegistryClient
from mlops.stages.feature_tables import FeatureTables, publish_online_snapshot
from mlops.stages.run import TaskRun
from mlops.stages.scoring import ResolvedModel, write_predictions

logger = logging.getLogger(__name__)

STREAMING = FeatureTables("streaming")
# One row per applied batch: what it did, and the state a restarted stream resumes from.
BATCHES_TABLE = "streaming_batches"
BATCH_KEYS = ("stream_id", "batch_id")
BATCH_SCHEMA = ("stream_id STRING, batch_id BIGINT, rows BIGINT, late_rows BIGINT, model_version STRING, "
                "model_note STRING, watermark STRING, newest_pickup TIMESTAMP, input_rows_per_second DOUBLE, "
                "processed_rows_per_second DOUBLE, latency_p50_seconds DOUBLE, latency_p99_seconds DOUBLE, "
                "seconds DOUBLE, finished_at TIMESTAMP")
# The longest zip window: a new dropoff changes the windows ending within this long after it.
WINDOW = datetime.timedelta(minutes=features.LONGEST_WINDOW_MINUTES)


class ChampionFollower:
    """The model version the alias names when each batch starts; a version not PASSED is never used."""

    def __init__(self, registry: RegistryClient, alias: str, download_dir):
        self.registry = registry
        self.alias = alias
        self.download_dir = download_dir
        self.current: ResolvedModel | None = None
        # The version the stream's last batch used before a restart, if any.
        self.last_used = ""
        self.note = ""

    def at_batch_start(self) -> ResolvedModel:
        version = self.registry.alias_version(self.alias)
        if version is None:
            return self._keep(f"model '{self.registry.model_name}' has no version with alias '{self.alias}'")
        if self.current is not None and str(version) == self.current.ref.version:
            self.note = ""
            return self.current
        status = self.registry.validation_status(version)
        if status != PASSED:
            return self._keep(f"alias {self.alias} names version {version}, whose {VALIDATION_STATUS_TAG} is "
                              f"{status or 'not set'}, not {PASSED}")
        if self.current is not None:
            logger.info("alias %s moved from version %s to %s: later batches score with %s", self.alias,
                        self.current.ref.version, version, version)
        self.current = self._load(version)
        self.note = ""
        return self.current

    def _load(self, version) -> ResolvedModel:
        ref = self.registry.resolve(version)
        model = engine.load_scoring_model(ref.uri, download_dir=self.download_dir / f"v{ref.version}")
        return ResolvedModel(ref=ref, resolved_from=f"alias {self.alias}", scoring_model=model)

    def _keep(self, reason: str) -> ResolvedModel:
        if self.current is None and self.last_used:
            # A restarted stream keeps the version its last batch used, as the running one would.
            self.current = self._load(self.last_used)
        if self.current is None:
            error = RegistryError if "no version" in reason else ValidationFailed
            raise error(f"cannot start scoring the stream: {reason}; promote a PASSED version to "
                        f"'{self.alias}' first")
        self.note = f"{reason}: kept version {self.current.ref.version}"
        logger.warning("%s", self.note)
        return self.current


@dataclass
class BatchReport:
    """What one micro-batch did, as the run summary, MLflow and telemetry show it."""

    batch_id: int
    rows: int = 0
    late_rows: int = 0
    model_version: str = ""
    model_note: str = ""
    watermark: str = ""
    input_rows_per_second: float = 0.0
    processed_rows_per_second: float = 0.0
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    seconds: float = 0.0

    def line(self) -> str:
        latency = "" if self.latency_p50_seconds is None else \
            f", latency p50 {self.latency_p50_seconds:.1f}s p99 {self.latency_p99_seconds:.1f}s"
        note = f" ({self.model_note})" if self.model_note else ""
        return (f"batch {self.batch_id}: {self.rows} trips ({self.late_rows} late), model version "
                f"{self.model_version}{note}, {self.input_rows_per_second:.0f} rows/s in, "
                f"{self.processed_rows_per_second:.0f} rows/s processed, watermark {self.watermark or 'none'}"
                f"{latency}")


@dataclass
class BatchScorer:
    """The ``foreachBatch`` function of the stream; keeps the reports and the first failure."""

    run: TaskRun[StreamingConfig]
    follower: ChampionFollower
    source_shown: str
    reports: list = field(default_factory=list)
    failure: BaseException | None = None
    newest_pickup: datetime.datetime | None = None
    last_start: float | None = None
    resumed: bool = False

    def __call__(self, batch, batch_id: int):
        started = time.monotonic()
        try:
            report = self._score(batch, int(batch_id), started)
        except BaseException as error:
            self.failure = error
            raise
        self.reports.append(report)
        _record(self.run, report)

    def _score(self, batch, batch_id: int, started: float) -> BatchReport:
        config = self.run.config
        trip_stream.check_new_files(batch, self.source_shown)
        # The batch's own session: its rows' temporary views live there, not in the job's.
        tables = TableStore(batch.sparkSession, self.run.tables.location, self.run.host)
        stream_id = self._stream_id()
        if not self.resumed:
            self._resume(tables, stream_id)
        model = self.follower.at_batch_start()
        report = BatchReport(batch_id=batch_id, model_version=model.ref.version,
                             model_note=self.follower.note)
        watermark = self._watermark()
        report.watermark = f"{watermark:%Y-%m-%dT%H:%M:%S}" if watermark else ""
        arrived = batch.select(*RAW_COLUMNS, *([trip_stream.SOURCE_FILE_TIME]
                                               if trip_stream.SOURCE_FILE_TIME in batch.columns else []))
        trips = features.trip_features(features.clean_trips(arrived)).persist()
        try:
            figures = trips.agg(F.count(F.lit(1)).alias("rows"),
                                F.count_if(F.col(features.PICKUP) < F.lit(watermark)).alias("late")
                                if watermark else F.lit(0).alias("late"),
                                F.min(features.DROPOFF).alias("first_dropoff"),
                                F.max(features.DROPOFF).alias("last_dropoff"),
                                F.max(features.PICKUP).alias("newest_pickup")).first()
            if figures["rows"]:
                with self._idempotent(trips, stream_id, batch_id):
                    self._apply(tables, trips, model, figures, watermark)
                report.latency_p50_seconds, report.latency_p99_seconds = _landing_latency(trips)
        finally:
            trips.unpersist()
        report.rows, report.late_rows = figures["rows"], figures["late"]
        if figures["newest_pickup"] is not None:
            self.newest_pickup = max(filter(None, (self.newest_pickup, figures["newest_pickup"])))
        report.seconds = round(time.monotonic() - started, 3)
        report.processed_rows_per_second = round(report.rows / max(report.seconds, 1e-3), 1)
        since = (started - self.last_start) if self.last_start is not None else report.seconds
        report.input_rows_per_second = round(report.rows / max(since, 1e-3), 1)
        self.last_start = started
        logger.info("%s", report.line())
        with self._idempotent(trips, stream_id, batch_id):
            self._remember(tables, stream_id, report)
        if config.online_store_path and report.rows:
            publish_online_snapshot(self.run, STREAMING, config.online_store_path,
                                    f"streaming batch {batch_id}")
        return report

    @staticmethod
    def _idempotent(trips, stream_id: str, batch_id: int):
        """Every commit inside carries (stream id, batch id): Delta skips one it has already applied."""
        return engine.session_settings(trips.sparkSession, {TXN_APP_ID: stream_id, TXN_VERSION: batch_id})

    def _resume(self, tables: TableStore, stream_id: str):
        """The newest pickup and the model version of this stream's last batch before a restart."""
        self.resumed = True
        if not tables.exists(BATCHES_TABLE):
            return
        last = (tables.read(BATCHES_TABLE).where(F.col("stream_id") == stream_id)
                .orderBy(F.col("batch_id").desc()).limit(1).collect())
        if last:
            self.newest_pickup = last[0]["newest_pickup"]
            self.follower.last_used = last[0]["model_version"]
            logger.info("stream resumes after batch %s: watermark from pickup %s, last model version %s",
                        last[0]["batch_id"], self.newest_pickup, self.follower.last_used)

    def _remember(self, tables: TableStore, stream_id: str, report: BatchReport):
        row = {**asdict(report), "stream_id": stream_id, "newest_pickup": self.newest_pickup,
               "finished_at": datetime.datetime.now(datetime.timezone.utc)}
        names = [column.split()[0] for column in BATCH_SCHEMA.split(", ")]
        frame = tables.spark.createDataFrame([tuple(row[name] for name in names)], BATCH_SCHEMA)
        tables.upsert(frame, BATCHES_TABLE, BATCH_KEYS, ())

    def _watermark(self):
        if self.newest_pickup is None:
            return None
        return self.newest_pickup - datetime.timedelta(minutes=self.run.config.watermark_minutes)

    def _stream_id(self) -> str:
        """The query's id from its checkpoint: the same across restarts, new with a new checkpoint."""
        metadata = platform.driver_path(f"{self.run.config.checkpoint()}/metadata")
        return "mlops-stream-" + json.loads(metadata.read_text())["id"]

    def _apply(self, tables: TableStore, trips, model: ResolvedModel, figures, watermark):
        stored = trips.drop(trip_stream.SOURCE_FILE_TIME)
        tables.upsert(stored, STREAMING.trips, (TRIP_ID,), ())
        first, last = figures["first_dropoff"], figures["last_dropoff"]
        # The windows the new dropoffs fall in (they end within WINDOW after one), recomputed from
        # every stored trip they cover; windows further out would see only part of their trips.
        dropoff = F.col(features.DROPOFF)
        nearby = tables.read(STREAMING.trips).where((dropoff >= F.lit(first - WINDOW))
                                                    & (dropoff < F.lit(last + WINDOW)))
        window_end = F.col(features.FEATURE_TIMESTAMP)
        changed = (window_end > F.lit(first)) & (window_end <= F.lit(last + WINDOW))
        for name, frame, keys in ((STREAMING.pickup_features, features.pickup_zip_features(nearby),
                                   features.PICKUP_FEATURE_KEYS),
                                  (STREAMING.dropoff_features, features.dropoff_zip_features(nearby),
                                   features.DROPOFF_FEATURE_KEYS)):
            tables.upsert(frame.where(changed), name, keys, ())
        feature_set = features.build_training_set(
            stored, tables.read(STREAMING.pickup_features), tables.read(STREAMING.dropoff_features))
        late = F.col(features.PICKUP) < F.lit(watermark) if watermark else F.lit(False)
        feature_set = feature_set.withColumn(engine.LATE_FEATURES, late)
        config = self.run.config
        provenance = engine.Provenance(
            model_name=model.ref.name, model_version=model.ref.version, job_run_id=self.run.job.job_run_id,
            mlflow_run_id=self.run.mlflow_run_id or "", model_alias=config.model_alias,
            scored_at=datetime.datetime.now(datetime.timezone.utc))
        write_predictions(tables, config.predictions_table, feature_set, model, provenance)


def _landing_latency(trips):
    """p50 and p99 seconds from each trip's file landing to now (its batch committed); None without files."""
    if trip_stream.SOURCE_FILE_TIME not in trips.columns:
        return None, None
    age = (F.unix_micros(F.current_timestamp())
           - F.unix_micros(F.col(trip_stream.SOURCE_FILE_TIME))) / 1_000_000.0
    quantiles = trips.agg(F.percentile_approx(age, [0.5, 0.99]).alias("q")).first()["q"]
    return (round(quantiles[0], 3), round(quantiles[1], 3)) if quantiles else (None, None)


def _record(run: TaskRun[StreamingConfig], report: BatchReport) -> None:
    metrics = {name: float(value) for name, value in asdict(report).items()
               if isinstance(value, (int, float)) and value is not None and name != "batch_id"}
    if mlflow.active_run() is not None:
        mlflow.log_metrics({f"stream.{name}": value for name, value in metrics.items()}, step=report.batch_id)
    for name, value in metrics.items():
        run.telemetry.track_metric(f"stream_{name}", value, model_version=report.model_version,
                                   batch_id=str(report.batch_id))


@dataclass(frozen=True)
class StreamSummary:
    """The batches one run of the stream applied."""

    trigger: str
    batches: tuple

    @property
    def rows(self) -> int:
        return sum(report.rows for report in self.batches)


def score_stream(run: TaskRun[StreamingConfig]) -> StreamSummary:
    """Run the stream until its trigger ends it; a failed batch stops it with that batch's error."""
    from pyspark.errors import StreamingQueryException

    config = run.config
    registry = RegistryClient.from_config(config)
    follower = ChampionFollower(registry, config.model_alias, run.temp_dir / "models")
    stream = trip_stream.open_trip_stream(run.spark, config.taxi_fares_stream_source, config.checkpoint(),
                                          config.max_files_per_trigger)
    scorer = BatchScorer(run, follower, stream.shown)
    writer = (stream.frame.writeStream.foreachBatch(scorer)
              .option("checkpointLocation", platform.spark_path(config.checkpoint())))
    if config.stream_trigger == "available_now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{config.trigger_interval_seconds} seconds")
    query = writer.start()
    logger.info("stream from %s (%s) to %s started, trigger %s, checkpoint %s", stream.shown, stream.kind,
                config.predictions_table, config.stream_trigger, config.checkpoint())
    try:
        if config.stream_trigger == "processing_time" and config.stream_run_minutes:
            query.awaitTermination(timeout=config.stream_run_minutes * 60)
        else:
            query.awaitTermination()
    except StreamingQueryException as error:
        raise _batch_failure(scorer, error) from error
    finally:
        if query.isActive:
            query.stop()
    summary = StreamSummary(trigger=config.stream_trigger, batches=tuple(scorer.reports))
    _summarise(run, summary)
    return summary


def _batch_failure(scorer: BatchScorer, error) -> MlopsError:
    """The failed batch's own error, named, with how to resume."""
    cause = scorer.failure
    batch = len(scorer.reports)
    if isinstance(cause, MlopsError):
        return type(cause)(f"streaming stopped at a failed batch (after {batch} applied in this run): "
                           f"{cause}; fix the cause and start the job again: it resumes from its checkpoint")
    return DataError(f"streaming stopped at a failed batch (after {batch} applied in this run): "
                     f"{type(cause or error).__name__}: {cause or error}; start the job again to resume "
                     "from its checkpoint")


def _summarise(run: TaskRun[StreamingConfig], summary: StreamSummary) -> None:
    lines = [report.line() for report in summary.batches]
    run.set_task_value("stream_batches", lines)
    run.set_task_value("rows_scored", summary.rows)
    if mlflow.active_run() is not None:
        mlflow.log_dict({"batches": [asdict(report) for report in summary.batches]}, "stream_batches.json")
    logger.info("stream applied %d batch(es), %d trips", len(summary.batches), summary.rows)
