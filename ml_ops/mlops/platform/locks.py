"""Named locks that several local processes share, as files under ``$MLOPS_HOME/locks``.

``fcntl.flock`` locks are released by the kernel when their process ends, so a killed
process never leaves a lock behind.
"""
import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Iterator, Optional

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def lock_path(folder: Path, name: str) -> Path:
    return folder / f"{_UNSAFE.sub('_', name)}.lock"


@contextlib.contextmanager
def file_lock(path: Path, wait_seconds: Optional[float] = None, poll_seconds: float = 0.2) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False without holding it when the wait ran out.

    ``wait_seconds`` None waits as long as it takes; 0 tries once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(poll_seconds)
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
