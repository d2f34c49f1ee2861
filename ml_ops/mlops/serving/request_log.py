"""Online requests into the inference log: a bounded queue, micro-batches, one Delta commit each.

Responses never wait for the log: a request puts its rows on the queue and returns. A writer
thread takes what is queued when ``flush_rows`` rows are waiting or ``flush_seconds`` have
passed, and appends them to the inference log's Delta table in one commit, with the table's
own schema (the batch path's columns; ``job_run_id`` says ``online``). When the queue is full
the rows of that request are not logged, and :attr:`RequestLog.dropped` counts them; nothing
else is lost. :meth:`RequestLog.close` (on SIGTERM) writes whatever is queued.
"""
import datetime
import logging
import queue
import threading
import time
import uuid
from pathlib import Path

import pyarrow
from deltalake import DeltaTable, write_deltalake
from taxi_fares import features

from mlops.inference import engine

logger = logging.getLogger(__name__)

ONLINE_RUN = "online"
LOG_PROPERTIES = {"delta.enableChangeDataFeed": "true"}
_INTEGER_FEATURES = {"pickup_hour", "pickup_day_of_week", "is_weekend", "pickup_zip", "dropoff_zip"}
_COUNT_FEATURES = {features.COUNT_1H_PICKUP_ZIP, features.COUNT_30M_DROPOFF_ZIP}


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
              pyarrow.field(engine.PICKUP_DATE, pyarrow.date32())]
    return pyarrow.schema(fields)


def new_request_ids(count: int) -> list[tuple[int, str]]:
    """(trip_id, request_id) pairs: a random 64-bit id, and its 16 hex digits as batch writes them."""
    pairs = []
    for _ in range(count):
        unsigned = uuid.uuid4().int & (2**64 - 1)
        signed = unsigned - 2**64 if unsigned >= 2**63 else unsigned
        pairs.append((signed, f"{unsigned:016x}"))
    return pairs


class RequestLog:
    """Appends scored requests to the Delta table in ``folder``, in the background."""

    def __init__(self, folder: Path, feature_names, max_queue_rows: int = 100_000,
                 flush_rows: int = 5_000, flush_seconds: float = 5.0):
        self.folder, self.feature_names = Path(folder), tuple(feature_names)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._queue = queue.Queue()
        # Rows queued or taken by the writer and not yet written: what the bound applies to.
        self.max_pending_rows, self._pending = max_queue_rows, 0
        self.dropped = 0
        self.written = 0
        self.commits = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._writer.start()

    def add(self, rows: list[dict]) -> bool:
        """Queue ``rows`` (whole or not at all); False when the queue had no room for them."""
        with self._lock:
            if self._pending + len(rows) > self.max_pending_rows:
                self.dropped += len(rows)
                return False
            self._pending += len(rows)
        for row in rows:
            self._queue.put_nowait(row)
        return True

    def _take(self) -> list[dict]:
        rows, deadline = [], time.monotonic() + self.flush_seconds
        while len(rows) < self.flush_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._stopping.is_set() and self._queue.empty()):
                break
            try:
                rows.append(self._queue.get(timeout=min(remaining, 0.05)))
            except queue.Empty:
                continue
        return rows

    def _run(self):
        while not (self._stopping.is_set() and self._queue.empty()):
            rows = self._take()
            if rows:
                self._write(rows)

    def _write(self, rows: list[dict]):
        try:
            schema = pyarrow.schema(DeltaTable(str(self.folder)).schema().to_arrow()) \
                if (self.folder / "_delta_log").exists() else log_schema(self.feature_names)
            table = pyarrow.Table.from_pylist(rows, schema=schema)
            write_deltalake(str(self.folder), table, mode="append", partition_by=[engine.PICKUP_DATE],
                            configuration=LOG_PROPERTIES)
            self.written += len(rows)
            self.commits += 1
        except Exception as error:  # the server keeps serving; the rows are counted as not logged
            with self._lock:
                self.dropped += len(rows)
            logger.error("could not append %d request rows to %s: %s: %s", len(rows), self.folder,
                         type(error).__name__, error)
        finally:
            with self._lock:
                self._pending -= len(rows)

    def close(self, timeout: float = 30.0):
        """Write everything queued, then stop."""
        self._stopping.set()
        self._writer.join(timeout)


def log_row(request_id: tuple[int, str], values: dict, prediction: float, model, alias: str,
            pickup: datetime.datetime | None, scored_at: datetime.datetime) -> dict:
    """One inference log row for one scored record."""
    event_time = (pickup or scored_at.replace(tzinfo=None)).replace(tzinfo=datetime.timezone.utc)
    typed = {name: None if value != value else int(value) if name in _INTEGER_FEATURES | _COUNT_FEATURES
             else value for name, value in values.items()}
    return {"trip_id": request_id[0], engine.REQUEST_ID: request_id[1], engine.TIMESTAMP: event_time,
            **typed, engine.PREDICTION: prediction, engine.LABEL: None, engine.MODEL_NAME: model.name,
            engine.MODEL_VERSION: model.version, engine.MODEL_ALIAS: alias,
            engine.MODEL_ID: f"models:/{model.name}/{model.version}", engine.MLFLOW_RUN_ID: "",
            engine.JOB_RUN_ID: ONLINE_RUN, engine.SCORED_AT: scored_at, engine.PICKUP_DATE: event_time.date()}
