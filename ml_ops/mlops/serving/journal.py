"""The request journal: answered requests not yet in the inference log, in a file until committed.

Each request is appended to the server's journal (one JSON line, numbered) before its response
is sent; a killed process loses nothing the kernel has taken. Commits to the log carry a Delta
app transaction (the journal's id and the last number written), the mechanism Spark's
``txnAppId``/``txnVersion`` use. A server that starts finds the journals of servers that died
(the lock file beside each, ``<journal>.lock``, is free), appends what their log commits do not
cover, and deletes them: each row lands exactly once. A server's own journal is emptied whenever
all it holds is committed.
"""
import contextlib
import datetime
import json
import os
import threading
import uuid
from pathlib import Path

import filelock
import numpy as np
import orjson


_LINE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


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

    def __init__(self, folder: Path, app_id: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.app_id = app_id or f"mlops-serve-{uuid.uuid4().hex}"
        self.path = folder / f"{self.app_id}.jsonl"
        self._alive = _liveness_lock(self.path)
        self._alive.acquire(blocking=False)
        self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self.last_written = self.committed = 0

    def append(self, request) -> int:
        """Write ``request`` durably for this process; its number in the journal."""
        with self._lock:
            self.last_written += 1
            line = orjson.dumps({"seq": self.last_written, **encode(request)}, default=_as_list,
                                option=_LINE_OPTIONS)
            os.write(self._handle, line)
            return self.last_written

    def mark_committed(self, seq: int):
        """Everything up to ``seq`` is in the log: the file is emptied when nothing later waits."""
        with self._lock:
            self.committed = max(self.committed, seq)
            if self.committed == self.last_written:
                os.ftruncate(self._handle, 0)

    def close(self):
        """Release the journal; the file goes when all it held is committed."""
        with self._lock:
            emptied = self.committed == self.last_written
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
