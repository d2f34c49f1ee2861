"""The request journal: answered requests not yet in the inference log, in a file until committed.

Each request is numbered as it is queued, and a journal thread writes what was numbered every
``WRITE_SECONDS`` (50 ms) in one append, numbered JSON lines; a process killed with SIGKILL
loses at most the requests answered in that last interval. Commits to the log carry a Delta app
transaction (the journal's id and the last number committed), the mechanism Spark's
``txnAppId``/``txnVersion`` use. A server that starts finds the journals of servers that died
(the lock file beside each, ``<journal>.lock``, is free), appends what their log commits do not
cover, and deletes them: each row lands exactly once. A server's own journal is emptied whenever
all it holds is committed.
"""
import contextlib
import datetime
import json
import logging
import os
import threading
import uuid
from pathlib import Path

import filelock
import numpy as np
import orjson

logger = logging.getLogger(__name__)

_LINE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
# One write a batch, off the serving threads: a write per request cost the server 5% of its
# throughput; 50 ms is what a SIGKILL may lose, far inside a flush interval.
WRITE_SECONDS = 0.05


def _as_list(value):
    """What orjson hands back: an array it does not write itself (not C-contiguous)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot journal a {type(value).__name__}")


def _liveness_lock(journal: Path) -> filelock.FileLock:
    """The lock a living server holds on its journal; the OS frees it when the server dies."""
    return filelock.FileLock(journal.with_suffix(".lock"), thread_local=False, preserve_lock_file=True)


class Journal:
    """One server's journal file, locked while the server lives."""

    def __init__(self, folder: Path, app_id: str | None = None, write_seconds: float | None = WRITE_SECONDS):
        folder.mkdir(parents=True, exist_ok=True)
        self.app_id = app_id or f"mlops-serve-{uuid.uuid4().hex}"
        self.path = folder / f"{self.app_id}.jsonl"
        self._alive = _liveness_lock(self.path)
        self._alive.acquire(blocking=False)
        self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # Numbering is all a request waits for; the file has its own lock, held by the writes.
        self._lock, self._file_lock = threading.Lock(), threading.Lock()
        self._waiting, self.last_numbered = [], 0
        self.last_written = self.committed = 0
        self._closing = threading.Event()
        self._writer = None
        if write_seconds is not None:
            self._writer = threading.Thread(target=self._write_every, args=(write_seconds,),
                                            name="request-journal", daemon=True)
            self._writer.start()

    def append(self, request) -> int:
        """Number ``request`` for the next write; its number in the journal."""
        with self._lock:
            self.last_numbered += 1
            self._waiting.append((self.last_numbered, request))
            return self.last_numbered

    def write_waiting(self):
        """Write what was numbered since the last write, in one append; what is committed is skipped."""
        with self._file_lock:
            with self._lock:
                waiting, self._waiting = self._waiting, []
            lines = b"".join(orjson.dumps({"seq": seq, **encode(request)}, default=_as_list,
                                          option=_LINE_OPTIONS)
                             for seq, request in waiting if seq > self.committed)
            if lines:
                os.write(self._handle, lines)
            if waiting:
                self.last_written = waiting[-1][0]

    def _write_every(self, seconds: float):
        while not self._closing.wait(seconds):
            try:
                self.write_waiting()
            except OSError as error:  # the log still commits them; only a kill's window widens
                logger.error("could not write the request journal %s: %s", self.path, error)

    def mark_committed(self, seq: int):
        """Everything up to ``seq`` is in the log: the file is emptied when nothing later waits."""
        with self._file_lock:
            self.committed = max(self.committed, seq)
            if self.committed >= self.last_written:
                os.ftruncate(self._handle, 0)

    def close(self):
        """Release the journal; the file goes when all it held is committed."""
        self._closing.set()
        if self._writer is not None:
            self._writer.join()
        self.write_waiting()
        with self._file_lock:
            emptied = self.committed >= self.last_written
            if emptied:
                self.path.unlink(missing_ok=True)
            os.close(self._handle)
            self._alive.release()
            if emptied:
                Path(self._alive.lock_file).unlink(missing_ok=True)


def orphans(folder: Path) -> list:
    """The journals in ``folder`` that no living server holds: (app id, path)."""
    found = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lock = _liveness_lock(path)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            continue
        lock.release()
        found.append((path.stem, path))
    return found


@contextlib.contextmanager
def held(path: Path):
    """Hold ``path``'s lock while its entries are recovered, so two starting servers do not both."""
    with _liveness_lock(path) as lock:
        yield
    if not path.exists():
        Path(lock.lock_file).unlink(missing_ok=True)


def entries(path: Path, request_type) -> list:
    """(number, request) of each whole line in ``path``; a line cut short by a kill was never answered."""
    result = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        result.append((entry.pop("seq"), decode(entry, request_type)))
    return result


def encode(request) -> dict:
    # orjson writes arrays and datetimes itself; a missing feature (NaN) is written as null.
    return {"model_name": request.model_name, "model_version": request.model_version,
            "alias": request.alias, "arm": request.arm, "scored_at": request.scored_at,
            "ids": request.ids, "matrix": request.matrix, "predictions": request.predictions,
            "pickups": request.pickups}


def decode(entry: dict, request_type):
    return request_type(
        model_name=entry["model_name"], model_version=entry["model_version"], alias=entry["alias"],
        scored_at=datetime.datetime.fromisoformat(entry["scored_at"]),
        ids=[tuple(pair) for pair in entry["ids"]],
        matrix=np.array(entry["matrix"], dtype=np.float64),  # null reads back as NaN
        predictions=np.array(entry["predictions"], dtype=np.float64),
        pickups=[datetime.datetime.fromisoformat(pickup) if pickup else None for pickup in entry["pickups"]],
        arm=entry.get("arm"))
