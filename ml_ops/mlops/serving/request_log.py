"""Online requests into the inference log: a bounded queue, micro-batches, one Delta commit each.

Responses never wait for the log: a request puts one :class:`LoggedRequest` (its rows as the
feature matrix it was scored with) on the queue and returns. A writer thread takes what is
queued when ``flush_rows`` rows are waiting or ``flush_seconds`` have passed, builds the Arrow
columns from the matrices at once, and appends them to the inference log's Delta table in one
commit, with the table's own schema (the batch path's columns; ``job_run_id`` says
``online``). When the queue holds ``max_queue_rows`` rows a request's rows are not logged and
:attr:`RequestLog.dropped` counts them; nothing else is lost. :meth:`RequestLog.close` (on
SIGTERM) writes whatever is queued. A request whose rows the table's schema refuses does not
take the others down with it: its rows go, with the reason, to ``<table>.dead_letter.jsonl``
beside the table (:attr:`RequestLog.dead_lettered` counts them), and the rest are written.
A queued request reaches the server's journal (:mod:`mlops.serving.journal`) within 50 ms,
so a server killed with SIGKILL loses at most those: the next one to start commits the rest,
exactly once.
"""
import datetime
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.compute
from deltalake import DeltaTable, Field, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import CommitProperties, Transaction
from taxi_fares import features

from mlops.inference import engine
from mlops.serving import journal

logger = logging.getLogger(__name__)

ONLINE_RUN = "online"
LOG_PROPERTIES = {"delta.enableChangeDataFeed": "true"}
_INTEGER_FEATURES = {"pickup_hour", "pickup_day_of_week", "is_weekend", "pickup_zip", "dropoff_zip"}
_COUNT_FEATURES = {features.COUNT_1H_PICKUP_ZIP, features.COUNT_30M_DROPOFF_ZIP}
# Delta's names of the Arrow types of the columns a server may add to an older log.
_DELTA_TYPES = {pyarrow.bool_(): "boolean", pyarrow.string(): "string"}
# Request ids need to be unique, not secret: a seeded generator costs no system call per row.
_ids = random.Random(random.SystemRandom().getrandbits(128))
_ids_lock = threading.Lock()


def log_schema(feature_names) -> pyarrow.Schema:
    """The inference log's Arrow schema, as the batch path creates the table."""
    def feature_type(name):
        if name in _COUNT_FEATURES:
            return pyarrow.int64()
        return pyarrow.int32() if name in _INTEGER_FEATURES else pyarrow.float64()
    utc = pyarrow.timestamp("us", tz="UTC")
    fields = [pyarrow.field(engine.REQUEST_ID, pyarrow.string(), False),
              pyarrow.field("trip_id", pyarrow.int64(), False),
              pyarrow.field(engine.TIMESTAMP, utc),
              *[pyarrow.field(name, feature_type(name), name not in _COUNT_FEATURES)
                for name in feature_names],
              pyarrow.field(engine.PREDICTION, pyarrow.float64()),
              pyarrow.field(engine.LABEL, pyarrow.float64()),
              *[pyarrow.field(name, pyarrow.string(), False) for name in (
                  engine.MODEL_NAME, engine.MODEL_VERSION, engine.MODEL_ALIAS, engine.MODEL_ID,
                  engine.MLFLOW_RUN_ID, engine.JOB_RUN_ID)],
              pyarrow.field(engine.SCORED_AT, utc, False),
              pyarrow.field(engine.PICKUP_DATE, pyarrow.date32()),
              pyarrow.field(engine.LATE_FEATURES, pyarrow.bool_()),
              pyarrow.field(engine.ARM, pyarrow.string())]
    return pyarrow.schema(fields)


def new_request_ids(count: int) -> list[tuple[int, str]]:
    """(trip_id, request_id) pairs: a random 64-bit id, and its 16 hex digits as batch writes them."""
    with _ids_lock:
        draws = [_ids.getrandbits(64) for _ in range(count)]
    return [(value - 2**64 if value >= 2**63 else value, f"{value:016x}") for value in draws]


@dataclass(frozen=True)
class LoggedRequest:
    """One request's rows as scored: ids, the feature matrix, predictions and event times."""

    model_name: str
    model_version: str
    alias: str
    scored_at: datetime.datetime
    ids: list
    matrix: np.ndarray
    predictions: np.ndarray
    pickups: list
    # Set when the request was split or shadowed; otherwise the alias names the arm.
    arm: str | None = None

    @property
    def rows(self) -> int:
        return len(self.ids)


def _columns(requests: list[LoggedRequest], feature_names, schema: pyarrow.Schema) -> pyarrow.Table:
    """The Arrow table of many requests, built column by column.

    What a request shares across its rows (model, alias, arm, scoring time) is one value per
    request, spread to its rows with one ``take``; only ids and pickups are listed per row.
    """
    owner = pyarrow.array(np.repeat(np.arange(len(requests)), [request.rows for request in requests]))

    def per_request(values, kind=None):
        return pyarrow.array(values, kind).take(owner)
    matrix = np.vstack([request.matrix for request in requests])
    utc = pyarrow.timestamp("us", tz="UTC")
    scored = per_request([request.scored_at for request in requests], utc)
    # A pickup is the trip's UTC time without its zone; a row without one takes its scoring time.
    pickups = pyarrow.array([pickup for request in requests for pickup in request.pickups],
                            pyarrow.timestamp("us")).cast(utc)
    times = pyarrow.compute.coalesce(pickups, scored)
    rows = len(times)
    values = {engine.REQUEST_ID: [text for request in requests for _, text in request.ids],
              "trip_id": [number for request in requests for number, _ in request.ids],
              engine.TIMESTAMP: times,
              engine.PREDICTION: np.concatenate([request.predictions for request in requests]),
              engine.LABEL: pyarrow.nulls(rows, pyarrow.float64()),
              engine.MODEL_NAME: per_request([request.model_name for request in requests]),
              engine.MODEL_VERSION: per_request([request.model_version for request in requests]),
              engine.MODEL_ALIAS: per_request([request.alias for request in requests]),
              engine.MODEL_ID: per_request([f"models:/{request.model_name}/{request.model_version}"
                                            for request in requests]),
              engine.MLFLOW_RUN_ID: pyarrow.repeat("", rows),
              engine.JOB_RUN_ID: pyarrow.repeat(ONLINE_RUN, rows),
              engine.SCORED_AT: scored, engine.PICKUP_DATE: times.cast(pyarrow.date32()),
              engine.LATE_FEATURES: pyarrow.nulls(rows, pyarrow.bool_()),
              engine.ARM: per_request([request.arm or engine.arm_of(request.alias) for request in requests],
                                      pyarrow.string())}
    for position, name in enumerate(feature_names):
        values[name] = pyarrow.array(matrix[:, position], from_pandas=True)
    arrays = []
    for field in schema:
        column = values[field.name]
        column = column if isinstance(column, pyarrow.Array) else pyarrow.array(column)
        arrays.append(column.cast(field.type))
    return pyarrow.Table.from_arrays(arrays, schema=schema)


class RequestLog:
    """Appends scored requests to the Delta table in ``folder``, in the background."""

    def __init__(self, folder: Path, feature_names, max_queue_rows: int = 100_000,
                 flush_rows: int = 5_000, flush_seconds: float = 5.0):
        self.folder, self.feature_names = Path(folder), tuple(feature_names)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        # Requests wait in a list the writer swaps out whole: one lock per request, no per-item wake-up.
        self._queued, self._queued_rows = [], 0
        # Rows queued or taken by the writer and not yet written: what the bound applies to.
        self.max_pending_rows, self._pending = max_queue_rows, 0
        self.dropped = self.written = self.commits = self.dead_lettered = self.recovered = 0
        self._lock = threading.Lock()
        self._enough = threading.Condition(self._lock)
        self._stopping = False
        self._schema = self._table = None
        self.journal_folder = self.folder.parent / f"{self.folder.name}.journal"
        self._recover()
        self.journal = journal.Journal(self.journal_folder)
        self._writer = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._writer.start()

    def add(self, request: LoggedRequest) -> bool:
        """Queue the request's rows (all or none); False when the queue had no room for them."""
        with self._lock:
            if self._pending + request.rows > self.max_pending_rows:
                self.dropped += request.rows
                return False
            self._pending += request.rows
            # Under the lock: the list keeps the journal's order, so a commit covers a prefix of it.
            self._queued.append((self.journal.append(request), request))
            self._queued_rows += request.rows
            if self._queued_rows >= self.flush_rows:
                self._enough.notify()
        return True

    def _take(self) -> list:
        """What is queued, once ``flush_rows`` rows wait or ``flush_seconds`` have passed."""
        deadline = time.monotonic() + self.flush_seconds
        with self._lock:
            while self._queued_rows < self.flush_rows and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._enough.wait(remaining)
            taken, self._queued, self._queued_rows = self._queued, [], 0
            return taken

    def _run(self):
        while True:
            entries = self._take()
            if entries:
                self._write(entries)
            elif self._stopping:
                return

    def _write(self, entries: list):
        requests = [request for _, request in entries]
        rows = sum(request.rows for request in requests)
        try:
            self._commit(requests, self.journal.app_id, entries[-1][0])
            self.journal.mark_committed(entries[-1][0])
        except Exception as error:  # the server keeps serving; the rows are counted as not logged
            with self._lock:
                self.dropped += rows
            logger.error("could not append %d request rows to %s: %s: %s", rows, self.folder,
                         type(error).__name__, error)
        finally:
            with self._lock:
                self._pending -= rows

    def _commit(self, requests: list[LoggedRequest], app_id: str, last_entry: int):
        """One append of ``requests``, recording that ``app_id``'s journal is in up to ``last_entry``."""
        table = self._loggable(requests, self._table_schema())
        if not table.num_rows:
            return
        try:
            self._append(table, app_id, last_entry)
        except CommitFailedError:
            # Another server created the table, or committed more than delta-rs retries over,
            # since this one looked: once more, from the table as it is now.
            self._schema = self._table = None
            self._append(self._loggable(requests, self._table_schema()), app_id, last_entry)
        self.written += table.num_rows
        self.commits += 1

    def _append(self, table: pyarrow.Table, app_id: str, last_entry: int):
        if self._table is not None:
            # Other servers' commits since the last one here: read only those, where a path would
            # replay the whole log on every commit.
            self._table.update_incremental()
        write_deltalake(self._table or str(self.folder), table, mode="append",
                        partition_by=[engine.PICKUP_DATE], configuration=LOG_PROPERTIES,
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(app_id, last_entry)]))

    def _table_schema(self) -> pyarrow.Schema:
        """The log table's schema, read once it exists; the batch path's if nothing created it yet.

        A log created before a column of ``engine.ADDED_LOG_COLUMNS`` gets it here, as Spark's
        writers add it: nullable, its old rows null.
        """
        if self._schema is None:
            if not DeltaTable.is_deltatable(str(self.folder)):
                return log_schema(self.feature_names)
            table = DeltaTable(str(self.folder))
            present = set(pyarrow.schema(table.schema().to_arrow()).names)
            added = [field for field in log_schema(self.feature_names)
                     if field.name in engine.ADDED_LOG_COLUMNS and field.name not in present]
            if added:
                table.alter.add_columns([Field(field.name, _DELTA_TYPES[field.type], nullable=True)
                                         for field in added])
                logger.info("added column(s) %s to the log table %s",
                            ", ".join(field.name for field in added), self.folder)
                table = DeltaTable(str(self.folder))
            self._schema, self._table = pyarrow.schema(table.schema().to_arrow()), table
        return self._schema

    def _recover(self):
        """Commit what dead servers' journals hold beyond their last commit; then delete the journals."""
        for app_id, path in journal.orphans(self.journal_folder):
            with journal.held(path):
                if not path.exists():
                    continue  # another starting server recovered it
                done = DeltaTable(str(self.folder)).transaction_version(app_id) \
                    if DeltaTable.is_deltatable(str(self.folder)) else None
                pending = [(seq, request) for seq, request in journal.entries(path, LoggedRequest)
                           if done is None or seq > done]
                if pending:
                    self._commit([request for _, request in pending], app_id, pending[-1][0])
                    self.recovered += sum(request.rows for _, request in pending)
                    logger.warning("recovered %d request rows a stopped server had not logged, from %s",
                                   self.recovered, path)
                path.unlink()

    def _loggable(self, requests: list[LoggedRequest], schema: pyarrow.Schema) -> pyarrow.Table:
        """The Arrow rows of ``requests``; a request the log's schema refuses goes to the dead letters."""
        try:
            return _columns(requests, self.feature_names, schema)
        except (pyarrow.ArrowException, ValueError, TypeError):
            pass
        tables = []
        for request in requests:
            try:
                tables.append(_columns([request], self.feature_names, schema))
            except (pyarrow.ArrowException, ValueError, TypeError) as error:
                self._set_aside(request, f"{type(error).__name__}: {error}")
        return pyarrow.concat_tables(tables) if tables else schema.empty_table()

    @property
    def dead_letter_file(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.dead_letter.jsonl"

    def _set_aside(self, request: LoggedRequest, reason: str):
        """Append the request's rows, with the reason, to the dead-letter file."""
        lines = []
        for position, (_, request_id) in enumerate(request.ids):
            features_given = {name: (None if np.isnan(value) else float(value))
                              for name, value in zip(self.feature_names, request.matrix[position])}
            lines.append(json.dumps({"request_id": request_id, "model_name": request.model_name,
                                     "model_version": request.model_version, "reason": reason,
                                     "scored_at": request.scored_at.isoformat(),
                                     "prediction": float(request.predictions[position]),
                                     "features": features_given}))
        with self.dead_letter_file.open("a", encoding="utf-8") as letters:
            letters.write("\n".join(lines) + "\n")
        self.dead_lettered += request.rows
        logger.error("set %d request rows aside in %s: %s", request.rows, self.dead_letter_file, reason)

    def close(self, timeout: float = 30.0):
        """Write everything queued, then stop."""
        with self._lock:
            self._stopping = True
            self._enough.notify()
        self._writer.join(timeout)
        self.journal.close()
